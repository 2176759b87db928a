// Command restore serves the restore function.
package main

import (
	function "github.com/streamspace-dev/functions/functions/restore"
	"github.com/streamspace-dev/functions/shared/runtime"
)

func main() { runtime.Main(function.New()) }
