"""Through Envoy: grpcurl, grpc-web, failover between gateways, tokens refused at the edge, CORS, rate limit, files.

Tests that need a different edge (a tiny rate limit, a dashboard folder, isolated counters) start a second
Envoy rendered from the same definition, in front of the same gateways, so the shared one stays as it is.
"""

from __future__ import annotations

import base64
import dataclasses
import http.client
import json
import re
import ssl
import struct
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from resilienttask.v1 import auth_pb2, auth_pb2_grpc, scheduler_pb2, scheduler_pb2_grpc
from services.core.config import AuthConfig
from services.core.tokens import mint_user_token, mint_worker_token
from services.edge.config import MIN_REQUEST_LIMIT_BYTES, AuthLimits, EdgeConfig, RateLimit
from services.edge.launch import envoy_argv, write_edge_files
from services.stack.embedded import wait_for_port
from services.stack.ports import free_port
from services.stack.processes import ManagedProcess
from services.stack.stack import Stack, wait_serving
from tests.conftest import unique_email
from tests.helpers import wait_until

GRPCURL = str(Path(sys.executable).parent / "grpcurl")
PASSWORD = "correct horse battery"
GET_STATS = "/resilienttask.v1.SchedulerService/GetStats"


# -- a second edge ---------------------------------------------------------------------------------


@dataclass
class Edge:
    config: EdgeConfig
    process: ManagedProcess

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.config.listen_port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.config.admin_port}"


@contextmanager
def private_edge(stack: Stack, folder: Path, **overrides: Any) -> Iterator[Edge]:
    """An Envoy of our own in front of the stack's gateways, on free ports (no TLS listener unless given)."""
    folder.mkdir(parents=True, exist_ok=True)
    settings: dict[str, Any] = {
        "listen_port": free_port(),
        "admin_port": free_port(),
        "listen_address": "127.0.0.1",
        "jwks_path": str(folder / "jwks.json"),
        "tls": None,
        **overrides,
    }
    config = dataclasses.replace(stack.edge_config(), **settings)
    path = write_edge_files(folder, config, stack.jwt_secret)
    process = ManagedProcess(f"envoy-{folder.name}", envoy_argv(path), log_dir=folder / "logs")
    process.start()
    try:
        wait_for_port(process, config.listen_port)
        wait_serving(f"127.0.0.1:{config.listen_port}", timeout_s=30)
        yield Edge(config, process)
    finally:
        process.stop(grace_s=5)


# -- Envoy's admin ---------------------------------------------------------------------------------


def admin_get(admin_url: str, path: str) -> str:
    with urllib.request.urlopen(admin_url + path, timeout=5) as reply:
        return str(reply.read().decode())


def counters(admin_url: str) -> dict[str, int]:
    stats = json.loads(admin_get(admin_url, "/stats?format=json"))["stats"]
    return {s["name"]: int(s["value"]) for s in stats if "value" in s and isinstance(s["value"], int)}


def host_stat(admin_url: str, cluster: str, port: int, stat: str) -> str:
    """One line of /clusters, e.g. health_flags (`healthy`, `/failed_active_hc`, ...) or rq_total."""
    for line in admin_get(admin_url, "/clusters").splitlines():
        if line.startswith(f"{cluster}::127.0.0.1:{port}::{stat}::"):
            return line.rsplit("::", 1)[1]
    raise AssertionError(f"{cluster} has no host on port {port}")


# -- tokens ----------------------------------------------------------------------------------------


def auth_config(stack: Stack) -> AuthConfig:
    return AuthConfig(jwt_secret=stack.jwt_secret)


def user_metadata(stack: Stack) -> tuple[tuple[str, str], ...]:
    token = mint_user_token(auth_config(stack), str(uuid.uuid4())).token
    return (("authorization", f"Bearer {token}"),)


def _hs(secret: bytes, algorithm: str = "HS256", **overrides: Any) -> str:
    now = int(time.time())
    claims = {"sub": str(uuid.uuid4()), "iat": now, "exp": now + 600, "iss": "resilienttask"}
    claims |= {"aud": "resilienttask-api", "jti": uuid.uuid4().hex, **overrides}
    return jwt.encode(claims, secret, algorithm=algorithm)


def _alg_none() -> str:
    header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
    body = base64.urlsafe_b64encode(json.dumps({"sub": "x", "aud": "resilienttask-api"}).encode()).rstrip(b"=")
    return f"{header}.{body.decode()}."


# -- grpc-web framing, by hand ---------------------------------------------------------------------


def grpc_web_frame(message: bytes, flags: int = 0) -> bytes:
    return struct.pack(">BI", flags, len(message)) + message


def read_frame(reply: http.client.HTTPResponse) -> tuple[int, bytes]:
    flags, length = struct.unpack(">BI", reply.read(5))
    return flags, reply.read(length)


def decode_text(body: bytes) -> bytes:
    """grpc-web-text: each frame is base64-encoded on its own (padding included), so decode quantum by quantum."""
    return b"".join(base64.b64decode(body[i : i + 4]) for i in range(0, len(body), 4))


def parse_frames(body: bytes) -> tuple[list[bytes], dict[str, str]]:
    """Data frames and the trailers frame (flag 0x80) of a whole grpc-web response body."""
    messages, trailers, offset = [], {}, 0
    while offset < len(body):
        flags, length = struct.unpack(">BI", body[offset : offset + 5])
        payload = body[offset + 5 : offset + 5 + length]
        offset += 5 + length
        if flags & 0x80:
            for line in payload.decode().split("\r\n"):
                if line:
                    name, _, value = line.partition(":")
                    trailers[name.strip().lower()] = value.strip()
        else:
            messages.append(payload)
    return messages, trailers


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


def _send(
    connection: http.client.HTTPConnection, path: str, message: bytes, text: bool, headers: dict[str, str]
) -> None:
    content_type = "application/grpc-web-text" if text else "application/grpc-web+proto"
    frame = grpc_web_frame(message)
    connection.request(
        "POST",
        path,
        body=base64.b64encode(frame) if text else frame,
        headers={"content-type": content_type, "accept": content_type, "x-grpc-web": "1", **headers},
    )


def grpc_web_post(
    address: str,
    path: str,
    message: bytes,
    *,
    text: bool,
    headers: dict[str, str],
    context: ssl.SSLContext | None = None,
) -> Reply:
    """One whole grpc-web call over HTTP/1.1 (TLS with a context), as a browser makes it."""
    connection = (
        http.client.HTTPConnection(address, timeout=10)
        if context is None
        else http.client.HTTPSConnection(address, timeout=10, context=context)
    )
    try:
        _send(connection, path, message, text, headers)
        reply = connection.getresponse()
        body = reply.read()
        return Reply(reply.status, {k.lower(): v for k, v in reply.getheaders()}, body)
    finally:
        connection.close()


# -- grpcurl ---------------------------------------------------------------------------------------


def grpcurl(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([GRPCURL, "-plaintext", *argv], capture_output=True, text=True, timeout=60)


def test_grpcurl_lists_describes_and_calls_the_services_through_envoy(stack: Stack, tmp_path: Path) -> None:
    """With reflection turned on at the edge (`--edge-reflection`); test_edge_boundary covers it off."""
    with private_edge(stack, tmp_path / "edge", public_reflection=True) as private:
        _grpcurl_session(private.address)


def _grpcurl_session(edge: str) -> None:
    listed = grpcurl(edge, "list")
    assert listed.returncode == 0, listed.stderr
    assert {
        "resilienttask.v1.AuthService",
        "resilienttask.v1.SchedulerService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= set(listed.stdout.split())

    described = grpcurl(edge, "describe", "resilienttask.v1.SchedulerService")
    assert described.returncode == 0, described.stderr
    assert "rpc WatchTasks ( .resilienttask.v1.WatchTasksRequest ) returns ( stream" in described.stdout
    message = grpcurl(edge, "describe", "resilienttask.v1.SubmitTaskRequest")
    assert message.returncode == 0 and "request_id" in message.stdout, message.stderr

    health = grpcurl(edge, "grpc.health.v1.Health/Check")
    assert health.returncode == 0 and json.loads(health.stdout) == {"status": "SERVING"}, health.stderr

    credentials = json.dumps({"email": unique_email("grpcurl"), "password": PASSWORD})
    signed_up = grpcurl("-d", credentials, edge, "resilienttask.v1.AuthService/Signup")
    assert signed_up.returncode == 0, signed_up.stderr
    logged_in = grpcurl("-d", credentials, edge, "resilienttask.v1.AuthService/Login")
    assert logged_in.returncode == 0, logged_in.stderr
    bearer = f"authorization: Bearer {json.loads(logged_in.stdout)['access_token']}"

    stats = grpcurl("-H", bearer, edge, "resilienttask.v1.SchedulerService/GetStats")
    assert stats.returncode == 0, stats.stderr
    assert "stats" in json.loads(stats.stdout)
    submit = json.dumps({"name": "from grpcurl", "kind": "sleep", "workload": "0.1s", "request_id": str(uuid.uuid4())})
    submitted = grpcurl("-H", bearer, "-d", submit, edge, "resilienttask.v1.SchedulerService/SubmitTask")
    assert submitted.returncode == 0, submitted.stderr
    (task,) = json.loads(submitted.stdout)["tasks"]
    assert task["name"] == "from grpcurl"

    refused = grpcurl(edge, "resilienttask.v1.SchedulerService/GetStats")
    assert refused.returncode != 0 and "Unauthenticated" in refused.stderr + refused.stdout


# -- grpc-web --------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [False, True], ids=["binary", "text"])
def test_grpc_web_reaches_scheduler_service(stack: Stack, text: bool) -> None:
    origin = f"http://localhost:{stack.edge_port}"  # the dashboard's own origin, allowed by default
    token = mint_user_token(auth_config(stack), str(uuid.uuid4())).token
    reply = grpc_web_post(
        stack.edge_address,
        GET_STATS,
        scheduler_pb2.GetStatsRequest().SerializeToString(),
        text=text,
        headers={"authorization": f"Bearer {token}", "origin": origin},
    )
    assert reply.status == 200 and "grpc-status" not in reply.headers, reply
    assert reply.headers["content-type"].startswith("application/grpc-web-text" if text else "application/grpc-web+")
    assert reply.headers["access-control-allow-origin"] == origin
    assert {"grpc-status", "grpc-message"} <= set(reply.headers["access-control-expose-headers"].split(","))
    messages, trailers = parse_frames(decode_text(reply.body) if text else reply.body)
    assert trailers["grpc-status"] == "0", trailers
    (message,) = messages
    stats = scheduler_pb2.GetStatsResponse.FromString(message).stats
    assert stats.active == stats.succeeded == 0


def test_grpc_web_refusal_is_unauthenticated(stack: Stack) -> None:
    reply = grpc_web_post(
        stack.edge_address, GET_STATS, scheduler_pb2.GetStatsRequest().SerializeToString(), text=False, headers={}
    )
    assert reply.headers["grpc-status"] == str(grpc.StatusCode.UNAUTHENTICATED.value[0])


def test_a_server_stream_is_delivered_over_grpc_web(stack: Stack) -> None:
    """Health/Watch sends its first message and stays open: the frame must arrive before the stream ends."""
    request = health_pb2.HealthCheckRequest(service="resilienttask.v1.SchedulerService").SerializeToString()
    connection = http.client.HTTPConnection(stack.edge_address, timeout=10)
    try:
        _send(connection, "/grpc.health.v1.Health/Watch", request, False, {})
        reply = connection.getresponse()
        assert reply.status == 200 and reply.getheader("grpc-status") is None
        flags, message = read_frame(reply)
        assert flags == 0
        assert health_pb2.HealthCheckResponse.FromString(message).status == health_pb2.HealthCheckResponse.SERVING
    finally:
        connection.close()


class TextFrames:
    """Frames of a live grpc-web-text stream: base64 chunks, each padded, always whole 4-character quanta."""

    def __init__(self, reply: http.client.HTTPResponse) -> None:
        self.reply = reply
        self.decoded = b""

    def _take(self, count: int) -> bytes:
        while len(self.decoded) < count:
            quantum = self.reply.read(4)
            assert len(quantum) == 4, "the stream ended"
            self.decoded += base64.b64decode(quantum)
        taken, self.decoded = self.decoded[:count], self.decoded[count:]
        return taken

    def next(self) -> tuple[int, bytes]:
        flags, length = struct.unpack(">BI", self._take(5))
        return flags, self._take(length)


def test_watch_tasks_streams_live_over_grpc_web_text(stack: Stack) -> None:
    """A browser's view: the snapshot, then the event of a task submitted meanwhile, on one open stream."""
    with grpc.insecure_channel(stack.edge_address) as channel:
        email = unique_email("web-watch")
        account = auth_pb2_grpc.AuthServiceStub(channel).Signup(auth_pb2.SignupRequest(email=email, password=PASSWORD))
        bearer = f"Bearer {account.access_token}"
        connection = http.client.HTTPConnection(stack.edge_address, timeout=30)
        try:
            request = scheduler_pb2.WatchTasksRequest().SerializeToString()
            _send(connection, "/resilienttask.v1.SchedulerService/WatchTasks", request, True, {"authorization": bearer})
            reply = connection.getresponse()
            assert reply.status == 200 and reply.getheader("grpc-status") is None
            frames = TextFrames(reply)
            flags, first = frames.next()
            assert flags == 0 and scheduler_pb2.WatchTasksResponse.FromString(first).WhichOneof("kind") == "snapshot"

            submitted = scheduler_pb2_grpc.SchedulerServiceStub(channel).SubmitTask(
                scheduler_pb2.SubmitTaskRequest(name="watched from a browser", request_id=str(uuid.uuid4())),
                metadata=(("authorization", bearer),),
                timeout=10,
            )
            (task,) = submitted.tasks
            while True:  # heartbeats and worker-pool updates may come first
                flags, payload = frames.next()
                assert flags == 0, "the stream ended"
                update = scheduler_pb2.WatchTasksResponse.FromString(payload)
                if update.WhichOneof("kind") == "event" and update.event.task.id == task.id:
                    break
        finally:
            connection.close()


# -- failover --------------------------------------------------------------------------------------


def _unary_calls(address: str, metadata: tuple[tuple[str, str], ...], count: int) -> list[grpc.StatusCode]:
    """Alternate a public and an authenticated unary call; return the codes of those that failed."""
    failures = []
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        scheduler = scheduler_pb2_grpc.SchedulerServiceStub(channel)
        for i in range(count):
            try:
                if i % 2:
                    scheduler.GetStats(scheduler_pb2.GetStatsRequest(), metadata=metadata, timeout=10)
                else:
                    health.Check(health_pb2.HealthCheckRequest(), timeout=10)
            except grpc.RpcError as error:
                failures.append(error.code())
    return failures


def _wait_healthy(stack: Stack, port: int) -> None:
    wait_until(
        lambda: host_stat(stack.admin_url, "gateways", port, "health_flags") == "healthy",
        timeout_s=30,
        message=f"gateway on {port} healthy in Envoy",
    )


@pytest.mark.timeout(180)
def test_a_killed_gateway_is_routed_around_and_rejoins(stack: Stack) -> None:
    victim, survivor = stack.names("gateway")[:2]
    port = stack.ports[victim]
    metadata = user_metadata(stack)
    _wait_healthy(stack, port)
    _wait_healthy(stack, stack.ports[survivor])
    stack.processes[victim].kill()
    try:
        # Calls keep succeeding from the very moment of the kill, while Envoy finds out.
        assert _unary_calls(stack.edge_address, metadata, 200) == []
        wait_until(
            lambda: "failed_active_hc" in host_stat(stack.admin_url, "gateways", port, "health_flags"),
            timeout_s=10,
            message="Envoy marks the killed gateway as failing its health check",
        )
        assert _unary_calls(stack.edge_address, metadata, 100) == []
    finally:
        if not stack.processes[victim].alive():
            stack.restart(victim)
        _wait_healthy(stack, port)
    served_before = int(host_stat(stack.admin_url, "gateways", port, "rq_total"))
    wait_until(
        lambda: (
            _unary_calls(stack.edge_address, metadata, 20) == []
            and int(host_stat(stack.admin_url, "gateways", port, "rq_total")) > served_before
        ),
        timeout_s=30,
        message="the restarted gateway serves calls again",
    )


# -- tokens refused at the edge --------------------------------------------------------------------


def _bad_user_tokens(secret: bytes) -> dict[str, str | None]:
    now = int(time.time())
    return {
        "missing": None,
        "not-a-jwt": "Bearer not-a-token",
        "basic-scheme": "Basic dXNlcjpwYXNz",
        "wrong-key": f"Bearer {_hs(b'w' * 48)}",
        # Envoy's default clock skew (60 s) would have let this one through.
        "expired-30s-ago": f"Bearer {_hs(secret, iat=now - 600, exp=now - 30)}",
        "alg-none": f"Bearer {_alg_none()}",
        "hs512": f"Bearer {_hs(secret, 'HS512')}",
        "wrong-issuer": f"Bearer {_hs(secret, iss='someone-else')}",
        "worker-audience": f"Bearer {mint_worker_token(AuthConfig(jwt_secret=secret), 'worker-x').token}",
    }


def test_refused_tokens_never_reach_a_service(stack: Stack, tmp_path: Path) -> None:
    with private_edge(stack, tmp_path / "edge") as edge, grpc.insecure_channel(edge.address) as channel:
        scheduler = scheduler_pb2_grpc.SchedulerServiceStub(channel)
        before = counters(edge.admin_url)
        bad = _bad_user_tokens(stack.jwt_secret)
        codes = {}
        for name, header in bad.items():
            metadata = () if header is None else (("authorization", header),)
            with pytest.raises(grpc.RpcError) as refused:
                scheduler.GetStats(scheduler_pb2.GetStatsRequest(), metadata=metadata, timeout=10)
            codes[name] = refused.value.code()
        # Nor is a worker's token (signed with the worker key, which Envoy does not hold) a key to user calls.
        worker_token = mint_worker_token(stack.worker_keys(), "worker-edge-test").token
        with pytest.raises(grpc.RpcError) as refused:
            scheduler.GetStats(
                scheduler_pb2.GetStatsRequest(), metadata=(("authorization", f"Bearer {worker_token}"),), timeout=10
            )
        codes["worker-token"] = refused.value.code()
        after = counters(edge.admin_url)

        assert set(codes.values()) == {grpc.StatusCode.UNAUTHENTICATED}, codes
        assert after["http.edge.jwt_authn.denied"] - before["http.edge.jwt_authn.denied"] == len(codes)
        key = "cluster.gateways.upstream_rq_total"
        assert after[key] == before[key], "a refused call reached a gateway"

        # The counter does move when a token is good.
        scheduler.GetStats(scheduler_pb2.GetStatsRequest(), metadata=user_metadata(stack), timeout=10)
        assert counters(edge.admin_url)[key] == after[key] + 1


# -- CORS ------------------------------------------------------------------------------------------


def _preflight(address: str, origin: str) -> Reply:
    connection = http.client.HTTPConnection(address, timeout=10)
    try:
        connection.request(
            "OPTIONS",
            GET_STATS,
            headers={
                "origin": origin,
                "access-control-request-method": "POST",
                "access-control-request-headers": "authorization,content-type,x-grpc-web,x-user-agent",
            },
        )
        reply = connection.getresponse()
        body = reply.read()
        return Reply(reply.status, {k.lower(): v for k, v in reply.getheaders()}, body)
    finally:
        connection.close()


def test_cors_preflight_passes_for_allowed_origins_only(stack: Stack, tmp_path: Path) -> None:
    own_origin = f"http://localhost:{stack.edge_port}"
    assert _preflight(stack.edge_address, own_origin).headers["access-control-allow-origin"] == own_origin
    assert "access-control-allow-origin" not in _preflight(stack.edge_address, "https://evil.example").headers

    allowed = "https://dashboard.example"
    with private_edge(stack, tmp_path / "edge", allowed_origins=(allowed,)) as edge:
        before = counters(edge.admin_url)
        passed = _preflight(edge.address, allowed)
        assert passed.status == 200
        assert passed.headers["access-control-allow-origin"] == allowed
        assert {"authorization", "traceparent"} <= set(passed.headers["access-control-allow-headers"].split(","))
        assert "POST" in passed.headers["access-control-allow-methods"]
        for foreign in (own_origin, "https://dashboard.example.evil", "null"):
            refused = _preflight(edge.address, foreign)
            assert "access-control-allow-origin" not in refused.headers, foreign
        after = counters(edge.admin_url)
        assert after["cluster.gateways.upstream_rq_total"] == before["cluster.gateways.upstream_rq_total"]


# -- rate limit, body size -------------------------------------------------------------------------


def test_the_login_rate_limit_trips_with_resource_exhausted(stack: Stack, tmp_path: Path) -> None:
    limits = AuthLimits(
        login_per_address=RateLimit(max_tokens=2, tokens_per_fill=1, fill_interval_s=3600),
        signup_per_address=RateLimit(max_tokens=1, tokens_per_fill=1, fill_interval_s=3600),
    )
    with (
        private_edge(stack, tmp_path / "edge", auth_limits=limits) as edge,
        grpc.insecure_channel(edge.address) as ch,
    ):
        auth = auth_pb2_grpc.AuthServiceStub(ch)
        login = auth_pb2.LoginRequest(email=unique_email("limited"), password=PASSWORD)
        for _ in range(2):  # within the bucket: the gateway answers (no such user)
            with pytest.raises(grpc.RpcError) as answered:
                auth.Login(login, timeout=10)
            assert answered.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as limited:
            auth.Login(login, timeout=10)
        assert limited.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # Signup has a bucket of its own (one call here), then is refused the same way.
        auth.Signup(auth_pb2.SignupRequest(email=unique_email("limited"), password=PASSWORD), timeout=10)
        with pytest.raises(grpc.RpcError) as limited:
            auth.Signup(auth_pb2.SignupRequest(email=unique_email("limited"), password=PASSWORD), timeout=10)
        assert limited.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # Browsers see the same code.
        reply = grpc_web_post(
            edge.address, "/resilienttask.v1.AuthService/Login", login.SerializeToString(), text=False, headers={}
        )
        assert (reply.status, reply.headers["grpc-status"]) == (200, str(grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]))
        # Only AuthService is limited.
        scheduler_pb2_grpc.SchedulerServiceStub(ch).GetStats(
            scheduler_pb2.GetStatsRequest(), metadata=user_metadata(stack), timeout=10
        )
        assert counters(edge.admin_url)["auth_rate_limit.http_local_rate_limit.rate_limited"] == 3


def test_oversized_requests_are_refused_at_the_edge(stack: Stack, tmp_path: Path) -> None:
    with (
        private_edge(stack, tmp_path / "edge", max_request_bytes=MIN_REQUEST_LIMIT_BYTES) as edge,
        grpc.insecure_channel(edge.address) as channel,
    ):
        auth = auth_pb2_grpc.AuthServiceStub(channel)
        before = counters(edge.admin_url)["cluster.gateways.upstream_rq_total"]
        with pytest.raises(grpc.RpcError) as refused:
            auth.Login(
                auth_pb2.LoginRequest(email=unique_email(), password="x" * 4 * MIN_REQUEST_LIMIT_BYTES), timeout=10
            )
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        big = auth_pb2.LoginRequest(email=unique_email(), password="x" * 4 * MIN_REQUEST_LIMIT_BYTES)
        for text in (False, True):
            reply = grpc_web_post(
                edge.address, "/resilienttask.v1.AuthService/Login", big.SerializeToString(), text=text, headers={}
            )
            assert (reply.status, reply.headers["grpc-status"]) == (
                200,
                str(grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]),
            )
        assert counters(edge.admin_url)["cluster.gateways.upstream_rq_total"] == before
        with pytest.raises(grpc.RpcError) as answered:  # a small body passes on to the gateway
            auth.Login(auth_pb2.LoginRequest(email=unique_email(), password=PASSWORD), timeout=10)
        assert answered.value.code() == grpc.StatusCode.UNAUTHENTICATED


# -- the dashboard's files -------------------------------------------------------------------------


def _get(address: str, path: str) -> tuple[int, str | None, bytes]:
    """GET the path exactly as written (no client-side normalisation of `..`)."""
    connection = http.client.HTTPConnection(address, timeout=10)
    try:
        connection.putrequest("GET", path, skip_accept_encoding=True)
        connection.endheaders()
        reply = connection.getresponse()
        return reply.status, reply.getheader("content-type"), reply.read()
    finally:
        connection.close()


def test_the_dashboard_is_served_at_the_root(stack: Stack, tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    (dist / "assets").mkdir(parents=True)
    (dist / "index.html").write_text("<!doctype html><title>ResilientTask</title>")
    (dist / "assets" / "app.js").write_text("console.log('dashboard')")
    (dist / "assets" / "app.css").write_text("body { margin: 0 }")
    (tmp_path / "outside.txt").write_text("not for the web")
    with private_edge(stack, tmp_path / "edge", dashboard_dir=str(dist)) as edge:
        status, content_type, body = _get(edge.address, "/")
        assert (status, content_type, body) == (
            200,
            "text/html; charset=utf-8",
            b"<!doctype html><title>ResilientTask</title>",
        )
        assert _get(edge.address, "/index.html")[:2] == (200, "text/html; charset=utf-8")
        assert _get(edge.address, "/assets/app.js")[:2] == (200, "text/javascript; charset=utf-8")
        assert _get(edge.address, "/assets/app.css")[:2] == (200, "text/css; charset=utf-8")
        assert _get(edge.address, "/missing.js")[0] == 404
        for escape in ("/../outside.txt", "/assets/../../outside.txt", "/%2e%2e/outside.txt", "/..%2foutside.txt"):
            status, _, body = _get(edge.address, escape)
            assert status in (400, 404) and b"not for the web" not in body, escape
        # gRPC still routes by service, not to the files.
        with grpc.insecure_channel(edge.address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


# -- operator surface ------------------------------------------------------------------------------


def test_envoy_admin_serves_prometheus_stats_on_loopback_only(stack: Stack) -> None:
    dump = json.loads(admin_get(stack.admin_url, "/config_dump"))
    (bootstrap,) = [c["bootstrap"] for c in dump["configs"] if c["@type"].endswith("BootstrapConfigDump")]
    assert bootstrap["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
    metrics = admin_get(stack.admin_url, "/stats/prometheus")
    assert re.search(r'^envoy_cluster_upstream_rq_total\{envoy_cluster_name="gateways"\} \d+', metrics, re.M)
    assert re.search(r'^envoy_http_jwt_authn_denied\{envoy_http_conn_manager_prefix="edge"\} \d+', metrics, re.M)
