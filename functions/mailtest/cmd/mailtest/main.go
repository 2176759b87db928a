// Command mailtest serves the mailtest function.
package main

import (
	function "github.com/streamspace-dev/functions/functions/mailtest"
	"github.com/streamspace-dev/functions/shared/runtime"
)

func main() { runtime.Main(function.New()) }
