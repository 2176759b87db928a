module github.com/streamspace-dev/functions/functions/tags

go 1.26.0
