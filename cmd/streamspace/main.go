// Command streamspace serves every StreamSpace function in one process: the
// all-in-one Service for small installs.
package main

import (
	function "github.com/streamspace-dev/functions"
	"github.com/streamspace-dev/functions/shared/runtime"
)

func main() { runtime.Main(function.New()) }
