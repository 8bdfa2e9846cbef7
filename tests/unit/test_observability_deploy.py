"""The monitoring files an operator deploys (deploy/observability/, deploy/autoscaling/), checked without a server.

`promtool` (Debian's `prometheus` package, installed by `make deploy-deps`) checks the scrape config and the rule
file and runs the rules' unit tests (alerts.test.yml: each alert fires on the series that should trigger it and
stays quiet on expected client errors); the Grafana dashboard's queries are parsed by the same PromQL parser.
Every metric name any of these files uses is one the services export, so a rename breaks this test.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from services.core.metrics import PREFIX
from services.edge.envoy_config import PROMETHEUS_STATS_PATH
from services.edge.render import COMPOSE_STATS_PORT

ROOT = Path(__file__).resolve().parents[2]
OBSERVABILITY = ROOT / "deploy" / "observability"
AUTOSCALING = ROOT / "deploy" / "autoscaling"
DASHBOARD = OBSERVABILITY / "grafana" / "dashboards" / "resilienttask.json"
DATASOURCES = OBSERVABILITY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"

# The series the services export (docs/metrics.md says what each one means). Histograms are also scraped as
# <name>_bucket, <name>_sum and <name>_count.
COUNTERS = {
    "resilienttask_tasks_submitted_total",
    "resilienttask_tasks_started_total",
    "resilienttask_tasks_finished_total",
    "resilienttask_task_retries_total",
    "resilienttask_tasks_dead_lettered_total",
    "resilienttask_tasks_reclaimed_total",
    "resilienttask_reports_fenced_total",
    "resilienttask_grpc_server_handled_total",
    "resilienttask_watch_events_delivered_total",
    "resilienttask_watch_subscriber_overflows_total",
}
GAUGES = {
    "resilienttask_queue_depth",
    "resilienttask_queue_oldest_age_seconds",
    "resilienttask_workers_alive",
    "resilienttask_worker_slots",
    "resilienttask_watch_streams_open",
    "resilienttask_db_pool_connections",
    "resilienttask_redis_pool_connections",
    "resilienttask_worker_slots_busy",
}
HISTOGRAMS = {
    "resilienttask_task_queue_wait_seconds",
    "resilienttask_task_run_seconds",
    "resilienttask_grpc_server_handling_seconds",
    "resilienttask_worker_handler_seconds",
}
EXPORTED = COUNTERS | GAUGES | {f"{h}{suffix}" for h in HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")}
# Envoy's own series the dashboard charts (README "Envoy admin and metrics").
ENVOY = {"envoy_http_downstream_rq_xx", "envoy_cluster_membership_healthy"}
METRIC = re.compile(r"\b(resilienttask_[a-z_]+|envoy_[a-z_]+)\b")
# Label names that happen to start like a metric (envoy_cluster_name="gateways").
ENVOY_LABELS = {"envoy_http_conn_manager_prefix", "envoy_response_code_class", "envoy_cluster_name"}


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool is missing: `make deploy-deps` installs Debian's prometheus package")
    return found


def run_promtool(*argv: str, cwd: Path = OBSERVABILITY) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *argv], cwd=cwd, capture_output=True, text=True, timeout=60)


def load_yaml(path: Path) -> Any:
    return YAML(typ="safe").load(path.read_text())


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def test_the_scrape_config_and_rules_pass_promtool() -> None:
    result = run_promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout


def test_each_alert_fires_when_it_should_and_not_on_client_errors(tmp_path: Path) -> None:
    result = run_promtool("test", "rules", "alerts.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    tested = set(re.findall(r"alertname: (\w+)", (OBSERVABILITY / "alerts.test.yml").read_text()))
    defined = {rule["alert"] for group in load_yaml(OBSERVABILITY / "alerts.yml")["groups"] for rule in group["rules"]}
    assert tested == defined, f"alerts without a test: {defined - tested}"
    # The tests bite: counting NOT_FOUND as an error makes the flood of them in the tests fire the alert.
    for name in ("alerts.yml", "alerts.test.yml"):
        shutil.copy(OBSERVABILITY / name, tmp_path / name)
    rules = tmp_path / "alerts.yml"
    rules.write_text(rules.read_text().replace("|NOT_FOUND|", "|", 1))
    broken = run_promtool("test", "rules", "alerts.test.yml", cwd=tmp_path)
    assert broken.returncode != 0 and "GetTask" in broken.stdout + broken.stderr


def test_every_dashboard_query_parses(tmp_path: Path) -> None:
    """Each panel query, as a recording rule, through promtool's PromQL parser (Grafana's $__rate_interval → 1m)."""
    queries = dashboard_queries()
    assert len(queries) >= 20
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"panel_query_{i}", "expr": q.replace("$__rate_interval", "1m")}
                    for i, q in enumerate(queries)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(json.dumps(rules))
    result = run_promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    path.write_text(json.dumps(rules).replace("sum by (outcome)", "sum by (outcome", 1))
    assert run_promtool("check", "rules", str(path)).returncode != 0, "the parser refuses a broken query"


def test_the_dashboard_charts_what_an_operator_needs_from_the_provisioned_source() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    (source,) = load_yaml(DATASOURCES)["datasources"]
    queries = "\n".join(dashboard_queries())
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == source["uid"], panel["title"]
            assert panel["targets"] and panel["description"], panel["title"]
    needed = [
        "sum by (outcome) (rate(resilienttask_tasks_finished_total",  # throughput by outcome
        "resilienttask_queue_depth",
        "resilienttask_queue_oldest_age_seconds",
        "histogram_quantile(0.99, sum by (le) (rate(resilienttask_task_queue_wait_seconds_bucket",
        "resilienttask_task_run_seconds_bucket",
        "resilienttask_grpc_server_handling_seconds_bucket",
        'resilienttask_grpc_server_handled_total{code!~"OK|',  # error ratio
        "resilienttask_watch_streams_open",
        "resilienttask_db_pool_connections",
        "resilienttask_redis_pool_connections",
    ]
    for fragment in needed:
        assert fragment in queries, fragment
    # Panels tile the grid without overlapping.
    cells = set()
    for panel in dashboard["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, panel["title"]
                cells.add((x, y))


def test_the_list_above_is_what_the_services_define_and_document() -> None:
    """Each series of the list is defined in services/ (as f"{PREFIX}_<name>", the one way they are named there) and
    has a row in docs/metrics.md: a series renamed in the code or the docs fails here, not on an operator's screen."""
    sources = "".join(path.read_text() for path in (ROOT / "services").rglob("*.py"))
    defined = {f"{PREFIX}_{name}" for name in re.findall(r'f"\{PREFIX\}_([a-z_]+)"', sources)}
    bases = {name.removesuffix("_total") for name in COUNTERS} | GAUGES | HISTOGRAMS
    assert bases <= defined, f"not defined by any service: {bases - defined}"
    documented = set(re.findall(r"^\| `(resilienttask_[a-z_]+)`", (ROOT / "docs" / "metrics.md").read_text(), re.M))
    assert documented >= COUNTERS | GAUGES | HISTOGRAMS, (
        f"not in docs/metrics.md: {(COUNTERS | GAUGES | HISTOGRAMS) - documented}"
    )


def test_every_metric_name_used_is_one_the_services_export() -> None:
    files = [
        OBSERVABILITY / "alerts.yml",
        OBSERVABILITY / "alerts.test.yml",
        DASHBOARD,
        *sorted(AUTOSCALING.glob("*.yaml")),
    ]
    used: dict[str, set[str]] = {}
    for path in files:
        for name in set(METRIC.findall(path.read_text())) - ENVOY_LABELS:
            used.setdefault(name, set()).add(path.name)
    unknown = {name: where for name, where in used.items() if name not in EXPORTED | ENVOY}
    assert not unknown, f"not exported by any service: {unknown}"
    assert {"resilienttask_queue_oldest_age_seconds", "resilienttask_queue_depth"} <= set(used)
    assert any("resilienttask_queue_depth" in query for query in autoscaling_queries())
    # Histograms are only used through their series (_bucket, _sum, _count), never by their bare name; counters only
    # through rate() or increase(): a raw counter plotted or compared means nothing after a restart.
    assert not set(used) & HISTOGRAMS
    queries = [*dashboard_queries(), *autoscaling_queries()]
    queries += [rule["expr"] for group in load_yaml(OBSERVABILITY / "alerts.yml")["groups"] for rule in group["rules"]]
    for query in queries:
        for counter in COUNTERS & set(METRIC.findall(query)):
            assert re.search(rf"(rate|increase)\({counter}\b", query), (counter, query)


def test_compose_wires_prometheus_and_grafana_to_these_files() -> None:
    compose = load_yaml(ROOT / "docker-compose.yml")
    services = compose["services"]
    config = load_yaml(OBSERVABILITY / "prometheus.yml")
    mounts = {v.split(":")[1]: v.split(":")[0] for v in services["prometheus"]["volumes"] if isinstance(v, str)}
    config_path = next(a.split("=", 1)[1] for a in services["prometheus"]["command"] if a.startswith("--config.file="))
    assert mounts[config_path] == "./deploy/observability/prometheus.yml"
    for rule_file in config["rule_files"]:
        assert mounts[str(Path(config_path).parent / rule_file)] == f"./deploy/observability/{rule_file}"
    grafana = {v.split(":")[1]: v.split(":")[0] for v in services["grafana"]["volumes"] if isinstance(v, str)}
    assert grafana["/etc/grafana/provisioning"] == "./deploy/observability/grafana/provisioning"
    assert grafana["/var/lib/grafana/dashboards"] == "./deploy/observability/grafana/dashboards"
    assert load_yaml(DATASOURCES)["datasources"][0]["url"] == "http://prometheus:9090"
    # One job per service of ours, on the port the services serve metrics on; Envoy on its stats listener.
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    metrics_port = int(compose["x-env"]["RTASK_METRICS_PORT"])
    for role in ("gateway", "scheduler", "worker"):
        (sd,) = jobs[f"resilienttask-{role}"]["dns_sd_configs"]
        assert sd["names"] == [role] and sd["port"] == metrics_port
        assert services[role]["environment"]["RTASK_METRICS_PORT"] == str(metrics_port)
    assert jobs["envoy"]["metrics_path"] == PROMETHEUS_STATS_PATH
    assert jobs["envoy"]["static_configs"] == [{"targets": [f"envoy:{COMPOSE_STATS_PORT}"]}]
    # The default stack stays small: both only with the profile.
    assert services["prometheus"]["profiles"] == services["grafana"]["profiles"] == ["observability"]


# ---- the autoscaling examples (deploy/autoscaling/) ---------------------------------------------------------


def autoscaling_queries() -> list[str]:
    """Every PromQL query of the KEDA triggers and of the adapter's rules (its template filled in)."""
    keda = load_yaml(AUTOSCALING / "keda-scaledobject.yaml")
    adapter = load_yaml(AUTOSCALING / "prometheus-adapter-values.yaml")
    queries = [trigger["metadata"]["query"] for trigger in keda["spec"]["triggers"]]
    for rule in adapter["rules"]["external"]:
        series = re.match(r"[a-z_]+", rule["seriesQuery"])
        assert series is not None
        queries.append(rule["metricsQuery"].replace("<<.Series>>", series.group()).replace("<<.LabelMatchers>>", ""))
    return queries


def test_the_worker_deployment_and_hpa_are_valid_kubernetes_objects() -> None:
    import kubernetes_validate

    deployment = load_yaml(AUTOSCALING / "worker-deployment.yaml")
    hpa = load_yaml(AUTOSCALING / "hpa.yaml")
    for obj in (deployment, hpa):
        kubernetes_validate.validate(obj, "1.33", strict=True)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate({**hpa, "spec": {**hpa["spec"], "minReplicas": "one"}}, "1.33", strict=True)
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "resilienttask-worker",
    }
    assert deployment["metadata"]["name"] == "resilienttask-worker"
    # The adapter serves the external metrics the HPA asks for.
    adapter = load_yaml(AUTOSCALING / "prometheus-adapter-values.yaml")
    served = {rule["name"]["as"] for rule in adapter["rules"]["external"]}
    asked = {metric["external"]["metric"]["name"] for metric in hpa["spec"]["metrics"]}
    assert asked <= served
    # One worker per RTASK_WORKER_SLOTS queued tasks, in both examples.
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {item["name"]: item["value"] for item in container["env"] if "value" in item}
    assert hpa["spec"]["metrics"][0]["external"]["target"]["averageValue"] == env["RTASK_WORKER_SLOTS"]
    # Scale-down leaves the drain time: the grace period exceeds the worker's drain grace (10 s).
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > 10


def test_the_keda_scaled_object_targets_the_workers_with_queries_that_parse(tmp_path: Path) -> None:
    """KEDA's ScaledObject is a custom resource: kubernetes-validate has no schema for it, so its shape is checked
    here, and its queries (with the adapter's) by promtool's parser."""
    keda = load_yaml(AUTOSCALING / "keda-scaledobject.yaml")
    deployment = load_yaml(AUTOSCALING / "worker-deployment.yaml")
    assert keda["apiVersion"] == "keda.sh/v1alpha1" and keda["kind"] == "ScaledObject"
    assert keda["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert 1 <= keda["spec"]["minReplicaCount"] < keda["spec"]["maxReplicaCount"]
    for trigger in keda["spec"]["triggers"]:
        assert trigger["type"] == "prometheus" and trigger["metricType"] in ("AverageValue", "Value")
        assert float(trigger["metadata"]["threshold"]) > 0
        assert trigger["metadata"]["serverAddress"].startswith("http")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    slots = next(item["value"] for item in container["env"] if item["name"] == "RTASK_WORKER_SLOTS")
    assert keda["spec"]["triggers"][0]["metadata"]["threshold"] == slots
    queries = autoscaling_queries()
    assert len(queries) == 4
    path = tmp_path / "autoscaling-queries.yml"
    rules = [{"record": f"autoscaling_query_{i}", "expr": q} for i, q in enumerate(queries)]
    path.write_text(json.dumps({"groups": [{"name": "autoscaling", "rules": rules}]}))
    result = run_promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
