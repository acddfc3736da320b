"""Settings: one frozen object, built once at start-up.

Sources, highest priority first: flags (``--input-dim 8``), ``STREAM_LEARNER_*`` environment variables, the env
file named by ``STREAM_LEARNER_ENV_FILE`` (if any: no ``.env`` is read from the working directory, in the image the
writable volume), defaults. :mod:`stream_learner.settings_loading` loads them; nothing else in the package reads
``os.environ``.

Guarantees: every value that cannot work fails here, at start, as a pydantic ``ValidationError`` naming the setting
(the command line exits 2 on it): floats are finite, topics are legal Kafka names and distinct, and so on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from stream_learner import config_types as checks
from stream_learner.config_types import (
    DEFAULT_LEARNING_RATE,
    ChallengerSpec,
    CpuKernels,
    Delivery,
    GuardrailAction,
    KafkaClient,
    MissingLabelPolicy,
    OptimizerName,
    Role,
    SaslMechanism,
    SecurityProtocol,
    Selection,
    Task,
)

TOPIC_SETTINGS = ("events_topic", "labels_topic", "predictions_topic", "dead_letter_topic", "models_topic")
_INT32_MAX = 2**31 - 1
_NOT_BLANK = ("group_id", "client_id", "metrics_host")
_PATHS = ("checkpoint_dir", "tensorboard_dir", "ssl_cafile", "ssl_certfile", "ssl_keyfile")


class Settings(BaseSettings):
    """Everything the service can be told. Field docs become ``--help`` text."""

    model_config = SettingsConfigDict(
        env_prefix="STREAM_LEARNER_",
        env_file=None,
        extra="ignore",
        allow_inf_nan=False,
        frozen=True,
        cli_kebab_case=True,
        cli_implicit_flags=False,
        use_attribute_docstrings=True,
    )

    bootstrap_servers: str = "localhost:9092"
    """Kafka bootstrap servers, comma separated host:port pairs (an IPv6 host in brackets)."""
    events_topic: str = "events"
    """Topic of incoming events."""
    labels_topic: str = "labels"
    """Topic of labels that arrive after their events."""
    predictions_topic: str = "predictions"
    """Topic the predictions are published to."""
    dead_letter_topic: str = "stream-learner-dlq"
    """Topic that receives every record that cannot be used, with the reason in its headers."""
    group_id: str = "stream-learner"
    """Kafka consumer group: of the one ROLE=all instance, or of the predictors (a trainer reads in
    ``<GROUP_ID>.trainer`` and is elected in ``<GROUP_ID>.trainer-election``)."""
    role: Role = "all"
    """all: one process predicts, trains and checkpoints. predictor: predictions only, by the newest model
    version on MODELS_TOPIC (any number of replicas). trainer: joins, trains, checkpoints and publishes model
    versions (one leads; others stand by)."""
    models_topic: str = "stream-learner-models"
    """Topic of the model versions a trainer publishes for the predictors (one partition)."""
    model_publish_interval_s: float = Field(default=1.0, gt=0)
    """A trainer publishes a model version this often while the weights change, and after every checkpoint."""
    max_model_age_s: float = Field(default=60.0, gt=0)
    """A predictor whose model is older than this flags it (stream_learner_model_stale)."""
    commit_interval_s: float = Field(default=1.0, gt=0)
    """A predictor commits its offsets this often, each after the broker acknowledged the predictions before it."""
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
    kafka_client: KafkaClient = "aiokafka"
    """The Kafka client of the events, labels, predictions and dead-letter topics: aiokafka, or librdkafka
    (confluent-kafka, ``pip install 'stream-learner[librdkafka]'``)."""
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
    seed: int = Field(default=0, ge=-(2**63), le=2**64 - 1)
    """Seed for model initialisation (torch's seed range)."""
    challengers: Annotated[list[ChallengerSpec], NoDecode] = []
    """Models trained on the same examples beside the default one: a JSON list of objects setting some of name, model,
    optimizer, learning_rate, learning_rate_factor, weight_decay, hidden_dim, seed (e.g. [{"model": "mlp"}]), or the
    preset learning_rates (the default model at a fifth and five times its learning rate)."""
    selection: Selection = "champion"
    """With challengers: champion serves the best model so far (promoted as PROMOTION_MARGIN and
    PROMOTION_WINDOW say); average serves the mean of every model's scores."""
    promotion_margin: float = Field(default=0.1, ge=0, lt=1)
    """A challenger is promoted when its error over the window (1 - accuracy, or MAE) is below the champion's
    by this fraction of the champion's."""
    promotion_window: int = Field(default=500, gt=0)
    """Examples each model is judged on (scored before it trained on them); also the fewest between promotions."""

    max_batch_size: int = Field(default=256, gt=0)
    """An inference micro-batch is sent when it holds this many events..."""
    max_batch_delay_ms: float = Field(default=10.0, ge=0)
    """...or this long after its first event arrived, whichever comes first."""
    train_batch_size: int = Field(default=32, gt=0)
    """Joined examples per optimizer step (a smaller step runs when they wait longer than the batch delay)."""
    delivery_timeout_s: float = Field(default=300.0, gt=0, le=_INT32_MAX / 1000, allow_inf_nan=False)
    """How long a produced prediction or dead letter may wait for the broker's acknowledgement, retries
    included, before the service fails. The default outlasts a broker restart or a stall of minutes."""
    shutdown_timeout_s: float = Field(default=30.0, gt=0, allow_inf_nan=False)
    """How long a stop may take to drain and write its final checkpoint; past it (a broker that does not
    answer) the service exits 1 without it and the next start resumes from the last durable checkpoint."""
    session_timeout_ms: int = Field(default=10_000, gt=0, le=_INT32_MAX)
    """Consumer group session timeout: how soon the group notices a dead instance."""
    fetch_max_records: int = Field(default=2048, gt=0)
    """Most records taken from the consumer per poll."""

    label_ttl_s: float = Field(default=3600.0, gt=0)
    """How long a predicted event waits for its label (and an early label for its event)."""
    max_pending: int = Field(default=1_000_000, gt=0)
    """Most events waiting for labels; the oldest is evicted first. Early labels have the same bound."""
    max_early_label_bytes: int = Field(default=128 * 1024 * 1024, gt=0)
    """Memory the ids of early labels (labels waiting for their events) may take together, in bytes
    (each id as a Python string: its characters and about 50 bytes); beyond it the oldest early label is
    evicted and counted. Bounds long ids, where MAX_PENDING, a count, does not."""
    missing_label_policy: MissingLabelPolicy = "drop"
    """drop: an event whose label never comes is forgotten; default: it is trained with default_label."""
    default_label: float = 0.0
    """The label used for expired events under missing_label_policy=default: a class index below
    num_classes (classification) or a finite float32 (regression), whatever the policy."""

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
    """CPU threads for torch's kernels and numpy's BLAS (0: their defaults). One keeps small steps from stalling on
    busy cores."""
    device: str = "auto"
    """auto (cuda when available, else cpu), cpu, cuda or cuda:N."""
    cpu_kernels: CpuKernels = "auto"
    """auto: the measured fast paths where they apply (kernels/): for built-in models on the CPU, the compiled
    dense net and host Adam; the standardizer's moments in compiled loops; Adam's fused kernel called directly;
    the record-batch writer; the join's compiled id table. off: the library paths only (torch autograd and
    torch.optim; aiokafka's own batches; a dict id table). Both give the same results up to float32 rounding."""
    metrics_window: int = Field(default=1000, gt=0)
    """Size of the recent window of the prequential metrics."""
    log_interval_s: float = Field(default=10.0, gt=0)
    """Seconds between progress log lines."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Log level."""

    @field_validator("bootstrap_servers")
    @classmethod
    def _check_bootstrap_servers(cls, value: str) -> str:
        return checks.check_bootstrap_servers(value)

    @field_validator(*TOPIC_SETTINGS)
    @classmethod
    def _check_topic(cls, value: str) -> str:
        return checks.check_topic(value)

    @field_validator(*_NOT_BLANK, "transactional_id", "sasl_username", *_PATHS, mode="before")
    @classmethod
    def _check_not_blank(cls, value: Any, info: ValidationInfo) -> Any:
        # Before validation: an empty path would become Path("."), the working directory.
        if isinstance(value, str) and not value.strip():
            unset = "" if info.field_name in _NOT_BLANK else " (leave it unset instead)"
            raise ValueError(f"must not be empty{unset}")
        return value

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        return checks.check_device(value)

    @field_validator("model")
    @classmethod
    def _check_model_name(cls, value: str) -> str:
        return checks.check_model_name(value)

    @field_validator("challengers", mode="before")
    @classmethod
    def _parse_challengers(cls, value: Any) -> Any:
        return checks.parse_challengers(value)

    @field_validator("challengers")
    @classmethod
    def _check_challengers(cls, value: list[ChallengerSpec]) -> list[ChallengerSpec]:
        return checks.check_distinct_labels(value)

    @field_validator("default_label")
    @classmethod
    def _check_default_label(cls, value: float, info: ValidationInfo) -> float:
        return checks.check_default_label(value, info.data.get("task"), info.data.get("num_classes"))

    @model_validator(mode="after")
    def _check_topics_distinct(self) -> Settings:
        # Kafka refuses a topic whose name equals another's with '.' and '_' swapped (their metric names collide).
        seen: dict[str, str] = {}
        for name in TOPIC_SETTINGS:
            topic = getattr(self, name)
            other = seen.setdefault(topic.replace(".", "_"), name)
            if other != name:
                same = "is" if getattr(self, other) == topic else "collides in Kafka ('.' and '_' are one) with"
                raise ValueError(
                    f"{name} {topic!r} {same} {other} {getattr(self, other)!r}: the topics must be distinct "
                    "(predictions read back as events would feed the service its own output)"
                )
        return self

    @model_validator(mode="after")
    def _check_delivery(self) -> Settings:
        if self.delivery == "exactly_once" and self.keep_checkpoints < 2:
            raise ValueError(  # see docs/architecture.md, exactly-once
                "delivery=exactly_once needs keep_checkpoints >= 2: a crash before a checkpoint's transaction "
                "commits resumes from the one before"
            )
        if self.delivery == "exactly_once" and self.role != "all":
            raise ValueError("delivery=exactly_once needs role=all (predictors publish at least once)")
        if self.delivery == "exactly_once" and self.kafka_client != "librdkafka":
            raise ValueError(checks.EXACTLY_ONCE_NEEDS_LIBRDKAFKA)
        if self.challengers and self.role != "all":
            raise ValueError("challengers need role=all (a predictor serves one published model)")
        return self

    @property
    def effective_transactional_id(self) -> str:
        """The transactional id used with ``delivery=exactly_once``."""
        return self.transactional_id or f"stream-learner.{self.group_id}"

    @property
    def reading_group(self) -> str:
        """The consumer group this process reads events (and labels) in."""
        return f"{self.group_id}.trainer" if self.role == "trainer" else self.group_id

    @property
    def output_dim(self) -> int:
        """Width of the model's output: the class count, or 1 for regression."""
        return self.num_classes if self.task == "classification" else 1

    @property
    def effective_learning_rate(self) -> float:
        """The configured learning rate, or the tuned default for the model and optimizer."""
        family = "linear" if self.model == "linear" else "other"
        return self.learning_rate or DEFAULT_LEARNING_RATE[family][self.optimizer]
