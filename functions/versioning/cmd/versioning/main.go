// Command versioning serves the versioning function.
package main

import (
	function "github.com/streamspace-dev/functions/functions/versioning"
	"github.com/streamspace-dev/functions/shared/runtime"
)

func main() { runtime.Main(function.New()) }
