"""The Kubernetes manifests (deploy/kubernetes/, and deploy/kubernetes-prometheus-operator/ on top):
valid against the Kubernetes schemas (``kubernetes-validate``, strict: unknown fields fail), clean
under ``checkov`` with every skipped check explained, and consistent with routegate and with each other."""

from __future__ import annotations

import json
import re
import subprocess
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from server.settings import SettingsError, load_settings
from server.shutdown import CLOSING_SECONDS
from tests.conftest import REPO
from tests.test_deploy_files import _setting_exists
from tests.tools import require_tool

MANIFESTS = REPO / "deploy/kubernetes"
#: the base plus the Prometheus Operator's PodMonitor and PrometheusRule (CRDs a plain cluster lacks)
OPERATOR = REPO / "deploy/kubernetes-prometheus-operator"
MEASURED_RSS_MIB = 700  # `mf` replica after load (README, Benchmark: 637-642 MiB; ~700 with batches)
NOT_IN_SCHEMAS = {"Kustomization", "PodMonitor", "PrometheusRule"}  # kustomize's file and the Prometheus Operator's CRDs


def _documents() -> list[tuple[str, dict[str, Any]]]:
    return [
        (path.name, document)
        for path in sorted([*MANIFESTS.glob("*.yaml"), *OPERATOR.glob("*.yaml")])
        for document in yaml.safe_load_all(path.read_text())
        if document
    ]


def _one(kind: str, name: str) -> dict[str, Any]:
    [found] = [doc for _, doc in _documents() if doc["kind"] == kind and doc["metadata"]["name"] == name]
    return found


def _quantity_mib(value: str) -> float:
    number, unit = re.fullmatch(r"(\d+(?:\.\d+)?)(Mi|Gi)", value).groups()
    return float(number) * (1024 if unit == "Gi" else 1)


@pytest.mark.parametrize("version", ["1.29.0", f"{kubernetes_validate.utils.latest_version()}.0"])
def test_manifests_validate_against_the_kubernetes_schemas(version: str) -> None:
    checked = 0
    for filename, document in _documents():
        if document["kind"] in NOT_IN_SCHEMAS:
            continue
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{filename} {document['kind']}/{document['metadata']['name']}: {error.message} at {list(error.path)}")
        checked += 1
    assert checked >= 11


def test_checkov_finds_nothing_and_every_skip_says_why() -> None:
    result = subprocess.run(
        [require_tool("checkov"), "-d", str(MANIFESTS.parent), "--framework", "kubernetes", "-o", "json", "--skip-download"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,  # checkov exits 1 on findings; the report says which
    )
    report = json.loads(result.stdout)
    failed = [(check["check_id"], check["resource"]) for check in report["results"]["failed_checks"]]
    assert failed == [] and report["summary"]["parsing_errors"] == 0
    assert report["summary"]["passed"] >= 150
    skipped = {
        (check["check_id"], check["resource"]): check["check_result"].get("suppress_comment", "")
        for check in report["results"]["skipped_checks"]
    }
    assert set(skipped) == {
        ("CKV_K8S_43", "Deployment.routegate.routegate"),  # image digest: users build the image
        ("CKV_K8S_35", "Deployment.routegate.routegate"),  # keys as env vars: how routegate reads settings
        ("CKV_K8S_43", "StatefulSet.routegate.routegate-redis"),
        ("CKV_K8S_35", "StatefulSet.routegate.routegate-redis"),
    }
    assert all(len(reason) > 20 for reason in skipped.values()), skipped


def test_kustomization_lists_every_manifest() -> None:
    """The base applies on any cluster (no Prometheus Operator kind in it); the operator's folder
    is the base and its two objects."""
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    files = {path.name for path in MANIFESTS.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(files)
    base_kinds = {doc["kind"] for path in files for doc in yaml.safe_load_all((MANIFESTS / path).read_text()) if doc}
    assert base_kinds.isdisjoint(NOT_IN_SCHEMAS) and {"Deployment", "Service", "HorizontalPodAutoscaler"} <= base_kinds
    operator = yaml.safe_load((OPERATOR / "kustomization.yaml").read_text())
    operator_files = {path.name for path in OPERATOR.glob("*.yaml")} - {"kustomization.yaml"}
    assert operator["resources"] == ["../kubernetes", *sorted(operator_files)]
    assert operator_files == {"podmonitor.yaml", "prometheusrule.yaml"}
    assert operator["namespace"] == kustomization["namespace"] and operator["labels"] == kustomization["labels"]
    assert all(
        doc["metadata"].get("namespace") == kustomization["namespace"]
        for _, doc in _documents()
        if doc["kind"] not in ("Namespace", "Kustomization")
    )


def test_deployment_probes_drain_and_resources_fit_routegate() -> None:
    settings = _one("ConfigMap", "routegate-settings")["data"]
    deployment = _one("Deployment", "routegate")
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    port, _ = container["ports"]  # the API port, then the metrics port
    assert port["containerPort"] == int(settings["ROUTEGATE_PORT"]) and settings["ROUTEGATE_HOST"] == "0.0.0.0"
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": port["name"]}
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": port["name"]}
    pause = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    grace = float(settings["ROUTEGATE_SHUTDOWN_GRACE_SECONDS"])
    # the pod leaves the endpoints during the pause, drains, then cleans up; the kubelet kills only after all three
    assert pause + grace + CLOSING_SECONDS < pod["terminationGracePeriodSeconds"] <= pause + grace + CLOSING_SECONDS + 10
    assert pause >= 2 * container["readinessProbe"]["periodSeconds"]
    resources = container["resources"]
    assert _quantity_mib(resources["requests"]["memory"]) >= MEASURED_RSS_MIB
    assert _quantity_mib(resources["limits"]["memory"]) >= 1.25 * MEASURED_RSS_MIB
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] and not security["allowPrivilegeEscalation"]
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] == 10001  # the image's user
    assert {mount["mountPath"] for mount in container["volumeMounts"]} == {"/tmp"}
    assert {env["value"].split("/")[1] for env in container["env"]} == {"tmp"}  # caches on the writable volume


def test_selectors_and_ports_agree() -> None:
    deployment = _one("Deployment", "routegate")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"] == labels
    service = _one("Service", "routegate")
    assert service["spec"]["selector"] == labels and service["spec"]["ports"][0]["targetPort"] == "http"
    for kind in ("PodDisruptionBudget", "PodMonitor", "NetworkPolicy"):
        spec = _one(kind, "routegate")["spec"]
        assert (spec.get("selector") or spec.get("podSelector"))["matchLabels"] == labels, kind
    ports = {port["name"]: port["containerPort"] for port in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]}
    settings = _one("ConfigMap", "routegate-settings")["data"]
    assert ports == {"http": int(settings["ROUTEGATE_PORT"]), "metrics": int(settings["ROUTEGATE_METRICS_PORT"])}
    api, scrapes = _one("NetworkPolicy", "routegate")["spec"]["ingress"]
    assert api == {"ports": [{"port": "http", "protocol": "TCP"}]}  # clients from anywhere
    assert scrapes["ports"] == [{"port": "metrics", "protocol": "TCP"}] and scrapes["from"][0]["namespaceSelector"]
    assert _one("PodMonitor", "routegate")["spec"]["podMetricsEndpoints"] == [
        {
            "port": "metrics",
            "path": "/metrics",
            "interval": "15s",
            "relabelings": [{"sourceLabels": ["__meta_kubernetes_namespace"], "targetLabel": "deployment"}],
        }
    ]
    rules = _one("PrometheusRule", "routegate")
    alerts = yaml.safe_load((REPO / "config/prometheus/alerts.yml").read_text())
    assert rules["spec"]["groups"] == alerts["groups"]  # make k8s-rules
    assert rules["metadata"]["labels"] == _one("PodMonitor", "routegate")["metadata"]["labels"]
    hpa = _one("HorizontalPodAutoscaler", "routegate")["spec"]
    assert "replicas" not in deployment["spec"]  # the HPA owns the count: a fixed one would reset it on every apply
    assert deployment["spec"]["template"]["spec"]["enableServiceLinks"] is False  # no ROUTEGATE_PORT=tcp://... from the Service
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "routegate"}
    assert hpa["minReplicas"] >= 2 and _one("PodDisruptionBudget", "routegate")["spec"]["maxUnavailable"] == 1

    redis = _one("StatefulSet", "routegate-redis")
    redis_labels = redis["spec"]["template"]["metadata"]["labels"]
    redis_service = _one("Service", "routegate-redis")
    assert redis_service["spec"]["selector"] == redis_labels and redis["spec"]["serviceName"] == "routegate-redis"
    allowed = _one("NetworkPolicy", "routegate-redis")["spec"]
    assert allowed["podSelector"]["matchLabels"] == redis_labels
    assert allowed["ingress"][0]["from"][0]["podSelector"]["matchLabels"] == labels
    secret = _one("Secret", "routegate-keys")["stringData"]
    url = urlsplit(secret["ROUTEGATE_REDIS_URL"])
    assert (url.hostname, url.port) == ("routegate-redis", redis_service["spec"]["ports"][0]["port"])
    assert url.password == secret["REDIS_PASSWORD"]
    assert "volatile-ttl" in redis["spec"]["template"]["spec"]["containers"][0]["args"]


def test_every_routegate_variable_is_a_valid_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {**_one("ConfigMap", "routegate-settings")["data"], **_one("Secret", "routegate-keys")["stringData"]}
    names = [name for name in env if name.startswith("ROUTEGATE_")]
    assert len(names) >= 15
    for name in names:
        assert _setting_exists(name), name
        monkeypatch.setenv(name, env[name])
    with pytest.raises(SettingsError) as refused:  # applied as shipped, the gateway would take a public client key
        load_settings()
    secrets = [name for name in _one("Secret", "routegate-keys")["stringData"] if name.startswith("ROUTEGATE_")]
    assert all(f"{name}: still holds the example Secret's" in str(refused.value) for name in secrets)
    for name in secrets:
        monkeypatch.setenv(name, env[name].replace("replace-me", "our-own"))
    try:
        settings = load_settings()
    except SettingsError as error:
        pytest.fail(str(error))
    assert settings.redis_url is not None and settings.api_keys
