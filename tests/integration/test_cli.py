"""The `rtask` command (the installed console script, run as a subprocess) against the full stack: every
command, its JSON output parsed, exit codes, the token cache, live views, the local stack and workers.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import stat
import subprocess
import sys
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest

from services.core.config import DatabaseConfig
from services.gateway import operators
from services.stack.ports import free_port
from services.stack.stack import Stack
from tests.conftest import Stores, unique_email
from tests.helpers import wait_until

PASSWORD = "correct horse battery"
REPO = Path(__file__).resolve().parents[2]
RTASK = str(Path(sys.executable).with_name("rtask")) if Path(sys.executable).with_name("rtask").exists() else "rtask"
# Only a guard against a command that hangs: no test measures time with it.
COMMAND_TIMEOUT_S = 120


@dataclass
class Rtask:
    """Runs the rtask binary with its own config folder and home, never the real ones."""

    env: dict[str, str]

    def run(
        self, *args: str, code: int = 0, stdin: str | None = None, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [RTASK, *args],
            env=self.env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
            cwd=cwd,
        )
        assert result.returncode == code, (
            f"rtask {' '.join(args)} exited {result.returncode}, expected {code}\n"
            f"stdout: {result.stdout}\nstderr: {result.stderr}"
        )
        return result

    def json(self, *args: str, code: int = 0) -> Any:
        return json.loads(self.run(*args, "--json", code=code).stdout)

    def start(self, *args: str, cwd: Path | None = None, **env: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [RTASK, *args],
            env={**self.env, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
        )


class Output:
    """Collects a child's output in a thread, so a test can wait for a line without blocking forever."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.text = ""
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode(errors="replace")
            self.text += line
            self.lines.put(line)

    def next_line(self) -> str:
        return self.lines.get(timeout=COMMAND_TIMEOUT_S)


def _interrupt(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGINT)
    return proc.wait(COMMAND_TIMEOUT_S)


@pytest.fixture
def anon(stack: Stack, tmp_path: Path) -> Rtask:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RTASK_") and k != "XDG_CONFIG_HOME"}
    env.update(
        RTASK_CONFIG_DIR=str(tmp_path / "config"),
        HOME=str(tmp_path / "home"),
        RTASK_SERVER=stack.edge_address,
    )
    return Rtask(env)


@pytest.fixture
def rtask(anon: Rtask) -> Rtask:
    anon.run("signup", "--email", unique_email("cli"), "--password-stdin", stdin=f"{PASSWORD}\n")
    return anon


# -- auth -------------------------------------------------------------------------------------------
def test_signup_login_logout_and_the_token_cache(anon: Rtask, stack: Stack, tmp_path: Path) -> None:
    email = unique_email("cli-auth")
    session = anon.json("signup", "--email", email, "--password", PASSWORD)
    assert session["user"]["email"] == email and session["server"] == stack.edge_address
    cache = Path(session["credentials_file"])
    assert cache == tmp_path / "config" / "credentials.json"
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600 and stat.S_IMODE(cache.parent.stat().st_mode) == 0o700
    assert "access_token" not in json.dumps(session) and not (tmp_path / "home").exists()
    assert json.loads(cache.read_text())["servers"][stack.edge_address]["email"] == email

    assert anon.json("stats")["active"] == 0
    assert "logged out" in anon.run("logout").stdout
    missing = anon.run("stats", code=3)
    assert "not logged in" in missing.stderr and "rtask login" in missing.stderr

    anon.run("login", "--email", email, "--password-stdin", stdin=f"{PASSWORD}\n")
    assert anon.json("stats")["active"] == 0
    assert "refused" in anon.run("login", "--email", email, "--password", "wrong password!", code=3).stderr
    assert "already_exists" in anon.run("signup", "--email", email, "--password", PASSWORD, code=1).stderr

    forged = Rtask({**anon.env, "RTASK_TOKEN": "not.a.jwt"})
    assert "refused" in forged.run("stats", code=3).stderr


def test_commands_that_need_a_login_say_so(anon: Rtask) -> None:
    for args in (["ls"], ["get", "00000000-0000-0000-0000-000000000000"], ["submit", "x"], ["watch"], ["stats"]):
        result = anon.run(*args, code=3)
        assert "not logged in" in result.stderr and "rtask login" in result.stderr, args
        assert result.stdout == ""


def test_a_bad_server_address_is_reported(rtask: Rtask, stack: Stack) -> None:
    nowhere = f"127.0.0.1:{free_port()}"
    assert "cannot reach" in rtask.run("health", "--server", nowhere, code=5).stderr
    token = json.loads(Path(rtask.env["RTASK_CONFIG_DIR"], "credentials.json").read_text())
    with_token = Rtask({**rtask.env, "RTASK_TOKEN": token["servers"][stack.edge_address]["token"]})
    assert "cannot reach the server at" in with_token.run("ls", "--server", nowhere, code=5).stderr
    assert "not host:port" in rtask.run("stats", "--server", "http://localhost:8080", code=2).stderr
    assert "not host:port" in Rtask({**rtask.env, "RTASK_SERVER": "localhost"}).run("health", code=2).stderr
    assert "not logged in" in rtask.run("ls", "--server", nowhere, code=3).stderr, "logins are per server"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["submit", "x", "--replicas", "51"], "51 is not in the range"),
        (["submit", "x", "--workload", "soon"], "not a duration"),
        (["submit", "x", "--max-runtime", "-1s"], "not a duration"),
        (["submit", "x", "--payload", "[1, 2]"], "must be a JSON object"),
        (["submit", "x", "--payload", "{oops"], "not readable JSON"),
        (["submit", "x", "--timeout", "1s"], "only makes sense with --wait"),
        (["submit", "x", "--kind", "no-such-kind"], "unknown kind"),
        (["submit", "x", "--max-runtime", "100ms"], "max_runtime"),
        (["get", "not-a-uuid"], "task_id: must be a UUID"),
        (["ls", "--status", "finished"], "'finished' is not one of"),
        (["cancel"], "give task ids or --batch"),
        (["retry"], "Missing argument"),
        (["frobnicate"], "No such command"),
    ],
)
def test_bad_arguments_exit_2_with_a_reason(rtask: Rtask, args: list[str], message: str) -> None:
    result = rtask.run(*args, code=2)
    assert message in result.stderr


# -- submitting and waiting -------------------------------------------------------------------------
def test_submit_wait_exit_codes(rtask: Rtask) -> None:
    done = rtask.json("submit", "ok", "--replicas", "3", "--workload", "200ms", "--max-runtime", "1m", "--wait")
    assert [t["status"] for t in done] == ["succeeded"] * 3
    assert len({t["batch_id"] for t in done}) == 1 and done[0]["max_runtime_s"] == 60.0
    assert done[0]["workload_s"] == 0.2 and done[0]["result"] == {"slept_s": 0.2}

    failed = rtask.json(
        "submit", "bad", "--kind", "fail", "--max-attempts", "1", "--workload", "50ms", "--wait", code=6
    )
    assert failed[0]["status"] == "failed" and failed[0]["dead_lettered"]

    slow = rtask.run("submit", "slow", "--workload", "1m", "--wait", "--timeout", "500ms", code=7)
    assert "1 of 1 tasks not finished" in slow.stderr
    (task,) = [t for t in rtask.json("ls") if t["name"] == "slow"]
    cancelled = rtask.json("cancel", "--batch", task["batch_id"])
    assert cancelled[0]["status"] in ("cancelled", "cancelling")
    assert rtask.json("submit", "payload", "--payload", '{"k": [1, "two"]}')[0]["payload"] == {"k": [1, "two"]}


def test_submit_fifty_replicas_with_live_progress_bars(rtask: Rtask) -> None:
    tasks = rtask.json("submit", "fifty", "--replicas", "50", "--workload", "30s", "--max-runtime", "1m")
    assert len(tasks) == 50 and sorted(t["replica_index"] for t in tasks) == list(range(50))
    assert len(rtask.json("cancel", "--batch", tasks[0]["batch_id"])) == 50
    listed = rtask.json("ls", "--batch", tasks[0]["batch_id"], "--limit", "0")
    assert sorted(t["id"] for t in listed) == sorted(t["id"] for t in tasks)

    # A terminal (forced) draws bars on stderr while the tasks run, and the final table on stdout.
    terminal = Rtask({**rtask.env, "FORCE_COLOR": "1", "COLUMNS": "160"})
    shown = terminal.run("submit", "bars", "--replicas", "3", "--workload", "300ms", "--wait")
    assert "━" in shown.stderr and "3 tasks" in shown.stderr and "bars #2" in shown.stderr
    assert shown.stdout.count("succeeded") == 3


# -- reading ----------------------------------------------------------------------------------------
def test_read_commands_print_tables_and_json(rtask: Rtask) -> None:
    (task,) = rtask.json("submit", "reader", "--workload", "200ms", "--wait")
    assert rtask.json("get", task["id"]) == task
    assert task["id"] in rtask.run("get", task["id"]).stdout
    listed = rtask.json("ls")
    assert [t["id"] for t in listed] == [task["id"]]
    assert rtask.json("ls", "--status", "succeeded") == listed and rtask.json("ls", "--status", "failed") == []
    table = rtask.run("ls").stdout
    assert task["id"] in table and "succeeded" in table and "reader" in table

    assert rtask.json("stats") == {
        "active": 0,
        "queued": 0,
        "running": 0,
        "succeeded": 1,
        "failed": 0,
        "cancelled": 0,
        "timed_out": 0,
        "scheduled": 0,
    }
    assert "SUCCEEDED" in rtask.run("stats").stdout
    workers = rtask.json("workers")
    assert len(workers) >= 3 and all(w["slots"] > 0 and "sleep" in w["kinds"] for w in workers)
    assert workers[0]["id"] in rtask.run("workers").stdout
    assert {"sleep", "fail", "spin"} <= set(rtask.json("kinds"))
    assert rtask.json("health")["status"] == "SERVING"
    assert "SERVING" in rtask.run("health").stdout
    assert "not found" in rtask.run("get", "00000000-0000-0000-0000-000000000000", code=4).stderr


def test_cancel_wait_retry_rm_and_clear(rtask: Rtask) -> None:
    (long,) = rtask.json("submit", "long", "--workload", "1m")
    (cancelled,) = rtask.json("cancel", long["id"])
    assert cancelled["status"] in ("cancelled", "cancelling")
    (waited,) = rtask.json("wait", long["id"], code=6)
    assert waited["status"] == "cancelled"
    (retried,) = rtask.json("retry", long["id"])
    assert retried["status"] == "queued" and retried["id"] == long["id"]
    assert "failed_precondition" in rtask.run("rm", long["id"], code=1).stderr, "unfinished tasks stay"
    rtask.run("cancel", long["id"])
    assert "did not succeed" in rtask.run("wait", long["id"], "--timeout", "1m", code=6).stderr

    (quick,) = rtask.json("submit", "quick", "--workload", "100ms", "--wait")
    assert rtask.json("wait", quick["id"])[0]["status"] == "succeeded"
    assert rtask.json("rm", quick["id"]) == {"deleted": [quick["id"]]}
    assert "not found" in rtask.run("get", quick["id"], code=4).stderr
    assert rtask.json("clear") == {"deleted": 1}
    assert rtask.json("ls") == []
    assert "deleted 0 finished tasks" in rtask.run("clear").stdout
    assert "not found" in rtask.run("wait", quick["id"], code=4).stderr


# -- live views ---------------------------------------------------------------------------------------
def test_watch_json_streams_events_until_ctrl_c(rtask: Rtask) -> None:
    with rtask.start("watch", "--json") as proc:
        out = Output(proc.stdout)  # type: ignore[arg-type]
        try:
            first = json.loads(out.next_line())
            assert first["type"] == "snapshot" and first["resume_token"]
            (task,) = rtask.json("submit", "watched", "--workload", "200ms")
            statuses = []
            while not statuses or statuses[-1] != "succeeded":
                event = json.loads(out.next_line())
                if event["type"] == "task" and event["task"]["id"] == task["id"]:
                    statuses.append(event["task"]["status"])
            assert statuses[0] in ("queued", "running") and "running" in statuses
        finally:
            assert _interrupt(proc) == 0


def test_watch_draws_a_live_table(rtask: Rtask) -> None:
    with rtask.start("watch", "--limit", "5", FORCE_COLOR="1", COLUMNS="200") as proc:
        out = Output(proc.stdout)  # type: ignore[arg-type]
        try:
            wait_until(lambda: "active" in out.text, message="the board is drawn")
            (task,) = rtask.json("submit", "on-the-board", "--workload", "200ms")
            wait_until(lambda: task["id"] in out.text, message="the new task appears on the live board")
        finally:
            assert _interrupt(proc) == 0


# -- the local stack and workers ------------------------------------------------------------------------
def test_up_worker_and_down_on_a_separate_stack(anon: Rtask, tmp_path: Path) -> None:
    """A stack of our own with no built-in workers, so every task goes to the `rtask worker` started here.

    (Against the shared stack a built-in worker could take a task of a kind it does not serve.)
    """
    data_dir = tmp_path / "stack"
    port = free_port()
    common = ["--data-dir", str(data_dir)]
    up = anon.run(
        "up", *common, "--detach", "--port", str(port), "--tls-port", str(free_port()), "--admin-port",
        str(free_port()), "--gateways", "1", "--workers", "0",
    )  # fmt: skip
    assert f"127.0.0.1:{port}" in up.stdout
    own = Rtask({**anon.env, "RTASK_SERVER": f"127.0.0.1:{port}"})
    try:
        assert own.json("health")["status"] == "SERVING"
        assert "already runs" in own.run("up", *common, "--detach", "--port", str(free_port()), code=1).stderr
        _serve_example_handlers(own, data_dir)
    finally:
        assert "stopped" in own.run("down", *common).stdout
    state = json.loads((data_dir / "stack.json").read_text())
    for name, process in state["processes"].items():
        assert not _alive(process["pid"]), f"{name} still runs after down"
    assert "no stack is running" in own.run("down", *common).stdout


def _serve_example_handlers(own: Rtask, data_dir: Path) -> None:
    """`rtask worker --import text_tasks` finds the stack's schedulers, Redis and secret in its data folder."""
    examples = REPO / "examples"
    assert "cannot find module" in own.run("worker", "--import", "no_such_module", cwd=examples, code=2).stderr
    own.run("signup", "--email", unique_email("cli-worker"), "--password", PASSWORD)
    with own.start("worker", "--import", "text_tasks", "--data-dir", str(data_dir), cwd=examples) as worker:
        logs = Output(worker.stderr)  # type: ignore[arg-type]
        try:
            wait_until(lambda: "word-count" in own.json("kinds"), timeout_s=60, message="the worker's kinds are known")
            text = '{"text": "to be or not to be"}'
            (counted,) = own.json("submit", "count", "--kind", "word-count", "--payload", text, "--wait")
            assert counted["result"]["words"] == 6 and counted["result"]["distinct"] == 4
            assert type(counted["result"]["words"]) is int, "a handler's integers come back as integers"
            (primes,) = own.json("submit", "primes", "--kind", "primes", "--payload", '{"below": 1000}', "--wait")
            assert primes["result"] == {"below": 1000, "primes": 168}
            assert [w["id"] for w in own.json("workers")] == [counted["worker_id"]]
        finally:
            worker.send_signal(signal.SIGTERM)
            code = worker.wait(COMMAND_TIMEOUT_S)
        assert code == 0, logs.text


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat_file = Path(f"/proc/{pid}/stat")
    return not stat_file.exists() or stat_file.read_text().rsplit(")", 1)[1].split()[0] != "Z"


def test_help_lists_every_command(anon: Rtask) -> None:
    text = anon.run("--help").stdout
    expected: Sequence[str] = ["up", "down", "worker", "signup", "login", "logout", "submit", "ls", "get", "watch"]
    expected = [*expected, "wait", "cancel", "retry", "rm", "clear", "schedule", "stats", "workers", "kinds", "health"]
    expected = [*expected, "show", "bulk", "logs", "operator"]
    for command in expected:
        assert f"  {command} " in text, command


# -- search, history and bulk actions ------------------------------------------------------------------
def test_ls_filters_show_and_bulk_verbs(rtask: Rtask) -> None:
    waiting = rtask.json("submit", "report 100%", "--replicas", "3", "--in", "1h")
    (failed,) = rtask.json("submit", "flaky_job", "--kind", "fail", "--max-attempts", "2", "--wait", code=6)
    rtask.json("submit", "flakyXjob", "--in", "1h")
    ids = sorted((t["id"] for t in waiting), reverse=True)

    assert [t["id"] for t in rtask.json("ls", "--name", "100%")] == ids
    assert [t["id"] for t in rtask.json("ls", "--name", "y_j", "--kind", "fail", "--dead-lettered")] == [failed["id"]]
    assert len(rtask.json("ls", "--status", "failed", "--status", "scheduled")) == 5
    assert [t["id"] for t in rtask.json("ls", "--id", failed["id"][:10], "--since", "10m")] == [failed["id"]]
    assert "filter.id_prefix" in rtask.run("ls", "--id", "zz", code=2).stderr

    history = rtask.json("show", failed["id"])
    assert [(a["attempt"], a["outcome"]) for a in history["attempts"]] == [(1, "failed"), (2, "failed")]
    assert [t["to_status"] for t in history["transitions"]] == ["queued", "running", "queued", "running", "failed"]
    shown = rtask.run("show", failed["id"]).stdout
    assert "attempts" in shown and "history" in shown and "simulated failure of attempt 2" in shown

    # The confirmation states the count; answered no, nothing happens.
    asked = rtask.run("bulk", "cancel", "--name", "REPORT", "--page-size", "2", stdin="n\n", code=1)
    assert "Cancel 3 tasks matching name contains 'REPORT'?" in asked.stderr
    done = rtask.run("bulk", "cancel", "--name", "REPORT", "--page-size", "2", stdin="y\n")
    assert "3 cancelled, 0 skipped" in done.stdout
    assert rtask.json("bulk", "cancel", *ids, "--yes") == {"affected": 0, "skipped": 3}
    assert rtask.json("bulk", "retry", "--status", "failed", "--yes") == {"affected": 1, "skipped": 0}
    assert rtask.json("bulk", "delete", "--name", "job", "--status", "scheduled", "--yes") == {
        "affected": 0,
        "skipped": 1,
    }
    assert rtask.json("bulk", "delete", "--all", "--yes")["affected"] >= 3  # the cancelled ones at least
    rtask.run("bulk", "cancel", "--all", "--yes")


# -- operator ---------------------------------------------------------------------------------------------
async def test_operator_pauses_limits_and_lists_kinds(anon: Rtask, stores: Stores) -> None:
    email = unique_email("cli-operator")
    anon.run("signup", "--email", email, "--password-stdin", stdin=f"{PASSWORD}\n")
    kind = f"cli.{uuid.uuid4().hex[:8]}"  # a kind no worker serves may be paused too; nobody else's tasks
    refused = anon.run("operator", "pause", kind, code=1)
    assert "operator role" in refused.stderr and "login" not in refused.stderr
    assert await operators.change(DatabaseConfig(stores.database_url), email, True)
    assert anon.json("operator", "pause", kind)["paused"] is True
    limited = anon.json("operator", "limit", kind, "5", "--per", "2s")
    assert limited["rate_limit"] == {"starts": 5, "per_s": 2.0} and limited["paused"] is True
    listed = {c["kind"]: c for c in anon.json("operator", "ls")}
    assert listed[kind]["rate_limit"] == {"starts": 5, "per_s": 2.0} and "sleep" in listed
    assert anon.json("operator", "unlimit", kind)["rate_limit"] is None
    assert anon.json("operator", "resume", kind)["paused"] is False
    assert "rate_limit.period" in anon.run("operator", "limit", kind, "5", "--per", "2h", code=2).stderr
    # Draining: the worker id is checked and named (draining a real worker: tests/integration/test_worker_drain.py).
    assert "no live worker 'cli-no-such-worker'" in anon.run("operator", "drain", "cli-no-such-worker", code=4).stderr
    assert "worker_id" in anon.run("operator", "drain", "bad id", code=2).stderr
    assert "grace" in anon.run("operator", "drain", "cli-no-such-worker", "--grace", "2h", code=2).stderr
    assert "WORKER_ID" in anon.run("operator", "drain", "--help").stdout
