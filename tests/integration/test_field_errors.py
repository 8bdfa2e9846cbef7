"""A refusal names its field in the status details (google.rpc.BadRequest), through Envoy: the SDK raises it as
the exception's `field` and `reason`, and the CLI names the field and the option that sets it."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2, struct_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

import resilienttask
from resilienttask.limits import FieldLimits, annotated
from resilienttask.v1 import (
    auth_pb2,
    auth_pb2_grpc,
    operator_pb2,
    operator_pb2_grpc,
    schedule_pb2,
    schedule_pb2_grpc,
    scheduler_pb2,
    scheduler_pb2_grpc,
)
from services.core.config import DatabaseConfig
from services.gateway import operators
from services.stack.stack import Stack
from tests.conftest import Stores, unique_email
from tests.integration.accounts import PASSWORD, signup

RTASK = str(Path(sys.executable).with_name("rtask"))


def _violations(error: grpc.aio.AioRpcError) -> list[tuple[str, str]]:
    """The field violations in the call's status details (what the SDK and the dashboard read)."""
    (raw,) = [value for key, value in error.trailing_metadata() or () if key == "grpc-status-details-bin"]
    status = status_pb2.Status.FromString(raw)
    assert status.code == error.code().value[0] and status.message == error.details()
    found = []
    for detail in status.details:
        refusal = error_details_pb2.BadRequest()
        assert detail.Unpack(refusal)
        found += [(v.field, v.description) for v in refusal.field_violations]
    return found


async def test_the_status_details_name_the_field(edge: grpc.aio.Channel) -> None:
    account = await signup(edge, "fields")
    tasks = scheduler_pb2_grpc.SchedulerServiceStub(edge)
    with pytest.raises(grpc.aio.AioRpcError) as too_many:
        await tasks.SubmitTask(scheduler_pb2.SubmitTaskRequest(name="x", replicas=51), metadata=account.metadata)
    assert too_many.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    ((field, reason),) = _violations(too_many.value)
    assert field == "replicas" and reason and too_many.value.details() == f"replicas: {reason}"

    with pytest.raises(grpc.aio.AioRpcError) as taken:
        await auth_pb2_grpc.AuthServiceStub(edge).Signup(auth_pb2.SignupRequest(email=account.email, password=PASSWORD))
    assert taken.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert [field for field, _ in _violations(taken.value)] == ["email"]


def test_the_sdk_raises_the_field_from_the_details(stack: Stack) -> None:
    with resilienttask.Client(stack.edge_address) as client:
        email = unique_email("fields-sdk")
        client.signup(email, PASSWORD)
        with pytest.raises(resilienttask.InvalidArgument) as refused:
            client.count(id_prefix="not hex")
        assert refused.value.field == "filter.id_prefix" and refused.value.reason
        assert refused.value.message == f"{refused.value.field}: {refused.value.reason}"
        with pytest.raises(resilienttask.AlreadyExists) as taken:
            client.signup(email, PASSWORD)
        assert taken.value.field == "email"


def test_the_cli_names_the_field_and_its_option(stack: Stack, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RTASK_")}
    env |= {
        "RTASK_CONFIG_DIR": str(tmp_path / "config"),
        "HOME": str(tmp_path / "home"),
        "RTASK_SERVER": stack.edge_address,
    }
    signed = subprocess.run(
        [RTASK, "signup", "--email", unique_email("fields-cli"), "--password-stdin"],
        input=f"{PASSWORD}\n",
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert signed.returncode == 0, signed.stderr
    refused = subprocess.run(
        [RTASK, "submit", "unknown", "--kind", "no-such-kind"], capture_output=True, text=True, env=env, timeout=120
    )
    assert refused.returncode == 2, refused.stderr
    assert "invalid kind (--kind): " in refused.stderr, refused.stderr


# -- every declared limit, one past each bound -------------------------------------------------------------------
# Where each message that declares limits travels: the call that carries it, a request valid but for the probed
# field, the message inside it that holds the field, and that message's path in the refusals' field names.
@dataclass(frozen=True)
class Route:
    service: str
    method: str
    request: Callable[[], Message]
    inner: tuple[str, ...] = ()

    def build(self) -> tuple[Message, Message, str]:
        request = self.request()
        target = request
        for name in self.inner:
            target = getattr(target, name)
            target.SetInParent()
        return request, target, "".join(f"{name}." for name in self.inner)


def _spec() -> schedule_pb2.ScheduleSpec:
    spec = schedule_pb2.ScheduleSpec(name="limits", task=schedule_pb2.TaskTemplate(name="limits"))
    spec.interval.FromSeconds(60)
    return spec


def _bulk(method: str, request: type[Message]) -> Route:
    return Route("SchedulerService", method, lambda: request(selection=scheduler_pb2.TaskSelection(filter={})))


_V1 = "resilienttask.v1."
ROUTES = {
    "SubmitTaskRequest": Route(
        "SchedulerService",
        "SubmitTask",
        lambda: scheduler_pb2.SubmitTaskRequest(name="limits", concurrency_key="k", concurrency_limit=1),
    ),
    "ListTasksRequest": Route("SchedulerService", "ListTasks", scheduler_pb2.ListTasksRequest),
    "TaskFilter": Route("SchedulerService", "ListTasks", scheduler_pb2.ListTasksRequest, ("filter",)),
    "TaskIds": Route("SchedulerService", "CancelTasks", scheduler_pb2.CancelTasksRequest, ("selection", "ids")),
    "CancelTasksRequest": _bulk("CancelTasks", scheduler_pb2.CancelTasksRequest),
    "RetryTasksRequest": _bulk("RetryTasks", scheduler_pb2.RetryTasksRequest),
    "DeleteTasksRequest": _bulk("DeleteTasks", scheduler_pb2.DeleteTasksRequest),
    "RetryTaskRequest": Route(
        "SchedulerService", "RetryTask", lambda: scheduler_pb2.RetryTaskRequest(task_id=str(uuid.uuid4()))
    ),
    "ScheduleSpec": Route(
        "ScheduleService", "CreateSchedule", lambda: schedule_pb2.CreateScheduleRequest(spec=_spec()), ("spec",)
    ),
    "CronTiming": Route(
        "ScheduleService", "CreateSchedule", lambda: schedule_pb2.CreateScheduleRequest(spec=_spec()), ("spec", "cron")
    ),
    "CreateScheduleRequest": Route(
        "ScheduleService", "CreateSchedule", lambda: schedule_pb2.CreateScheduleRequest(spec=_spec())
    ),
    "ListSchedulesRequest": Route("ScheduleService", "ListSchedules", schedule_pb2.ListSchedulesRequest),
    "SignupRequest": Route(
        "AuthService", "Signup", lambda: auth_pb2.SignupRequest(email=unique_email("limits"), password=PASSWORD)
    ),
    "LoginRequest": Route(
        "AuthService", "Login", lambda: auth_pb2.LoginRequest(email=unique_email("limits"), password=PASSWORD)
    ),
    "PauseKindRequest": Route("OperatorService", "PauseKind", operator_pb2.PauseKindRequest),
    "ResumeKindRequest": Route("OperatorService", "ResumeKind", operator_pb2.ResumeKindRequest),
    "SetKindRateLimitRequest": Route(
        "OperatorService",
        "SetKindRateLimit",
        lambda: operator_pb2.SetKindRateLimitRequest(
            rate_limit=operator_pb2.RateLimit(starts=1, period={"seconds": 1})
        ),
    ),
    "RateLimit": Route(
        "OperatorService",
        "SetKindRateLimit",
        lambda: operator_pb2.SetKindRateLimitRequest(kind="k", rate_limit=operator_pb2.RateLimit(starts=1)),
        ("rate_limit",),
    ),
    "ClearKindRateLimitRequest": Route("OperatorService", "ClearKindRateLimit", operator_pb2.ClearKindRateLimitRequest),
    "DrainWorkerRequest": Route(
        "OperatorService", "DrainWorker", lambda: operator_pb2.DrainWorkerRequest(worker_id="w")
    ),
}
STUBS = {
    "AuthService": auth_pb2_grpc.AuthServiceStub,
    "SchedulerService": scheduler_pb2_grpc.SchedulerServiceStub,
    "ScheduleService": schedule_pb2_grpc.ScheduleServiceStub,
    "OperatorService": operator_pb2_grpc.OperatorServiceStub,
}
# The margin past a bound relative to the server's clock (its clock and ours differ by the call's time).
CLOCK_MARGIN_S = 5


def _struct_over(max_bytes: int) -> struct_pb2.Struct:
    """The smallest Struct of one string that encodes to more than max_bytes."""
    value = struct_pb2.Struct(fields={"p": struct_pb2.Value(string_value="x" * (max_bytes - 16))})
    while value.ByteSize() <= max_bytes:
        value.fields["p"].string_value += "x"
    return value


def _past_values(field: FieldDescriptor, lim: FieldLimits) -> list[tuple[str, Any]]:
    """(which bound, a value one past it) for each bound the field declares."""
    found: list[tuple[str, Any]] = []

    def below(low: int | None) -> int | None:
        """One below a minimum; None when that is the zero that means the default (-1 then for numbers)."""
        if low is None or low <= 0:
            return None
        return low - 1

    if lim.min_chars is not None and (n := below(lim.min_chars)) is not None:
        found.append(("min_chars", "x" * n))
    if lim.max_chars is not None:
        found.append(("max_chars", "x" * (lim.max_chars + 1)))
    if lim.min_bytes is not None and (n := below(lim.min_bytes)) is not None:
        found.append(("min_bytes", "x" * n))
    if lim.max_bytes is not None:
        is_text = field.type == FieldDescriptor.TYPE_STRING
        found.append(("max_bytes", "x" * (lim.max_bytes + 1) if is_text else _struct_over(lim.max_bytes)))
    if lim.min_value is not None:
        low = lim.min_value - 1
        found.append(("min_value", -1 if low == 0 and lim.zero_means_default else low))
    if lim.max_value is not None:
        found.append(("max_value", lim.max_value + 1))
    if lim.min_duration_ms is not None and (n := below(lim.min_duration_ms)) is not None:
        found.append(("min_duration_ms", duration_pb2.Duration(seconds=n // 1000, nanos=n % 1000 * 1_000_000)))
    if lim.max_duration_ms is not None:
        n = lim.max_duration_ms + 1
        found.append(("max_duration_ms", duration_pb2.Duration(seconds=n // 1000, nanos=n % 1000 * 1_000_000)))
    if lim.min_items is not None and (n := below(lim.min_items)) is not None:
        found.append(("min_items", [str(uuid.uuid4()) for _ in range(n)]))
    if lim.max_items is not None:
        found.append(("max_items", [str(uuid.uuid4()) for _ in range(lim.max_items + 1)]))
    now = datetime.now(UTC)
    if lim.max_past_ms is not None:
        at = now - timedelta(milliseconds=lim.max_past_ms, seconds=CLOCK_MARGIN_S)
        found.append(("max_past_ms", at))
    if lim.max_ahead_ms is not None:
        at = now + timedelta(milliseconds=lim.max_ahead_ms, seconds=CLOCK_MARGIN_S)
        found.append(("max_ahead_ms", at))
    return found


def _set(message: Message, field: FieldDescriptor, value: Any) -> None:
    if isinstance(value, datetime):
        getattr(message, field.name).FromDatetime(value)
    elif isinstance(value, Message):
        getattr(message, field.name).CopyFrom(value)
    elif isinstance(value, list):
        getattr(message, field.name).extend(value)
    else:
        setattr(message, field.name, value)


async def test_every_declared_limit_is_enforced_one_past_each_bound(edge: grpc.aio.Channel, stores: Stores) -> None:
    """The gateway refuses a value one past each bound the contract declares (INVALID_ARGUMENT naming the field,
    with its field violation), for every annotated field: the declaration is the bound the service keeps."""
    account = await signup(edge, "limits")
    assert await operators.change(DatabaseConfig(stores.database_url), account.email, True)
    declared = list(annotated())
    unrouted = {message.full_name for message, _, _ in declared} - {_V1 + name for name in ROUTES}
    assert not unrouted, f"add a route for {sorted(unrouted)}"
    probes = 0
    for message, field, lim in declared:
        route = ROUTES[message.full_name.removeprefix(_V1)]
        values = _past_values(field, lim)
        assert values, f"{message.name}.{field.name} declares no bound"
        for bound, value in values:
            request, target, prefix = route.build()
            _set(target, field, value)
            call = getattr(STUBS[route.service](edge), route.method)
            metadata = () if route.service == "AuthService" else account.metadata
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call(request, metadata=metadata, timeout=30)
            where = f"{message.name}.{field.name} one past {bound}"
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (where, refused.value.details())
            assert [f for f, _ in _violations(refused.value)] == [prefix + field.name], where
            probes += 1
    assert probes >= len(declared)
    # Nothing of a refused call was written.
    tasks = scheduler_pb2_grpc.SchedulerServiceStub(edge)
    listed = await tasks.ListTasks(scheduler_pb2.ListTasksRequest(), metadata=account.metadata)
    schedules = await schedule_pb2_grpc.ScheduleServiceStub(edge).ListSchedules(
        schedule_pb2.ListSchedulesRequest(), metadata=account.metadata
    )
    assert not listed.tasks and not schedules.schedules
