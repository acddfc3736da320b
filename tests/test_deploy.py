"""The deployment files, checked statically: no Docker engine or cluster runs here.

docker-compose.yml (+ the GPU override and the `scaled` profile), deploy/Dockerfile, the Kubernetes
manifests (the all-in-one, its GPU overlay, and the scaled layout of deploy/k8s/scaled/),
deploy/prometheus.yml and the Grafana provisioning and dashboard.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shlex
import shutil
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
"""The default stack: what `docker compose up` starts."""
SCALED = {"predictor-1": "predictor", "predictor-2": "predictor", "trainer": "trainer"}
"""The services of the `scaled` profile, and their roles."""
SCALED_PROFILE = "scaled"
LONG_RUNNING = {"kafka", "stream-learner", "prometheus", "grafana", *SCALED}
ROLE = "STREAM_LEARNER_ROLE"
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
    "stream_learner_model_age_seconds": "gauge",
    "stream_learner_model_stale": "gauge",
    "stream_learner_model_versions_total": "counter",
    "stream_learner_model_error": "gauge",
    "stream_learner_model_serving": "gauge",
    "stream_learner_promotions_total": "counter",
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
    assert set(compose["services"]) == SERVICES | set(SCALED)
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
    for name in ("stream-learner", "producer", *SCALED):
        build = compose["services"][name]["build"]
        assert (ROOT / build["context"] / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
        assert build["args"]["TORCH_VARIANT"] == "cpu"


def test_compose_health_checks_and_start_order(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in LONG_RUNNING:
        check = services[name]["healthcheck"]
        assert check["test"][0] in ("CMD", "CMD-SHELL") and len(check["test"]) > 1 and check.get("interval"), name
    for name in ("stream-learner", *SCALED):  # a predictor is ready once it has a model
        assert "/readyz" in " ".join(services[name]["healthcheck"]["test"]), name
        assert str(METRICS_PORT) in " ".join(services[name]["healthcheck"]["test"]), name
    assert services["producer"]["healthcheck"] == {"disable": True}, "the image's check is the service's endpoint"
    assert services["topics-init"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert services["topics-init"]["restart"] == "no"
    for name in ("stream-learner", "producer", *SCALED):
        assert services[name]["depends_on"]["topics-init"]["condition"] == "service_completed_successfully"
    assert services["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"


def test_compose_ports(compose: dict[str, Any]) -> None:
    published = {name: [str(p) for p in s.get("ports", [])] for name, s in compose["services"].items()}
    assert published["stream-learner"] == [f"{METRICS_PORT}:{METRICS_PORT}"]
    for name in SCALED:  # each on its own host port, all on the metrics port inside
        ((host, container),) = (p.split(":") for p in published[name])
        assert container == str(METRICS_PORT) and host != str(METRICS_PORT), name
    assert published["prometheus"] == ["9090:9090"] and published["grafana"] == ["3000:3000"]
    assert published["kafka"] == ["29092:29092"]
    host_ports = [p.split(":")[0] for ports in published.values() for p in ports]
    assert len(host_ports) == len(set(host_ports))
    kafka = env_of(compose["services"]["kafka"])
    assert "PLAINTEXT_HOST://localhost:29092" in kafka["KAFKA_ADVERTISED_LISTENERS"]
    assert "PLAINTEXT://kafka:9092" in kafka["KAFKA_ADVERTISED_LISTENERS"]
    assert kafka["KAFKA_PROCESS_ROLES"] == "broker,controller", "KRaft: no ZooKeeper"


def created_topics(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The topics topics-init creates: name -> {"partitions": int, "config": {key: value}}."""
    script = " ".join(command_of(compose["services"]["topics-init"]))
    loop = script.split("for spec in", 1)[1].split(";", 1)[0]
    topics = {name: {"partitions": int(n), "config": {}} for name, n in re.findall(r"([\w.-]+):(\d+)", loop)}
    for create in re.split(r"kafka-topics\.sh", script.split("done", 1)[1])[1:]:
        words = shlex.split(create.replace("\\\n", " "))
        if "--create" not in words:
            continue
        options: dict[str, list[str]] = {}
        for flag, value in itertools.pairwise(words):
            if flag.startswith("--"):
                options.setdefault(flag, []).append(value)
        (name,) = options["--topic"]
        config = dict(c.split("=", 1) for c in options.get("--config", []))
        topics[name] = {"partitions": int(options["--partitions"][0]), "config": config}
    return topics


def test_compose_topics_are_co_partitioned_and_match_the_settings(compose: dict[str, Any]) -> None:
    script = " ".join(command_of(compose["services"]["topics-init"]))
    topics = created_topics(compose)
    defaults = {
        f: Settings.model_fields[f].default
        for f in ("events_topic", "labels_topic", "predictions_topic", "dead_letter_topic")
    }
    scaled_predictions = {env_of(compose["services"][n])["STREAM_LEARNER_PREDICTIONS_TOPIC"] for n in SCALED}
    models = {env_of(compose["services"][n])["STREAM_LEARNER_MODELS_TOPIC"] for n in SCALED}
    assert set(topics) == set(defaults.values()) | scaled_predictions | models
    events, labels = (topics[defaults[t]]["partitions"] for t in ("events_topic", "labels_topic"))
    assert events == labels, "events and labels must be co-partitioned"
    assert script.count("--create --if-not-exists") == script.count("--create")


def test_compose_creates_the_models_topic_with_one_partition_and_delete_retention(compose: dict[str, Any]) -> None:
    (models,) = {env_of(compose["services"][n])["STREAM_LEARNER_MODELS_TOPIC"] for n in SCALED}
    topic = created_topics(compose)[models]
    assert topic["partitions"] == 1, "model versions are one ordered log: exactly one partition"
    assert topic["config"].get("cleanup.policy") == "delete", "delete retention, not compact"
    assert int(topic["config"]["retention.ms"]) > 0


def test_the_models_topic_is_the_settings_default(compose: dict[str, Any]) -> None:
    """Needs Settings.models_topic."""
    (models,) = {env_of(compose["services"][n])["STREAM_LEARNER_MODELS_TOPIC"] for n in SCALED}
    assert models == Settings.model_fields["models_topic"].default


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


def test_the_scaled_profile_has_two_predictors_and_a_trainer(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        if name in SCALED:
            assert service["profiles"] == [SCALED_PROFILE], f"{name} must start only with --profile {SCALED_PROFILE}"
            assert command_of(service) == ["run"], name
            assert env_of(service)[ROLE] == SCALED[name], name
        else:
            assert "profiles" not in service, f"{name} belongs to the default stack"
    assert sorted(SCALED.values()) == ["predictor", "predictor", "trainer"]
    named_volumes = set(compose["volumes"])
    trainer = services["trainer"]
    checkpoint_dir = Path(env_of(trainer)["STREAM_LEARNER_CHECKPOINT_DIR"])
    sources = {m.split(":")[1]: m.split(":")[0] for m in trainer["volumes"]}
    (mount,) = [m for m in sources if checkpoint_dir.is_relative_to(m)]
    assert sources[mount] in named_volumes, "the trainer's checkpoints are on a named volume"
    all_in_one = {m.split(":")[0] for m in services["stream-learner"]["volumes"]}
    assert sources[mount] not in all_in_one, "not the all-in-one's"
    for name, role in SCALED.items():
        if role == "predictor":
            assert not services[name].get("volumes"), f"{name}: a predictor holds no training state"


def test_the_scaled_profile_does_not_collide_with_the_default_stack(compose: dict[str, Any]) -> None:
    """`--profile scaled up` starts both layouts on the same events: separate groups and predictions topics."""
    services = compose["services"]
    scaled = [env_of(services[n]) for n in SCALED]
    default = env_of(services["stream-learner"])
    fields = Settings.model_fields
    default_group = default.get("STREAM_LEARNER_GROUP_ID", fields["group_id"].default)
    default_predictions = default.get("STREAM_LEARNER_PREDICTIONS_TOPIC", fields["predictions_topic"].default)
    shared = ("GROUP_ID", "PREDICTIONS_TOPIC", "MODELS_TOPIC", "BOOTSTRAP_SERVERS", "INPUT_DIM", "NUM_CLASSES", "MODEL")
    for key in shared:
        assert len({env.get(f"STREAM_LEARNER_{key}") for env in scaled}) == 1, f"the scaled roles must agree on {key}"
    group = scaled[0]["STREAM_LEARNER_GROUP_ID"]
    assert group != default_group and not group.startswith(default_group + "."), "a group of its own"
    assert scaled[0]["STREAM_LEARNER_PREDICTIONS_TOPIC"] != default_predictions, "one writer per predictions topic"
    assert scaled[0]["STREAM_LEARNER_INPUT_DIM"] == env_of(services["producer"])["STREAM_LEARNER_INPUT_DIM"]
    client_ids = [env["STREAM_LEARNER_CLIENT_ID"] for env in scaled]
    assert len(set(client_ids)) == len(client_ids)


def test_the_default_stack_runs_role_all(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        if name in SCALED:
            continue
        assert env_of(service).get(ROLE, "all") == "all", name
        words = command_of(service)
        assert "--role" not in words or words[words.index("--role") + 1] == "all", name
        assert not any(w.startswith("--role=") and w != "--role=all" for w in words), name


def settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for key in list(os.environ):
        if key.startswith("STREAM_LEARNER_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return Settings()


def test_the_compose_roles_are_settings_the_service_accepts(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Needs Settings.role (and the models settings): each `run` service's environment validates, with its role."""
    for name, role in {"stream-learner": "all", **SCALED}.items():
        settings = settings_from(env_of(compose["services"][name]), monkeypatch)
        assert settings.role == role, name
        assert settings.metrics_port == METRICS_PORT


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


SCALED_K8S = DEPLOY / "k8s" / "scaled"


def pod_env(manifests: list[dict[str, Any]], workload: dict[str, Any]) -> dict[str, str]:
    """The container's STREAM_LEARNER_* environment as the pod sees it: envFrom ConfigMaps, then env
    (a value from a Secret or the downward API stands in as a placeholder)."""
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        name = source["configMapRef"]["name"]
        (configmap,) = [m for m in manifests if m["kind"] == "ConfigMap" and m["metadata"]["name"] == name]
        env.update(configmap["data"])
    for item in container.get("env", []):
        env[item["name"]] = str(item["value"]) if "value" in item else "from-" + next(iter(item["valueFrom"]))
    return env


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
    configmap = kind(manifests, "ConfigMap", "k8s/configmap.yaml")
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
    configmap = kind(manifests, "ConfigMap", "k8s/configmap.yaml")["data"]
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
    service = kind(manifests, "Service", "k8s/service.yaml")
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
    policy = kind(manifests, "NetworkPolicy", "k8s/networkpolicy.yaml")
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
        bootstrap_port = int(kind(manifests, "ConfigMap", "k8s/configmap.yaml")["data"]["STREAM_LEARNER_BOOTSTRAP_SERVERS"].split(",")[0].rsplit(":", 1)[1])
        open_ports = {p.get("port") for rule in policy["spec"].get("egress", []) for p in rule.get("ports", [])}
        assert {bootstrap_port, 53} <= open_ports, "egress must reach Kafka and DNS"


# --- Kubernetes, scaled out: predictors (Deployment + KEDA) and one trainer (StatefulSet) ----------

MODELS_SETTINGS = {
    "STREAM_LEARNER_MODELS_TOPIC",
    "STREAM_LEARNER_MODEL_PUBLISH_INTERVAL_S",
    "STREAM_LEARNER_MAX_MODEL_AGE_S",
}
KEDA_SASL = {"PLAIN": "plaintext", "SCRAM-SHA-256": "scram_sha256", "SCRAM-SHA-512": "scram_sha512"}


def scaled(manifests: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return kind(manifests, name, "k8s/scaled/")


def test_the_scaled_kustomization_lists_its_manifests_and_stands_alone() -> None:
    kustomization = load_yaml(SCALED_K8S / "kustomization.yaml")
    listed = set(kustomization["resources"])
    files = {p.name for p in SCALED_K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == {f for f in files if not f.endswith(".example.yaml")}
    assert not [r for r in listed if r.startswith("..")], "kustomize refuses a base that contains the overlay (a cycle)"
    assert kustomization["labels"] == load_yaml(DEPLOY / "k8s" / "kustomization.yaml")["labels"]


def test_the_scaled_configmap_keeps_the_all_in_one_settings(manifests: list[dict[str, Any]]) -> None:
    base = kind(manifests, "ConfigMap", "k8s/configmap.yaml")["data"]
    configmap = scaled(manifests, "ConfigMap")
    assert configmap["metadata"]["name"] != "stream-learner", "one layout must not rewrite the other's settings"
    data = configmap["data"]
    assert {k: v for k, v in data.items() if k in base} == base, "keep the two ConfigMaps in step"
    assert set(data) - set(base) == MODELS_SETTINGS
    assert not [k for k in data if "PASSWORD" in k or "SECRET" in k or k == ROLE], "the role is each workload's own"


def test_the_predictors_are_a_stateless_deployment(manifests: list[dict[str, Any]]) -> None:
    deployment = scaled(manifests, "Deployment")
    spec = deployment["spec"]
    assert "replicas" not in spec, "KEDA owns the replica count; an apply would reset it"
    pod = spec["template"]
    assert all(pod["metadata"]["labels"].get(k) == v for k, v in spec["selector"]["matchLabels"].items())
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == str(METRICS_PORT)
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["spec"]["containers"]
    assert container["args"] == ["run"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    env = pod_env(manifests, deployment)
    assert env[ROLE] == "predictor"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["metrics"] == METRICS_PORT == int(env["STREAM_LEARNER_METRICS_PORT"])
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", "/healthz")):
        get = container[probe]["httpGet"]
        assert get["path"] == path and ports.get(get["port"], get["port"]) == METRICS_PORT, probe
    # No checkpoint volume: nothing persistent, nothing mounted where checkpoints would go.
    volumes = pod["spec"].get("volumes", [])
    assert not [v for v in volumes if "persistentVolumeClaim" in v or "hostPath" in v]
    assert "volumeClaimTemplates" not in spec
    checkpoint_dir = Path(env["STREAM_LEARNER_CHECKPOINT_DIR"])
    mounts = [Path(m["mountPath"]) for m in container.get("volumeMounts", [])]
    assert not [m for m in mounts if checkpoint_dir.is_relative_to(m) or m.is_relative_to(checkpoint_dir)]
    password = {e["name"]: e for e in container["env"]}["STREAM_LEARNER_SASL_PASSWORD"]
    assert "value" not in password and password["valueFrom"]["secretKeyRef"]["name"] == "stream-learner-kafka"


def test_the_trainer_is_a_statefulset_of_one_with_its_checkpoints_on_a_claim(manifests: list[dict[str, Any]]) -> None:
    sts = scaled(manifests, "StatefulSet")
    spec = sts["spec"]
    assert spec["replicas"] == 1, "exactly one trainer trains"
    assert sts["metadata"]["name"] != kind(manifests, "StatefulSet", "k8s/statefulset.yaml")["metadata"]["name"]
    pod = spec["template"]
    labels = pod["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in spec["selector"]["matchLabels"].items())
    assert pod["spec"]["automountServiceAccountToken"] is False
    (container,) = pod["spec"]["containers"]
    env = pod_env(manifests, sts)
    assert env[ROLE] == "trainer"
    (claim,) = spec["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] and claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert Path(env["STREAM_LEARNER_CHECKPOINT_DIR"]).is_relative_to(mounts[claim["metadata"]["name"]])
    assert Path(env["STREAM_LEARNER_SSL_CAFILE"]).is_relative_to(mounts["kafka-ca"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", "/healthz")):
        get = container[probe]["httpGet"]
        assert get["path"] == path and ports.get(get["port"], get["port"]) == METRICS_PORT, probe
    # Its headless service selects the trainer and not the predictors.
    service = scaled(manifests, "Service")
    assert service["metadata"]["name"] == spec["serviceName"] and service["spec"]["clusterIP"] == "None"
    selector = service["spec"]["selector"]
    assert all(labels.get(k) == v for k, v in selector.items())
    predictor_labels = scaled(manifests, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert not all(predictor_labels.get(k) == v for k, v in selector.items())
    assert not all(predictor_labels.get(k) == v for k, v in spec["selector"]["matchLabels"].items())
    assert service["spec"]["ports"] == [{"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics"}]


def test_keda_scales_the_predictors_on_their_lag(manifests: list[dict[str, Any]], compose: dict[str, Any]) -> None:
    scaled_object = scaled(manifests, "ScaledObject")
    deployment = scaled(manifests, "Deployment")
    env = pod_env(manifests, deployment)
    assert scaled_object["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled_object["spec"]
    target = spec["scaleTargetRef"]
    assert target["name"] == deployment["metadata"]["name"] and target.get("kind", "Deployment") == "Deployment"
    assert spec["minReplicaCount"] == 1
    events_partitions = created_topics(compose)[env["STREAM_LEARNER_EVENTS_TOPIC"]]["partitions"]
    assert spec["maxReplicaCount"] == events_partitions, "more predictors than events partitions sit idle"
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    assert meta["consumerGroup"] == env["STREAM_LEARNER_GROUP_ID"], "the predictors' group"
    assert meta["topic"] == env["STREAM_LEARNER_EVENTS_TOPIC"]
    assert meta["bootstrapServers"] == env["STREAM_LEARNER_BOOTSTRAP_SERVERS"]
    assert int(meta["lagThreshold"]) > 0
    protocol = env["STREAM_LEARNER_SECURITY_PROTOCOL"]
    assert meta.get("tls", "disable") == ("enable" if protocol in ("SSL", "SASL_SSL") else "disable")
    expected_sasl = KEDA_SASL[env["STREAM_LEARNER_SASL_MECHANISM"]] if protocol.startswith("SASL_") else "none"
    assert meta.get("sasl", "none") == expected_sasl
    # KEDA reads the lag with the pods' own credentials.
    auth = scaled(manifests, "TriggerAuthentication")
    assert auth["apiVersion"] == "keda.sh/v1alpha1" and trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    refs = {r["parameter"]: (r["name"], r["key"]) for r in auth["spec"]["secretTargetRef"]}
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    pod_secrets = {
        e["name"]: (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
        for e in container["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert refs["username"] == pod_secrets["STREAM_LEARNER_SASL_USERNAME"]
    assert refs["password"] == pod_secrets["STREAM_LEARNER_SASL_PASSWORD"]
    ca_volume = next(v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "kafka-ca")
    assert refs["ca"] == (ca_volume["secret"]["secretName"], Path(env["STREAM_LEARNER_SSL_CAFILE"]).name)


def test_the_models_topic_is_documented_with_one_partition_and_delete_retention(
    manifests: list[dict[str, Any]],
) -> None:
    topic = scaled(manifests, "KafkaTopic")
    assert topic["_file"].endswith(".example.yaml"), "created by whoever runs Kafka, as the other topics"
    assert topic["metadata"]["name"] == scaled(manifests, "ConfigMap")["data"]["STREAM_LEARNER_MODELS_TOPIC"]
    assert topic["spec"]["partitions"] == 1
    assert topic["spec"]["config"]["cleanup.policy"] == "delete"
    assert int(topic["spec"]["config"]["retention.ms"]) > 0
    comment = Path(ROOT / topic["_file"]).read_text()
    assert "--partitions 1" in comment and "cleanup.policy=delete" in comment


def test_the_scaled_pods_are_behind_the_same_network_policy(manifests: list[dict[str, Any]]) -> None:
    policy = scaled(manifests, "NetworkPolicy")
    base = kind(manifests, "NetworkPolicy", "k8s/networkpolicy.yaml")
    assert policy["spec"] == base["spec"] and policy["metadata"]["name"] != base["metadata"]["name"]
    selector = policy["spec"]["podSelector"]["matchLabels"]
    for workload in (scaled(manifests, "Deployment"), scaled(manifests, "StatefulSet")):
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert all(labels.get(k) == v for k, v in selector.items()), workload["metadata"]["name"]
        (container,) = workload["spec"]["template"]["spec"]["containers"]
        assert any(p["name"] == "metrics" for p in container["ports"])


def test_the_k8s_roles_are_settings_the_service_accepts(
    manifests: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Needs Settings.role (and the models settings): each workload's environment validates, with its role."""
    workloads = {
        "predictor": scaled(manifests, "Deployment"),
        "trainer": scaled(manifests, "StatefulSet"),
        "all": kind(manifests, "StatefulSet", "k8s/statefulset.yaml"),
    }
    for role, workload in workloads.items():
        settings = settings_from(pod_env(manifests, workload), monkeypatch)
        assert settings.role == role, workload["metadata"]["name"]


def test_every_stream_learner_variable_is_a_setting(compose: dict[str, Any], manifests: list[dict[str, Any]]) -> None:
    """Needs the new Settings fields (role, models_topic, model_publish_interval_s, max_model_age_s)."""
    used: dict[str, set[str]] = {}
    for name, service in compose["services"].items():
        for key in env_of(service):
            used.setdefault(key, set()).add(f"docker-compose.yml:{name}")
    for name, service in load_yaml(ROOT / "docker-compose.gpu.yml")["services"].items():
        for key in env_of(service):
            used.setdefault(key, set()).add(f"docker-compose.gpu.yml:{name}")
    for m in manifests:
        if m["kind"] == "ConfigMap":
            keys = list(m["data"])
        elif m["kind"] in ("Deployment", "StatefulSet"):
            keys = [e["name"] for c in m["spec"]["template"]["spec"]["containers"] for e in c.get("env", [])]
        else:
            continue
        for key in keys:
            used.setdefault(key, set()).add(m["_file"])
    for kind_, rest in dockerfile_instructions():
        if kind_ == "ENV":
            for key in re.findall(r"(STREAM_LEARNER_\w+)=", rest):
                used.setdefault(key, set()).add("deploy/Dockerfile")
    settings_fields = {f"STREAM_LEARNER_{name.upper()}" for name in Settings.model_fields}
    unknown = {k: sorted(v) for k, v in used.items() if k.startswith("STREAM_LEARNER_") and k not in settings_fields}
    assert not unknown, f"not settings of the service: {unknown}"


KUSTOMIZE = [shutil.which("kustomize"), shutil.which("kubectl")]


@pytest.mark.parametrize(
    "directory",
    [
        "deploy/k8s",
        "deploy/k8s/scaled",
        pytest.param(
            "deploy/k8s/gpu",
            marks=pytest.mark.xfail(
                strict=True, reason="kustomize refuses `../` from inside the base's own directory: cycle detected"
            ),
        ),
    ],
)
def test_the_kustomizations_build(directory: str) -> None:
    """With kustomize (or kubectl) on PATH: the kustomization builds, as `kubectl apply -k` would."""
    if KUSTOMIZE[0]:
        command = [KUSTOMIZE[0], "build", directory]
    elif KUSTOMIZE[1]:
        command = [KUSTOMIZE[1], "kustomize", directory]
    else:
        pytest.skip("neither kustomize nor kubectl is installed")
    out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    built = [d for d in yaml.safe_load_all(out.stdout) if d]
    assert built and all(d["metadata"]["labels"]["app.kubernetes.io/part-of"] == "stream-learner" for d in built)


# --- Prometheus and Grafana ----------------------------------------------------------------------


def test_prometheus_scrapes_the_service(compose: dict[str, Any]) -> None:
    config = load_yaml(DEPLOY / "prometheus.yml")
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "stream-learner")
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = [t for c in job["static_configs"] for t in c["targets"]]
    assert targets == [f"stream-learner:{METRICS_PORT}"]
    assert "stream-learner" in compose["services"]


def test_prometheus_scrapes_the_scaled_profile(compose: dict[str, Any]) -> None:
    config = load_yaml(DEPLOY / "prometheus.yml")
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "stream-learner-scaled")
    assert job.get("metrics_path", "/metrics") == "/metrics"
    roles = {t: c["labels"]["role"] for c in job["static_configs"] for t in c["targets"]}
    assert roles == {f"{name}:{METRICS_PORT}": role for name, role in SCALED.items()}
    for name in SCALED:
        assert env_of(compose["services"][name])["STREAM_LEARNER_METRICS_PORT"] == str(METRICS_PORT)


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
