"""Messages and gRPC stubs generated from proto/tollgate.proto when the package is built."""
