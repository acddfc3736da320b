"""Settings: one frozen object, built once at start-up.

Sources, highest priority first: command-line flags (``--input-dim 8``),
environment variables with prefix ``STREAM_LEARNER_``, a ``.env`` file, defaults.
Nothing else in the package reads ``os.environ``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Sequence

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Task = Literal["classification", "regression"]
OptimizerName = Literal["adam", "sgd", "adagrad"]
SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
GuardrailAction = Literal["skip", "rollback"]
Delivery = Literal["at_least_once", "exactly_once"]
MissingLabelPolicy = Literal["drop", "default"]

# Tuned on the synthetic stream for accuracy after a few hundred labels and recovery after drift.
DEFAULT_LEARNING_RATE: dict[str, dict[str, float]] = {
    "linear": {"adam": 0.05, "adagrad": 0.3, "sgd": 0.1},
    "other": {"adam": 0.01, "adagrad": 0.05, "sgd": 0.05},
}


class Settings(BaseSettings):
    """Everything the service can be told. Field docs become ``--help`` text."""

    model_config = SettingsConfigDict(
        env_prefix="STREAM_LEARNER_",
        env_file=".env",
        extra="ignore",
        frozen=True,
        cli_kebab_case=True,
        cli_implicit_flags=False,
        use_attribute_docstrings=True,
    )

    bootstrap_servers: str = "localhost:9092"
    """Kafka bootstrap servers, comma separated."""
    events_topic: str = "events"
    """Topic of incoming events."""
    labels_topic: str = "labels"
    """Topic of labels that arrive after their events."""
    predictions_topic: str = "predictions"
    """Topic the predictions are published to."""
    dead_letter_topic: str = "stream-learner-dlq"
    """Topic that receives every record that cannot be used, with the reason in its headers."""
    group_id: str = "stream-learner"
    """Kafka consumer group. One service instance per group."""
    client_id: str = "stream-learner"
    """Kafka client id."""
    security_protocol: SecurityProtocol = "PLAINTEXT"
    """PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL."""
    sasl_mechanism: SaslMechanism = "PLAIN"
    """SASL mechanism when security_protocol is SASL_*."""
    sasl_username: str | None = None
    """SASL user name."""
    sasl_password: SecretStr | None = None
    """SASL password (a secret: never logged)."""
    ssl_cafile: Path | None = None
    """CA bundle to verify the brokers' certificates (SSL, SASL_SSL)."""
    ssl_certfile: Path | None = None
    """Client certificate for mutual TLS."""
    ssl_keyfile: Path | None = None
    """Client private key for mutual TLS."""
    delivery: Delivery = "at_least_once"
    """at_least_once: predictions may repeat after a crash. exactly_once: predictions, dead letters and
    offsets go out in one Kafka transaction per checkpoint, so a read_committed consumer sees each
    prediction once (needs a broker with transactions; one running instance per group)."""
    transactional_id: str | None = None
    """exactly_once: the producer's transactional id (default ``stream-learner.<GROUP_ID>``). A new
    instance with the same id fences the previous one, so keep it the same across restarts."""

    task: Task = "classification"
    """classification (class index labels) or regression (numeric labels)."""
    input_dim: int = Field(gt=0)
    """Number of features per event (required)."""
    num_classes: int = Field(default=2, ge=2)
    """Number of classes (classification)."""
    model: str = "linear"
    """linear, mlp, or package.module:factory (called with the settings, returns an nn.Module)."""
    hidden_dim: int = Field(default=64, gt=0)
    """Width of the mlp's hidden layers."""
    optimizer: OptimizerName = "adam"
    """adam, sgd or adagrad."""
    learning_rate: float | None = Field(default=None, gt=0)
    """Step size; unset picks a tuned default (linear: adam 0.05, adagrad 0.3, sgd 0.1; others: 0.01, 0.05, 0.05)."""
    weight_decay: float = Field(default=0.0, ge=0)
    """L2 penalty passed to the optimizer."""
    grad_clip_norm: float = Field(default=5.0, gt=0)
    """Gradients are clipped to this global norm before each step."""
    loss_spike_factor: float = Field(default=20.0, gt=1)
    """A step whose loss exceeds this many times the recent median loss is treated as poisoned."""
    guardrail_action: GuardrailAction = "skip"
    """What a poisoned step does: skip it, or roll the model back to the last good checkpoint."""
    seed: int = 0
    """Seed for model initialisation."""

    max_batch_size: int = Field(default=256, gt=0)
    """An inference micro-batch is sent when it holds this many events..."""
    max_batch_delay_ms: float = Field(default=10.0, ge=0)
    """...or this long after its first event arrived, whichever comes first."""
    train_batch_size: int = Field(default=32, gt=0)
    """Joined examples per optimizer step (a smaller step runs when they wait longer than the batch delay)."""
    session_timeout_ms: int = Field(default=10_000, gt=0)
    """Consumer group session timeout: how soon the group notices a dead instance."""
    fetch_max_records: int = Field(default=2048, gt=0)
    """Most records taken from the consumer per poll."""

    label_ttl_s: float = Field(default=3600.0, gt=0)
    """How long a predicted event waits for its label (and an early label for its event)."""
    max_pending: int = Field(default=1_000_000, gt=0)
    """Most events waiting for labels; the oldest is evicted first. Early labels have the same bound."""
    missing_label_policy: MissingLabelPolicy = "drop"
    """drop: an event whose label never comes is forgotten; default: it is trained with default_label."""
    default_label: float = 0.0
    """The label used for expired events under missing_label_policy=default."""

    checkpoint_dir: Path = Path("./checkpoints")
    """Directory of the checkpoint files."""
    checkpoint_interval_s: float = Field(default=30.0, gt=0)
    """Seconds between periodic checkpoints."""
    keep_checkpoints: int = Field(default=3, ge=1)
    """How many checkpoint files to keep."""

    metrics_port: int = Field(default=9400, ge=0, le=65535)
    """Port of /metrics, /healthz and /readyz (0 disables)."""
    metrics_host: str = "0.0.0.0"
    """Address the metrics endpoint listens on."""
    tensorboard_dir: Path | None = None
    """When set, loss, prequential metrics and weight histograms are written here for TensorBoard."""
    torch_threads: int = Field(default=1, ge=0)
    """CPU threads for torch's kernels and numpy's BLAS (0: their defaults). One keeps small steps from stalling on busy cores."""
    device: str = "auto"
    """auto (cuda when available, else cpu), cpu, cuda or cuda:N."""
    metrics_window: int = Field(default=1000, gt=0)
    """Size of the recent window of the prequential metrics."""
    log_interval_s: float = Field(default=10.0, gt=0)
    """Seconds between progress log lines."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Log level."""
    crash_at: str | None = None
    """Test hook: STEP:N makes the process exit abruptly (as kill -9 would) at checkpoint step STEP
    (drained, snapshot, written_temp, written, committed) of its Nth checkpoint since the process started."""

    @model_validator(mode="after")
    def _check_delivery(self) -> "Settings":
        if self.delivery == "exactly_once" and self.keep_checkpoints < 2:
            raise ValueError(
                "delivery=exactly_once needs keep_checkpoints >= 2: after a crash between writing a "
                "checkpoint and committing its transaction, the service resumes from the one before"
            )
        return self

    @property
    def effective_transactional_id(self) -> str:
        """The transactional id used with ``delivery=exactly_once``."""
        return self.transactional_id or f"stream-learner.{self.group_id}"

    @model_validator(mode="after")
    def _check_model_name(self) -> "Settings":
        if self.model not in ("linear", "mlp") and ":" not in self.model:
            raise ValueError(f"model must be 'linear', 'mlp' or 'package.module:factory', got {self.model!r}")
        return self

    @property
    def output_dim(self) -> int:
        """Width of the model's output: the class count, or 1 for regression."""
        return self.num_classes if self.task == "classification" else 1

    @property
    def effective_learning_rate(self) -> float:
        """The configured learning rate, or the tuned default for the model and optimizer."""
        family = "linear" if self.model == "linear" else "other"
        return self.learning_rate or DEFAULT_LEARNING_RATE[family][self.optimizer]


def load_settings(cli_args: Sequence[str] | None = None, prog: str = "stream-learner run", **overrides: object) -> Settings:
    """Build the settings from flags (when given), environment, ``.env`` and defaults."""
    if cli_args is None:
        return Settings(**overrides)  # type: ignore[arg-type]
    return Settings(_cli_parse_args=list(cli_args), _cli_prog_name=prog, **overrides)  # type: ignore[call-arg]
