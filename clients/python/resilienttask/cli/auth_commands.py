"""signup, login and logout: the token is cached per server (see credentials.py)."""

from __future__ import annotations

import sys

import click

from resilienttask.cli.common import Connection, emit_json, json_option, server_command
from resilienttask.cli.credentials import Credential
from resilienttask.cli.render import stdout
from resilienttask.models import Session


def _password(given: str | None, from_stdin: bool, *, confirm: bool) -> str:
    if given is not None and from_stdin:
        raise click.UsageError("give --password or --password-stdin, not both")
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if given is not None:
        return given
    return str(click.prompt("Password", hide_input=True, confirmation_prompt=confirm))


def _remember(conn: Connection, session: Session, as_json: bool, verb: str) -> None:
    store = conn.store()
    store.put(conn.server, Credential(session.user.email, session.token, session.expires_at))
    if as_json:
        emit_json({**session.to_dict(), "server": conn.server, "credentials_file": str(store.path)})
    else:
        stdout.print(f"{verb} as {session.user.email} on {conn.server} (token cached in {store.path})")


def _auth_options(fn: click.decorators.FC) -> click.decorators.FC:
    fn = click.option("--password-stdin", is_flag=True, help="read the password from the first line of stdin")(fn)
    fn = click.option("--password", default=None, help="the password (prompted, hidden, when omitted)")(fn)
    return click.option("--email", prompt=True, help="your email address")(fn)


@click.command()
@_auth_options
@json_option
@server_command
def signup(conn: Connection, email: str, password: str | None, password_stdin: bool, as_json: bool) -> None:
    """Create an account and log in."""
    secret = _password(password, password_stdin, confirm=True)
    with conn.client(login=False) as client:
        session = client.signup(email, secret)
    _remember(conn, session, as_json, "signed up")


@click.command()
@_auth_options
@json_option
@server_command
def login(conn: Connection, email: str, password: str | None, password_stdin: bool, as_json: bool) -> None:
    """Log in and cache the token for this server."""
    secret = _password(password, password_stdin, confirm=False)
    with conn.client(login=False) as client:
        session = client.login(email, secret)
    _remember(conn, session, as_json, "logged in")


@click.command()
@server_command
def logout(conn: Connection) -> None:
    """Forget the cached token for this server."""
    removed = conn.store().remove(conn.server)
    stdout.print(f"logged out of {conn.server}" if removed else f"not logged in to {conn.server}")
