"""The `rtask` command-line interface (click for parsing, rich for tables and live progress)."""

from __future__ import annotations

from resilienttask.cli.app import cli, main

__all__ = ["cli", "main"]
