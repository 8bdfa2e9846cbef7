"""The public API's descriptors as one file, so grpcurl works through an edge that offers no reflection.

    grpcurl -cacert .rtask/tls/ca.pem -protoset .rtask/api.protoset localhost:8443 list

Written from the descriptors compiled into the package (the contract and grpc.health.v1), with every file
they import, so it always matches what the services speak.
"""

from __future__ import annotations

from pathlib import Path

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import FileDescriptor
from grpc_health.v1 import health_pb2

from resilienttask.v1 import auth_pb2, operator_pb2, schedule_pb2, scheduler_pb2

PROTOSET_FILE = "api.protoset"
PUBLIC_FILES = (
    auth_pb2.DESCRIPTOR,
    scheduler_pb2.DESCRIPTOR,
    schedule_pb2.DESCRIPTOR,
    operator_pb2.DESCRIPTOR,
    health_pb2.DESCRIPTOR,
)


def descriptor_set(files: tuple[FileDescriptor, ...] = PUBLIC_FILES) -> descriptor_pb2.FileDescriptorSet:
    """The files and everything they import, dependencies first (as protoc --include_imports writes them)."""
    ordered: list[FileDescriptor] = []
    seen: set[str] = set()

    def visit(file: FileDescriptor) -> None:
        if file.name in seen:
            return
        seen.add(file.name)
        for dependency in file.dependencies:
            visit(dependency)
        ordered.append(file)

    for file in files:
        visit(file)
    result = descriptor_pb2.FileDescriptorSet()
    for file in ordered:
        file.CopyToProto(result.file.add())
    return result


def write_protoset(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(descriptor_set().SerializeToString())
    return path
