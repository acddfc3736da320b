"""The value types of the settings (:mod:`stream_learner.config`): the names a setting may take, the checks
of single values, and the challengers.

Guarantees: a :class:`ChallengerSpec` is checked like the settings it overrides (the same ranges and names),
and the challengers of one :class:`~stream_learner.config.Settings` have distinct names.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Task = Literal["classification", "regression"]
OptimizerName = Literal["adam", "sgd", "adagrad"]
SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
GuardrailAction = Literal["skip", "rollback"]
Delivery = Literal["at_least_once", "exactly_once"]
KafkaClient = Literal["aiokafka", "librdkafka"]
EXACTLY_ONCE_NEEDS_LIBRDKAFKA = (
    "delivery=exactly_once needs kafka_client=librdkafka: aiokafka's transactional producer commits offsets "
    "without the consumer group's metadata (no KIP-447 fencing of a member the group moved past), and its "
    "transactions fail on the embedded broker, so that path could never be tested"
)
MissingLabelPolicy = Literal["drop", "default"]
CpuKernels = Literal["auto", "off"]
Role = Literal["all", "predictor", "trainer"]
Selection = Literal["champion", "average"]

FLOAT32_LIMIT = 2.0**128 * (1 - 2.0**-25)
"""The smallest magnitude that rounds to infinity as a float32: a float below it is a finite float32."""
DEFAULT_MODEL_NAME = "default"
"""The name of the model the settings themselves describe, among its challengers."""
_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")
_DEVICE = re.compile(r"auto|cpu|cuda(:[0-9]+)?")
_HOST = re.compile(r"[A-Za-z0-9._-]+|\[[0-9A-Za-z:.%]+\]")
_NAME = re.compile(r"[A-Za-z0-9._=,*/-]{1,64}")

# Tuned on the synthetic stream for accuracy after a few hundred labels and recovery after drift.
DEFAULT_LEARNING_RATE: dict[str, dict[str, float]] = {
    "linear": {"adam": 0.05, "adagrad": 0.3, "sgd": 0.1},
    "other": {"adam": 0.01, "adagrad": 0.05, "sgd": 0.05},
}

CHALLENGER_PRESETS: dict[str, list[dict[str, Any]]] = {
    "learning_rates": [{"learning_rate_factor": 0.2}, {"learning_rate_factor": 5.0}],
}
"""Named sets of challengers: ``learning_rates`` is the default model at a fifth and at five times its
learning rate."""


def check_bootstrap_servers(value: str) -> str:
    """Comma separated ``host:port`` pairs (an IPv6 host in brackets); raises ValueError otherwise."""
    for server in value.split(","):
        host, _, port = server.strip().rpartition(":")
        if not (_HOST.fullmatch(host) and port.isascii() and port.isdigit() and 0 < int(port) <= 65535):
            raise ValueError(f"must be comma separated host:port pairs, got {server.strip()!r} in {value!r}")
    return value


def check_topic(value: str) -> str:
    """A legal Kafka topic name; raises ValueError otherwise."""
    if not _TOPIC.fullmatch(value) or value in (".", ".."):
        raise ValueError(f"{value!r} is not a legal Kafka topic name: 1 to 249 of [A-Za-z0-9._-], not '.' or '..'")
    return value


def check_device(value: str) -> str:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``; raises ValueError otherwise."""
    if not _DEVICE.fullmatch(value):
        raise ValueError(f"must be auto, cpu, cuda or cuda:N, got {value!r}")
    return value


def check_model_name(value: str) -> str:
    """``linear``, ``mlp`` or ``package.module:factory``; raises ValueError otherwise."""
    module, colon, factory = value.partition(":")
    named = colon and factory.isidentifier() and all(part.isidentifier() for part in module.split("."))
    if value not in ("linear", "mlp") and not named:
        raise ValueError(f"must be 'linear', 'mlp' or 'package.module:factory', got {value!r}")
    return value


class ChallengerSpec(BaseModel):
    """A challenger: the model settings it has of its own; every other setting is the default model's."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: str | None = None
    """How predictions, logs and metrics name it (default: its settings, e.g. ``learning_rate_factor=5.0``)."""
    model: str | None = None
    optimizer: OptimizerName | None = None
    learning_rate: float | None = Field(default=None, gt=0)
    learning_rate_factor: float | None = Field(default=None, gt=0)
    """Its learning rate as a multiple of the one its model and optimizer would have (set or tuned)."""
    weight_decay: float | None = Field(default=None, ge=0)
    hidden_dim: int | None = Field(default=None, gt=0)
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)

    @field_validator("model")
    @classmethod
    def _check_model(cls, value: str | None) -> str | None:
        return None if value is None else check_model_name(value)

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str | None) -> str | None:
        if value is not None and (not _NAME.fullmatch(value) or value == DEFAULT_MODEL_NAME):
            raise ValueError(f"must be 1 to 64 of [A-Za-z0-9._=,*/-] and not {DEFAULT_MODEL_NAME!r}, got {value!r}")
        return value

    @model_validator(mode="after")
    def _check_settings(self) -> ChallengerSpec:
        if self.learning_rate is not None and self.learning_rate_factor is not None:
            raise ValueError("set learning_rate or learning_rate_factor, not both")
        if not self.overrides():
            raise ValueError("a challenger must differ from the default model in at least one setting")
        return self

    def overrides(self) -> dict[str, Any]:
        """The settings it sets, by name (``learning_rate_factor`` among them)."""
        return {k: v for k, v in self.model_dump().items() if k != "name" and v is not None}

    @property
    def label(self) -> str:
        """Its name, or its settings as ``key=value`` pairs."""
        return self.name or ",".join(f"{k}={v}" for k, v in self.overrides().items())


def parse_challengers(value: Any) -> Any:
    """A preset's name, a JSON list, or what pydantic validates as ``list[ChallengerSpec]`` already."""
    if isinstance(value, str):
        text = value.strip()
        if text in CHALLENGER_PRESETS:
            return CHALLENGER_PRESETS[text]
        if not text:
            return []
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            presets = ", ".join(CHALLENGER_PRESETS)
            raise ValueError(f"must be a preset ({presets}) or a JSON list of challengers: {exc}") from None
    return value


def check_distinct_labels(challengers: list[ChallengerSpec]) -> list[ChallengerSpec]:
    """The challengers, each name used once."""
    labels = [c.label for c in challengers]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise ValueError(f"challenger names must be distinct; repeated: {repeated} (give each a 'name')")
    return challengers


def check_default_label(value: float, task: str | None, classes: int | None) -> float:
    """A class index for classification, a finite float32 for regression."""
    if task == "classification" and classes is not None and not (value == int(value) and 0 <= value < classes):
        raise ValueError(f"must be a class index in [0, {classes}) (num_classes) for classification, got {value!r}")
    if task == "regression" and not abs(value) < FLOAT32_LIMIT:
        raise ValueError(f"must be a finite float32 for regression, got {value!r}")
    return value
