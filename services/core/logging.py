"""Structured one-line JSON logs on stderr, so the launcher and log shippers can parse them."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}

# The task being handled in this context (a worker's attempt), named by every log line written meanwhile.
current_task_id: ContextVar[str | None] = ContextVar("rtask_log_task_id", default=None)
# The current trace id, when tracing is on (services.core.tracing installs it); None keeps logging free of it.
_trace_lookup: Callable[[], str | None] | None = None


def set_trace_lookup(lookup: Callable[[], str | None] | None) -> None:
    global _trace_lookup
    _trace_lookup = lookup


@contextmanager
def task_scope(task_id: str) -> Iterator[None]:
    """Log lines written inside carry task_id."""
    token = current_task_id.set(task_id)
    try:
        yield
    finally:
        current_task_id.reset(token)


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object, with extra fields kept as keys."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if (task_id := current_task_id.get()) is not None:
            entry["task_id"] = task_id
        if _trace_lookup is not None and (trace_id := _trace_lookup()) is not None:
            entry["trace_id"] = trace_id
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = value if isinstance(value, (int, float, bool, type(None))) else str(value)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(service: str, level: str = "INFO") -> None:
    """Route every logger to stderr as JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
