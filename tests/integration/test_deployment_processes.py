"""The container deployment's processes, run here as plain processes with the compose file's commands.

Several replicas started at once against a fresh database (what `docker compose up` does) migrate it exactly
once and all come up; the compose edge starts from what rtask-edge-init writes and passes its health probe;
Valkey, started with the compose file's ACL options, lets in the users rtask-redis-init wrote and nobody else.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis
from redis.exceptions import AuthenticationError

from services.core import dispatch_functions, keys, redis_acl
from services.core.db import load_migrations
from services.deploy import redis_init
from services.edge.launch import envoy_binary
from services.edge.render import COMPOSE_DASHBOARD_DIR, COMPOSE_FILE, COMPOSE_JWKS_PATH, COMPOSE_TLS_DIR
from services.stack.embedded import valkey_process, wait_for_port
from services.stack.ports import free_port
from services.stack.processes import ManagedProcess
from tests.conftest import TEST_BCRYPT_COST, Stores
from tests.helpers import eventually, wait_until
from tests.unit.test_deployment import load_compose, probe_command

BIN = Path(sys.executable).parent
SECRET = "s" * 48


@pytest.fixture
async def fresh_database(stores: Stores) -> AsyncIterator[str]:
    name = f"deploy_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(stores.database_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield stores.database_url.rsplit("/", 1)[0] + f"/{name}"
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def _probe(command: list[str]) -> bool:
    proc = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    return await proc.wait() == 0


def _applied(log: Path) -> list[str]:
    names = []
    for line in log.read_text().splitlines():
        try:
            entry: dict[str, Any] = json.loads(line)
        except ValueError:
            continue
        if entry.get("msg") == "applied migration":
            names.append(entry["migration"])
    return names


async def test_replicas_starting_at_once_migrate_a_fresh_database_exactly_once(
    stores: Stores, fresh_database: str, tmp_path: Path
) -> None:
    compose = load_compose()["services"]
    secret_files = {}
    for variable, name in (
        ("RTASK_JWT_SECRET_FILE", "jwt_secret"),
        ("RTASK_WORKER_KEY_FILE", "worker_key"),
        ("RTASK_WORKER_ENROLMENT_SECRET_FILE", "worker_enrolment_secret"),
    ):
        (tmp_path / name).write_text(SECRET + name)  # three distinct secrets
        secret_files[variable] = str(tmp_path / name)
    roles = ["gateway", "gateway", "gateway", "scheduler"]
    processes: list[tuple[ManagedProcess, list[str]]] = []
    for i, role in enumerate(roles):
        port = free_port()
        env = {
            "PATH": str(BIN),
            "DATABASE_URL": fresh_database,
            # The services' own Redis login, as compose gives it: a URL naming the user, the password in a file.
            **stores.redis_access.services.env(),
            # The secret files the compose service of this role mounts.
            **{k: v for k, v in secret_files.items() if k in compose[role]["environment"]},
            "RTASK_HOST": "127.0.0.1",
            "RTASK_PORT": str(port),
            "RTASK_BCRYPT_COST": str(TEST_BCRYPT_COST),
        }
        # The compose service's own command and health probe, pointed at this process's port.
        command = [str(BIN / compose[role]["command"][0])]
        probe = probe_command(compose[role])
        probe = [str(BIN / probe[0]), f"127.0.0.1:{port}"]
        processes.append((ManagedProcess(f"{role}-{i}", command, log_dir=tmp_path, env=env), probe))
    try:
        for proc, _ in processes:
            proc.start()
        for proc, probe in processes:

            async def serving(proc: ManagedProcess = proc, probe: list[str] = probe) -> bool:
                assert proc.alive(), f"{proc.name} exited: {proc.log_path.read_text()[-2000:]}"
                return await _probe(probe)

            await eventually(serving, timeout_s=60, interval_s=0.2, message=f"{proc.name} SERVING")
    finally:
        for proc, _ in processes:
            proc.stop(grace_s=10)
    expected = [m.name for m in load_migrations()]
    applied = Counter(name for proc, _ in processes for name in _applied(proc.log_path))
    assert applied == Counter(expected), "each migration applied by exactly one replica"
    conn = await asyncpg.connect(fresh_database)
    try:
        rows = await conn.fetch("SELECT version, name FROM schema_migrations ORDER BY version")
    finally:
        await conn.close()
    assert [r["name"] for r in rows] == expected


def _local_edge_config(tmp_path: Path, ports: dict[str, int], admin_port: int) -> Path:
    """The committed compose config with its container paths and ports moved to this machine's.

    `ports` maps every listener's name to its port here (a listener left out fails the test: each is checked).
    """
    text = COMPOSE_FILE.read_text()
    text = text.replace(COMPOSE_JWKS_PATH, str(tmp_path / "etc-envoy" / "jwks.json"))
    text = text.replace(COMPOSE_TLS_DIR, str(tmp_path / "etc-envoy" / "tls"))
    text = text.replace(COMPOSE_DASHBOARD_DIR, str(tmp_path / "srv-dashboard"))
    config = json.loads(text)
    config["admin"]["address"]["socket_address"]["port_value"] = admin_port
    listeners = config["static_resources"]["listeners"]
    assert sorted(listener["name"] for listener in listeners) == sorted(ports)
    for listener in listeners:
        listener["address"]["socket_address"].update(address="127.0.0.1", port_value=ports[listener["name"]])
    # The stats listener forwards to the admin interface, which moved too.
    for cluster in config["static_resources"]["clusters"]:
        for group in cluster.get("load_assignment", {}).get("endpoints", []):
            for endpoint in group["lb_endpoints"]:
                address = endpoint["endpoint"]["address"]["socket_address"]
                if address == {"address": "127.0.0.1", "port_value": 9901}:
                    address["port_value"] = admin_port
    path = tmp_path / "envoy.json"
    path.write_text(json.dumps(config))
    return path


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _passes(command: list[str]) -> bool:
    return subprocess.run(command, capture_output=True, timeout=30).returncode == 0


def test_the_compose_edge_starts_from_what_edge_init_writes(tmp_path: Path) -> None:
    compose = load_compose()["services"]
    build = tmp_path / "image-dashboard"
    build.mkdir()
    (build / "index.html").write_text("<title>ResilientTask</title>")
    served = tmp_path / "srv-dashboard"
    served.mkdir()
    (served / "stale.js").write_text("from an older image")
    (tmp_path / "jwt_secret").write_text(SECRET)
    # rtask-edge-init as compose runs it, with the container's folders moved under tmp_path.
    init = compose["edge-init"]["command"]
    argv = [str(BIN / init[0]), *init[1:-1], str(build)]
    argv += ["--jwks", str(tmp_path / "etc-envoy" / "jwks.json"), "--dashboard-dir", str(served)]
    argv += ["--tls-dir", str(tmp_path / "etc-envoy" / "tls"), "--tls-from", str(tmp_path / "operator-tls")]
    argv += ["--ca-dir", str(tmp_path / "edge-ca")]
    env = {"RTASK_JWT_SECRET_FILE": str(tmp_path / "jwt_secret")}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr

    listen_port, tls_port, stats_port, admin_port = free_port(), free_port(), free_port(), free_port()
    command = compose["envoy"]["command"]
    config_in_container = command[command.index("-c") + 1]
    ports = {"edge": listen_port, "edge_tls": tls_port, "stats": stats_port}
    config = _local_edge_config(tmp_path, ports, admin_port)
    argv = [envoy_binary(), *(str(config) if arg == config_in_container else arg for arg in command[1:])]
    envoy = ManagedProcess("envoy", argv, log_dir=tmp_path)
    # Envoy's health probe from the compose file, aimed at this Envoy's admin port.
    probe = [part.replace("/9901 ", f"/{admin_port} ") for part in probe_command(compose["envoy"])]
    assert probe != probe_command(compose["envoy"]), "the probe no longer asks 127.0.0.1:9901"
    envoy.start()
    try:
        wait_until(lambda: _passes(probe), timeout_s=30, interval_s=0.1, message="Envoy's probe passes")
        assert _get(f"http://127.0.0.1:{listen_port}/") == (200, b"<title>ResilientTask</title>")
        assert _get(f"http://127.0.0.1:{listen_port}/stale.js")[0] == 404
        # TLS with the certificate edge-init issued, trusted through the CA it published beside it.
        trusting = ssl.create_default_context(cafile=str(tmp_path / "etc-envoy" / "tls" / "ca.pem"))
        with urllib.request.urlopen(f"https://localhost:{tls_port}/", timeout=5, context=trusting) as reply:
            assert (reply.status, reply.read()) == (200, b"<title>ResilientTask</title>")
        # The stats listener serves Envoy's Prometheus series and nothing else of the admin interface.
        status, body = _get(f"http://127.0.0.1:{stats_port}/stats/prometheus")
        assert status == 200 and b"envoy_server_live" in body
        assert _get(f"http://127.0.0.1:{stats_port}/quitquitquit")[0] == 404
    finally:
        envoy.stop(grace_s=10)
    assert not _passes(probe), "the probe fails once Envoy is gone"


def test_the_compose_valkey_admits_exactly_the_users_redis_init_writes(tmp_path: Path) -> None:
    compose = load_compose()["services"]
    secrets_dir = tmp_path / "run-secrets"
    secrets_dir.mkdir()
    passwords = {role: f"{role}-{uuid.uuid4().hex}" for role in redis_acl.ROLES}
    for role, password in passwords.items():
        (secrets_dir / redis_init.secret_name(role)).write_text(password)
    acl_file = tmp_path / "etc-rtask-redis" / "users.acl"
    init = [str(BIN / compose["redis-init"]["command"][0]), "--acl-file", str(acl_file)]
    done = subprocess.run([*init, "--secrets-dir", str(secrets_dir)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    command = compose["redis"]["command"]
    assert command[command.index("--aclfile") + 1] == redis_init.COMPOSE_ACL_FILE
    port = free_port()
    valkey = valkey_process(tmp_path, port, log_dir=tmp_path, echo=None, acl_file=acl_file, maxmemory_mb=16)
    valkey.start()
    try:
        wait_for_port(valkey, port)
        for name in ("gateway", "worker"):
            url = compose[name]["environment"]["REDIS_URL"].replace("@redis:6379", f"@127.0.0.1:{port}")
            role = redis_acl.WORKER if name == "worker" else redis_acl.SERVICES
            with redis.Redis.from_url(url, password=passwords[role]) as client:
                assert client.ping()
        with redis.Redis(host="127.0.0.1", port=port) as intruder, pytest.raises(AuthenticationError):
            intruder.ping()
        # Then the dispatch function library, loaded by the operator's one-shot run, which the workers' user calls.
        functions = compose["redis-functions"]
        url = functions["environment"]["REDIS_URL"].replace("@redis:6379", f"@127.0.0.1:{port}")
        load = [str(BIN / functions["command"][0]), *functions["command"][1:], "--secrets-dir", str(secrets_dir)]
        done = subprocess.run([*load, "--redis-url", url], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        worker_url = compose["worker"]["environment"]["REDIS_URL"].replace("@redis:6379", f"@127.0.0.1:{port}")
        stream = keys.dispatch_stream("compose")
        with redis.Redis.from_url(worker_url, password=passwords[redis_acl.WORKER]) as worker:
            worker.xgroup_create(stream, keys.DISPATCH_GROUP, id="0", mkstream=True)
            args = [keys.DISPATCH_GROUP, "w1", 1, 1, 1]
            assert worker.fcall(dispatch_functions.READ_FUNCTION, 1, stream, *args) == []
    finally:
        valkey.stop()
