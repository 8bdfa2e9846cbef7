"""The edge as a trust boundary: where it listens, TLS end to end, and what it refuses to route.

Every client speaks TLS through the stack's TLS listener trusting only the development CA the stack made
(`<data-dir>/tls/ca.pem`): the SDK (sync and asyncio), the `rtask` CLI, grpcurl, and grpc-web over
HTTP/1.1 as a browser sends it. WorkerService and (by default) reflection are not reachable through the
public edge, and a public health watch ends at its lifetime.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import resilienttask
from resilienttask import AsyncClient, Client, RetryPolicy, TaskStatus
from resilienttask.v1 import scheduler_pb2
from resilienttask.worker.v1 import worker_pb2, worker_pb2_grpc
from services.core.tokens import mint_worker_token
from services.stack.stack import Stack
from tests.conftest import Stores, unique_email
from tests.helpers import wait_until
from tests.integration.test_edge import (
    GET_STATS,
    GRPCURL,
    PASSWORD,
    admin_get,
    counters,
    grpc_web_post,
    parse_frames,
    private_edge,
    user_metadata,
)

RTASK = str(Path(sys.executable).with_name("rtask"))
# Only a guard against a command that hangs: no test measures time with it.
COMMAND_TIMEOUT_S = 120
# How early a deadline's end may be seen against the client's clock: deadlines travel and are timed in milliseconds.
DEADLINE_RESOLUTION_S = 0.01


def _tls_channel(stack: Stack) -> grpc.Channel:
    roots = grpc.ssl_channel_credentials(root_certificates=stack.ca_file.read_bytes())
    return grpc.secure_channel(stack.edge_tls_address, roots)


def _upstream_requests(admin_url: str) -> int:
    return sum(
        v for k, v in counters(admin_url).items() if k.startswith("cluster.") and k.endswith(".upstream_rq_total")
    )


# -- where the edge listens ------------------------------------------------------------------------------------


def _launch_stack(stores: Stores, data_dir: Path, *flags: str) -> dict[str, Any]:
    """Run `rtask-stack up` as an operator would (outside pytest's environment); return its rendered Envoy config."""
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST" and not k.startswith("RTASK_")}
    env.update(DATABASE_URL=stores.database_url, REDIS_URL=stores.redis_url, RTASK_BCRYPT_COST="4")
    argv = [sys.executable, "-m", "services.stack.main", "up", "--data-dir", str(data_dir)]
    argv += ["--port", "0", "--tls-port", "0", "--admin-port", "0", "--gateways", "1", "--workers", "0", *flags]
    log = (data_dir.parent / f"{data_dir.name}.log").open("wb")
    launcher = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        wait_until(
            lambda: (data_dir / "stack.json").exists() or launcher.poll() is not None,
            timeout_s=120,
            message="the stack is up",
        )
        assert launcher.poll() is None, (data_dir.parent / f"{data_dir.name}.log").read_text()
        return json.loads((data_dir / "envoy.json").read_text())  # type: ignore[no-any-return]
    finally:
        launcher.send_signal(signal.SIGTERM)
        assert launcher.wait(COMMAND_TIMEOUT_S) == 0
        log.close()


def _bound(config: dict[str, Any]) -> dict[str, str]:
    return {
        listener["name"]: listener["address"]["socket_address"]["address"]
        for listener in config["static_resources"]["listeners"]
    }


@pytest.mark.timeout(300)
def test_the_stack_listens_on_loopback_unless_told_to_listen_wider(stores: Stores, tmp_path: Path) -> None:
    assert _bound(_launch_stack(stores, tmp_path / "default")) == {"edge": "127.0.0.1", "edge_tls": "127.0.0.1"}
    # --listen widens the TLS listener only: plaintext stays on loopback whatever the flag says.
    assert _bound(_launch_stack(stores, tmp_path / "wide", "--listen", "0.0.0.0")) == {
        "edge": "127.0.0.1",
        "edge_tls": "0.0.0.0",
    }


# -- TLS end to end ---------------------------------------------------------------------------------------------


def test_the_sdk_speaks_tls_trusting_the_generated_ca(stack: Stack) -> None:
    with Client(stack.edge_tls_address, ca_file=stack.ca_file) as sdk:
        assert sdk.health() == "SERVING"
        sdk.signup(unique_email("tls-sdk"), PASSWORD)
        (task,) = sdk.submit("over tls", workload=0.05)
        (done,) = sdk.wait([task.id], timeout=60)
        assert done.status is TaskStatus.SUCCEEDED
    # Without the CA the server's certificate is not trusted: the handshake fails.
    with (
        Client(stack.edge_tls_address, tls=True, retry=RetryPolicy(attempts=1), timeout=5) as untrusting,
        pytest.raises(resilienttask.Unavailable),
    ):
        untrusting.health()


async def test_the_async_sdk_speaks_tls_trusting_the_generated_ca(stack: Stack) -> None:
    async with AsyncClient(stack.edge_tls_address, ca_file=str(stack.ca_file)) as sdk:
        await sdk.signup(unique_email("tls-aio"), PASSWORD)
        watch = sdk.watch()
        try:
            snapshot = await watch.__anext__()
            assert snapshot.stats.active == 0
        finally:
            await watch.aclose()
    with pytest.raises(ValueError, match="either"):
        Client(stack.edge_tls_address, tls=grpc.ssl_channel_credentials(), ca_file=stack.ca_file)


def test_the_cli_speaks_tls_with_ca_file(stack: Stack, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RTASK_") and k != "XDG_CONFIG_HOME"}
    env.update(RTASK_CONFIG_DIR=str(tmp_path / "config"), HOME=str(tmp_path / "home"))

    def rtask(*args: str, stdin: str | None = None, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [RTASK, *args], env={**env, **extra}, input=stdin, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S
        )

    server = ["--server", stack.edge_tls_address]
    email = unique_email("tls-cli")
    signed_up = rtask(
        "signup", *server, "--ca-file", str(stack.ca_file), "--email", email, "--password-stdin", stdin=PASSWORD
    )
    assert signed_up.returncode == 0, signed_up.stderr
    # The same through the environment, as a shell profile would set it.
    by_env = {"RTASK_SERVER": stack.edge_tls_address, "RTASK_CA_FILE": str(stack.ca_file)}
    submitted = rtask("submit", "cli over tls", "--workload", "50ms", "--wait", "--json", **by_env)
    assert submitted.returncode == 0, submitted.stderr
    (task,) = json.loads(submitted.stdout)
    assert task["status"] == "succeeded"
    # Plaintext to the TLS port, or TLS without the CA, gets nowhere.
    assert rtask("health", *server).returncode != 0
    assert rtask("health", *server, "--tls").returncode != 0


def test_grpcurl_speaks_tls_with_the_ca_and_the_protoset(stack: Stack) -> None:
    base = [GRPCURL, "-cacert", str(stack.ca_file), "-protoset", str(stack.protoset)]

    def grpcurl(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*base, *argv], capture_output=True, text=True, timeout=60)

    edge = stack.edge_tls_address
    health = grpcurl(edge, "grpc.health.v1.Health/Check")
    assert health.returncode == 0 and json.loads(health.stdout) == {"status": "SERVING"}, health.stderr
    credentials = json.dumps({"email": unique_email("tls-grpcurl"), "password": PASSWORD})
    signed_up = grpcurl("-d", credentials, edge, "resilienttask.v1.AuthService/Signup")
    assert signed_up.returncode == 0, signed_up.stderr
    bearer = f"authorization: Bearer {json.loads(signed_up.stdout)['access_token']}"
    stats = grpcurl("-H", bearer, edge, "resilienttask.v1.SchedulerService/GetStats")
    assert stats.returncode == 0 and "stats" in json.loads(stats.stdout), stats.stderr
    # Without -cacert grpcurl trusts only the system's roots, which never signed this certificate.
    untrusting = subprocess.run(
        [GRPCURL, "-protoset", str(stack.protoset), edge, "grpc.health.v1.Health/Check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert untrusting.returncode != 0 and "certificate" in untrusting.stderr


def _negotiated(stack: Stack, offered: list[str]) -> str | None:
    context = ssl.create_default_context(cafile=str(stack.ca_file))
    context.set_alpn_protocols(offered)
    with (
        socket.create_connection(("127.0.0.1", stack.edge_tls_port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        return tls.selected_alpn_protocol()


def test_grpc_web_over_tls_with_http1_and_alpn(stack: Stack) -> None:
    """A browser's path: TLS, HTTP/1.1, grpc-web; ALPN offers h2 to those that can and http/1.1 to the rest."""
    assert _negotiated(stack, ["h2", "http/1.1"]) == "h2"
    assert _negotiated(stack, ["http/1.1"]) == "http/1.1"
    token = user_metadata(stack)[0][1]
    context = ssl.create_default_context(cafile=str(stack.ca_file))
    reply = grpc_web_post(
        stack.edge_tls_address,
        GET_STATS,
        scheduler_pb2.GetStatsRequest().SerializeToString(),
        text=False,
        headers={"authorization": token},
        context=context,
    )
    assert reply.status == 200, reply
    _, trailers = parse_frames(reply.body)
    assert trailers["grpc-status"] == "0", trailers


# -- what the public edge does not route -------------------------------------------------------------------------


def _connect(channel: grpc.Channel, metadata: tuple[tuple[str, str], ...]) -> grpc.StatusCode:
    stub = worker_pb2_grpc.WorkerServiceStub(channel)
    hello = worker_pb2.ConnectRequest(hello=worker_pb2.WorkerHello(worker_id="edge-probe", slots=1, kinds=["sleep"]))
    try:
        for _ in stub.Connect(iter([hello]), metadata=metadata, timeout=10):
            pass
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[attr-defined,no-any-return]
    return grpc.StatusCode.OK


@pytest.fixture(params=["plaintext", "tls"])
def public_channel(request: pytest.FixtureRequest, stack: Stack) -> Iterator[grpc.Channel]:
    channel = grpc.insecure_channel(stack.edge_address) if request.param == "plaintext" else _tls_channel(stack)
    with channel:
        yield channel


def test_worker_service_is_refused_at_the_public_edge(stack: Stack, public_channel: grpc.Channel) -> None:
    """Not even a valid worker token reaches a scheduler through either public listener."""
    worker_token = mint_worker_token(stack.worker_keys(), f"edge-probe-{uuid.uuid4().hex[:6]}").token
    before = _upstream_requests(stack.admin_url)
    codes = {
        "worker-token": _connect(public_channel, (("authorization", f"Bearer {worker_token}"),)),
        "user-token": _connect(public_channel, user_metadata(stack)),
        "no-token": _connect(public_channel, ()),
    }
    # No route: a request with a user token meets Envoy's 404 (UNIMPLEMENTED); any other is refused by the
    # closed-by-default token rule first.
    assert codes == {
        "worker-token": grpc.StatusCode.UNAUTHENTICATED,
        "user-token": grpc.StatusCode.UNIMPLEMENTED,
        "no-token": grpc.StatusCode.UNAUTHENTICATED,
    }
    assert _upstream_requests(stack.admin_url) == before, "a WorkerService call reached a service"
    clusters = [line.split("::")[0] for line in _admin_clusters(stack)]
    assert set(clusters) == {"gateways"}, "the edge has a way to the schedulers"
    # The workers' own path is unchanged: the scheduler's port, which no one publishes.
    with grpc.insecure_channel(stack.address(stack.names("scheduler")[0])) as direct:
        assert _connect(direct, (("authorization", f"Bearer {worker_token}"),)) != grpc.StatusCode.UNAUTHENTICATED


def _admin_clusters(stack: Stack) -> list[str]:
    return [line for line in admin_get(stack.admin_url, "/clusters").splitlines() if "::" in line]


def _grpcurl_list(address: str, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([GRPCURL, *flags, address, "list"], capture_output=True, text=True, timeout=60)


def test_reflection_is_refused_at_the_public_edge_unless_enabled(stack: Stack, tmp_path: Path) -> None:
    before = _upstream_requests(stack.admin_url)
    for address, flags in [
        (stack.edge_address, ["-plaintext"]),
        (stack.edge_tls_address, ["-cacert", str(stack.ca_file)]),
    ]:
        listed = _grpcurl_list(address, *flags)
        assert listed.returncode != 0 and "resilienttask.v1.SchedulerService" not in listed.stdout, listed.stdout
    assert _upstream_requests(stack.admin_url) == before, "a reflection request reached a gateway"
    # The services' own ports still answer it, and an edge told to (--edge-reflection) passes it on.
    assert "resilienttask.v1.SchedulerService" in _grpcurl_list(stack.address("gateway-1"), "-plaintext").stdout
    with private_edge(stack, tmp_path / "edge", public_reflection=True) as edge:
        listed = _grpcurl_list(edge.address, "-plaintext")
        assert listed.returncode == 0 and "resilienttask.v1.SchedulerService" in listed.stdout, listed.stderr


@pytest.mark.timeout(120)
def test_a_public_health_watch_ends_at_its_lifetime(stack: Stack, tmp_path: Path) -> None:
    """No anonymous stream lives forever: the edge ends Health/Watch at its cap, whatever it carries.

    Either Envoy's own timer ends it (counted as `downstream_rq_max_duration_reached`), or the gateway does
    first, holding the deadline the edge passed upstream: the client sets none, so a DEADLINE_EXCEEDED can only
    be the edge's cap (seen in CI, while Envoy's counter never moved).
    """
    with (
        private_edge(stack, tmp_path / "edge", health_watch_max_s=1) as edge,
        grpc.insecure_channel(edge.address) as channel,
    ):
        opened = time.monotonic()
        stream = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
        first = next(stream)
        assert first.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as ended:
            for _ in stream:
                pass
        lived_s = time.monotonic() - opened
        # Within a timer's resolution of its 1 s lifetime: the cap reaches the gateway as a grpc-timeout of whole
        # milliseconds, whose timer may fire a fraction of one early (a loaded CI run saw 0.999 s).
        assert lived_s >= 1 - DEADLINE_RESOLUTION_S, f"the stream ended after {lived_s:.3f} s, before its 1 s lifetime"
        if ended.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED:  # type: ignore[attr-defined]
            return  # the gateway ended it, at the deadline the edge gave it
        # Envoy ended it: the response had started, so it resets the stream (INTERNAL here) and counts it.
        wait_until(
            lambda: counters(edge.admin_url).get("http.edge.downstream_rq_max_duration_reached", 0) >= 1,
            timeout_s=60,
            message=f"Envoy counts the stream ended with {ended.value!r} as ended by its lifetime",
        )
