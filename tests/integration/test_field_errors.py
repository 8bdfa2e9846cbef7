"""A refusal names its field in the status details (google.rpc.BadRequest), through Envoy: the SDK raises it as
the exception's `field` and `reason`, and the CLI names the field and the option that sets it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

import resilienttask
from resilienttask.v1 import auth_pb2, auth_pb2_grpc, scheduler_pb2, scheduler_pb2_grpc
from services.stack.stack import Stack
from tests.conftest import unique_email
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
