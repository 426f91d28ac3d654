"""Python client of iotda-export (gRPC)."""
