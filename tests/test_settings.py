"""Settings: every impossible value fails at start, naming the setting; env files are read only when named."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from stream_learner.config import Settings
from stream_learner.errors import ConfigError
from stream_learner.settings_loading import ENV_FILE_VARIABLE, load_settings

pytestmark = pytest.mark.usefixtures("clean_settings_sources")
ROOT = Path(__file__).resolve().parent.parent


def settings_from_env(monkeypatch: pytest.MonkeyPatch, **values: str) -> Settings:
    """Settings as the service builds them, from ``STREAM_LEARNER_*`` variables (strings, as a deployment sets them)."""
    monkeypatch.setenv("STREAM_LEARNER_INPUT_DIM", "8")
    for name, value in values.items():
        monkeypatch.setenv(f"STREAM_LEARNER_{name.upper()}", value)
    return load_settings([])


NOT_FINITE = ["inf", "-inf", "nan", "1e400"]
FLOATS = [
    "learning_rate", "weight_decay", "grad_clip_norm", "loss_spike_factor", "max_batch_delay_ms", "label_ttl_s",
    "checkpoint_interval_s", "log_interval_s", "delivery_timeout_s", "shutdown_timeout_s", "default_label",
    "model_publish_interval_s", "max_model_age_s", "commit_interval_s", "promotion_margin",
]  # fmt: skip
IMPOSSIBLE: list[tuple[str, str, dict[str, str]]] = [
    *[(name, value, {}) for name in FLOATS for value in NOT_FINITE],
    *[
        ("bootstrap_servers", v, {})
        for v in ("", "kafka", "kafka:", "kafka:0", "kafka:65536", "kafka:9092,,k2:9092", "kafka:90x2")
    ],
    *[
        ("bootstrap_servers", v, {})
        for v in ("PLAINTEXT://kafka:9092", "::1:9092", "my kafka:9092", "kafka:9092;k2:9092")
    ],
    *[("events_topic", v, {}) for v in ("", ".", "..", "a/b", "a" * 250, "événements", "has space", "a:b")],
    ("labels_topic", "labels\n", {}),
    ("predictions_topic", "x" * 250, {}),
    ("dead_letter_topic", "dlq*", {}),
    ("models_topic", "models topic", {}),
    *[(name, "0", {}) for name in ("model_publish_interval_s", "max_model_age_s", "commit_interval_s")],
    ("role", "worker", {}),
    *[(name, v, {}) for name in ("group_id", "client_id", "metrics_host") for v in ("", "  ")],
    *[
        (name, "", {})
        for name in ("transactional_id", "sasl_username", "checkpoint_dir", "tensorboard_dir", "ssl_cafile")
    ],
    *[("device", v, {}) for v in ("gpu", "cuda:", "cuda:x", "CPU", "cuda:-1", "cuda:0,1", "")],
    *[("model", v, {}) for v in ("torch.nn", ":make", "pkg.:make", "pkg:", "pkg:a.b", "1pkg:make", "pkg:make()")],
    *[("default_label", v, {"missing_label_policy": "default"}) for v in ("5", "2", "-1", "0.5")],
    ("default_label", "2", {}),  # impossible whatever the policy: flipping the policy must not be what breaks it
    ("default_label", "7", {"num_classes": "5"}),
    *[("default_label", v, {"task": "regression"}) for v in ("1e39", "-3.5e38")],
    *[("learning_rate", v, {}) for v in ("0", "-0.1")],
    ("weight_decay", "-0.1", {}),
    ("loss_spike_factor", "1", {}),
    ("max_batch_delay_ms", "-1", {}),
    ("delivery_timeout_s", "1e7", {}),  # beyond Kafka's int32 milliseconds
    ("shutdown_timeout_s", "0", {}),
    *[("seed", v, {}) for v in (str(-(2**63) - 1), str(2**64))],
    *[("session_timeout_ms", v, {}) for v in ("0", str(2**31))],
    *[
        (name, "0", {})
        for name in ("input_dim", "hidden_dim", "max_batch_size", "train_batch_size", "fetch_max_records")
    ],
    *[(name, "0", {}) for name in ("max_pending", "max_early_label_bytes", "keep_checkpoints", "metrics_window")],
    ("num_classes", "1", {}),
    *[("metrics_port", v, {}) for v in ("-1", "65536")],
    ("torch_threads", "-1", {}),
    *[(name, "nonsense", {}) for name in ("task", "optimizer", "security_protocol", "sasl_mechanism", "delivery")],
    ("kafka_client", "kafka-python", {}),
    *[(name, "nonsense", {}) for name in ("guardrail_action", "missing_label_policy", "log_level", "cpu_kernels")],
    *[("challengers", v, {}) for v in ("nonsense", '{"model": "mlp"}', '[{"optimizer": "sgd"}, {"optimizer": "sgd"}]')],
    ("challengers", '[{"optimizer": "sgd", "name": "x"}, {"model": "mlp", "name": "x"}]', {}),
    *[("promotion_margin", v, {}) for v in ("1", "-0.1")],
    ("promotion_window", "0", {}),
    ("selection", "best", {}),
]


@pytest.mark.parametrize(("name", "value", "others"), IMPOSSIBLE, ids=[f"{n}={v!r:.30}" for n, v, _ in IMPOSSIBLE])
def test_an_impossible_setting_fails_naming_it(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, others: dict[str, str]
) -> None:
    with pytest.raises(ValidationError) as info:
        settings_from_env(monkeypatch, **others, **{name: value})
    assert [error["loc"] for error in info.value.errors()] == [(name,)], info.value


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"predictions_topic": "events"}, ["predictions_topic", "events_topic"]),
        ({"dead_letter_topic": "labels"}, ["dead_letter_topic", "labels_topic"]),
        ({"events_topic": "in", "labels_topic": "in"}, ["labels_topic", "events_topic"]),
        ({"events_topic": "app.events", "predictions_topic": "app_events"}, ["predictions_topic", "events_topic"]),
        ({"models_topic": "predictions"}, ["models_topic", "predictions_topic"]),
    ],
    ids=["predictions-are-events", "dead-letters-are-labels", "same-inputs", "dot-underscore-collision", "models"],
)
def test_the_topics_must_be_distinct(monkeypatch: pytest.MonkeyPatch, values: dict[str, str], named: list[str]) -> None:
    with pytest.raises(ValidationError) as info:
        settings_from_env(monkeypatch, **values)
    message = str(info.value)
    assert all(name in message for name in named), message


def test_exactly_once_needs_two_checkpoints_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match="keep_checkpoints"):
        settings_from_env(monkeypatch, delivery="exactly_once", keep_checkpoints="1")


@pytest.mark.parametrize("role", ["predictor", "trainer"])
def test_exactly_once_needs_the_all_in_one_role(monkeypatch: pytest.MonkeyPatch, role: str) -> None:
    with pytest.raises(ValidationError, match="role=all"):
        settings_from_env(monkeypatch, delivery="exactly_once", role=role)


@pytest.mark.parametrize(
    "challenger",
    [{}, {"lr": 0.1}, {"learning_rate": 0}, {"learning_rate": 0.1, "learning_rate_factor": 2}, {"model": "x y"},
     {"optimizer": "lbfgs"}, {"hidden_dim": 0}, {"name": "default", "model": "mlp"}, {"name": "a b", "model": "mlp"},
     {"seed": -1}],
    ids=str,
)  # fmt: skip
def test_an_impossible_challenger_fails_naming_it(
    monkeypatch: pytest.MonkeyPatch, challenger: dict[str, object]
) -> None:
    with pytest.raises(ValidationError) as info:
        settings_from_env(monkeypatch, challengers=json.dumps([{"optimizer": "sgd"}, challenger]))
    assert all(error["loc"][:2] == ("challengers", 1) for error in info.value.errors()), info.value


def test_challengers_are_a_json_list_or_a_preset_and_need_the_all_in_one_role(monkeypatch: pytest.MonkeyPatch) -> None:
    listed = settings_from_env(
        monkeypatch, challengers='[{"model": "mlp", "hidden_dim": 16}, {"learning_rate": 0.5, "name": "fast"}]'
    )
    assert [c.label for c in listed.challengers] == ["model=mlp,hidden_dim=16", "fast"]
    preset = settings_from_env(monkeypatch, challengers="learning_rates")
    assert [c.learning_rate_factor for c in preset.challengers] == [0.2, 5.0]
    assert (
        load_settings(["--input-dim", "3", "--challengers", '[{"optimizer": "sgd"}]']).challengers[0].optimizer == "sgd"
    )
    assert settings_from_env(monkeypatch, challengers="").challengers == []
    with pytest.raises(ValidationError, match="role=all"):
        settings_from_env(monkeypatch, challengers="learning_rates", role="trainer")


def test_each_role_reads_in_its_own_group(monkeypatch: pytest.MonkeyPatch) -> None:
    groups = {
        role: settings_from_env(monkeypatch, role=role, group_id="g").reading_group
        for role in ("all", "predictor", "trainer")
    }
    assert groups == {"all": "g", "predictor": "g", "trainer": "g.trainer"}


POSSIBLE: list[dict[str, str]] = [
    {"bootstrap_servers": "k1:9092, k2.example.com:9093,[::1]:9094,10.0.0.1:1,[fe80::1%eth0]:65535"},
    {"events_topic": "a" * 249, "labels_topic": "my_topic.v1-2", "predictions_topic": "P", "dead_letter_topic": "..."},
    *[{"device": v} for v in ("auto", "cpu", "cuda", "cuda:0", "cuda:12")],
    *[{"model": v} for v in ("linear", "mlp", "pkg.sub_mod:make_model", "m:F")],
    {"default_label": "1", "missing_label_policy": "default"},
    {"default_label": "4.0", "num_classes": "5"},
    {"default_label": "-3.4e38", "task": "regression"},
    {"learning_rate": "1e-3", "weight_decay": "0", "loss_spike_factor": "1.5", "max_batch_delay_ms": "0"},
    {"seed": str(-(2**63))},
    {"seed": str(2**64 - 1)},
    {"session_timeout_ms": str(2**31 - 1), "delivery_timeout_s": "2147", "shutdown_timeout_s": "0.5"},
    {"metrics_port": "0", "torch_threads": "0", "metrics_host": "::"},
    {"delivery": "exactly_once", "kafka_client": "librdkafka", "transactional_id": "my-app.1"},
    *[{"cpu_kernels": v} for v in ("auto", "off")],
    *[{"role": v} for v in ("all", "predictor", "trainer")],
    {
        "models_topic": "ml.models-v1",
        "model_publish_interval_s": "0.05",
        "max_model_age_s": "3600",
        "commit_interval_s": "0.2",
    },
    {"selection": "average", "promotion_margin": "0", "promotion_window": "1"},
]


@pytest.mark.parametrize("values", POSSIBLE, ids=[",".join(v)[:40] for v in POSSIBLE])
def test_possible_settings_pass(monkeypatch: pytest.MonkeyPatch, values: dict[str, str]) -> None:
    settings = settings_from_env(monkeypatch, **values)
    for name, value in values.items():
        assert getattr(settings, name) == type(getattr(settings, name))(value), name


def test_the_defaults_pass_and_every_field_is_checked_by_a_test_here() -> None:
    """A new setting needs a line in IMPOSSIBLE (or a reason not to) when it is added."""
    assert Settings(input_dim=1).input_dim == 1
    checked = {name for name, _, _ in IMPOSSIBLE} | {"sasl_password", "ssl_certfile", "ssl_keyfile"}
    # sasl_password is a secret that any string may be; ssl_certfile and ssl_keyfile take the same check
    # as ssl_cafile, and their files are checked where they are opened (kafka.security_kwargs, at start).
    assert set(Settings.model_fields) == checked


# --- env files ----------------------------------------------------------------------------------


def test_a_dotenv_in_the_working_directory_is_not_read(tmp_path: Path) -> None:
    """The working directory may be writable by others (the image's was the checkpoint volume)."""
    (tmp_path / ".env").write_text("STREAM_LEARNER_INPUT_DIM=5\nSTREAM_LEARNER_BOOTSTRAP_SERVERS=evil:9092\n")
    assert Path.cwd() == tmp_path
    with pytest.raises(ValidationError, match="input_dim"):
        load_settings([])
    assert load_settings(["--input-dim", "3"]).bootstrap_servers == "localhost:9092"


def test_an_env_file_is_read_when_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_file = tmp_path / "conf" / "stream-learner.env"
    env_file.parent.mkdir()
    env_file.write_text("STREAM_LEARNER_INPUT_DIM=5\nSTREAM_LEARNER_MODEL=mlp\nSTREAM_LEARNER_TASK=classification\n")
    monkeypatch.setenv(ENV_FILE_VARIABLE, str(env_file))
    monkeypatch.setenv("STREAM_LEARNER_TASK", "regression")
    settings = load_settings(["--model", "linear"])
    assert (settings.input_dim, settings.model, settings.task) == (5, "linear", "regression"), (
        "flags, then environment, then the file"
    )


@pytest.mark.parametrize("named", ["missing.env", "", "a-directory"])
def test_a_named_env_file_that_is_not_there_fails_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, named: str
) -> None:
    (tmp_path / "a-directory").mkdir()
    monkeypatch.setenv(ENV_FILE_VARIABLE, str(tmp_path / named) if named else "")
    monkeypatch.setenv("STREAM_LEARNER_INPUT_DIM", "4")
    with pytest.raises(ConfigError, match=ENV_FILE_VARIABLE):
        load_settings([])


def test_the_image_does_not_start_in_its_writable_volume() -> None:
    """WORKDIR is not in the checkpoint volume (the service user's home, which it can write)."""
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    final_stage = text[text.rindex("\nFROM ") :]
    workdir = re.findall(r"^WORKDIR\s+(\S+)", final_stage, re.M)[-1]
    volume = Path("/var/lib/stream-learner")
    checkpoints = re.search(r"STREAM_LEARNER_CHECKPOINT_DIR=(\S+)", final_stage)
    assert checkpoints is not None and Path(checkpoints.group(1)).is_relative_to(volume)
    assert re.search(rf"--home-dir {volume}\b", final_stage), "the volume is the user's home"
    assert not Path(workdir).is_relative_to(volume), workdir


def test_cpu_kernels_has_a_flag_and_is_auto_by_default() -> None:
    assert load_settings(["--input-dim", "3"]).cpu_kernels == "auto"
    assert load_settings(["--input-dim", "3", "--cpu-kernels", "off"]).cpu_kernels == "off"
