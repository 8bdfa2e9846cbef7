"""Generated protobuf and gRPC code for resilienttask.worker.v1 (do not edit; see scripts/gen-python)."""
