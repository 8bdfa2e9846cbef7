"""Metrics configuration: off unless a port is given; compose exposes each service's /metrics to its network only."""

from __future__ import annotations

import pytest

from services.core.config import ConfigError
from services.core.metrics import MetricsConfig
from services.core.settings import load
from tests.unit.test_deployment import OUR_SERVICES, load_compose


def test_metrics_are_off_unless_a_port_is_given() -> None:
    assert not load(MetricsConfig, {}).enabled
    assert not load(MetricsConfig, {"RTASK_METRICS_PORT": ""}).enabled
    assert load(MetricsConfig, {"RTASK_METRICS_PORT": "0"}) == MetricsConfig(port=0)
    config = load(
        MetricsConfig,
        {"RTASK_METRICS_PORT": "9464", "RTASK_METRICS_HOST": "0.0.0.0", "RTASK_METRICS_CLUSTER_INTERVAL_MS": "1000"},
    )
    assert config == MetricsConfig(port=9464, host="0.0.0.0", cluster_interval_ms=1000)


@pytest.mark.parametrize(
    "env",
    [{"RTASK_METRICS_PORT": "many"}, {"RTASK_METRICS_PORT": "70000"}, {"RTASK_METRICS_CLUSTER_INTERVAL_MS": "5"}],
)
def test_bad_metrics_settings_are_refused(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="RTASK_METRICS_"):
        load(MetricsConfig, env)


def test_compose_exposes_metrics_inside_its_network_and_publishes_nothing_more() -> None:
    services = load_compose()["services"]
    for role in OUR_SERVICES:
        spec = services[role]
        port = spec["environment"]["RTASK_METRICS_PORT"]
        assert spec["environment"]["RTASK_METRICS_HOST"] == "0.0.0.0", "reachable from the scraper's container"
        assert spec["expose"] == [port]
        assert "ports" not in spec, f"{role} publishes no port on the host"
