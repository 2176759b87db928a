// Command sharing serves the sharing function.
package main

import (
	function "github.com/streamspace-dev/functions/functions/sharing"
	"github.com/streamspace-dev/functions/shared/runtime"
)

func main() { runtime.Main(function.New()) }
