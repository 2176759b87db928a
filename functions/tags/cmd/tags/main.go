// Command tags serves the tags function.
package main

import (
	function "github.com/streamspace-dev/functions/functions/tags"
	"github.com/streamspace-dev/functions/shared/runtime"
)

func main() { runtime.Main(function.New()) }
