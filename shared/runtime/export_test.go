package runtime

// NewServer is newServer, for the test of the server's timeouts.
var NewServer = newServer
