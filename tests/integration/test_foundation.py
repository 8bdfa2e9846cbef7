"""The skeleton: the edge lists the services, migrations are safe, health is real, the launcher stops cleanly."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.core.config import AuthConfig, DatabaseConfig, RedisConfig, ServerConfig
from services.core.db import load_migrations, migrate
from services.gateway.app import GatewayConfig, create_server
from services.stack.ports import free_port
from services.stack.stack import Stack
from tests.conftest import Stores
from tests.databases import create_database
from tests.helpers import eventually, wait_until
from tests.tcp_proxy import TcpProxy

GRPCURL = str(Path(sys.executable).parent / "grpcurl")


def test_grpcurl_lists_services_and_health_through_envoy(stack: Stack) -> None:
    """The edge offers no reflection: grpcurl reads the API from the protoset the stack writes."""
    protoset = ["-protoset", str(stack.protoset)]
    listed = subprocess.run([GRPCURL, *protoset, "list"], capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr
    names = set(listed.stdout.split())
    assert {"resilienttask.v1.AuthService", "resilienttask.v1.SchedulerService", "grpc.health.v1.Health"} <= names
    health = subprocess.run(
        [GRPCURL, "-plaintext", *protoset, stack.edge_address, "grpc.health.v1.Health/Check"],
        capture_output=True,
        text=True,
    )
    assert health.returncode == 0, health.stderr
    assert json.loads(health.stdout)["status"] == "SERVING"


async def _fresh_database(stores: Stores) -> str:
    return await create_database(stores.database_url, "mig")


async def test_migrations_apply_once_under_concurrent_start(stores: Stores) -> None:
    url = await _fresh_database(stores)
    conns = [await asyncpg.connect(url) for _ in range(6)]
    try:
        applied = await asyncio.gather(*(migrate(c) for c in conns))
        every = sorted(v for result in applied for v in result)
        assert every == [m.version for m in load_migrations()], "each migration applied exactly once"
        rows = await conns[0].fetch("SELECT version FROM schema_migrations ORDER BY version")
        assert [r["version"] for r in rows] == [m.version for m in load_migrations()]
        assert await migrate(conns[0]) == [], "a later start applies nothing"
    finally:
        for conn in conns:
            await conn.close()


async def test_health_follows_database_reachability(stores: Stores, stack: Stack) -> None:
    pg_port = int(stores.database_url.rsplit(":", 1)[1].split("/")[0])
    proxy = TcpProxy("127.0.0.1", pg_port)
    await proxy.start()
    config = GatewayConfig(
        server=ServerConfig(port=0, health_check_interval_s=0.1, shutdown_grace_s=0.5),
        database=DatabaseConfig(url=f"postgresql://postgres@127.0.0.1:{proxy.port}/postgres", pool_min_size=1),
        redis=RedisConfig(url=stores.redis_url),
        auth=AuthConfig(jwt_secret=stack.jwt_secret, bcrypt_cost=4),
    )
    service = await create_server(config)
    await service.start(config.server)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)

            async def status() -> int:
                reply = await stub.Check(health_pb2.HealthCheckRequest(service="resilienttask.v1.SchedulerService"))
                return int(reply.status)

            assert await status() == health_pb2.HealthCheckResponse.SERVING
            await proxy.cut()
            await eventually(lambda: _equals(status, health_pb2.HealthCheckResponse.NOT_SERVING), message="NOT_SERVING")
            await proxy.start()
            await eventually(lambda: _equals(status, health_pb2.HealthCheckResponse.SERVING), message="SERVING")
    finally:
        await service.stop(0.5)
        await proxy.cut()


async def test_a_killed_background_loop_turns_the_gateway_not_serving_until_it_runs_again(
    stores: Stores, stack: Stack
) -> None:
    config = GatewayConfig(
        server=ServerConfig(port=0, health_check_interval_s=30, shutdown_grace_s=0.5),
        database=DatabaseConfig(url=stores.database_url, pool_min_size=1),
        redis=RedisConfig(url=stores.redis_url),
        auth=AuthConfig(jwt_secret=stack.jwt_secret, bcrypt_cost=4),
    )
    service = await create_server(config)
    await service.start(config.server)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)

            async def status() -> int:
                reply = await stub.Check(health_pb2.HealthCheckRequest(service="resilienttask.v1.SchedulerService"))
                return int(reply.status)

            assert await status() == health_pb2.HealthCheckResponse.SERVING
            assert service.loops is not None and service.loops.tasks()
            victim = service.loops.tasks()[0]
            victim.cancel()
            # The periodic check is 30 s away: only the loop's end can make it NOT_SERVING this soon.
            await eventually(
                lambda: _equals(status, health_pb2.HealthCheckResponse.NOT_SERVING), timeout_s=10, message="NOT_SERVING"
            )
            await eventually(
                lambda: _equals(status, health_pb2.HealthCheckResponse.SERVING), timeout_s=20, message="SERVING again"
            )
            assert victim not in service.loops.tasks() and service.loops.running(), "the loop was started again"
    finally:
        await service.stop(0.5)


async def _equals(probe, expected: int) -> bool:  # type: ignore[no-untyped-def]
    return bool(await probe() == expected)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _run_launcher(data_dir: Path) -> tuple[subprocess.Popen[str], dict]:  # type: ignore[type-arg]
    argv = [
        str(Path(sys.executable).parent / "rtask-stack"),
        "up",
        "--data-dir",
        str(data_dir),
        "--port",
        str(free_port()),
        "--admin-port",
        str(free_port()),
        "--gateways",
        "1",
        "--workers",
        "1",
    ]
    env = {**os.environ, "RTASK_BCRYPT_COST": "4"}
    env.pop("DATABASE_URL", None)
    env.pop("REDIS_URL", None)
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if "ResilientTask is up." in line:
            break
    else:
        raise AssertionError(f"launcher ended before it was up (code {proc.wait()})")
    # Keep draining its output so the launcher never blocks on a full pipe.
    threading.Thread(target=proc.stdout.read, daemon=True).start()
    state = json.loads((data_dir / "stack.json").read_text())
    return proc, state


@pytest.mark.timeout(180)
def test_launcher_ctrl_c_or_its_death_stops_everything_and_keeps_data(tmp_path: Path) -> None:
    proc, state = _run_launcher(tmp_path)
    pids = [p["pid"] for p in state["processes"].values()]
    assert {"postgres", "valkey", "envoy", "scheduler-1", "gateway-1", "worker-1"} <= set(state["processes"])
    assert all(_alive(pid) for pid in pids)
    secret = (tmp_path / "jwt_secret").read_text()
    assert oct((tmp_path / "jwt_secret").stat().st_mode & 0o777) == "0o600"
    _stop_launcher(proc)
    wait_until(lambda: not any(_alive(pid) for pid in pids), timeout_s=10, message="no process left")

    proc, state = _run_launcher(tmp_path)
    pids = [p["pid"] for p in state["processes"].values()]
    try:
        assert (tmp_path / "jwt_secret").read_text() == secret, "the second start reuses the data folder"
        assert (tmp_path / "postgres" / "PG_VERSION").exists()
    finally:
        proc.kill()  # no chance to stop anything itself: its processes must end all the same
        proc.wait(10)
        assert proc.stdout is not None
        proc.stdout.close()
    wait_until(lambda: not any(_alive(pid) for pid in pids), timeout_s=30, message="no process left after SIGKILL")


@pytest.mark.timeout(60)
def test_launcher_refuses_a_taken_port_and_names_its_holder(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        argv = [str(Path(sys.executable).parent / "rtask-stack"), "up", "--data-dir", str(tmp_path)]
        argv += ["--port", str(free_port()), "--admin-port", str(taken)]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=50, check=False)
    assert done.returncode == 3, done.stdout + done.stderr
    assert f"Envoy admin port {taken}" in done.stderr and f"pid {os.getpid()}" in done.stderr
    assert not (tmp_path / "postgres").exists(), "nothing was started"


def _stop_launcher(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGINT)
    assert proc.wait(60) == 0
    assert proc.stdout is not None
    proc.stdout.close()
