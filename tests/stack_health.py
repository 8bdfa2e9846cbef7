"""The stack's recent health events, attached to the report of a failed test that used the stack.

A test that fails on "no healthy upstream" says nothing about why Envoy saw no healthy replica; the services'
health changes, their loops' crashes and Envoy's failed checks (services/edge/envoy_config.py logs them) do.
"""

from __future__ import annotations

from pathlib import Path

# Substrings of the log lines that explain a replica's health: the services' JSON logs, Envoy's check events.
_MARKERS = (
    '"health changed"',
    '"background loop',
    '"readiness probe failed"',
    "health_check_failure_event",
    "eject_unhealthy_event",
    '"add_healthy_event":{"first_check":false}',
)


def _timestamp(line: str) -> str:
    """The line's ISO timestamp (both log formats carry one), for ordering lines of several files."""
    for key in ('"ts": "', '"timestamp":"'):
        start = line.find(key)
        if start >= 0:
            return line[start + len(key) : start + len(key) + 24]
    return ""


def recent_health_events(log_dir: Path, limit: int = 40) -> str:
    """The last `limit` health events of every process log in `log_dir`, oldest first, each with its file."""
    events: list[tuple[str, str]] = []
    for path in sorted(log_dir.glob("*.log")):
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        events += [
            (_timestamp(line), f"{path.stem}: {line[:400]}")
            for line in text.splitlines()
            if any(m in line for m in _MARKERS)
        ]
    events.sort()
    return "\n".join(line for _, line in events[-limit:])
