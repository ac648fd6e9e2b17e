"""The terminal's gRPC display API (proto/display.proto): server, event relay, PIN checks."""
