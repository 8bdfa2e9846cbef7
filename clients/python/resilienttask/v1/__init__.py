"""Generated protobuf and gRPC code for resilienttask.v1 (do not edit; see scripts/gen-python)."""
