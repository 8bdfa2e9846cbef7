"""The local stack and worker processes: `rtask up`, `rtask down`, `rtask worker`.

These start the server-side programs of the resilienttask-server distribution (`services.*`), as child
interpreters: the SDK itself never imports them, and without that distribution these commands say so.

`rtask up` runs the stack launcher (`rtask-stack up`) in the foreground — Ctrl-C stops every
process — or, with --detach, in the background with its output in <data-dir>/logs/launcher.log.
Either way the launcher's pid is recorded in <data-dir>/launcher.pid, and `rtask down` sends it
SIGTERM, upon which the launcher stops every process in order (as Ctrl-C does).
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import click

from resilienttask.cli.common import EXIT_ERROR, CliError, check_address
from resilienttask.cli.options import DURATION
from resilienttask.cli.render import stdout

STACK_MODULE = "services.stack.main"
WORKER_MODULE = "services.worker.main"
PID_FILE = "launcher.pid"
STATE_FILE = "stack.json"
# What a worker enrols with (services/stack/stack.py writes it); workers never hold the user token key.
ENROLMENT_FILE = "worker_enrolment_secret"
# How often `up --detach` and `down` look at the launcher while waiting for it.
POLL_INTERVAL_S = 0.2

DATA_DIR_NAME = ".rtask"


def find_data_dir(_ctx: click.Context | None, _param: click.Parameter | None, value: Path | None) -> Path:
    """The folder given, else the nearest `.rtask` folder here or above (as git finds its repository), so the
    commands work from any folder of a project whose stack was started at its root; else ./.rtask."""
    if value is not None:
        return value
    here = Path.cwd()
    for folder in (here, *here.parents):
        if (folder / DATA_DIR_NAME).is_dir():
            return folder / DATA_DIR_NAME
    return Path(DATA_DIR_NAME)


data_dir_option = click.option(
    "--data-dir",
    envvar="RTASK_DATA_DIR",
    default=None,
    callback=find_data_dir,
    type=click.Path(file_okay=False, path_type=Path),
    help=f"the local stack's data folder (default: the nearest {DATA_DIR_NAME} here or above) [env RTASK_DATA_DIR]",
)


def _require(module: str) -> None:
    top = module.split(".")[0]
    if importlib.util.find_spec(top) is None or importlib.util.find_spec(module) is None:
        raise CliError(
            f"this command needs the servers ({module}): install the resilienttask-server distribution from the "
            "repository's root beside this SDK (`pip install ./clients/python .`, which `make up` does)"
        )


def _launcher_alive(pid: int) -> bool:
    """True if pid is a live (not zombie) stack launcher: a recycled pid of another program must not be signalled."""
    proc = Path("/proc") / str(pid)
    if proc.is_dir():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return False
        return STACK_MODULE in cmdline and state != "Z"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def running_launcher(data_dir: Path) -> int | None:
    """The pid of the launcher running from data_dir, if any."""
    try:
        pid = int((data_dir / PID_FILE).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _launcher_alive(pid) else None


def _read_state(data_dir: Path) -> dict[str, Any] | None:
    try:
        state = json.loads((data_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@click.command()
@data_dir_option
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8080,
    show_default=True,
    help="edge plaintext port (127.0.0.1)",
)
@click.option("--tls-port", type=click.IntRange(0, 65535), default=8443, show_default=True, help="edge TLS port")
@click.option(
    "--listen",
    envvar="RTASK_EDGE_HOST",
    default="127.0.0.1",
    show_default=True,
    help="address of the TLS listener (0.0.0.0: every interface) [env RTASK_EDGE_HOST]",
)
@click.option("--admin-port", type=click.IntRange(0, 65535), default=9901, show_default=True, help="Envoy admin port")
@click.option("--gateways", type=click.IntRange(1), default=2, show_default=True)
@click.option("--schedulers", type=click.IntRange(1), default=1, show_default=True)
@click.option("--workers", type=click.IntRange(0), default=3, show_default=True)
@click.option("--worker-slots", type=click.IntRange(1), default=10, show_default=True, help="tasks per worker at once")
@click.option("-d", "--detach", is_flag=True, help="run in the background; `rtask down` stops it")
@click.option("--start-timeout", type=DURATION, default="180s", show_default=True, help="with --detach")
def up(
    data_dir: Path,
    port: int,
    tls_port: int,
    listen: str,
    admin_port: int,
    gateways: int,
    schedulers: int,
    workers: int,
    worker_slots: int,
    detach: bool,
    start_timeout: timedelta,
) -> None:
    """Start the whole system locally: PostgreSQL, Valkey, Envoy, schedulers, gateways, workers."""
    _require(STACK_MODULE)
    pid = running_launcher(data_dir)
    if pid is not None:
        raise CliError(f"a stack already runs from {data_dir} (pid {pid}); `rtask down` stops it", EXIT_ERROR)
    argv = [sys.executable, "-m", STACK_MODULE, "up", "--data-dir", str(data_dir), "--port", str(port)]
    argv += ["--tls-port", str(tls_port), "--listen", listen]
    argv += ["--admin-port", str(admin_port), "--gateways", str(gateways), "--schedulers", str(schedulers)]
    argv += ["--workers", str(workers), "--worker-slots", str(worker_slots)]
    data_dir.mkdir(parents=True, exist_ok=True)
    if not detach:
        # exec keeps the pid, so the pid file names the launcher itself; Ctrl-C reaches it directly.
        (data_dir / PID_FILE).write_text(f"{os.getpid()}\n")
        sys.stdout.flush()
        os.execv(sys.executable, argv)
    _start_detached(data_dir, argv, start_timeout.total_seconds())


def _start_detached(data_dir: Path, argv: list[str], timeout_s: float) -> None:
    log = data_dir / "logs" / "launcher.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with log.open("ab") as out:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    (data_dir / PID_FILE).write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + timeout_s
    state_file = data_dir / STATE_FILE
    # The launcher writes stack.json once every process reports SERVING.
    while not (state_file.exists() and state_file.stat().st_mtime >= started and _read_state(data_dir)):
        code = proc.poll()
        if code is not None:
            raise CliError(f"the stack exited during start-up (code {code}); last lines of {log}:\n{_tail(log)}")
        if time.monotonic() > deadline:
            proc.send_signal(signal.SIGTERM)
            raise CliError(f"the stack did not start within {timeout_s:g}s; see {log}")
        time.sleep(POLL_INTERVAL_S)
    state = _read_state(data_dir) or {}
    stdout.print(
        f"ResilientTask is up: edge {state.get('edge')}, TLS {state.get('edge_tls')} (CA {state.get('ca_file')}),"
        f" Envoy admin {state.get('admin')}\n"
        f"  launcher pid {proc.pid}, logs in {data_dir / 'logs'}\n"
        f"  `rtask down --data-dir {data_dir}` stops it"
    )


@click.command()
@data_dir_option
@click.option("--timeout", type=DURATION, default="60s", show_default=True, help="how long to wait for the stop")
def down(data_dir: Path, timeout: timedelta) -> None:
    """Stop the local stack started by `rtask up` from this data folder."""
    pid = running_launcher(data_dir)
    if pid is None:
        (data_dir / PID_FILE).unlink(missing_ok=True)
        stdout.print(f"no stack is running from {data_dir}")
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout.total_seconds()
    while _launcher_alive(pid):
        if time.monotonic() > deadline:
            raise CliError(f"the stack (pid {pid}) did not stop within {timeout.total_seconds():g}s")
        time.sleep(POLL_INTERVAL_S)
    (data_dir / PID_FILE).unlink(missing_ok=True)
    stdout.print(f"stopped the stack running from {data_dir}")


@click.command()
@click.option(
    "--import",
    "imports",
    multiple=True,
    required=True,
    metavar="MODULE",
    help="module whose @task handlers to serve (repeatable); the current folder is importable",
)
@click.option(
    "--scheduler",
    envvar="RTASK_SCHEDULER_ADDR",
    default=None,
    help="host:port of the scheduler(s), comma-separated [env RTASK_SCHEDULER_ADDR; default: the local stack's]."
    " Workers talk to the schedulers directly: the public edge does not route WorkerService",
)
@click.option("--slots", type=click.IntRange(1), default=None, help="tasks run at once (default 10)")
@click.option(
    "--redis-url", envvar="REDIS_URL", default=None, help="dispatch store [env REDIS_URL; default: the local stack's]"
)
@click.option(
    "--enrolment-secret-file",
    envvar="RTASK_WORKER_ENROLMENT_SECRET_FILE",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="worker enrolment secret [env RTASK_WORKER_ENROLMENT_SECRET(_FILE); default: the local stack's]",
)
@click.option("--health-port", type=click.IntRange(0, 65535), default=0, help="gRPC health port (0: any free port)")
@data_dir_option
def worker(
    imports: tuple[str, ...],
    scheduler: str | None,
    slots: int | None,
    redis_url: str | None,
    enrolment_secret_file: Path | None,
    health_port: int,
    data_dir: Path,
) -> None:
    """Run a worker that serves the @task handlers of the given modules (plus the built-in kinds)."""
    _require(WORKER_MODULE)
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    for module in imports:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise click.BadParameter(f"cannot find module {module!r} (from {cwd})", param_hint="--import")
    # Never a token key: a worker holds only what lets it enrol.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RTASK_JWT_SECRET", "RTASK_WORKER_KEY"))}
    env.pop("DATABASE_URL", None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (cwd, env.get("PYTHONPATH", "")) if p)
    env["RTASK_WORKER_IMPORTS"] = ",".join(imports)
    server = scheduler or _local_schedulers(data_dir)
    for address in server.split(","):
        check_address(None, None, address.strip())
    env["RTASK_SCHEDULER_ADDR"] = server
    if redis_url:
        env["REDIS_URL"] = redis_url
    else:
        env.update(_local_redis_login(data_dir))
    if not env.get("RTASK_WORKER_ENROLMENT_SECRET"):
        env["RTASK_WORKER_ENROLMENT_SECRET_FILE"] = str(enrolment_secret_file or _local_secret(data_dir))
    env["RTASK_PORT"] = str(health_port)
    env.setdefault("RTASK_INSTANCE", "worker")
    if slots is not None:
        env["RTASK_WORKER_SLOTS"] = str(slots)
    click.echo(f"worker serving {', '.join(imports)} for {server}", err=True)
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, "-m", WORKER_MODULE], env)


def _local_schedulers(data_dir: Path) -> str:
    processes = (_read_state(data_dir) or {}).get("processes", {})
    ports = [p.get("port") for name, p in sorted(processes.items()) if name.startswith("scheduler-")]
    if not ports or not all(ports):
        raise click.UsageError(
            f"no scheduler address: pass --scheduler or set RTASK_SCHEDULER_ADDR (no local stack in {data_dir})"
        )
    return ",".join(f"127.0.0.1:{port}" for port in ports)


def _local_redis_login(data_dir: Path) -> dict[str, str]:
    """The local stack's worker login (REDIS_URL naming the worker user, RTASK_REDIS_PASSWORD_FILE) from its
    state file: a worker started here has the rights of the stack's own workers, no more."""
    state = _read_state(data_dir) or {}
    login = (state.get("redis") or {}).get("worker")
    if login:
        return {str(k): str(v) for k, v in login.items()}
    port = (state.get("processes", {}).get("valkey") or {}).get("port")
    if not port:
        raise click.UsageError(f"no Redis URL: pass --redis-url or set REDIS_URL (no local stack in {data_dir})")
    return {"REDIS_URL": f"redis://127.0.0.1:{port}/0"}


def _local_secret(data_dir: Path) -> Path:
    path = data_dir / ENROLMENT_FILE
    if not path.is_file():
        raise click.UsageError(
            "no enrolment secret: pass --enrolment-secret-file or set RTASK_WORKER_ENROLMENT_SECRET(_FILE) "
            f"(no {ENROLMENT_FILE} in {data_dir})"
        )
    return path
