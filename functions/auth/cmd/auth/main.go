// Command auth serves the auth function.
package main

import (
	function "github.com/streamspace-dev/functions/functions/auth"
	"github.com/streamspace-dev/functions/shared/runtime"
)

func main() { runtime.Main(function.New()) }
