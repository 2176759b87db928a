// Command snapshot serves the snapshot function.
package main

import (
	function "github.com/streamspace-dev/functions/functions/snapshot"
	"github.com/streamspace-dev/functions/shared/runtime"
)

func main() { runtime.Main(function.New()) }
