"""The `rtask` command group: every command of the dashboard, plus the local stack and workers."""

from __future__ import annotations

import click

from resilienttask import __version__
from resilienttask.cli import (
    auth_commands,
    info_commands,
    local_commands,
    operator_commands,
    schedule_commands,
    task_commands,
)

COMMANDS: list[click.Command] = [
    local_commands.up,
    local_commands.down,
    local_commands.worker,
    auth_commands.signup,
    auth_commands.login,
    auth_commands.logout,
    task_commands.submit,
    task_commands.list_tasks,
    task_commands.get,
    info_commands.watch,
    task_commands.wait_tasks,
    task_commands.cancel,
    task_commands.retry,
    task_commands.rm,
    task_commands.clear,
    schedule_commands.schedule,
    info_commands.stats,
    info_commands.workers,
    info_commands.kinds,
    info_commands.health,
    operator_commands.operator,
]


class OrderedGroup(click.Group):
    """Lists commands in the order above (a tour), not alphabetically."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)


@click.group(cls=OrderedGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="rtask")
def cli() -> None:
    """rtask: run, watch and manage ResilientTask tasks from the terminal.

    Every command that talks to a server takes --server host:port (or $RTASK_SERVER, default
    localhost:8080). Read commands take --json. Exit codes: 0 ok, 1 refused, 2 bad arguments,
    3 not logged in, 4 not found, 5 server unreachable, 6 a waited task did not succeed,
    7 timed out.
    """


for command in COMMANDS:
    cli.add_command(command)


def main() -> None:
    cli(prog_name="rtask")
