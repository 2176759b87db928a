module github.com/streamspace-dev/functions/functions/sharing

go 1.26.0

require (
	github.com/streamspace-dev/functions/events v0.0.0
	github.com/streamspace-dev/functions/shared v0.0.0
)

replace (
	github.com/streamspace-dev/functions/events => ../../events
	github.com/streamspace-dev/functions/shared => ../../shared
)
