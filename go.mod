module github.com/streamspace-dev/functions

go 1.26.0
