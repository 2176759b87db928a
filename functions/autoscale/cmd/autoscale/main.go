// Command autoscale serves the autoscale function.
package main

import (
	function "github.com/streamspace-dev/functions/functions/autoscale"
	"github.com/streamspace-dev/functions/shared/runtime"
)

func main() { runtime.Main(function.New()) }
