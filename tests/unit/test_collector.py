"""Every service calms the cyclic garbage collector once it is built (services.core.collector)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import gc
from services.core.collector import GC_YOUNG_THRESHOLD, calm_the_collector
before = gc.get_threshold()
calm_the_collector()
print(gc.get_threshold()[0] == GC_YOUNG_THRESHOLD, gc.get_threshold()[1:] == before[1:], gc.get_freeze_count() > 0)
"""


def test_what_exists_is_frozen_and_the_young_generation_is_larger() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.split() == ["True", "True", "True"], out


@pytest.mark.parametrize("service", ["gateway", "scheduler", "worker"])
def test_each_service_calms_the_collector_once_built(service: str) -> None:
    """The call sits in the service's _serve, after what it builds at start-up (so that is what gets frozen)."""
    tree = ast.parse((ROOT / "services" / service / "main.py").read_text())
    (serve,) = [node for node in ast.walk(tree) if isinstance(node, ast.AsyncFunctionDef) and node.name == "_serve"]
    calls = [
        node
        for node in ast.walk(serve)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "calm_the_collector"
    ]
    assert len(calls) == 1
