"""Hostile requests through Envoy (WorkerService at a scheduler's own port, the only place that serves it):
every RPC of every service, with hypothesis filling each request with
random, huge, unicode and SQL-flavoured strings, extreme numbers and durations and oversized payloads.

No call is answered INTERNAL or UNKNOWN, none hangs, and afterwards every process is alive and the stack
still runs a task. Runs in the normal suite against the shared stack (it must leave it serving).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resilienttask.v1 import (
    auth_pb2,
    auth_pb2_grpc,
    scheduler_pb2,
    scheduler_pb2_grpc,
    task_pb2,
)
from resilienttask.worker.v1 import worker_pb2, worker_pb2_grpc
from services.core.tokens import mint_worker_token
from services.stack.stack import Stack
from tests.chaos.hostile import hostile_text, messages
from tests.conftest import unique_email
from tests.helpers import wait_until
from tests.integration.accounts import PASSWORD

# What a server must never answer, whatever it is sent.
FORBIDDEN = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS}
# A guard against a hang; never a measure of speed.
CALL_TIMEOUT_S = 30
EXAMPLES = settings(
    max_examples=25,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)

SERVICES = {
    "AuthService": (auth_pb2, auth_pb2_grpc.AuthServiceStub),
    "SchedulerService": (scheduler_pb2, scheduler_pb2_grpc.SchedulerServiceStub),
    "WorkerService": (worker_pb2, worker_pb2_grpc.WorkerServiceStub),
}
RPCS = [
    (service, method.name)
    for service, (module, _) in SERVICES.items()
    for method in module.DESCRIPTOR.services_by_name[service].methods
]


class Edge:
    """Blocking channels to Envoy and (for WorkerService, which the edge does not route) a scheduler, with a
    user's and a worker's token."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.channel = grpc.insecure_channel(stack.edge_address)
        self.scheduler_channel = grpc.insecure_channel(stack.address(stack.names("scheduler")[0]))
        reply = auth_pb2_grpc.AuthServiceStub(self.channel).Signup(
            auth_pb2.SignupRequest(email=unique_email("hostile"), password=PASSWORD), timeout=CALL_TIMEOUT_S
        )
        worker = mint_worker_token(stack.worker_keys(), f"hostile-{uuid.uuid4().hex[:8]}")
        self.metadata = {
            "AuthService": (),
            "SchedulerService": (("authorization", f"Bearer {reply.access_token}"),),
            "WorkerService": (("authorization", f"Bearer {worker.token}"),),
        }

    def stub(self, service: str) -> Any:
        return SERVICES[service][1](self.scheduler_channel if service == "WorkerService" else self.channel)

    def call(self, service: str, method: str, request: Any) -> tuple[grpc.StatusCode, Any]:
        """The status of one call (streams are read to their end), and the unary reply if any."""
        rpc = getattr(self.stub(service), method)
        metadata = self.metadata[service]
        try:
            if method == "WatchTasks":
                stream = rpc(request, metadata=metadata, timeout=CALL_TIMEOUT_S)
                try:
                    next(stream, None)  # the snapshot, or the refusal
                finally:
                    stream.cancel()
                return grpc.StatusCode.OK, None
            if method == "Connect":
                for _ in rpc(iter(request), metadata=metadata, timeout=CALL_TIMEOUT_S):
                    pass
                return grpc.StatusCode.OK, None
            return grpc.StatusCode.OK, rpc(request, metadata=metadata, timeout=CALL_TIMEOUT_S)
        except grpc.RpcError as exc:
            return exc.code(), None  # type: ignore[attr-defined]

    def close(self) -> None:
        self.channel.close()
        self.scheduler_channel.close()


@pytest.fixture(scope="module")
def hostile_edge(stack: Stack) -> Iterator[Edge]:
    edge = Edge(stack)
    yield edge
    edge.close()


def _request_strategy(service: str, method: str) -> st.SearchStrategy[Any]:
    module = SERVICES[service][0]
    descriptor = module.DESCRIPTOR.services_by_name[service].methods_by_name[method]
    request_class = getattr(module, descriptor.input_type.name)
    if method == "Connect":  # a client stream: a few messages of any kind, in any order
        return st.lists(messages(request_class), max_size=4)
    return messages(request_class)


def _undo(edge: Edge, method: str, reply: Any) -> None:
    """Cancel what a hostile submission started, so the shared stack's workers stay free for other tests."""
    if method == "SubmitTask" and reply is not None and reply.tasks:
        edge.stub("SchedulerService").CancelBatch(
            scheduler_pb2.CancelBatchRequest(batch_id=reply.tasks[0].batch_id),
            metadata=edge.metadata["SchedulerService"],
            timeout=CALL_TIMEOUT_S,
        )


def _still_serving(edge: Edge) -> None:
    dead = [name for name, process in edge.stack.processes.items() if not process.alive()]
    assert dead == [], f"processes died: {dead}"
    health = health_pb2_grpc.HealthStub(edge.channel).Check(health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT_S)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    scheduler = edge.stub("SchedulerService")
    metadata = edge.metadata["SchedulerService"]
    (task,) = scheduler.SubmitTask(
        scheduler_pb2.SubmitTaskRequest(name="after hostile input", kind="sleep"), metadata=metadata
    ).tasks

    def succeeded() -> bool:
        reply = scheduler.GetTask(scheduler_pb2.GetTaskRequest(task_id=task.id), metadata=metadata)
        return reply.task.status == task_pb2.TASK_STATUS_SUCCEEDED

    wait_until(succeeded, timeout_s=60, interval_s=0.1, message="a task after the hostile calls succeeded")


@pytest.mark.parametrize(("service", "method"), RPCS, ids=[f"{s}.{m}" for s, m in RPCS])
def test_hostile_requests_never_get_internal_or_unknown(hostile_edge: Edge, service: str, method: str) -> None:
    seen: dict[str, int] = {}

    @EXAMPLES
    @given(request=_request_strategy(service, method))
    def check(request: Any) -> None:
        code, reply = hostile_edge.call(service, method, request)
        seen[code.name] = seen.get(code.name, 0) + 1
        _undo(hostile_edge, method, reply)
        assert code not in FORBIDDEN, f"{service}.{method} answered {code.name}"

    check()
    print(f"{service}.{method}: {seen}")
    _still_serving(hostile_edge)


@EXAMPLES
@given(
    name=hostile_text(),
    payload=st.dictionaries(hostile_text(), hostile_text(), max_size=3),
)
def test_hostile_strings_in_a_well_formed_submission_are_stored_verbatim_or_refused(
    hostile_edge: Edge, name: str, payload: dict[str, str]
) -> None:
    """The deep path: past validation into PostgreSQL and back. Whatever is accepted comes back unchanged."""
    request = scheduler_pb2.SubmitTaskRequest(name=name, kind="sleep", request_id=str(uuid.uuid4()))
    request.payload.update(payload)
    code, reply = hostile_edge.call("SchedulerService", "SubmitTask", request)
    assert code in {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED}, code
    if code is not grpc.StatusCode.OK:
        return
    (task,) = reply.tasks
    stored = hostile_edge.stub("SchedulerService").GetTask(
        scheduler_pb2.GetTaskRequest(task_id=task.id), metadata=hostile_edge.metadata["SchedulerService"]
    )
    for returned in (task, stored.task):
        assert returned.name == name.strip()
        assert json_format.MessageToDict(returned.payload) == payload


@pytest.mark.parametrize(
    ("field", "name", "payload"),
    [("name", "a\x00b", {}), ("payload", "ok", {"key": "a\x00b"}), ("payload", "ok", {"k\x00": "v"})],
)
def test_nul_characters_are_refused_naming_the_field(
    hostile_edge: Edge, field: str, name: str, payload: dict[str, str]
) -> None:
    """PostgreSQL cannot store U+0000; it used to surface as INTERNAL from the insert."""
    request = scheduler_pb2.SubmitTaskRequest(name=name, kind="sleep")
    request.payload.update(payload)
    with pytest.raises(grpc.RpcError) as refused:
        hostile_edge.stub("SchedulerService").SubmitTask(request, metadata=hostile_edge.metadata["SchedulerService"])
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert refused.value.details().startswith(f"{field}:")  # type: ignore[attr-defined]
