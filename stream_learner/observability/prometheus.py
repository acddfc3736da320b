"""Prometheus metrics of the run loop: :class:`PrometheusTelemetry`.

It implements the :class:`~stream_learner.observability.telemetry.Telemetry` hooks with
histograms on a registry of its own (not prometheus_client's global one, so several can live
in one process), and registers a :class:`~.service_metrics.ServiceCollector` that reads the
service's own figures at scrape time. :class:`~.metrics_server.MetricsServer` serves the
registry; :class:`~.tensorboard.TensorBoardLog` gets the loss, prequential metrics and weights.

The names are the reference table in docs/operations.md ("Metrics and health"); the Grafana
dashboard (``deploy/grafana``) queries them.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from stream_learner.config import Settings
from stream_learner.observability.histograms import (
    CHECKPOINT_BUCKETS,
    EVENT_TO_PREDICTION_BUCKETS,
    LABEL_DELAY_BUCKETS,
    MODEL_TIME_BUCKETS,
    BulkHistogram,
    size_buckets,
)
from stream_learner.observability.service_metrics import ServiceCollector
from stream_learner.observability.status import ServiceStatus
from stream_learner.observability.telemetry import Telemetry
from stream_learner.observability.tensorboard import TensorBoardLog

CHECKPOINT_REASONS = ("interval", "revoked", "shutdown")
"""Reasons of the checkpoints counter, exported as zero from the start."""


class PrometheusTelemetry(Telemetry):
    """The run loop's hooks as Prometheus histograms, plus the service's own figures at scrape time.

    ``attach(service)`` after building the :class:`~stream_learner.service.Service` with this
    telemetry; the hooks and scrapes run on the service's event loop.
    """

    def __init__(self, settings: Settings, *, tensorboard: TensorBoardLog | None = None) -> None:
        self.settings = settings
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self._add_model_histograms(settings)
        self._add_latency_histograms()
        self._add_checkpoint_metrics()
        if tensorboard is None and settings.tensorboard_dir is not None:
            tensorboard = TensorBoardLog(settings.tensorboard_dir)
        self.tensorboard = tensorboard
        self.status: ServiceStatus | None = None

    def _add_model_histograms(self, settings: Settings) -> None:
        self.batch_size = Histogram(
            "stream_learner_batch_size",
            "Events per inference micro-batch.",
            buckets=size_buckets(settings.max_batch_size),
            registry=self.registry,
        )
        self.inference_seconds = Histogram(
            "stream_learner_inference_seconds",
            "Model time of one inference micro-batch (device thread).",
            buckets=MODEL_TIME_BUCKETS,
            registry=self.registry,
        )
        self.train_step_examples = Histogram(
            "stream_learner_train_step_examples",
            "Examples per optimizer step.",
            buckets=size_buckets(settings.train_batch_size),
            registry=self.registry,
        )
        self.train_step_seconds = Histogram(
            "stream_learner_train_step_seconds",
            "Time of one optimizer step, skipped ones included (device thread).",
            buckets=MODEL_TIME_BUCKETS,
            registry=self.registry,
        )

    def _add_latency_histograms(self) -> None:
        self.event_to_prediction = BulkHistogram(
            "stream_learner_event_to_prediction_seconds",
            "From each event's time (its ts, else when the service read it) to its prediction.",
            EVENT_TO_PREDICTION_BUCKETS,
            self.registry,
        )
        self.label_delay = BulkHistogram(
            "stream_learner_label_delay_seconds",
            "From each event's arrival to the arrival of its label (joined labels).",
            LABEL_DELAY_BUCKETS,
            self.registry,
        )

    def _add_checkpoint_metrics(self) -> None:
        self.checkpoint_duration = Histogram(
            "stream_learner_checkpoint_duration_seconds",
            "Time of one checkpoint, drain to commit.",
            buckets=CHECKPOINT_BUCKETS,
            registry=self.registry,
        )
        self.checkpoint_pause = Histogram(
            "stream_learner_checkpoint_pause_seconds",
            "Time one checkpoint held intake: drain and snapshot, and write and commit where it waited for them.",
            buckets=CHECKPOINT_BUCKETS,
            registry=self.registry,
        )
        self.checkpoints = Counter(
            "stream_learner_checkpoints",
            "Checkpoints written by this process, by reason.",
            ["reason"],
            registry=self.registry,
        )
        for reason in CHECKPOINT_REASONS:
            self.checkpoints.labels(reason)

    def attach(self, status: ServiceStatus) -> None:
        """Export ``status``'s figures from now on (and feed TensorBoard its metrics and weights)."""
        self.status = status
        self.registry.register(ServiceCollector(status, self.settings))
        if self.tensorboard is not None:
            self.tensorboard.bind(lambda: prequential_summary(status.stats()), status.named_parameters)

    def batch_predicted(self, size: int, seconds: float, event_times: np.ndarray) -> None:
        self.batch_size.observe(size)
        self.inference_seconds.observe(seconds)
        # Clock skew can put an event's ts after now: count it as no delay.
        self.event_to_prediction.observe_many(np.maximum(time.time() - event_times, 0.0))

    def labels_joined(self, label_delays_s: np.ndarray) -> None:
        self.label_delay.observe_many(np.maximum(label_delays_s, 0.0))

    def step_trained(self, examples: int, seconds: float, loss: float, model_version: int) -> None:
        self.train_step_examples.observe(examples)
        self.train_step_seconds.observe(seconds)
        if self.tensorboard is not None:
            self.tensorboard.step_trained(loss, model_version)

    def checkpoint_written(self, seconds: float, reason: str) -> None:
        self.checkpoint_duration.observe(seconds)
        self.checkpoints.labels(reason).inc()

    def intake_paused(self, seconds: float) -> None:
        self.checkpoint_pause.observe(seconds)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


def prequential_summary(stats: dict[str, Any]) -> dict[str, Any]:
    """The ``prequential_*`` keys of :meth:`ServiceStatus.stats` without their prefix (the summary's own keys)."""
    prefix = "prequential_"
    return {key.removeprefix(prefix): value for key, value in stats.items() if key.startswith(prefix)}
