"""Raw garbage on the wire: random bytes, broken HTTP/2 prefaces and frames, and malformed grpc-web bodies,
sent over plain TCP to Envoy's listener (HTTP/2 and grpc-web) and to the services' own HTTP/2 ports.

Nothing crashes or hangs: every process stays alive and the stack still runs a task afterwards.
"""

from __future__ import annotations

import base64
import socket
import struct
from collections.abc import Iterator

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resilienttask.v1 import auth_pb2, auth_pb2_grpc, scheduler_pb2, scheduler_pb2_grpc, task_pb2
from services.stack.stack import Stack
from tests.conftest import unique_email
from tests.helpers import wait_until
from tests.integration.accounts import PASSWORD

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# A guard against a hang; never a measure of speed.
READ_TIMEOUT_S = 3.0


def _frame(kind: int, flags: int, stream: int, payload: bytes, length: int | None = None) -> bytes:
    size = len(payload) if length is None else length
    return struct.pack(">I", size)[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def exchange(port: int, data: bytes, *, half_close: bool = True) -> bytes:
    """Send data on a fresh connection, half-close it (unless told not to), and read whatever comes back until
    EOF or a pause. Envoy closes an HTTP/1.1 connection the client half-closed without answering, so a request
    whose answer is checked keeps its side open."""
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT_S) as sock:
        try:
            sock.sendall(data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
            while chunk := sock.recv(65536):
                received += chunk
        except (TimeoutError, ConnectionResetError, BrokenPipeError):
            pass
    return received


def _grpc_web(path: str, body: bytes, content_type: str = "application/grpc-web+proto", token: str = "") -> bytes:
    headers = [
        f"POST {path} HTTP/1.1",
        "Host: localhost",
        f"Content-Type: {content_type}",
        "X-Grpc-Web: 1",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    if token:
        headers.append(f"Authorization: Bearer {token}")
    return ("\r\n".join(headers) + "\r\n\r\n").encode() + body


LOGIN = "/resilienttask.v1.AuthService/Login"
STATS = "/resilienttask.v1.SchedulerService/GetStats"
VALID_LOGIN = auth_pb2.LoginRequest(email="nobody@example.com", password=PASSWORD).SerializeToString()

HTTP2_GARBAGE = {
    "half a preface": PREFACE[:10],
    "preface then noise": PREFACE + b"\xff" * 64,
    "settings frame of the wrong length": PREFACE + _frame(0x4, 0, 0, b"\x00\x01\x00"),
    "frame claiming 16 MiB": PREFACE + _frame(0x4, 0, 0, b"", length=0xFFFFFF),
    "headers on stream 0": PREFACE + _frame(0x4, 0, 0, b"") + _frame(0x1, 0x4, 0, b"\x82\x86"),
    "invalid hpack": PREFACE + _frame(0x4, 0, 0, b"") + _frame(0x1, 0x5, 1, b"\xff\xff\xff\xff\xff\xff"),
    "data on an idle stream": PREFACE + _frame(0x4, 0, 0, b"") + _frame(0x0, 0x1, 7, b"hello"),
    "window update of zero": PREFACE + _frame(0x4, 0, 0, b"") + _frame(0x8, 0, 0, b"\x00\x00\x00\x00"),
    "unknown frame types": PREFACE + b"".join(_frame(t, 0xFF, 3, b"x" * 9) for t in range(0x0A, 0x20)),
    "tls client hello": bytes.fromhex("16030100a5010000a10303") + b"\x00" * 160,
    "http/1.0 nonsense": b"GET / HTTP/1.0\r\nHost: \x00\x01\r\n\r\n",
}

GRPC_WEB_GARBAGE = {
    "length prefix claiming 1 GiB": _grpc_web(LOGIN, b"\x00" + struct.pack(">I", 1 << 30) + b"abc"),
    "truncated frame": _grpc_web(LOGIN, b"\x00\x00\x00"),
    "frame longer than its body": _grpc_web(LOGIN, b"\x00" + struct.pack(">I", 100) + VALID_LOGIN[:5]),
    "compressed flag without compression": _grpc_web(
        LOGIN, b"\x01" + struct.pack(">I", len(VALID_LOGIN)) + VALID_LOGIN
    ),
    "undecodable protobuf": _grpc_web(LOGIN, b"\x00" + struct.pack(">I", 6) + b"\xff\xff\xff\xff\xff\xff"),
    "two messages for a unary call": _grpc_web(
        LOGIN, (b"\x00" + struct.pack(">I", len(VALID_LOGIN)) + VALID_LOGIN) * 2
    ),
    "text mode with bad base64": _grpc_web(LOGIN, b"!!!not base64!!!", "application/grpc-web-text"),
    "text mode, valid base64 of garbage": _grpc_web(
        LOGIN, base64.b64encode(b"\x00\xff" * 40), "application/grpc-web-text"
    ),
    "unknown content type": _grpc_web(LOGIN, b"{}", "application/x-evil"),
    "no path": b"POST HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
    "content length lies": _grpc_web(LOGIN, b"").replace(b"Content-Length: 0", b"Content-Length: 99999999"),
    "chunked garbage": b"POST "
    + LOGIN.encode()
    + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/grpc-web+proto\r\n"
    b"Transfer-Encoding: chunked\r\n\r\nzz\r\n\x00\x00\r\n0\r\n\r\n",
    "header of 200 KiB": _grpc_web(LOGIN, b"").replace(b"X-Grpc-Web: 1", b"X-Big: " + b"a" * 200_000),
}

# Requests whose body never completes a frame (or never arrives): Envoy waits for the rest, so nothing is answered
# within READ_TIMEOUT_S (a probe saw no answer within 70 s either). Every other malformed request gets an HTTP
# answer.
UNANSWERED_WHILE_INCOMPLETE = {"truncated frame", "frame longer than its body", "content length lies"}


@pytest.fixture(scope="module")
def user_token(stack: Stack) -> Iterator[str]:
    with grpc.insecure_channel(stack.edge_address) as channel:
        reply = auth_pb2_grpc.AuthServiceStub(channel).Signup(
            auth_pb2.SignupRequest(email=unique_email("garbage"), password=PASSWORD)
        )
        yield reply.access_token


def _service_ports(stack: Stack) -> list[int]:
    return [stack.ports[name] for name in [*stack.names("gateway"), *stack.names("scheduler"), *stack.names("worker")]]


def _still_serving(stack: Stack, token: str) -> None:
    dead = [name for name, process in stack.processes.items() if not process.alive()]
    assert dead == [], f"processes died: {dead}"
    metadata = (("authorization", f"Bearer {token}"),)
    with grpc.insecure_channel(stack.edge_address) as channel:
        scheduler = scheduler_pb2_grpc.SchedulerServiceStub(channel)
        (task,) = scheduler.SubmitTask(
            scheduler_pb2.SubmitTaskRequest(name="after garbage", kind="sleep"), metadata=metadata, timeout=30
        ).tasks

        def succeeded() -> bool:
            reply = scheduler.GetTask(scheduler_pb2.GetTaskRequest(task_id=task.id), metadata=metadata, timeout=30)
            return reply.task.status == task_pb2.TASK_STATUS_SUCCEEDED

        wait_until(succeeded, timeout_s=60, interval_s=0.1, message="a task after the garbage succeeded")


@pytest.mark.parametrize("case", list(HTTP2_GARBAGE))
def test_broken_http2_leaves_envoy_and_the_services_serving(stack: Stack, user_token: str, case: str) -> None:
    for port in [stack.edge_port, *_service_ports(stack)]:
        exchange(port, HTTP2_GARBAGE[case])
    _still_serving(stack, user_token)


@pytest.mark.parametrize("case", list(GRPC_WEB_GARBAGE))
def test_malformed_grpc_web_is_answered_and_leaves_the_stack_serving(stack: Stack, user_token: str, case: str) -> None:
    data = GRPC_WEB_GARBAGE[case]
    answer = exchange(stack.edge_port, data, half_close=False)
    authorized = exchange(
        stack.edge_port,
        data.replace(LOGIN.encode(), STATS.encode()).replace(
            b"X-Grpc-Web: 1", b"X-Grpc-Web: 1\r\nAuthorization: Bearer " + user_token.encode()
        ),
        half_close=False,
    )
    if case in UNANSWERED_WHILE_INCOMPLETE:
        assert answer == authorized == b"", (answer[:200], authorized[:200])
    else:
        assert answer.startswith(b"HTTP/1.1 "), answer[:200]
        assert authorized.startswith(b"HTTP/1.1 "), authorized[:200]
    _still_serving(stack, user_token)


@settings(max_examples=30, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(st.binary(min_size=1, max_size=4096), st.binary(max_size=512).map(lambda b: PREFACE + b)))
def test_random_bytes_on_every_port_crash_nothing(stack: Stack, data: bytes) -> None:
    for port in [stack.edge_port, *_service_ports(stack)]:
        exchange(port, data)
    dead = [name for name, process in stack.processes.items() if not process.alive()]
    assert dead == [], f"processes died: {dead}"


def test_the_stack_still_serves_after_the_random_bytes(stack: Stack, user_token: str) -> None:
    _still_serving(stack, user_token)
