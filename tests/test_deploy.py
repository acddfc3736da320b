"""The deployment files, checked statically: no Docker engine or cluster runs here.

docker-compose.yml (+ the GPU override), deploy/Dockerfile, the Kubernetes manifests,
deploy/prometheus.yml and the Grafana provisioning and dashboard.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from stream_learner.config import Settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
METRICS_PORT = 9400
SERVICES = {"kafka", "topics-init", "stream-learner", "producer", "prometheus", "grafana"}
LONG_RUNNING = {"kafka", "stream-learner", "prometheus", "grafana"}
METRICS = {  # the names the service exports (stream_learner/observability/)
    "stream_learner_events_consumed_total": "counter",
    "stream_learner_predictions_published_total": "counter",
    "stream_learner_labels_joined_total": "counter",
    "stream_learner_examples_trained_total": "counter",
    "stream_learner_prequential_accuracy": "gauge",
    "stream_learner_event_to_prediction_seconds": "histogram",
    "stream_learner_consumer_lag": "gauge",
    "stream_learner_checkpoint_age_seconds": "gauge",
    "stream_learner_checkpoint_duration_seconds": "histogram",
    "stream_learner_checkpoint_pause_seconds": "histogram",
    "stream_learner_model_version": "gauge",
}


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_yaml(ROOT / "docker-compose.yml")  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def manifests() -> list[dict[str, Any]]:
    docs = []
    for path in sorted((DEPLOY / "k8s").rglob("*.yaml")):
        docs += [dict(d, _file=str(path.relative_to(ROOT))) for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def command_of(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


# --- docker compose ---------------------------------------------------------------------------


def test_compose_has_the_stack(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == SERVICES
    assert compose["services"]["kafka"]["image"].startswith("apache/kafka:")
    assert set(compose.get("volumes", {})) >= {"kafka-data", "checkpoints"}


def test_compose_images_are_pinned(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        image = service.get("image")
        assert image, f"{name} needs an image (built services name the tag they build)"
        repository, _, tag = image.rpartition(":")
        assert repository and "/" not in tag and tag not in ("", "latest"), f"{name}: {image!r} is not pinned to a tag"
        assert re.fullmatch(r"v?\d+\.\d+\.\d+(-\w+)?", tag), f"{name}: {image!r} should name a release"


def test_compose_builds_the_service_from_the_dockerfile(compose: dict[str, Any]) -> None:
    for name in ("stream-learner", "producer"):
        build = compose["services"][name]["build"]
        assert (ROOT / build["context"] / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
        assert build["args"]["TORCH_VARIANT"] == "cpu"


def test_compose_health_checks_and_start_order(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in LONG_RUNNING:
        check = services[name]["healthcheck"]
        assert check["test"][0] in ("CMD", "CMD-SHELL") and len(check["test"]) > 1 and check.get("interval"), name
    assert "/readyz" in " ".join(services["stream-learner"]["healthcheck"]["test"])
    assert str(METRICS_PORT) in " ".join(services["stream-learner"]["healthcheck"]["test"])
    assert services["producer"]["healthcheck"] == {"disable": True}, "the image's check is the service's endpoint"
    assert services["topics-init"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert services["topics-init"]["restart"] == "no"
    for name in ("stream-learner", "producer"):
        assert services[name]["depends_on"]["topics-init"]["condition"] == "service_completed_successfully"
    assert services["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"


def test_compose_ports(compose: dict[str, Any]) -> None:
    published = {name: [str(p) for p in s.get("ports", [])] for name, s in compose["services"].items()}
    assert published["stream-learner"] == [f"{METRICS_PORT}:{METRICS_PORT}"]
    assert published["prometheus"] == ["9090:9090"] and published["grafana"] == ["3000:3000"]
    assert published["kafka"] == ["29092:29092"]
    host_ports = [p.split(":")[0] for ports in published.values() for p in ports]
    assert len(host_ports) == len(set(host_ports))
    kafka = env_of(compose["services"]["kafka"])
    assert "PLAINTEXT_HOST://localhost:29092" in kafka["KAFKA_ADVERTISED_LISTENERS"]
    assert "PLAINTEXT://kafka:9092" in kafka["KAFKA_ADVERTISED_LISTENERS"]
    assert kafka["KAFKA_PROCESS_ROLES"] == "broker,controller", "KRaft: no ZooKeeper"


def test_compose_topics_are_co_partitioned_and_match_the_settings(compose: dict[str, Any]) -> None:
    script = " ".join(command_of(compose["services"]["topics-init"]))
    specs = dict(re.findall(r"([\w.-]+):(\d+)", script.split("for spec in", 1)[1].split(";", 1)[0]))
    defaults = {f: Settings.model_fields[f].default for f in ("events_topic", "labels_topic", "predictions_topic", "dead_letter_topic")}
    assert set(specs) == set(defaults.values())
    assert specs[defaults["events_topic"]] == specs[defaults["labels_topic"]], "events and labels must be co-partitioned"
    assert "--if-not-exists" in script


def test_compose_service_and_producer_agree(compose: dict[str, Any]) -> None:
    service, producer = (env_of(compose["services"][n]) for n in ("stream-learner", "producer"))
    assert service["STREAM_LEARNER_BOOTSTRAP_SERVERS"] == producer["STREAM_LEARNER_BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert service["STREAM_LEARNER_INPUT_DIM"] == producer["STREAM_LEARNER_INPUT_DIM"]
    assert service["STREAM_LEARNER_METRICS_PORT"] == str(METRICS_PORT)
    checkpoint_dir = Path(service["STREAM_LEARNER_CHECKPOINT_DIR"])
    mounts = [m.split(":")[1] for m in compose["services"]["stream-learner"]["volumes"]]
    assert any(checkpoint_dir.is_relative_to(m) for m in mounts), "checkpoints must be on the volume"
    assert command_of(compose["services"]["producer"])[0] == "produce"
    assert command_of(compose["services"]["stream-learner"]) == ["run"]


def test_the_produce_command_of_compose_parses(compose: dict[str, Any]) -> None:
    """The producer's command line, as compose runs it, parses into the settings it needs (child process: no broker)."""
    env = env_of(compose["services"]["producer"])
    script = (
        "import sys, stream_learner.tools.demo as d\n"
        "async def fake(options, settings):\n"
        "    print(settings.bootstrap_servers, settings.input_dim, settings.events_topic, options.rate, options.label_delay)\n"
        "    return 0\n"
        "d.run_producer = fake\n"
        "from stream_learner.tools.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith("STREAM_LEARNER_")}
    out = subprocess.run(
        [sys.executable, "-c", script, *command_of(compose["services"]["producer"])],
        env={**clean, **env}, capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["kafka:9092", env["STREAM_LEARNER_INPUT_DIM"], "events", "200.0", "2.0"]


def test_every_file_compose_mounts_exists(compose: dict[str, Any]) -> None:
    named = set(compose.get("volumes", {}))
    for name, service in compose["services"].items():
        for mount in service.get("volumes", []):
            source = mount.split(":")[0] if isinstance(mount, str) else mount["source"]
            if source in named:
                continue
            assert source.startswith("."), f"{name}: {source!r} is neither a named volume nor a relative path"
            assert (ROOT / source).exists(), f"{name} mounts {source}, which does not exist"


def test_the_gpu_override_reserves_an_nvidia_device(compose: dict[str, Any]) -> None:
    override = load_yaml(ROOT / "docker-compose.gpu.yml")
    assert set(override["services"]) <= set(compose["services"])
    service = override["services"]["stream-learner"]
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert service["build"]["args"]["TORCH_VARIANT"] == "cuda"
    assert service["image"].endswith("-cuda") and env_of(service)["STREAM_LEARNER_DEVICE"] == "cuda"


# --- Dockerfile ---------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (DEPLOY / "Dockerfile").read_text()
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    return [(m.group(1).upper(), m.group(2).strip()) for m in re.finditer(r"^\s*(\w+)\s+(.*)$", joined, re.M)]


def test_dockerfile() -> None:
    instructions = dockerfile_instructions()
    by_kind: dict[str, list[str]] = {}
    for kind, rest in instructions:
        by_kind.setdefault(kind, []).append(rest)
    args = {a.split("=")[0] for a in by_kind["ARG"]}
    assert {"BASE_IMAGE", "TORCH_VARIANT", "TORCH_VERSION"} <= args
    assert all(f.startswith("${BASE_IMAGE}") for f in by_kind["FROM"]) and len(by_kind["FROM"]) == 2
    torch_install = next(r for r in by_kind["RUN"] if "TORCH_VARIANT" in r)
    assert "cpu)" in torch_install and "cuda)" in torch_install and "download.pytorch.org/whl/cpu" in torch_install
    last_user = by_kind["USER"][-1]
    assert last_user.split(":")[0] not in ("root", "0"), "the image must run as a non-root user"
    assert json.loads(by_kind["ENTRYPOINT"][-1]) == ["stream-learner"]
    assert json.loads(by_kind["CMD"][-1]) == ["run"]
    healthcheck = by_kind["HEALTHCHECK"][-1]
    assert "/healthz" in healthcheck and "STREAM_LEARNER_METRICS_PORT" in healthcheck
    assert f"EXPOSE {METRICS_PORT}" in [f"EXPOSE {e}" for e in by_kind["EXPOSE"]]
    kinds = [k for k, _ in instructions]
    assert max(i for i, k in enumerate(kinds) if k == "USER") > max(i for i, k in enumerate(kinds) if k == "COPY")
    assert kinds.index("HEALTHCHECK") > kinds.index("FROM", 1), "the healthcheck belongs to the final stage"


def test_the_docker_build_context_keeps_out_the_venv_and_checkpoints() -> None:
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert ignore[ignore.index("*") :][:1] == ["*"], "ignore everything, then allow what the build copies"
    copied = re.findall(r"^COPY (?!--from)(.+) /src/", (DEPLOY / "Dockerfile").read_text(), re.M)
    for line in copied:
        for source in line.split():
            assert f"!{source}" in ignore or f"!{source}/" in ignore, source
            assert (ROOT / source).exists()


# --- Kubernetes ---------------------------------------------------------------------------------


def kind(manifests: list[dict[str, Any]], name: str, file_part: str = "") -> dict[str, Any]:
    found = [m for m in manifests if m["kind"] == name and file_part in m["_file"]]
    assert len(found) == 1, f"{name} in {[m['_file'] for m in found]}"
    return found[0]


def test_manifests_parse_and_name_their_kinds(manifests: list[dict[str, Any]]) -> None:
    kinds = {(m["_file"].rsplit("/", 1)[-1], m["kind"]) for m in manifests}
    assert {("statefulset.yaml", "StatefulSet"), ("configmap.yaml", "ConfigMap"), ("service.yaml", "Service")} <= kinds
    for m in manifests:
        assert m.get("apiVersion") and m.get("kind"), m["_file"]


def test_kustomizations_list_files_that_exist() -> None:
    for path in (DEPLOY / "k8s").rglob("kustomization.yaml"):
        k = load_yaml(path)
        for entry in k.get("resources", []) + [p["path"] for p in k.get("patches", [])]:
            assert (path.parent / entry).exists(), f"{path}: {entry}"


def test_the_statefulset(manifests: list[dict[str, Any]]) -> None:
    sts = kind(manifests, "StatefulSet", "k8s/statefulset.yaml")
    spec = sts["spec"]
    assert spec["replicas"] == 1, "one instance per consumer group"
    claims = spec["volumeClaimTemplates"]
    assert claims and claims[0]["spec"]["resources"]["requests"]["storage"]
    pod = spec["template"]
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(METRICS_PORT) and annotations["prometheus.io/path"] == "/metrics"
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["metrics"] == METRICS_PORT
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", "/healthz")):
        get = container[probe]["httpGet"]
        assert get["path"] == path and ports.get(get["port"], get["port"]) == METRICS_PORT, probe
    assert container["envFrom"] == [{"configMapRef": {"name": "stream-learner"}}]
    configmap = kind(manifests, "ConfigMap")
    assert configmap["metadata"]["name"] == "stream-learner"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert Path(configmap["data"]["STREAM_LEARNER_CHECKPOINT_DIR"]).is_relative_to(mounts[claims[0]["metadata"]["name"]])
    assert configmap["data"]["STREAM_LEARNER_METRICS_PORT"] == str(METRICS_PORT)
    assert Path(configmap["data"]["STREAM_LEARNER_SSL_CAFILE"]).is_relative_to(mounts["kafka-ca"])
    assert container["args"] == ["run"]


def test_the_sasl_password_comes_from_a_secret_and_nothing_secret_is_in_the_configmap(manifests: list[dict[str, Any]]) -> None:
    container = kind(manifests, "StatefulSet", "k8s/statefulset.yaml")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    password = env["STREAM_LEARNER_SASL_PASSWORD"]
    assert "value" not in password and password["valueFrom"]["secretKeyRef"]["name"] == "stream-learner-kafka"
    configmap = kind(manifests, "ConfigMap")["data"]
    assert not [k for k in configmap if "PASSWORD" in k or "SECRET" in k]
    assert configmap["STREAM_LEARNER_SECURITY_PROTOCOL"] in ("SASL_SSL", "SASL_PLAINTEXT", "SSL", "PLAINTEXT")
    settings_fields = {f"STREAM_LEARNER_{name.upper()}" for name in Settings.model_fields}
    unknown = (set(configmap) | set(env)) - settings_fields
    assert not unknown, f"not settings of the service: {unknown}"
    example = [m for m in manifests if m["kind"] == "Secret" and m["metadata"]["name"] == "stream-learner-kafka"]
    assert example and "secret.example.yaml" in example[0]["_file"]
    assert set(example[0]["stringData"]) == {password["valueFrom"]["secretKeyRef"]["key"], env["STREAM_LEARNER_SASL_USERNAME"]["valueFrom"]["secretKeyRef"]["key"]}
    assert "secret.example.yaml" not in load_yaml(DEPLOY / "k8s" / "kustomization.yaml")["resources"]


def test_the_gpu_overlay_requests_a_gpu_with_the_cuda_image(manifests: list[dict[str, Any]]) -> None:
    overlay = load_yaml(DEPLOY / "k8s" / "gpu" / "kustomization.yaml")
    assert overlay["images"] == [{"name": "stream-learner", "newTag": "0.1.0-cuda"}]
    patch = kind(manifests, "StatefulSet", "gpu/")
    (container,) = patch["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"name": "STREAM_LEARNER_DEVICE", "value": "cuda"} in container["env"]
    base = kind(manifests, "StatefulSet", "k8s/statefulset.yaml")
    assert base["spec"]["template"]["spec"]["containers"][0]["image"].split(":")[0] == "stream-learner"


def test_the_service_exposes_the_metrics_port(manifests: list[dict[str, Any]]) -> None:
    service = kind(manifests, "Service")
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["ports"] == [{"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics"}]
    sts = kind(manifests, "StatefulSet", "k8s/statefulset.yaml")
    assert sts["spec"]["serviceName"] == service["metadata"]["name"]
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in service["spec"]["selector"].items())


def test_the_base_kustomization_lists_every_manifest_but_the_secret_example() -> None:
    listed = set(load_yaml(DEPLOY / "k8s" / "kustomization.yaml")["resources"])
    files = {p.name for p in (DEPLOY / "k8s").glob("*.yaml")} - {"kustomization.yaml", "secret.example.yaml"}
    assert listed == files


def test_the_pod_mounts_no_service_account_token(manifests: list[dict[str, Any]]) -> None:
    pod = kind(manifests, "StatefulSet", "k8s/statefulset.yaml")["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False, "the service never calls the Kubernetes API"
    patch = kind(manifests, "StatefulSet", "gpu/")["spec"]["template"]["spec"]
    assert patch.get("automountServiceAccountToken", False) is False
    projected = [v for v in pod.get("volumes", []) for s in v.get("projected", {}).get("sources", []) if "serviceAccountToken" in s]
    assert not projected


MONITORING = {"kubernetes.io/metadata.name": "monitoring"}
"""The namespace allowed to reach the metrics port (the label Kubernetes sets on every namespace)."""


def test_only_the_monitoring_namespace_reaches_the_metrics_port(manifests: list[dict[str, Any]]) -> None:
    policy = kind(manifests, "NetworkPolicy")
    assert policy["apiVersion"] == "networking.k8s.io/v1"
    sts = kind(manifests, "StatefulSet", "k8s/statefulset.yaml")
    pod_labels = sts["spec"]["template"]["metadata"]["labels"]
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert selector and all(pod_labels.get(k) == v for k, v in selector.items()), "the policy selects the service's pods"
    assert "Ingress" in policy["spec"]["policyTypes"]
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    rules = policy["spec"]["ingress"]
    assert rules, "no rule would drop every connection, probes' and scrapes' too"
    for rule in rules:
        assert rule["ports"], "a rule without ports admits every port"
        for port in rule["ports"]:
            assert port.get("protocol", "TCP") == "TCP" and named.get(port["port"], port["port"]) == METRICS_PORT, port
        assert rule["from"], "a rule without peers admits everyone"
        for peer in rule["from"]:
            assert "ipBlock" not in peer, peer
            assert peer["namespaceSelector"] == {"matchLabels": MONITORING}, peer
            assert peer["podSelector"]["matchLabels"], "only the monitoring pods, not the whole namespace"
    # Egress is either left open or still admits the Kafka bootstrap port and DNS.
    if "Egress" in policy["spec"]["policyTypes"]:
        bootstrap_port = int(kind(manifests, "ConfigMap")["data"]["STREAM_LEARNER_BOOTSTRAP_SERVERS"].split(",")[0].rsplit(":", 1)[1])
        open_ports = {p.get("port") for rule in policy["spec"].get("egress", []) for p in rule.get("ports", [])}
        assert {bootstrap_port, 53} <= open_ports, "egress must reach Kafka and DNS"


# --- Prometheus and Grafana ----------------------------------------------------------------------


def test_prometheus_scrapes_the_service(compose: dict[str, Any]) -> None:
    config = load_yaml(DEPLOY / "prometheus.yml")
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "stream-learner")
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = [t for c in job["static_configs"] for t in c["targets"]]
    assert targets == [f"stream-learner:{METRICS_PORT}"]
    assert "stream-learner" in compose["services"]


def test_grafana_provisioning_points_at_the_mounted_dashboards(compose: dict[str, Any]) -> None:
    mounts = dict(m.split(":")[:2] for m in compose["services"]["grafana"]["volumes"])
    provisioning = ROOT / next(src for src, dst in mounts.items() if dst == "/etc/grafana/provisioning")
    (datasource,) = load_yaml(provisioning / "datasources" / "prometheus.yml")["datasources"]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    providers = [p for f in (provisioning / "dashboards").glob("*.yml") for p in load_yaml(f)["providers"]]
    paths = {p["options"]["path"] for p in providers}
    dashboards_dir = next(dst for src, dst in mounts.items() if dst in paths)
    source = ROOT / next(src for src, dst in mounts.items() if dst == dashboards_dir)
    dashboards = list(source.glob("*.json"))
    assert [d.name for d in dashboards] == ["stream-learner.json"]
    for dashboard in dashboards:
        for panel in json.loads(dashboard.read_text())["panels"]:
            for target in [panel, *panel.get("targets", [])]:
                if "datasource" in target:
                    assert target["datasource"]["uid"] == datasource["uid"], panel["title"]
    home = env_of(compose["services"]["grafana"]).get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    assert home is None or home == f"{dashboards_dir}/stream-learner.json"


def test_the_dashboard_shows_every_metric_by_its_exported_name() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "stream-learner.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = set(re.findall(r"\bstream_learner_\w+", " ".join(exprs)))
    suffixes = {"counter": ("",), "gauge": ("",), "histogram": ("_bucket", "_count", "_sum")}
    known = {name + s for name, kind in METRICS.items() for s in suffixes[kind]}
    assert used <= known, f"names the service does not export: {used - known}"
    shown = {name for name in METRICS if any(u == name or u.startswith(name + "_") for u in used)}
    assert shown == set(METRICS), f"not on the dashboard: {set(METRICS) - shown}"
    for expr in exprs:  # counters are rated, histograms read through their buckets
        for name, kind in METRICS.items():
            if kind == "counter" and name in expr:
                assert re.search(rf"(rate|increase)\({name}\[", expr), expr
            if kind == "histogram" and re.search(rf"{name}(?!_)", expr):
                raise AssertionError(f"a histogram is queried by its _bucket/_count/_sum series: {expr}")
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("throughput", "latency", "accuracy", "lag", "checkpoint"):
        assert topic in titles
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)) and dashboard["uid"] == "stream-learner"


def test_the_metric_names_match_the_service_when_it_exports_them() -> None:
    from stream_learner import observability

    source = "".join(path.read_text() for path in sorted(Path(observability.__file__).parent.glob("*.py")))
    missing = [name for name in METRICS if name.removesuffix("_total") not in source and name not in source]
    assert not missing, f"the dashboard uses names stream_learner/observability/ does not define: {missing}"
