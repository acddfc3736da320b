"""Prometheus metrics, the health endpoints, and TensorBoard logs.

- :class:`PrometheusTelemetry` implements the :class:`~stream_learner.telemetry.Telemetry`
  hooks with histograms on a registry of its own (not prometheus_client's global one, so
  several can live in one process), and reads everything the service already counts at
  scrape time (:class:`ServiceCollector`): totals that checkpoints restore (events
  predicted, labels joined, examples trained, ...) are exported as the service's own
  figures, so they stay consistent across restarts.
- :class:`MetricsServer` serves ``/metrics``, ``/healthz`` and ``/readyz`` from inside the
  service's event loop (a tiny HTTP/1.1 server on :func:`asyncio.start_server`): an answer
  from ``/healthz`` proves the loop is responsive, and a scrape reads the service's state
  on the thread that owns it.
- :class:`TensorBoardLog` writes loss, prequential metrics and weight histograms over model
  version (optional: needs the ``tensorboard`` package, the ``[tensorboard]`` extra).

The names are the reference table in the README ("Metrics and health"); the Grafana
dashboard (``deploy/grafana``) queries them.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from stream_learner.config import Settings
from stream_learner.errors import ConfigError
from stream_learner.observability.telemetry import Telemetry

if TYPE_CHECKING:
    import torch

    from stream_learner.service import Service

log = structlog.get_logger(__name__)

# Reasons of the dead-letter contract (README, "The contract"); exported as zero from the start
# so that rate() sees the first one. A reason not listed here still shows when it happens.
DEAD_LETTER_REASONS = (
    "invalid_json",
    "not_an_object",
    "empty_value",
    "missing_id",
    "bad_id",
    "missing_features",
    "bad_features",
    "wrong_feature_length",
    "non_finite_features",
    "bad_ts",
    "missing_label",
    "bad_label",
    "label_out_of_range",
)

MODEL_TIME_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
EVENT_TO_PREDICTION_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    900.0,
    3600.0,
)
LABEL_DELAY_BUCKETS = (
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1800.0,
    3600.0,
    7200.0,
    21600.0,
    86400.0,
)
CHECKPOINT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

# Totals the service keeps (checkpoints restore them), read at scrape time:
# name (exported with _total), help, getter.
_Getter = Callable[["Service"], float]
SERVICE_COUNTERS: tuple[tuple[str, str, _Getter], ...] = (
    (
        "stream_learner_events_consumed",
        "Event records read from the events topic, bad ones included.",
        lambda s: s.counters["events_consumed"],
    ),
    (
        "stream_learner_labels_consumed",
        "Label records read from the labels topic, bad ones included.",
        lambda s: s.counters["labels_consumed"],
    ),
    (
        "stream_learner_predictions_published",
        "Predictions handed to the producer (one per good event).",
        lambda s: s.counters["events_predicted"],
    ),
    (
        "stream_learner_labels_joined",
        "Labels joined to their predicted events.",
        lambda s: s.join.counters.labels_joined,
    ),
    (
        "stream_learner_labels_duplicate",
        "Labels dropped as a second label for the same event id.",
        lambda s: s.join.counters.labels_duplicate,
    ),
    (
        "stream_learner_labels_expired",
        "Early labels whose event did not come within LABEL_TTL_S.",
        lambda s: s.join.counters.labels_expired,
    ),
    (
        "stream_learner_labels_evicted",
        "Early labels evicted (oldest first) beyond MAX_PENDING, or beyond the byte bound of their ids.",
        lambda s: s.join.counters.labels_evicted,
    ),
    (
        "stream_learner_events_expired",
        "Predicted events whose label did not come within LABEL_TTL_S.",
        lambda s: s.join.counters.events_expired,
    ),
    (
        "stream_learner_events_evicted",
        "Predicted events evicted (oldest first) beyond MAX_PENDING.",
        lambda s: s.join.counters.events_evicted,
    ),
    (
        "stream_learner_events_duplicate",
        "Events whose id was already waiting for a label.",
        lambda s: s.join.counters.events_duplicate,
    ),
    (
        "stream_learner_events_defaulted",
        "Expired events trained with DEFAULT_LABEL (MISSING_LABEL_POLICY=default).",
        lambda s: s.join.counters.events_defaulted,
    ),
    (
        "stream_learner_examples_trained",
        "Examples in applied optimizer steps.",
        lambda s: s.trainer.counters.examples_trained,
    ),
    (
        "stream_learner_examples_skipped",
        "Examples in skipped optimizer steps.",
        lambda s: s.trainer.counters.examples_skipped,
    ),
    (
        "stream_learner_optimizer_steps",
        "Optimizer steps applied (the model version counts these).",
        lambda s: s.trainer.counters.optimizer_steps,
    ),
    (
        "stream_learner_skipped_steps",
        "Optimizer steps skipped: non-finite loss or gradient, or a loss spike.",
        lambda s: s.trainer.counters.skipped_steps,
    ),
    (
        "stream_learner_poisoned_steps",
        "Skipped steps whose loss was a spike (the training guardrail).",
        lambda s: s.trainer.counters.poisoned_steps,
    ),
    (
        "stream_learner_rollbacks",
        "Rollbacks to the last good checkpoint's weights (GUARDRAIL_ACTION=rollback).",
        lambda s: s.trainer.counters.rollbacks,
    ),
    (
        "stream_learner_prequential_examples",
        "Examples scored by the prequential metrics (predicted before their label was known).",
        lambda s: s.metrics.count,
    ),
)
SERVICE_GAUGES: tuple[tuple[str, str, _Getter], ...] = (
    (
        "stream_learner_pending_events",
        "Predicted events waiting in the join buffer for their labels.",
        lambda s: s.join.pending_events,
    ),
    (
        "stream_learner_early_labels",
        "Labels waiting in the join buffer for their events.",
        lambda s: s.join.early_labels,
    ),
    ("stream_learner_queued_examples", "Joined examples waiting for an optimizer step.", lambda s: len(s.schedule)),
    (
        "stream_learner_model_version",
        "Optimizer steps applied to the current weights (the predictions' model_version).",
        lambda s: s.trainer.model_version,
    ),
)
# Prequential metrics over the last METRICS_WINDOW examples: name, help, key of PrequentialMetrics.summary().
PREQUENTIAL: dict[str, tuple[tuple[str, str, str], ...]] = {
    "classification": (
        (
            "stream_learner_prequential_accuracy",
            "Prequential accuracy over the last METRICS_WINDOW labelled events.",
            "recent_accuracy",
        ),
        (
            "stream_learner_prequential_log_loss",
            "Prequential log-loss over the last METRICS_WINDOW labelled events.",
            "recent_log_loss",
        ),
    ),
    "regression": (
        (
            "stream_learner_prequential_mae",
            "Prequential mean absolute error over the last METRICS_WINDOW labelled events.",
            "recent_mae",
        ),
        (
            "stream_learner_prequential_rmse",
            "Prequential root mean squared error over the last METRICS_WINDOW labelled events.",
            "recent_rmse",
        ),
    ),
}


class ServiceCollector(Collector):
    """Reads the service's counters, gauges, health and lag at scrape time (on the event loop)."""

    def __init__(self, service: Service) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        s = self.service
        # Before the checkpoint is restored the totals would read 0 and then jump to the restored
        # figures, which Prometheus takes for a counter reset plus a huge increase. So the families
        # have no samples until then: a series that appears is not an increase.
        restored = _restored(s)
        for name, doc, get in SERVICE_COUNTERS:
            yield _counter(name, doc, get(s) if restored else None)
        dead = CounterMetricFamily(
            "stream_learner_dead_lettered", "Records sent to the dead-letter topic, by reason.", labels=["reason"]
        )
        if restored:
            by_reason = dict.fromkeys(DEAD_LETTER_REASONS, 0)
            by_reason.update({k.split(".", 1)[1]: v for k, v in s.counters.items() if k.startswith("dead_lettered.")})
            for reason, count in sorted(by_reason.items()):
                dead.add_metric([reason], count)
        yield dead
        for name, doc, get in SERVICE_GAUGES:
            yield _gauge(name, doc, get(s) if restored else None)
        loss = s.trainer.counters.last_loss
        yield _gauge(
            "stream_learner_train_loss",
            "Loss of the last applied optimizer step.",
            loss if restored and not math.isnan(loss) else None,
        )
        summary = s.metrics.summary() if restored else {}
        for name, doc, key in PREQUENTIAL[s.settings.task]:
            yield _gauge(name, doc, summary.get(key))
        lag = GaugeMetricFamily(
            "stream_learner_consumer_lag",
            "Records not yet read per assigned partition: high watermark minus next offset.",
            labels=["topic", "partition"],
        )
        for tp, records in sorted(s.lag_by_partition().items()):
            lag.add_metric([tp.topic, str(tp.partition)], records)
        yield lag
        health = s.health()
        yield GaugeMetricFamily(
            "stream_learner_checkpoint_age_seconds",
            "Seconds since the last checkpoint was written (since the start, before the first).",
            value=health["checkpoint_age_s"],
        )
        yield GaugeMetricFamily(
            "stream_learner_ready", "1 when /readyz answers 200, else 0.", value=int(health["ready"])
        )
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
        yield InfoMetricFamily(
            "stream_learner",
            "The service: package version, task, model and device.",
            value={
                "version": _version(),
                "task": s.settings.task,
                "model": s.settings.model,
                "device": str(s.trainer.device),
            },
        )


def _restored(service: Service) -> bool:
    """Whether the service has restored its checkpoint (or found none) and so holds its real totals.

    Not "its Kafka clients exist": they are made before the restore (an exactly-once start needs
    its producer first), and a scrape in between read the totals as 0 (seen once in CI).
    """
    return service.restored


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


def _version() -> str:
    from stream_learner import __version__

    return __version__


class BulkHistogram(Collector):
    """A histogram that takes a whole array per call: one numpy pass instead of one observe per event.

    prometheus_client's :class:`~prometheus_client.Histogram` costs about 2 us per observation;
    per-event latencies at tens of thousands of events per second would make that a visible share
    of a core. Exposition is prometheus_client's (:class:`HistogramMetricFamily`).
    """

    def __init__(self, name: str, documentation: str, buckets: Iterable[float], registry: CollectorRegistry) -> None:
        self.name = name
        self.documentation = documentation
        self._bounds = np.asarray(sorted(buckets), dtype=np.float64)
        self._names = [floatToGoString(b) for b in self._bounds] + ["+Inf"]
        self._counts = np.zeros(len(self._bounds) + 1, dtype=np.int64)
        self._sum = 0.0
        self._lock = threading.Lock()
        registry.register(self)

    def observe_many(self, values: np.ndarray) -> None:
        """Count each finite value in its bucket (``le``: value <= bound)."""
        values = np.asarray(values, dtype=np.float64)
        values = values[np.isfinite(values)]
        if not len(values):
            return
        counts = np.bincount(np.searchsorted(self._bounds, values, side="left"), minlength=len(self._counts))
        total = float(values.sum())
        with self._lock:
            self._counts += counts
            self._sum += total

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            cumulative = np.cumsum(self._counts).tolist()
            total = self._sum
        yield HistogramMetricFamily(
            self.name, self.documentation, buckets=list(zip(self._names, cumulative)), sum_value=total
        )

    def describe(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(self.name, self.documentation)


def _size_buckets(largest: int) -> tuple[float, ...]:
    """Powers of two up to ``largest``, and ``largest`` itself."""
    sizes = {1 << k for k in range(max(largest, 1).bit_length()) if 1 << k <= largest} | {largest}
    return tuple(float(s) for s in sorted(sizes))


class PrometheusTelemetry(Telemetry):
    """The run loop's hooks as Prometheus histograms, plus the service's own figures at scrape time.

    ``attach(service)`` after building the :class:`~stream_learner.service.Service` with this
    telemetry; the hooks and scrapes run on the service's event loop.
    """

    def __init__(self, settings: Settings, *, tensorboard: TensorBoardLog | None = None) -> None:
        self.settings = settings
        self.registry = CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self.batch_size = Histogram(
            "stream_learner_batch_size",
            "Events per inference micro-batch.",
            buckets=_size_buckets(settings.max_batch_size),
            registry=r,
        )
        self.inference_seconds = Histogram(
            "stream_learner_inference_seconds",
            "Model time of one inference micro-batch (device thread).",
            buckets=MODEL_TIME_BUCKETS,
            registry=r,
        )
        self.train_step_examples = Histogram(
            "stream_learner_train_step_examples",
            "Examples per optimizer step.",
            buckets=_size_buckets(settings.train_batch_size),
            registry=r,
        )
        self.train_step_seconds = Histogram(
            "stream_learner_train_step_seconds",
            "Time of one optimizer step, skipped ones included (device thread).",
            buckets=MODEL_TIME_BUCKETS,
            registry=r,
        )
        self.event_to_prediction = BulkHistogram(
            "stream_learner_event_to_prediction_seconds",
            "From each event's time (its ts, else when the service read it) to its prediction.",
            EVENT_TO_PREDICTION_BUCKETS,
            r,
        )
        self.label_delay = BulkHistogram(
            "stream_learner_label_delay_seconds",
            "From each event's arrival to the arrival of its label (joined labels).",
            LABEL_DELAY_BUCKETS,
            r,
        )
        self.checkpoint_duration = Histogram(
            "stream_learner_checkpoint_duration_seconds",
            "Time of one checkpoint, drain to commit.",
            buckets=CHECKPOINT_BUCKETS,
            registry=r,
        )
        self.checkpoint_pause = Histogram(
            "stream_learner_checkpoint_pause_seconds",
            "Time one checkpoint held intake: drain and snapshot, and write and commit where it waited for them.",
            buckets=CHECKPOINT_BUCKETS,
            registry=r,
        )
        self.checkpoints = Counter(
            "stream_learner_checkpoints", "Checkpoints written by this process, by reason.", ["reason"], registry=r
        )
        for reason in ("interval", "revoked", "shutdown"):
            self.checkpoints.labels(reason)
        if tensorboard is None and settings.tensorboard_dir is not None:
            tensorboard = TensorBoardLog(settings.tensorboard_dir)
        self.tensorboard = tensorboard
        self.service: Service | None = None

    def attach(self, service: Service) -> None:
        """Export ``service``'s figures from now on (and feed TensorBoard its metrics and weights)."""
        self.service = service
        self.registry.register(ServiceCollector(service))
        if self.tensorboard is not None:
            self.tensorboard.bind(service.metrics.summary, lambda: service.trainer.model.named_parameters())

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


class TensorBoardLog:
    """Loss, prequential metrics and weight histograms over model version, as TensorBoard event files.

    Written from the event loop on ``step_trained``: scalars at most every ``scalars_every_s``
    (the loss is the mean of the applied steps since the last write), weight histograms at most
    every ``histograms_every_s``; both at the first step. The writer's own thread does the file I/O.
    """

    def __init__(
        self, directory: Path, *, scalars_every_s: float = 1.0, histograms_every_s: float = 30.0, flush_secs: int = 10
    ) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise ConfigError(
                f"TENSORBOARD_DIR is set but TensorBoard logging needs the tensorboard package ({exc}): "
                "pip install 'stream-learner[tensorboard]', or unset TENSORBOARD_DIR"
            ) from exc
        self.directory = Path(directory)
        self._writer = SummaryWriter(log_dir=str(self.directory), flush_secs=flush_secs)
        self._scalars_every_s = scalars_every_s
        self._histograms_every_s = histograms_every_s
        self._next_scalars = -math.inf
        self._next_histograms = -math.inf
        self._loss_sum = 0.0
        self._loss_n = 0
        self._skipped = 0
        self._prequential: Callable[[], dict[str, Any]] = dict
        self._weights: Callable[[], Iterable[tuple[str, torch.Tensor]]] = list

    def bind(
        self, prequential: Callable[[], dict[str, Any]], weights: Callable[[], Iterable[tuple[str, torch.Tensor]]]
    ) -> None:
        """Where the prequential summary and the named parameters are read at write time."""
        self._prequential = prequential
        self._weights = weights

    def step_trained(self, loss: float, model_version: int) -> None:
        if math.isnan(loss):
            self._skipped += 1
        else:
            self._loss_sum += loss
            self._loss_n += 1
        now = time.monotonic()
        if now >= self._next_scalars:
            self._next_scalars = now + self._scalars_every_s
            self._write_scalars(model_version)
        if now >= self._next_histograms:
            self._next_histograms = now + self._histograms_every_s
            self._write_histograms(model_version)

    def _write_scalars(self, step: int) -> None:
        w = self._writer
        if self._loss_n:
            w.add_scalar("train/loss", self._loss_sum / self._loss_n, step)
        w.add_scalar("train/skipped_steps", self._skipped, step)
        self._loss_sum, self._loss_n = 0.0, 0
        for key, value in self._prequential().items():
            if key != "examples" and value is not None:
                w.add_scalar(f"prequential/{key}", value, step)

    def _write_histograms(self, step: int) -> None:
        # The parameters belong to the device thread, and this runs on the event loop: a step that
        # runs meanwhile (the run loop may overlap steps with its other work) can change a tensor
        # while it is read, so a histogram may mix two versions' values (torn). Acceptable for a
        # histogram, and it never blocks the device thread; nothing here writes to the model.
        for name, param in self._weights():
            values = param.detach().float().cpu().numpy()
            if np.isfinite(values).all():
                self._writer.add_histogram(f"weights/{name}", values, step)

    def close(self) -> None:
        self._writer.close()


class MetricsServer:
    """``/metrics``, ``/healthz`` and ``/readyz`` over HTTP/1.1, served by the event loop it starts on.

    - ``GET /metrics``: the registry in the Prometheus text format (OpenMetrics when asked for).
    - ``GET /healthz``: 200 ``ok`` - the process is alive and its event loop answers.
    - ``GET /readyz``: ``health()`` as JSON, 200 when its ``ready`` is true, else 503.

    One request per connection (``Connection: close``); ``HEAD`` is answered without a body.

    Bounded for clients that misbehave:

    - At most ``max_connections`` connections are served at a time; one beyond that is closed at
      once, unread and unanswered (see :meth:`_refuse`), and counted in ``refused_connections``.
    - Each served connection lives at most ``request_timeout_s`` from accept to close, whatever the
      client does: one that sends nothing, dribbles its request or does not read the answer is
      dropped (unsent bytes are discarded).
    - A request that fails inside (a collector or ``health()`` raises) is answered ``500`` with a
      fixed body; the exception goes to the log, never to the client.
    """

    MAX_CONNECTIONS = 64
    """Default bound of concurrent connections: a few scrapers and the kubelet's probes use one or
    two each, so 64 leaves ample room while a flood of idle connections holds at most 64 tasks."""
    INTERNAL_ERROR_BODY = b"internal server error\n"

    def __init__(
        self,
        registry: CollectorRegistry,
        health: Callable[[], dict[str, Any]],
        host: str,
        port: int,
        *,
        request_timeout_s: float = 10.0,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, got {max_connections}")
        self.registry = registry
        self.health = health
        self.host = host
        self.port = port
        self.request_timeout_s = request_timeout_s
        self.max_connections = max_connections
        self.refused_connections = 0
        """Connections closed unanswered because ``max_connections`` were open."""
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.StreamWriter, asyncio.Task[None]] = {}

    @property
    def open_connections(self) -> int:
        """Connections being served now (at most ``max_connections``)."""
        return len(self._connections)

    async def start(self) -> MetricsServer:
        """Listen; ``port`` 0 picks a free one (read it back from :attr:`port`)."""
        try:
            self._server = await asyncio.start_server(self._handle, self.host, self.port, limit=16 * 1024)
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {self.host}:{self.port} for /metrics ({exc.strerror or exc}); "
                "set METRICS_PORT to a free port, or 0 to disable the endpoint"
            ) from exc
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("metrics_serving", host=self.host, port=self.port, paths=["/metrics", "/healthz", "/readyz"])
        return self

    async def close(self) -> None:
        """Stop listening and drop open connections (unsent answers are discarded); returns once
        every connection's handler has finished."""
        if self._server is None:
            return
        self._server.close()
        handlers = list(self._connections.values())
        for writer in list(self._connections):
            writer.transport.abort()
        if handlers:
            await asyncio.wait(handlers)
        await self._server.wait_closed()
        self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one connection within ``request_timeout_s``, or refuse it when ``max_connections`` are open."""
        if len(self._connections) >= self.max_connections:
            self._refuse(writer)
            return
        task = asyncio.current_task()
        assert task is not None  # start_server runs each connection's handler as a task
        self._connections[writer] = task
        try:
            async with asyncio.timeout(self.request_timeout_s):
                await self._serve(reader, writer)
        except (TimeoutError, ConnectionError):
            # close() would wait to flush what a client that does not read never takes.
            writer.transport.abort()
        finally:
            del self._connections[writer]
            writer.close()

    def _refuse(self, writer: asyncio.StreamWriter) -> None:
        """Close a connection beyond ``max_connections`` at once, unread and unanswered.

        Not a 503: closing a socket whose request is unread makes the kernel reset the connection,
        which may discard the answer before the client reads it (seen on Linux loopback); a 503
        that arrives needs the request read first, and waiting for it is what an idle flood
        exploits. The client sees a reset: a scraper or probe counts it as a failure, as it
        would a 503. Logged at the 1st, 2nd, 4th, 8th ... refusal, so a flood cannot flood the log.
        """
        self.refused_connections += 1
        writer.transport.abort()
        if self.refused_connections & (self.refused_connections - 1) == 0:
            log.warning(
                "metrics_connection_refused",
                open=len(self._connections),
                max_connections=self.max_connections,
                refused=self.refused_connections,
            )

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Read one request head and answer it (the caller bounds the time)."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            return
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            await self._send(writer, 400, "text/plain; charset=utf-8", b"bad request\n", head_only=False)
            return
        method, target = parts[0], parts[1]
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        try:
            status, content_type, body = self._respond(method, target.split("?", 1)[0], headers)
        except Exception:
            log.exception("metrics_request_failed", path=target[:200])
            status, content_type, body = 500, "text/plain; charset=utf-8", self.INTERNAL_ERROR_BODY
        await self._send(writer, status, content_type, body, head_only=method == "HEAD")

    def _respond(self, method: str, path: str, headers: dict[str, str]) -> tuple[int, str, bytes]:
        text = "text/plain; charset=utf-8"
        if method not in ("GET", "HEAD"):
            return 405, text, b"method not allowed\n"
        if path == "/metrics":
            encoder, content_type = choose_encoder(headers.get("accept", ""))
            return 200, content_type, encoder(self.registry)
        if path == "/healthz":
            return 200, text, b"ok\n"
        if path == "/readyz":
            health = self.health()
            return (200 if health.get("ready") else 503), "application/json", orjson.dumps(health) + b"\n"
        if path == "/":
            return 200, text, b"stream-learner: /metrics /healthz /readyz\n"
        return 404, text, b"not found\n"

    @staticmethod
    async def _send(
        writer: asyncio.StreamWriter, status: int, content_type: str, body: bytes, *, head_only: bool
    ) -> None:
        extra = "Allow: GET, HEAD\r\n" if status == 405 else ""
        writer.write(_head(status, content_type, len(body), extra) + (b"" if head_only else body))
        await writer.drain()


_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def _head(status: int, content_type: str, length: int, extra: str = "") -> bytes:
    """The status line and headers of a one-request connection's answer."""
    return (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {content_type}\r\nContent-Length: {length}\r\n"
        f"Cache-Control: no-store\r\n{extra}Connection: close\r\n\r\n"
    ).encode("latin-1")
