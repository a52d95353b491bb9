"""deploy/kubernetes/: valid against the Kubernetes schemas (offline, kubernetes-validate), and
consistent with the worker: probes, drain, sizing from the capacity bench, providers the image
installs, secrets only from the Secret."""

from __future__ import annotations

import json
import re
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.deploy_files import ROOT, uninstalled
from worker.config import load_settings
from worker.entrypoint import WORKER_NEEDS, worker_options

K8S = ROOT / "deploy" / "kubernetes"
CAPACITY = ROOT / "docs" / "bench" / "capacity.json"
SCHEMA_VERSIONS = ("1.28", kubernetes_validate.latest_version())
"""The oldest Kubernetes still common in managed clusters, and the newest schema shipped."""


def manifests() -> dict[str, dict[str, Any]]:
    """kind -> the resource, from every file kustomization.yaml lists."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = kustomization["resources"]
    assert sorted(listed) == sorted(p.name for p in K8S.glob("*.yaml") if p.stem != "kustomization")
    found: dict[str, dict[str, Any]] = {}
    for name in listed:
        for doc in yaml.safe_load_all((K8S / name).read_text()):
            assert doc["kind"] not in found, doc["kind"]
            found[doc["kind"]] = doc
    return found


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (worker,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(worker)


def container_env(deployment: dict[str, Any], configmap: dict[str, Any]) -> dict[str, str]:
    """What the worker sees, but the Secret: the ConfigMap's data, then literal env entries."""
    worker = container(deployment)
    refs = [ref.get("configMapRef", {}).get("name") for ref in worker["envFrom"]]
    assert configmap["metadata"]["name"] in refs
    env = dict(configmap["data"])
    env.update({e["name"]: e["value"] for e in worker.get("env", []) if "value" in e})
    return env


def cpu_cores(quantity: str) -> float:
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def megabytes(quantity: str) -> float:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "K": 10**3, "M": 10**6, "G": 10**9}
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([KMG]i?)?", quantity)
    assert match, quantity
    return float(match[1]) * units.get(match[2] or "", 1) / 1e6


@pytest.mark.parametrize("version", SCHEMA_VERSIONS)
def test_every_manifest_is_valid_against_the_kubernetes_schemas(version: str) -> None:
    for kind, resource in manifests().items():
        # strict: a misspelt or misplaced field is an error, not silently dropped by the API
        assert kubernetes_validate.validate(resource, version, strict=True), kind


def test_the_schema_check_rejects_a_misplaced_field() -> None:
    deployment = manifests()["Deployment"]
    worker = container(deployment)
    worker["livenessProbe"]["path"] = "/healthz"  # belongs under httpGet
    deployment["spec"]["template"]["spec"]["containers"] = [worker]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, SCHEMA_VERSIONS[-1], strict=True)


def test_probes_drain_and_the_metrics_scrape_match_the_worker() -> None:
    found = manifests()
    deployment = found["Deployment"]
    pod = deployment["spec"]["template"]
    worker = container(deployment)
    env = container_env(deployment, found["ConfigMap"])
    ports = {p["name"]: p["containerPort"] for p in worker["ports"]}
    assert ports["health"] == int(env["WORKER_PORT"])
    assert ports["metrics"] == int(env["PROMETHEUS_PORT"])
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        assert worker[probe]["httpGet"] == {"path": path, "port": "health"}, probe
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == ports["metrics"]
    assert annotations["prometheus.io/path"] == "/metrics"
    # SIGTERM drains for --drain-timeout; Kubernetes kills at the grace period: it must be longer.
    args = worker["args"]
    assert args[:4] == ["python", "-m", "worker", "start"]
    drain = int(args[args.index("--drain-timeout") + 1])
    assert drain >= 600  # a voice call outlasts minutes: a shorter drain cuts calls off
    assert pod["spec"]["terminationGracePeriodSeconds"] > drain
    # A rollout adds a pod before it drains one (no capacity dip while calls drain).
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_the_pod_runs_non_root_on_a_read_only_root_filesystem() -> None:
    deployment = manifests()["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    worker = container(deployment)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # the image's user (Dockerfile USER)
    assert re.search(r"^USER 10001$", (ROOT / "Dockerfile").read_text(), re.M)
    security = worker["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    # Python's temp files (multiprocessing, tempfile) need one writable place.
    (tmp,) = [m for m in worker["volumeMounts"] if m["mountPath"] == "/tmp"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == tmp["name"]]
    assert "emptyDir" in volume
    assert pod["automountServiceAccountToken"] is False


def test_secrets_come_only_from_the_secret() -> None:
    found = manifests()
    deployment = found["Deployment"]
    worker = container(deployment)
    assert {"secretRef": {"name": "lk-voice-worker"}} in worker["envFrom"]
    env = container_env(deployment, found["ConfigMap"])
    secretish = [name for name in env if re.search(r"(KEY|SECRET|TOKEN|PASSWORD)$", name)]
    assert secretish == []
    # With the Secret's four values the worker's own start-up validation passes.
    secret = {
        "LIVEKIT_API_KEY": "APIk",
        "LIVEKIT_API_SECRET": "s" * 32,
        "DEEPGRAM_API_KEY": "dg",
        "OPENAI_API_KEY": "sk",
    }
    settings = load_settings({**env, **secret}, needs=WORKER_NEEDS)
    assert settings.max_jobs == int(env["MAX_JOBS"])


def test_the_image_installs_every_provider_the_manifest_selects() -> None:
    found = manifests()
    deployment = found["Deployment"]
    worker = container(deployment)
    env = container_env(deployment, found["ConfigMap"])
    extras = "local" if worker["image"].endswith("-local") else ""
    assert uninstalled(env, " ".join(worker["args"]), extras) == []
    # Selecting Whisper with this image would be caught:
    assert uninstalled({**env, "STT_PROVIDER": "whisper"}, "", extras) != []


def _ours_per_session(capacity: dict[str, Any], field: str) -> float:
    """The largest p50 per session over the bench's real-time runs of this worker."""
    runs = [r for r in capacity["runs"] if r["kind"] == "ours" and r["real_time"]]
    assert runs
    return max(float(r[field]["p50"]) for r in runs)


def test_resources_are_sized_from_the_capacity_bench() -> None:
    found = manifests()
    deployment = found["Deployment"]
    env = container_env(deployment, found["ConfigMap"])
    resources = container(deployment)["resources"]
    capacity = json.loads(CAPACITY.read_text())
    max_jobs = int(env["MAX_JOBS"])
    # Not past what the bench kept in real time on one machine.
    assert max_jobs <= capacity["largest_real_time_k"]["ours"]
    # CPU: MAX_JOBS sessions at the bench's cost per session (which still includes the bench's
    # own participant: a margin for the WebRTC decoding the bench does not model).
    cpu = _ours_per_session(capacity, "cpu_percent_per_session") / 100
    assert cpu_cores(resources["requests"]["cpu"]) >= max_jobs * cpu
    assert "cpu" not in resources.get("limits", {})
    # Memory: a process per job plus the framework's warm idle ones; USS for the request
    # (what each really adds), RSS (shared pages counted in each) for the limit.
    idle: Any = worker_options(load_settings({})).num_idle_processes
    idle_processes = int(getattr(idle, "prod_default", idle))  # start's value, not dev's
    processes = max_jobs + idle_processes
    uss = _ours_per_session(capacity, "uss_mb_per_session")
    rss = _ours_per_session(capacity, "rss_mb_per_session")
    assert megabytes(resources["requests"]["memory"]) >= processes * uss
    assert megabytes(resources["limits"]["memory"]) >= processes * rss


def test_autoscaling_and_disruption_budget_target_the_worker_pods() -> None:
    found = manifests()
    deployment = found["Deployment"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    hpa = found["HorizontalPodAutoscaler"]
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    (metric,) = hpa["spec"]["metrics"]
    assert (metric["type"], metric["resource"]["name"]) == ("Resource", "cpu")
    assert 0 < metric["resource"]["target"]["averageUtilization"] <= 70
    assert hpa["spec"]["minReplicas"] >= 2  # one pod draining never empties the pool
    assert deployment["spec"]["replicas"] >= hpa["spec"]["minReplicas"]
    pdb = found["PodDisruptionBudget"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["maxUnavailable"] == 1
