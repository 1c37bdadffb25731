"""deploy/k8s: every manifest validates against the Kubernetes schemas, the kustomizations list exactly the
files there, the GPU overlay patches what exists, and the pieces agree with each other and with the service."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import kubernetes_validate
import pytest
import yaml

from inference_api.settings import Settings
from tests.deploy.promql import DEPLOY, RULES_FILE, k8s_documents

K8S = DEPLOY / "k8s"
BASE = K8S / "base"
GPU = K8S / "overlays" / "gpu"
VLLM = K8S / "overlays" / "vllm"
KUBERNETES_VERSION = "1.30"
CRDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule")}
# Read by libraries, not by Settings; the ConfigMap sets them so nothing reaches for the network.
LIBRARY_ENV = {"HF_HUB_OFFLINE", "HF_HUB_DISABLE_TELEMETRY", "ANONYMIZED_TELEMETRY", "DO_NOT_TRACK"}

Resource = dict[str, Any]


def kustomization(folder: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((folder / "kustomization.yaml").read_text())
    return loaded


def build(folder: Path) -> list[Resource]:
    """The resources a kustomization yields: its resources (files or folders), then its patches applied."""
    spec = kustomization(folder)
    resources: list[Resource] = []
    for entry in spec.get("resources", []):
        path = folder / entry
        resources += build(path) if path.is_dir() else k8s_documents(path)
    for patch in spec.get("patches", []):
        for document in k8s_documents(folder / patch["path"]):
            (target,) = [r for r in resources if patch_target(patch, document) == (r["kind"], r["metadata"]["name"])]
            resources[resources.index(target)] = strategic_merge(target, document)
    return resources


def patch_target(patch: dict[str, Any], document: Resource) -> tuple[str, str]:
    target = patch.get("target", {})
    return target.get("kind", document["kind"]), target.get("name", document["metadata"]["name"])


def strategic_merge(base: Any, patch: Any) -> Any:
    """kustomize's strategic merge for what the overlay uses: maps merge, lists of named items merge by name."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = copy.deepcopy(base)
        for key, value in patch.items():
            merged[key] = strategic_merge(base[key], value) if key in base else copy.deepcopy(value)
        return merged
    if isinstance(base, list) and isinstance(patch, list) and all(isinstance(i, dict) and "name" in i for i in patch):
        merged_list = copy.deepcopy(base)
        for item in patch:
            names = [existing.get("name") for existing in merged_list]
            if item["name"] in names:
                index = names.index(item["name"])
                merged_list[index] = strategic_merge(merged_list[index], item)
            else:
                merged_list.append(copy.deepcopy(item))
        return merged_list
    return copy.deepcopy(patch)


def find(resources: list[Resource], kind: str, name: str) -> Resource:
    (found,) = [r for r in resources if r["kind"] == kind and r["metadata"]["name"] == name]
    return found


def container(pod_spec: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [c for c in pod_spec["containers"] if c["name"] == name]
    return found


@pytest.fixture(scope="module")
def base() -> list[Resource]:
    return build(K8S)


@pytest.fixture(scope="module")
def gpu() -> list[Resource]:
    return build(GPU)


@pytest.fixture(scope="module")
def vllm() -> list[Resource]:
    return build(VLLM)


def test_every_file_is_listed_in_its_folders_kustomization_and_every_listed_file_exists() -> None:
    folders = {path.parent for path in K8S.rglob("*.yaml")}
    for folder in folders:
        spec = kustomization(folder)
        listed = [*spec.get("resources", []), *(patch["path"] for patch in spec.get("patches", []))]
        for entry in listed:
            path = folder / entry
            assert path.is_file() or (path / "kustomization.yaml").is_file(), f"{folder}: {entry} does not exist"
        files = {path.name for path in folder.glob("*.yaml")} - {"kustomization.yaml"}
        assert files <= set(listed), f"{folder} has files no kustomization lists: {sorted(files - set(listed))}"
    assert kustomization(K8S)["resources"] == ["base"]
    assert kustomization(GPU)["resources"] == ["../../base"]


def test_the_build_holds_the_whole_service(base: list[Resource]) -> None:
    kinds = {(r["kind"], r["metadata"]["name"]) for r in base}
    assert kinds == {
        ("ConfigMap", "inference-api-config"),
        ("Secret", "inference-api-secrets"),
        ("Deployment", "inference-api"),
        ("Service", "inference-api"),
        ("HorizontalPodAutoscaler", "inference-api"),
        ("ServiceMonitor", "inference-api"),
        ("PrometheusRule", "inference-api"),
        ("StatefulSet", "redis"),
        ("Service", "redis"),
        ("StatefulSet", "chroma"),
        ("Service", "chroma"),
    }


@pytest.mark.parametrize("variant", ["base", "gpu", "vllm"])
def test_every_manifest_validates_against_the_kubernetes_schemas(variant: str, request: pytest.FixtureRequest) -> None:
    resources: list[Resource] = request.getfixturevalue(variant)
    for resource in resources:
        if (resource["apiVersion"], resource["kind"]) in CRDS:
            continue
        try:
            kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{resource['kind']}/{resource['metadata']['name']}: {exc.message} at {list(exc.path)}")


def test_the_schema_check_is_not_vacuous(base: list[Resource]) -> None:
    broken = copy.deepcopy(find(base, "Deployment", "inference-api"))
    broken["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["pathh"] = "/health"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_the_prometheus_rule_carries_exactly_the_rules_of_rules_yml(base: list[Resource]) -> None:
    rule = find(base, "PrometheusRule", "inference-api")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(rule) == {"apiVersion", "kind", "metadata", "spec"} and set(rule["spec"]) == {"groups"}
    assert rule["spec"]["groups"] == yaml.safe_load(RULES_FILE.read_text())["groups"], (
        "deploy/k8s/base/prometheusrule.yaml differs from deploy/prometheus/rules.yml: copy the groups over"
    )


def test_the_service_monitor_scrapes_the_metrics_path_of_the_api_service(base: list[Resource]) -> None:
    monitor = find(base, "ServiceMonitor", "inference-api")
    service = find(base, "Service", "inference-api")
    config = find(base, "ConfigMap", "inference-api-config")["data"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    others = [r for r in base if r["kind"] == "Service" and r is not service]
    assert not any(selector.items() <= r["metadata"]["labels"].items() for r in others)
    ports = {port["name"] for port in service["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in ports
        assert endpoint["path"] == config["METRICS_PATH"]
    # The job label is the Service's name; the alert rules select job="inference-api".
    assert service["metadata"]["name"] == "inference-api" and 'job="inference-api"' in RULES_FILE.read_text()


def test_services_select_the_pods_of_their_workloads(base: list[Resource]) -> None:
    for service_name, kind in (("inference-api", "Deployment"), ("redis", "StatefulSet"), ("chroma", "StatefulSet")):
        service = find(base, "Service", service_name)
        workload = find(base, kind, service_name)
        pod_labels = workload["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= pod_labels.items(), service_name
        assert workload["spec"]["selector"]["matchLabels"].items() <= pod_labels.items(), service_name
        container_ports = {p["name"] for c in workload["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= container_ports, service_name


def test_the_deployment_probes_drains_and_runs_unprivileged(base: list[Resource]) -> None:
    deployment = find(base, "Deployment", "inference-api")
    pod = deployment["spec"]["template"]["spec"]
    api = container(pod, "inference-api")
    config = find(base, "ConfigMap", "inference-api-config")["data"]
    assert api["livenessProbe"]["httpGet"]["path"] == "/health"
    assert api["readinessProbe"]["httpGet"]["path"] == "/ready"
    startup = api["startupProbe"]
    assert startup["httpGet"]["path"] == "/ready"
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300, "too little time to load a model"
    # SIGTERM comes after the preStop hook; uvicorn then waits DRAIN_TIMEOUT + 5 s and the engine DRAIN_TIMEOUT.
    pre_stop = int(api["lifecycle"]["preStop"]["exec"]["command"][-1])
    drain = float(config["DRAIN_TIMEOUT"])
    assert pod["terminationGracePeriodSeconds"] > pre_stop + 2 * drain + 5
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    for each in pod["containers"] + pod["initContainers"]:
        assert each["securityContext"]["allowPrivilegeEscalation"] is False, each["name"]
        assert each["securityContext"]["capabilities"]["drop"] == ["ALL"], each["name"]
        assert each["resources"]["requests"] and each["resources"]["limits"], each["name"]
    sources = {next(iter(s.values()))["name"] for s in api["envFrom"]}
    assert sources == {"inference-api-config", "inference-api-secrets"}
    mounts = {m["mountPath"]: m["name"] for m in api["volumeMounts"]}
    assert config["DATA_DIR"] in mounts
    assert mounts[config["DATA_DIR"]] in {v["name"] for v in pod["volumes"]}
    assert api["ports"][0]["containerPort"] == int(config["PORT"])


def test_the_config_and_secret_are_settings_the_service_accepts(
    base: list[Resource], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = find(base, "ConfigMap", "inference-api-config")["data"]
    secret = find(base, "Secret", "inference-api-secrets")["stringData"]
    fields = {name.upper() for name in Settings.model_fields}
    assert set(config) - fields == LIBRARY_ENV
    assert set(secret) <= fields
    for name in fields:
        monkeypatch.delenv(name, raising=False)
    for name, value in {**config, **secret}.items():
        monkeypatch.setenv(name, value)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.environment == "production" and settings.api_keys
    assert str(settings.metrics_path) == "/prometheus"


def test_redis_and_chroma_urls_point_at_their_services(base: list[Resource]) -> None:
    config = find(base, "ConfigMap", "inference-api-config")["data"]
    for variable, name in (("REDIS_URL", "redis"), ("CHROMA_URL", "chroma")):
        url = urlparse(config[variable])
        service = find(base, "Service", name)
        assert url.hostname == name
        assert url.port in {port["port"] for port in service["spec"]["ports"]}
        assert find(base, "StatefulSet", name)["spec"]["volumeClaimTemplates"], f"{name} keeps its data"


def test_the_autoscaler_scales_the_deployment(base: list[Resource]) -> None:
    target = find(base, "HorizontalPodAutoscaler", "inference-api")["spec"]["scaleTargetRef"]
    deployment = find(base, target["kind"], target["name"])
    assert target["apiVersion"] == deployment["apiVersion"]


def test_the_gpu_overlay_patches_what_exists(base: list[Resource]) -> None:
    spec = kustomization(GPU)
    assert spec["patches"]
    for patch in spec["patches"]:
        for document in k8s_documents(GPU / patch["path"]):
            kind, name = patch_target(patch, document)
            target = find(base, kind, name)
            pod, patched_pod = target["spec"]["template"]["spec"], document["spec"]["template"]["spec"]
            for key in ("containers", "initContainers"):
                existing = {c["name"] for c in pod.get(key, [])}
                for item in patched_pod.get(key, []):
                    assert item["name"] in existing, f"the patch names a {key[:-1]} {item['name']!r} that {name} lacks"


def test_the_gpu_overlay_asks_for_a_gpu_with_the_cuda_image(gpu: list[Resource], base: list[Resource]) -> None:
    pod = find(gpu, "Deployment", "inference-api")["spec"]["template"]["spec"]
    api = container(pod, "inference-api")
    assert api["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert (
        api["resources"]["limits"]["cpu"]
        == container(find(base, "Deployment", "inference-api")["spec"]["template"]["spec"], "inference-api")[
            "resources"
        ]["limits"]["cpu"]
    ), "the patch keeps the base's other limits"
    assert {"name": "DEVICE", "value": "cuda"} in api["env"]
    assert all("cuda" in c["image"] for c in pod["containers"] + pod["initContainers"])
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    # Everything else is the base, unchanged.
    assert [r for r in gpu if r["kind"] != "Deployment"] == [r for r in base if r["kind"] != "Deployment"]


def test_the_vllm_overlay_makes_the_service_a_gateway_over_each_vllm_replica(
    vllm: list[Resource], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = find(vllm, "ConfigMap", "inference-api-config")["data"]
    fleet = find(vllm, "StatefulSet", "vllm")
    service = find(vllm, "Service", fleet["spec"]["serviceName"])
    assert service["spec"]["clusterIP"] == "None"  # headless: one DNS name per replica
    assert service["spec"]["selector"] == fleet["spec"]["selector"]["matchLabels"]
    fields = {name.upper() for name in Settings.model_fields}
    for name in fields:
        monkeypatch.delenv(name, raising=False)
    for name, value in config.items():
        monkeypatch.setenv(name, value)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.backend == "openai"
    names = {f"{fleet['metadata']['name']}-{i}.{service['metadata']['name']}" for i in range(fleet["spec"]["replicas"])}
    urls = [urlparse(url) for url in settings.upstream_urls]
    assert {url.hostname for url in urls} == names
    assert {url.port for url in urls} == {port["port"] for port in service["spec"]["ports"]}
    engine = container(fleet["spec"]["template"]["spec"], "vllm")
    assert engine["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert f"--served-model-name={settings.upstream_model}" in engine["args"]
