"""gRPC APIs between the controller and the data plane (generated code next to its .proto)."""
