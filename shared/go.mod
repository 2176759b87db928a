module github.com/streamspace-dev/functions/shared

go 1.26.0
