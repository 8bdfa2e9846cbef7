"""What every command shares: the server options, the cached login, exit codes and error messages."""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click

from resilienttask.cli.credentials import CredentialStore, config_dir
from resilienttask.client import Client
from resilienttask.errors import (
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResilientTaskError,
    Unauthenticated,
    Unavailable,
)

DEFAULT_SERVER = "localhost:8080"

# Exit codes (documented in the README's CLI tour).
EXIT_ERROR = 1  # the service refused for another reason (e.g. FAILED_PRECONDITION)
EXIT_USAGE = 2  # bad arguments, locally or INVALID_ARGUMENT from the service
EXIT_AUTH = 3  # not logged in, or the token was refused
EXIT_NOT_FOUND = 4
EXIT_UNAVAILABLE = 5  # the server cannot be reached
EXIT_TASKS_FAILED = 6  # --wait: at least one task did not succeed
EXIT_TIMEOUT = 7  # --wait --timeout passed first

_ADDRESS = re.compile(r"^(?:\[[0-9a-fA-F:.]+\]|[A-Za-z0-9._-]+):\d{1,5}$")

F = TypeVar("F", bound=Callable[..., Any])


class CliError(click.ClickException):
    """An error printed as `Error: <message>` on stderr, exiting with a code that says what kind it was."""

    def __init__(self, message: str, exit_code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.exit_code = exit_code  # type: ignore[misc]  # click declares it per class; ours varies per error


def check_address(ctx: click.Context | None, param: click.Parameter | None, value: str) -> str:
    if value.startswith("unix:") or _ADDRESS.match(value):
        return value
    hint = " (no scheme: localhost:8080, not http://localhost:8080)" if "://" in value else ""
    raise click.BadParameter(f"{value!r} is not host:port{hint}", ctx=ctx, param=param)


@dataclass(frozen=True)
class Connection:
    """Where to connect and how; builds clients with the login cached for that server."""

    server: str
    tls: bool
    ca_file: Path | None

    def store(self) -> CredentialStore:
        return CredentialStore(config_dir())

    def client(self, *, login: bool = True) -> Client:
        """A client for the server; with login, carrying $RTASK_TOKEN or the cached token."""
        token = None
        if login:
            token = os.environ.get("RTASK_TOKEN") or None
            if token is None:
                cached = self.store().get(self.server)
                if cached is None:
                    raise CliError(
                        f"not logged in to {self.server}: run `rtask login --server {self.server}` "
                        "(or `rtask signup`) first",
                        EXIT_AUTH,
                    )
                if cached.expired:
                    raise CliError(
                        f"the login for {self.server} ({cached.email}) has expired: run `rtask login` again", EXIT_AUTH
                    )
                token = cached.token
        return Client(self.server, token=token, tls=self.tls, ca_file=self.ca_file)

    def translate(self, exc: ResilientTaskError) -> CliError:
        """The CLI error (message and exit code) for an SDK error."""
        if isinstance(exc, Unavailable):
            return CliError(f"cannot reach the server at {self.server}: {exc.message}", EXIT_UNAVAILABLE)
        if isinstance(exc, Unauthenticated | PermissionDenied):
            hint = "" if os.environ.get("RTASK_TOKEN") else f"; run `rtask login --server {self.server}`"
            return CliError(f"the server refused the login: {exc.message}{hint}", EXIT_AUTH)
        if isinstance(exc, InvalidArgument):
            if exc.field:
                return CliError(f"invalid {_field_and_option(exc.field)}: {exc.reason}", EXIT_USAGE)
            return CliError(f"invalid argument: {exc.message}", EXIT_USAGE)
        if isinstance(exc, NotFound):
            return CliError(exc.message, EXIT_NOT_FOUND)
        if isinstance(exc, DeadlineExceeded):
            return CliError(exc.message, EXIT_TIMEOUT)
        return CliError(f"{exc.code.name.lower()}: {exc.message}", EXIT_ERROR)


def _field_and_option(field: str) -> str:
    """The request field the server refused, with the option of the running command that sets it, if one does:
    "replicas (--replicas)"."""
    context = click.get_current_context(silent=True)
    name = field.rsplit(".", 1)[-1].split("[", 1)[0]
    for param in context.command.params if context is not None else ():
        if param.name == name and isinstance(param, click.Option) and param.opts:
            return f"{field} ({max(param.opts, key=len)})"
    return field


def server_command(fn: F) -> F:
    """Add --server/--tls/--ca-file (and their env vars) and turn SDK errors into CLI errors."""

    @click.option(
        "--server",
        envvar="RTASK_SERVER",
        default=DEFAULT_SERVER,
        show_default=True,
        callback=check_address,
        help="host:port of the edge [env RTASK_SERVER]",
    )
    @click.option("--tls/--no-tls", envvar="RTASK_TLS", default=False, help="use TLS (system roots) [env RTASK_TLS]")
    @click.option(
        "--ca-file",
        envvar="RTASK_CA_FILE",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="PEM roots to trust (implies --tls) [env RTASK_CA_FILE]",
    )
    @functools.wraps(fn)
    def wrapper(*args: Any, server: str, tls: bool, ca_file: Path | None, **kwargs: Any) -> Any:
        conn = Connection(server=server, tls=tls or ca_file is not None, ca_file=ca_file)
        try:
            return fn(*args, conn=conn, **kwargs)
        except ResilientTaskError as exc:
            raise conn.translate(exc) from exc
        except OSError as exc:
            raise CliError(str(exc)) from exc

    return wrapper  # type: ignore[return-value]


json_option = click.option("--json", "as_json", is_flag=True, help="print JSON instead of a table")


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2))
