"""Worker credentials, worker input bounds and handler confinement: the pieces, without a server."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import grpc
import pytest

from resilienttask.worker.v1 import worker_pb2
from services.core.config import AuthConfig, ConfigError
from services.core.errors import Unauthenticated
from services.core.settings import load
from services.core.token_bucket import TokenBucket
from services.core.tokens import WORKER_AUDIENCE, mint_worker_token, verify_token
from services.core.worker_credentials import EnrolmentConfig, WorkerKeyConfig, worker_id_problem
from services.scheduler.worker_limits import WorkerInputRefused, WorkerLimits
from services.worker.isolation import IsolationConfig

USER_KEY = AuthConfig(jwt_secret=b"u" * 40)
WORKER_KEYS = WorkerKeyConfig(jwt_secret=b"w" * 40, enrolment=EnrolmentConfig(b"e" * 40))


def test_a_worker_token_is_signed_with_the_worker_key_and_nothing_else_verifies_it() -> None:
    token = mint_worker_token(WORKER_KEYS, "worker-1").token
    assert verify_token(WORKER_KEYS, token, WORKER_AUDIENCE) == "worker-1"
    with pytest.raises(Unauthenticated):
        verify_token(USER_KEY, token, WORKER_AUDIENCE)  # what a gateway (or Envoy) holds cannot accept it
    forged = mint_worker_token(USER_KEY, "worker-1").token  # what a holder of the user key could sign
    with pytest.raises(Unauthenticated):
        verify_token(WORKER_KEYS, forged, WORKER_AUDIENCE)


def test_worker_keys_come_from_files_and_must_be_long(tmp_path: Path) -> None:
    (tmp_path / "key").write_text("k" * 40 + "\n")
    (tmp_path / "enrol").write_text("e" * 40)
    env = {
        "RTASK_WORKER_KEY_FILE": str(tmp_path / "key"),
        "RTASK_WORKER_ENROLMENT_SECRET_FILE": str(tmp_path / "enrol"),
    }
    keys = load(WorkerKeyConfig, env)
    assert keys.jwt_secret == b"k" * 40 and keys.enrolment.matches("e" * 40) and not keys.enrolment.matches("e")
    assert load(EnrolmentConfig, env).secret == b"e" * 40
    with pytest.raises(ConfigError, match="RTASK_WORKER_KEY"):
        load(WorkerKeyConfig, {"RTASK_WORKER_ENROLMENT_SECRET_FILE": str(tmp_path / "enrol")})
    with pytest.raises(ConfigError, match="at least 32 bytes"):
        load(EnrolmentConfig, {"RTASK_WORKER_ENROLMENT_SECRET": "short"})


@pytest.mark.parametrize("worker_id", ["", "a" * 129, "with space", "new\nline", "ünïcode", "semi;colon"])
def test_bad_worker_ids_are_named(worker_id: str) -> None:
    assert worker_id_problem(worker_id) is not None


def test_good_worker_ids_pass() -> None:
    for worker_id in ("worker-1-a3f9c2", "host.example:1234_x", "a" * 128):
        assert worker_id_problem(worker_id) is None


def _refusal(call: object) -> WorkerInputRefused:
    with pytest.raises(WorkerInputRefused) as refused:
        call()  # type: ignore[operator]
    return refused.value


def test_worker_input_beyond_the_bounds_is_refused_with_the_field_named() -> None:
    limits = WorkerLimits(max_kinds=2, max_kind_chars=5, max_slots=8, min_held_tasks=4, held_per_slot=2)
    ok = worker_pb2.WorkerHello(worker_id="w-1", slots=2, kinds=["sleep"])
    limits.check_hello(ok)
    cases = {
        "hello.worker_id": worker_pb2.WorkerHello(worker_id="bad id", slots=2),
        "hello.slots": worker_pb2.WorkerHello(worker_id="w", slots=9),
        "hello.kinds": worker_pb2.WorkerHello(worker_id="w", slots=1, kinds=["a", "b", "c"]),
    }
    for field, hello in cases.items():
        refused = _refusal(lambda hello=hello: limits.check_hello(hello))
        assert refused.code == grpc.StatusCode.INVALID_ARGUMENT and str(refused).startswith(field), str(refused)
    assert "hello.kinds" in str(
        _refusal(lambda: limits.check_hello(worker_pb2.WorkerHello(worker_id="w", slots=1, kinds=["toolong"])))
    )
    held = [worker_pb2.HeldTask(task_id="t", fence=i) for i in range(5)]
    assert "heartbeat.tasks" in str(_refusal(lambda: limits.check_heartbeat(worker_pb2.WorkerHeartbeat(tasks=held), 2)))
    limits.check_heartbeat(worker_pb2.WorkerHeartbeat(tasks=held[:4]), 2)
    for value in (float("nan"), float("inf"), -0.1, 1.5):
        report = worker_pb2.ProgressReport(task=worker_pb2.HeldTask(task_id="t"), progress=value)
        assert "progress.progress" in str(_refusal(lambda report=report: limits.check_progress(report)))
    long_id = worker_pb2.ProgressReport(task=worker_pb2.HeldTask(task_id="x" * 37), progress=0.5)
    assert "progress.task.task_id" in str(_refusal(lambda: limits.check_progress(long_id)))


def test_the_progress_rate_allows_its_burst_then_refuses() -> None:
    bucket = TokenBucket(rate_per_s=0.001, burst=3)
    assert [bucket.take(1) == 1 for _ in range(4)] == [True, True, True, False]


def test_a_handler_child_gets_no_secret_from_the_environment() -> None:
    environ = {
        "PATH": "/usr/bin",
        "LC_ALL": "C.UTF-8",
        "REDIS_URL": "redis://:pw@h/0",
        "DATABASE_URL": "postgresql://u:pw@h/db",
        "RTASK_WORKER_ENROLMENT_SECRET_FILE": "/run/secrets/e",
        "RTASK_JWT_SECRET": "s" * 40,
        "AWS_SECRET_ACCESS_KEY": "x",
        "CHOSEN": "yes",
    }
    assert IsolationConfig().environment(environ) == {"PATH": "/usr/bin", "LC_ALL": "C.UTF-8"}
    assert IsolationConfig(pass_env=("CHOSEN",)).environment(environ)["CHOSEN"] == "yes"


@pytest.mark.skipif(os.geteuid() != 0, reason="only root switches the children's user")
def test_under_root_children_run_as_an_unprivileged_user() -> None:
    nobody = pwd.getpwnam("nobody")
    assert IsolationConfig().identity() == (nobody.pw_uid, nobody.pw_gid)
    assert IsolationConfig(run_as="12345").identity() == (12345, 12345)
    with pytest.raises(ConfigError):
        IsolationConfig(run_as="root").identity()
    with pytest.raises(ConfigError):
        IsolationConfig(run_as="no-such-user-here").identity()
