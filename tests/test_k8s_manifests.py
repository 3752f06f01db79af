"""deploy/k8s/: every manifest validates offline against the Kubernetes schemas, and says what the
server needs (probes on its real routes, a GPU per replica, a grace period longer than its own,
WebSocket timeouts, an HPA on a metric the server really exports)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

K8S = Path(__file__).resolve().parent.parent / "deploy" / "k8s"
kv = pytest.importorskip("kubernetes_validate")


def load(name: str) -> Any:
    return yaml.safe_load((K8S / name).read_text())


def resources() -> dict[str, Any]:
    kustomization = load("kustomization.yaml")
    return {
        doc["kind"]: doc
        for name in kustomization["resources"]
        for doc in yaml.safe_load_all((K8S / name).read_text())
    }


@pytest.mark.parametrize("name", load("kustomization.yaml")["resources"])
def test_manifest_validates_strictly(name: str) -> None:
    version = kv.utils.latest_version()
    for doc in yaml.safe_load_all((K8S / name).read_text()):
        kv.validate(doc, version, strict=True)  # strict: an unknown (misspelt) field fails too


def test_validation_catches_a_broken_manifest() -> None:
    doc = load("deployment.yaml")
    doc["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"] = [8000]
    with pytest.raises(kv.utils.ValidationError):
        kv.validate(doc, kv.utils.latest_version(), strict=True)
    doc = load("deployment.yaml")
    doc["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kv.utils.ValidationError):
        kv.validate(doc, kv.utils.latest_version(), strict=True)


def test_deployment_matches_the_server() -> None:
    from server.app import ROUTES
    from server.config import Settings

    r = resources()
    pod = r["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz" in ROUTES
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz" in ROUTES
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    env = {e["name"]: e.get("value") for e in container["env"]}
    shutdown = float(
        env.get("EMOTION_SHUTDOWN_TIMEOUT_S") or Settings.model_fields["shutdown_timeout_s"].default
    )
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] > pre_stop + shutdown
    assert env["EMOTION_DEVICE"] == "cuda" and env["EMOTION_HOST"] == "0.0.0.0"
    port = container["ports"][0]
    assert port["containerPort"] == int(env["EMOTION_PORT"] or 0)
    labels = r["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert r["Service"]["spec"]["selector"].items() <= labels.items()
    assert r["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    backend = r["Ingress"]["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == r["Service"]["metadata"]["name"]


def test_ingress_keeps_websockets_open() -> None:
    notes = resources()["Ingress"]["metadata"]["annotations"]
    for key in ("proxy-read-timeout", "proxy-send-timeout"):
        assert int(notes[f"nginx.ingress.kubernetes.io/{key}"]) >= 3600


def test_hpa_scales_on_a_metric_the_server_exports() -> None:
    from server.metrics import Metrics

    r = resources()
    hpa = r["HorizontalPodAutoscaler"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == r["Deployment"]["metadata"]["name"]
    (metric,) = hpa["spec"]["metrics"]
    name = metric["pods"]["metric"]["name"]
    exported = Metrics().render().decode()
    assert f"# TYPE {name} gauge" in exported
    adapter = load("prometheus-adapter-values.yaml")["rules"]["custom"]
    assert any(rule["name"]["as"] == name and name in rule["seriesQuery"] for rule in adapter)


def test_the_hpa_owns_the_replica_count_and_a_drain_keeps_one_serving() -> None:
    """A `replicas` in the Deployment would reset the HPA's count on every `kubectl apply`; with
    the HPA's minimum at the PDB's minAvailable, `kubectl drain` could never evict the last pod."""
    r = resources()
    assert "replicas" not in r["Deployment"]["spec"]
    hpa, pdb = r["HorizontalPodAutoscaler"]["spec"], r["PodDisruptionBudget"]["spec"]
    assert hpa["minReplicas"] > pdb["minAvailable"]
