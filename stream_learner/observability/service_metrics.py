"""The service's own figures as Prometheus metrics, read at scrape time through :class:`ServiceStatus`.

Totals that checkpoints restore (events predicted, labels joined, examples trained, ...) are
exported as the service's own figures, so they stay consistent across restarts. The tables
below map each exported name to the key of :meth:`ServiceStatus.stats` it reads.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from stream_learner.config import Settings
from stream_learner.observability.status import ServiceStatus

# Reasons of the dead-letter contract (docs/contract.md); exported as zero from the start
# so that rate() sees the first one. A reason not listed here still shows when it happens.
DEAD_LETTER_REASONS = (
    "invalid_json", "not_an_object", "empty_value", "missing_id", "bad_id", "missing_features", "bad_features",
    "wrong_feature_length", "non_finite_features", "bad_ts", "missing_label", "bad_label", "label_out_of_range",
)  # fmt: skip

# Totals (exported with _total): name, help, key of stats().
SERVICE_COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("stream_learner_events_consumed", "Event records read from the events topic, bad ones included.",
     "events_consumed"),
    ("stream_learner_labels_consumed", "Label records read from the labels topic, bad ones included.",
     "labels_consumed"),
    ("stream_learner_predictions_published", "Predictions handed to the producer (one per good event).",
     "events_predicted"),
    ("stream_learner_labels_joined", "Labels joined to their predicted events.", "labels_joined"),
    ("stream_learner_labels_duplicate", "Labels dropped as a second label for the same event id.",
     "labels_duplicate"),
    ("stream_learner_labels_expired", "Early labels whose event did not come within LABEL_TTL_S.", "labels_expired"),
    ("stream_learner_labels_evicted",
     "Early labels evicted (oldest first) beyond MAX_PENDING, or beyond the byte bound of their ids.",
     "labels_evicted"),
    ("stream_learner_events_expired", "Predicted events whose label did not come within LABEL_TTL_S.",
     "events_expired"),
    ("stream_learner_events_evicted", "Predicted events evicted (oldest first) beyond MAX_PENDING.", "events_evicted"),
    ("stream_learner_events_duplicate", "Events whose id was already waiting for a label.", "events_duplicate"),
    ("stream_learner_events_defaulted", "Expired events trained with DEFAULT_LABEL (MISSING_LABEL_POLICY=default).",
     "events_defaulted"),
    ("stream_learner_examples_trained", "Examples in applied optimizer steps.", "examples_trained"),
    ("stream_learner_examples_skipped", "Examples in skipped optimizer steps.", "examples_skipped"),
    ("stream_learner_optimizer_steps", "Optimizer steps applied (the model version counts these).",
     "optimizer_steps"),
    ("stream_learner_skipped_steps", "Optimizer steps skipped: non-finite loss or gradient, or a loss spike.",
     "skipped_steps"),
    ("stream_learner_poisoned_steps", "Skipped steps whose loss was a spike (the training guardrail).",
     "poisoned_steps"),
    ("stream_learner_rollbacks", "Rollbacks to the last good checkpoint's weights (GUARDRAIL_ACTION=rollback).",
     "rollbacks"),
    ("stream_learner_prequential_examples",
     "Examples scored by the prequential metrics (predicted before their label was known).", "scored_examples"),
)  # fmt: skip
SERVICE_GAUGES: tuple[tuple[str, str, str], ...] = (
    ("stream_learner_pending_events", "Predicted events waiting in the join buffer for their labels.",
     "pending_events"),
    ("stream_learner_early_labels", "Labels waiting in the join buffer for their events.", "early_labels"),
    ("stream_learner_queued_examples", "Joined examples waiting for an optimizer step.", "queued_examples"),
    ("stream_learner_model_version",
     "Optimizer steps applied to the current weights (the predictions' model_version).", "model_version"),
    ("stream_learner_model_generation",
     "Trainer generation of the model version published (trainer) or served (predictor).", "model_generation"),
    ("stream_learner_model_age_seconds",
     "Seconds since the model version served (predictor) or last published (trainer) was made.", "model_age_s"),
    ("stream_learner_model_stale", "1 when a predictor's model is older than MAX_MODEL_AGE_S, else 0.",
     "model_stale"),
)  # fmt: skip
# Prequential metrics over the last METRICS_WINDOW examples: name, help, key of stats().
PREQUENTIAL: dict[str, tuple[tuple[str, str, str], ...]] = {
    "classification": (
        ("stream_learner_prequential_accuracy",
         "Prequential accuracy over the last METRICS_WINDOW labelled events.", "prequential_recent_accuracy"),
        ("stream_learner_prequential_log_loss",
         "Prequential log-loss over the last METRICS_WINDOW labelled events.", "prequential_recent_log_loss"),
    ),
    "regression": (
        ("stream_learner_prequential_mae",
         "Prequential mean absolute error over the last METRICS_WINDOW labelled events.", "prequential_recent_mae"),
        ("stream_learner_prequential_rmse",
         "Prequential root mean squared error over the last METRICS_WINDOW labelled events.",
         "prequential_recent_rmse"),
    ),
}  # fmt: skip


class ServiceCollector(Collector):
    """Reads the service's totals, gauges, health and lag at scrape time (on the event loop).

    Before the checkpoint is restored the totals would read 0 and then jump to the restored
    figures, which Prometheus takes for a counter reset plus a huge increase. So until
    :attr:`ServiceStatus.restored` the families of the service's figures have no samples:
    a series that appears is not an increase.
    """

    def __init__(self, status: ServiceStatus, settings: Settings) -> None:
        self.status = status
        self.task = settings.task
        self.model = settings.model

    def collect(self) -> Iterator[Metric]:
        stats = self.status.stats()
        restored = self.status.restored
        for name, doc, key in SERVICE_COUNTERS:
            yield _counter(name, doc, stats[key] if restored else None)
        yield _dead_lettered(stats["dead_lettered_by_reason"] if restored else None)
        yield _model_versions(stats["model_versions"])
        for name, doc, key in SERVICE_GAUGES:
            yield _gauge(name, doc, stats[key] if restored else None)
        loss = stats["last_loss"]
        yield _gauge(
            "stream_learner_train_loss",
            "Loss of the last applied optimizer step.",
            loss if restored and loss is not None and not math.isnan(loss) else None,
        )
        for name, doc, key in PREQUENTIAL[self.task]:
            yield _gauge(name, doc, stats.get(key) if restored else None)
        if "models" in stats:
            yield from _models(stats, restored)
        yield _consumer_lag(self.status)
        yield from _health(self.status.health())
        yield self._info(stats["device"])

    def _info(self, device: str) -> InfoMetricFamily:
        from stream_learner import __version__

        return InfoMetricFamily(
            "stream_learner",
            "The service: package version, task, model and device.",
            value={"version": __version__, "task": self.task, "model": self.model, "device": device},
        )


def _dead_lettered(by_reason: dict[str, int] | None) -> CounterMetricFamily:
    """Dead-lettered records by reason, every contract reason included; no samples while unknown."""
    family = CounterMetricFamily(
        "stream_learner_dead_lettered", "Records sent to the dead-letter topic, by reason.", labels=["reason"]
    )
    if by_reason is not None:
        for reason, count in sorted({**dict.fromkeys(DEAD_LETTER_REASONS, 0), **by_reason}.items()):
            family.add_metric([reason], count)
    return family


def _model_versions(by_outcome: dict[str, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(
        "stream_learner_model_versions",
        "Model versions published (trainer), or loaded, rejected and ignored (predictor), by outcome.",
        labels=["outcome"],
    )
    for outcome, count in sorted(by_outcome.items()):
        family.add_metric([outcome], count)
    return family


def _models(stats: dict[str, Any], restored: bool) -> Iterator[Metric]:
    """With challengers: per model, its error over PROMOTION_WINDOW, whether it serves, its steps; the promotions."""
    error = GaugeMetricFamily(
        "stream_learner_model_error",
        "Per model: prequential error over the last PROMOTION_WINDOW examples it had not trained on "
        "(1 - accuracy, or MAE); no sample until the window is full.",
        labels=["model"],
    )
    serving = GaugeMetricFamily(
        "stream_learner_model_serving", "1 for the model whose predictions are served.", labels=["model"]
    )
    steps = CounterMetricFamily(
        "stream_learner_model_optimizer_steps", "Optimizer steps applied, per model.", labels=["model"]
    )
    for name, figures in sorted(stats["models"].items()):
        if figures["error"] is not None:
            error.add_metric([name], figures["error"])
        serving.add_metric([name], int(figures["serving"]))
        if restored:
            steps.add_metric([name], figures["optimizer_steps"])
    yield from (error, serving, steps)
    yield _counter(
        "stream_learner_promotions", "Challengers promoted to champion.", stats["promotions"] if restored else None
    )


def _consumer_lag(status: ServiceStatus) -> GaugeMetricFamily:
    family = GaugeMetricFamily(
        "stream_learner_consumer_lag",
        "Records not yet read per assigned partition: high watermark minus next offset.",
        labels=["topic", "partition"],
    )
    for tp, records in sorted(status.lag_by_partition().items()):
        family.add_metric([tp.topic, str(tp.partition)], records)
    return family


def _health(health: dict[str, Any]) -> Iterator[Metric]:
    yield GaugeMetricFamily(
        "stream_learner_checkpoint_age_seconds",
        "Seconds since the last checkpoint was written (since the start, before the first).",
        value=health["checkpoint_age_s"],
    )
    yield GaugeMetricFamily("stream_learner_ready", "1 when /readyz answers 200, else 0.", value=int(health["ready"]))
    yield GaugeMetricFamily(
        "stream_learner_broker_reachable",
        "1 when the last metadata request to the brokers succeeded.",
        value=int(health["broker_reachable"]),
    )
    yield GaugeMetricFamily(
        "stream_learner_assigned_partitions",
        "Partitions of the events and labels topics assigned to this instance.",
        value=health["assigned_partitions"],
    )


def _gauge(name: str, doc: str, value: float | None) -> GaugeMetricFamily:
    """A gauge family; without a sample while the value is not defined yet."""
    family = GaugeMetricFamily(name, doc)
    if value is not None:
        family.add_metric([], value)
    return family


def _counter(name: str, doc: str, value: float | None) -> CounterMetricFamily:
    """A counter family; without a sample while the value is not known yet."""
    family = CounterMetricFamily(name, doc)
    if value is not None:
        family.add_metric([], value)
    return family
