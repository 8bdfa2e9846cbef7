"""The chaos report: printed after every run, and kept in a Markdown file (RTASK_CHAOS_REPORT) whose
sections each test replaces on its own, so the fault run and the sustained run share one document.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from pathlib import Path

from tests.chaos import profile

TITLE = "# Chaos report"


def header() -> str:
    return (
        f"{TITLE}\n\n"
        "Evidence that the reliability promises hold under crashes, outages and load, re-runnable by anyone.\n\n"
        f"- Command: `{profile.command()}`\n"
        f"- Profile: `{profile.current().name}` (see `tests/chaos/profile.py`)\n"
        f"- Date of the last run: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n"
    )


def bullet_list(items: Iterable[str], limit: int = 20) -> str:
    items = list(items)
    shown = [f"  - {item}" for item in items[:limit]]
    if len(items) > limit:
        shown.append(f"  - ... and {len(items) - limit} more")
    return "\n".join(shown)


def table(head: list[str], rows: Iterable[Iterable[object]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def write_section(key: str, body: str) -> None:
    """Replace this section of the report file (when one is configured), keeping the others."""
    target = profile.report_path()
    if target is None:
        return
    path = Path(target)
    text = path.read_text() if path.exists() else ""
    sections = dict(re.findall(r"<!-- section:(\S+) -->\n(.*?)<!-- /section -->\n", text, flags=re.S))
    sections[key] = body.rstrip() + "\n"
    parts = [header()]
    parts += [f"<!-- section:{name} -->\n{sections[name]}<!-- /section -->\n" for name in sorted(sections)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts))
