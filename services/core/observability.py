"""Metrics and tracing for the life of one service process: started before it serves, flushed and closed after."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from services.core import metrics, tracing


@contextmanager
def observed(tracing_config: tracing.TracingConfig, metrics_config: metrics.MetricsConfig) -> Iterator[None]:
    """Tracing on (when configured) and the /metrics endpoint up (when configured) for the `with` body."""
    tracing.configure(tracing_config)
    endpoint = metrics.start(metrics_config)
    try:
        yield
    finally:
        tracing.shutdown()
        if endpoint is not None:
            endpoint.close()
