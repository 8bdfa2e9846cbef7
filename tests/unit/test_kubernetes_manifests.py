"""The Kubernetes manifests (deploy/kubernetes/): every overlay renders with `kubectl kustomize` and every object it
renders is valid against the schemas of a pinned Kubernetes version (kubernetes-validate, strict: an unknown or
misspelt field fails); and the objects keep the promises docs/kubernetes.md makes (who gets which secret, the
drain's timing, gRPC probes, the edge config rendered like compose's)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from ruamel.yaml import YAML

from services.core import dispatch_functions, redis_acl
from services.deploy import redis_init
from services.edge.envoy_config import render_text
from services.edge.render import KUBERNETES_FILE, kubernetes_config

REPO = Path(__file__).resolve().parents[2]
KUBERNETES = REPO / "deploy" / "kubernetes"
OVERLAYS = sorted(p.name for p in (KUBERNETES / "overlays").iterdir() if p.is_dir())
# The oldest Kubernetes the manifests promise to run on (native gRPC probes are GA since 1.27).
KUBERNETES_VERSION = "1.33"
BIN = Path(sys.executable).parent
KUBECTL = str(BIN / "kubectl") if (BIN / "kubectl").exists() else "kubectl"
# Secrets each role's pods may mount (docs/security.md: each process holds only the secrets it needs).
SECRETS_OF = {
    "gateway": {"resilienttask-gateway"},
    "scheduler": {"resilienttask-scheduler"},
    "worker": {"resilienttask-worker"},
    "envoy": {"resilienttask-edge", "resilienttask-edge-tls"},
}


def render(directory: Path) -> list[dict[str, Any]]:
    """`kubectl kustomize directory`, as Python objects."""
    result = subprocess.run([KUBECTL, "kustomize", str(directory)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [obj for obj in YAML(typ="safe").load_all(result.stdout) if obj]


def validate(objects: list[dict[str, Any]]) -> None:
    for obj in objects:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {obj["metadata"]["name"]: obj for obj in objects if obj["kind"] == kind}


def container(deployment: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    return found


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(KUBERNETES / "overlays" / request.param)


def test_every_overlay_renders_and_every_object_is_valid(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    overlay, objects = rendered
    validate(objects)
    deployments = by_kind(objects, "Deployment")
    assert set(deployments) == {f"resilienttask-{c}" for c in ("gateway", "scheduler", "worker", "envoy")}
    services = by_kind(objects, "Service")
    assert services["gateway"]["spec"]["clusterIP"] == "None", "headless: Envoy's STRICT_DNS finds every pod"
    assert services["scheduler"]["spec"]["clusterIP"] == "None", "headless: workers spread over every scheduler"
    assert {services[s]["spec"]["type"] for s in ("postgres", "redis")} == {"ExternalName"}
    if overlay == "production":
        assert set(by_kind(objects, "PodDisruptionBudget")) == set(deployments)
        (hpa,) = by_kind(objects, "HorizontalPodAutoscaler").values()
        assert hpa["spec"]["scaleTargetRef"]["name"] == "resilienttask-worker"


def test_pods_hold_only_their_roles_secrets(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = rendered
    for name, deployment in by_kind(objects, "Deployment").items():
        role = name.removeprefix("resilienttask-")
        pod = deployment["spec"]["template"]["spec"]
        mounted = {v["secret"]["secretName"] for v in pod.get("volumes", []) if "secret" in v}
        for c in pod["containers"] + pod.get("initContainers", []):
            for env in c.get("env", []):
                if "secretKeyRef" in env.get("valueFrom", {}):
                    mounted.add(env["valueFrom"]["secretKeyRef"]["name"])
        assert mounted <= SECRETS_OF[role], (role, mounted)
        keys = {item["key"] for v in pod.get("volumes", []) if "secret" in v for item in v["secret"].get("items", [])}
        if role in ("gateway", "envoy"):
            assert "jwt_secret" in keys
        else:
            assert "jwt_secret" not in keys, f"the user-token key reached the {role}"
        if role != "scheduler":
            assert "worker_key" not in keys, f"the worker-token key reached the {role}"


def test_services_are_probed_over_grpc_health_and_the_worker_drains_before_it_stops(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, objects = rendered
    deployments = by_kind(objects, "Deployment")
    for role, port in (("gateway", 50051), ("scheduler", 50061), ("worker", 50071)):
        c = container(deployments[f"resilienttask-{role}"], role)
        assert c["readinessProbe"]["grpc"] == {"port": port}
        assert c["livenessProbe"]["grpc"] == {"port": port, "service": "liveness"}
        assert "limits" in c["resources"] and "requests" in c["resources"]
    worker = deployments["resilienttask-worker"]
    c = container(worker, "worker")
    hook = c["lifecycle"]["preStop"]["exec"]["command"]
    assert hook[0] == "rtask-worker-drain" and c["command"] == ["rtask-worker"], "the hook signals PID 1"
    env = {e["name"]: e.get("value") for e in c["env"]}
    drain_s, hook_timeout_s = float(env["RTASK_WORKER_DRAIN_GRACE_S"]), float(hook[hook.index("--timeout") + 1])
    cancel_grace_s, reports_s, shutdown_s = 0.5, 3.0, 5.0  # worker defaults: cancel grace, contact timeout, server
    assert drain_s + cancel_grace_s + reports_s < hook_timeout_s, "the hook waits for the whole drain"
    grace_s = worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert hook_timeout_s + shutdown_s + cancel_grace_s + reports_s < grace_s, "the pod outlives hook and SIGTERM"


def test_envoy_reads_the_edge_config_rendered_like_composes(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    overlay, objects = rendered
    assert KUBERNETES_FILE.read_text() == render_text(kubernetes_config()), (
        "stale: run `python -m services.edge.render kubernetes`"
    )
    (config_map,) = [o for o in by_kind(objects, "ConfigMap").values() if o["metadata"]["name"].startswith("envoy-")]
    config = json.loads(config_map["data"]["envoy.json"])
    (gateways,) = [c for c in config["static_resources"]["clusters"] if c["name"] == "gateways"]
    assert gateways["type"] == "STRICT_DNS"
    endpoint = gateways["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert endpoint["address"]["socket_address"] == {"address": "gateway", "port_value": 50051}
    if overlay == "production":
        origins = ["https://tasks.example.com"]
        assert config_map["data"]["envoy.json"] == render_text(kubernetes_config(origins)), (
            "stale: render it with the command in overlays/production/kustomization.yaml"
        )


def test_a_broken_manifest_fails_the_check(tmp_path: Path) -> None:
    """The check can fail: a misspelt field, a wrong type and a missing required field are each refused."""
    shutil.copytree(KUBERNETES, tmp_path / "kubernetes")
    base = tmp_path / "kubernetes" / "base"
    original = (base / "worker.yaml").read_text()
    for broken in (
        original.replace("terminationGracePeriodSeconds: 60", "terminationGracePeriodSecond: 60"),
        original.replace("minReplicas: 2", 'minReplicas: "two"'),
        original.replace("      containers:\n        - name: worker\n", "      containers:\n        - nam: worker\n"),
    ):
        assert broken != original
        (base / "worker.yaml").write_text(broken)
        objects = render(tmp_path / "kubernetes" / "overlays" / "production")
        with pytest.raises(kubernetes_validate.ValidationError):
            validate([o for o in objects if o["metadata"]["name"] == "resilienttask-worker"])


def test_the_function_library_is_loaded_by_a_job_of_its_version_holding_the_operators_password_only(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, objects = rendered
    (job,) = by_kind(objects, "Job").values()
    assert job["metadata"]["name"] == f"resilienttask-redis-functions-{dispatch_functions.LIBRARY.rsplit('_', 1)[1]}"
    pod = job["spec"]["template"]["spec"]
    (only,) = pod["containers"]
    assert only["command"][:2] == ["rtask-redis-init", "--load-functions"]
    (volume,) = [v for v in pod["volumes"] if "secret" in v]
    assert volume["secret"]["secretName"] == "resilienttask-valkey"
    assert volume["secret"]["items"] == [{"key": "admin_password", "path": redis_init.secret_name(redis_acl.ADMIN)}]
    (url,) = [e["valueFrom"]["configMapKeyRef"] for e in only["env"] if e["name"] == "REDIS_URL"]
    (config,) = [c for c in by_kind(objects, "ConfigMap").values() if url["key"] in c.get("data", {})]
    assert config["data"][url["key"]].startswith(f"redis://{redis_acl.USERS[redis_acl.ADMIN].name}@")
    assert pod["automountServiceAccountToken"] is False and only["securityContext"]["readOnlyRootFilesystem"]


def test_the_secrets_script_makes_one_valid_secret_per_role() -> None:
    result = subprocess.run(
        [
            str(KUBERNETES / "create-secrets.sh"),
            "--database-url",
            "postgresql://rtask:x@postgres:5432/rtask",
            "--print",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": f"{BIN}:/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    secrets = {s["metadata"]["name"]: s for s in YAML(typ="safe").load_all(result.stdout) if s}
    validate(list(secrets.values()))
    assert {name: set(s["data"]) for name, s in secrets.items()} == {
        "resilienttask-gateway": {"database_url", "jwt_secret", "redis_services_password"},
        "resilienttask-scheduler": {"database_url", "worker_key", "worker_enrolment_secret", "redis_services_password"},
        "resilienttask-worker": {"worker_enrolment_secret", "redis_worker_password"},
        "resilienttask-edge": {"jwt_secret"},
        "resilienttask-valkey": {"users.acl", "admin_password"},
    }
    data = {(name, key): value for name, s in secrets.items() for key, value in s["data"].items()}
    assert data["resilienttask-gateway", "jwt_secret"] == data["resilienttask-edge", "jwt_secret"]
    assert len({data["resilienttask-gateway", "jwt_secret"], data["resilienttask-scheduler", "worker_key"]}) == 2
