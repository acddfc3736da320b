"""Shared pieces of the benchmarks: the event stream, fast pre-filling, reading a topic back.

Events follow the contract (docs/contract.md) and are about 200 bytes each: 32 features
rounded to two decimals (``{"id": "e-12345", "features": [...], "ts": ...}``).
Keys are partitioned like the Java client does (murmur2 of the key), so an
event and its label land on the same partition number.
"""

from __future__ import annotations

import asyncio
import logging
import math
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol, Sequence

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.partitioner import murmur2

from stream_learner.config import Settings
from stream_learner.tools.synthetic import DriftingStream

PARTITIONS = 4
INPUT_DIM = 32
DLQ = "bench.dlq"


def partition_of(key: bytes, partitions: int) -> int:
    """The Java client's default partition for ``key`` (aiokafka's default partitioner)."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


@dataclass(frozen=True)
class Stream:
    """``n`` synthetic events with their labels, encoded once and reused by every run."""

    ids: list[str]
    keys: list[bytes]
    pool: list[bytes]
    """The JSON of distinct feature arrays (``b"[0.12,-3.4,...]"``); event i uses ``pool[i % len(pool)]``."""
    pool_labels: np.ndarray
    partitions: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    def event_value(self, i: int, ts: float) -> bytes:
        return b'{"id":"%s","features":%s,"ts":%r}' % (self.keys[i], self.pool[i % len(self.pool)], ts)

    def label_value(self, i: int) -> bytes:
        return b'{"id":"%s","label":%d}' % (self.keys[i], self.pool_labels[i % len(self.pool)])

    def mean_event_bytes(self) -> float:
        sample = range(0, len(self), max(1, len(self) // 1000))
        return float(np.mean([len(self.event_value(i, time.time())) for i in sample]))


def make_stream(n: int, input_dim: int = INPUT_DIM, partitions: int = PARTITIONS, seed: int = 7, pool: int = 8192) -> Stream:
    """Events ``e-0 .. e-(n-1)``: learnable (no drift), features rounded to 2 decimals, drawn
    cyclically from ``pool`` distinct rows so that encoding them stays cheap."""
    batch = DriftingStream(input_dim, seed=seed, drift_at=None).batch(0, min(n, pool))
    rows = [orjson.dumps(row) for row in np.round(batch.features.astype(np.float64), 2).tolist()]
    ids = [f"e-{i}" for i in range(n)]
    keys = [i.encode() for i in ids]
    parts = np.fromiter((partition_of(k, partitions) for k in keys), np.int64, n)
    return Stream(ids, keys, rows, batch.labels, parts)


async def produce_batched(
    producer: AIOKafkaProducer, topic: str, items: Iterable[tuple[int, bytes, bytes, int | None]]
) -> list[asyncio.Future[object]]:
    """Send ``(partition, key, value, timestamp_ms)`` items with create_batch/send_batch, per partition."""
    builders: dict[int, object] = {}
    futures: list[asyncio.Future[object]] = []
    for partition, key, value, ts_ms in items:
        builder = builders.get(partition)
        if builder is None:
            builder = builders[partition] = producer.create_batch()
        if builder.append(key=key, value=value, timestamp=ts_ms) is None:  # type: ignore[attr-defined]
            futures.append(await producer.send_batch(builder, topic, partition=partition))
            builder = builders[partition] = producer.create_batch()
            builder.append(key=key, value=value, timestamp=ts_ms)  # type: ignore[attr-defined]
    for partition, builder in builders.items():
        if builder.record_count():  # type: ignore[attr-defined]
            futures.append(await producer.send_batch(builder, topic, partition=partition))
    return futures


async def prefill(bootstrap: str, stream: Stream, events_topic: str, labels_topic: str | None) -> None:
    """Write every event (and label) of ``stream`` to the topics, acknowledged, as fast as possible."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, max_batch_size=512 * 1024, acks="all")
    await producer.start()
    try:
        now = time.time()
        futures = await produce_batched(
            producer,
            events_topic,
            ((int(stream.partitions[i]), stream.keys[i], stream.event_value(i, now), None) for i in range(len(stream))),
        )
        if labels_topic is not None:
            futures += await produce_batched(
                producer,
                labels_topic,
                ((int(stream.partitions[i]), stream.keys[i], stream.label_value(i), None) for i in range(len(stream))),
            )
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def read_timestamps(bootstrap: str, topic: str, expected: int, timeout_s: float = 60.0) -> tuple[np.ndarray, int]:
    """Kafka timestamps (ms) of the first ``expected`` records of ``topic`` and how many distinct keys they had."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False, group_id=None
    )
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        stamps: list[int] = []
        keys: set[bytes] = set()
        deadline = time.monotonic() + timeout_s
        while len(stamps) < expected and time.monotonic() < deadline:
            fetched = await consumer.getmany(timeout_ms=200, max_records=100_000)
            for records in fetched.values():
                for r in records:
                    stamps.append(r.timestamp)
                    keys.add(r.key)
        return np.asarray(stamps, np.int64), len(keys)
    finally:
        await consumer.stop()


def percentiles(values_s: Sequence[float] | np.ndarray) -> dict[str, float]:
    """p50, p99, max in milliseconds (NaN when there is nothing)."""
    v = np.asarray(values_s, np.float64)
    if v.size == 0:
        return {"p50": math.nan, "p99": math.nan, "max": math.nan}
    return {"p50": float(np.percentile(v, 50) * 1000), "p99": float(np.percentile(v, 99) * 1000), "max": float(v.max() * 1000)}


def every_label_stepped(catch_up: dict, events: int) -> bool:
    """A catch-up's labels all went through an optimizer step: applied, or skipped by the guardrail."""
    return int(catch_up["trained"]) + int(catch_up.get("skipped", 0)) >= events


def p99_gap(gaps: Sequence[float], service: dict, passthrough: dict) -> float:
    """What the latency target is checked on: the median of the paired p99 gaps where the paced
    runs were repeated, else the one run's service p99 minus the pass-through's."""
    return float(np.median(gaps)) if len(gaps) else service["p99"] - passthrough["p99"]


def catch_up_ratio(ratios: Sequence[float], service_rate: float, passthrough_rates: Sequence[float]) -> float:
    """What the throughput target is checked on: the median of the service runs' ratios, each to the
    mean of the pass-through runs just before and just after it; else (older runs) the one
    service run's rate over the mean of the pass-through runs."""
    return float(np.median(ratios)) if len(ratios) else service_rate / float(np.mean(passthrough_rates))


def unique_name(kind: str) -> str:
    """A fresh topic or group name: ``bench.<kind>.<8 hex digits>``."""
    return f"bench.{kind}.{uuid.uuid4().hex[:8]}"


def bench_settings(
    bootstrap: str, events: str, labels: str, outputs: str, model: str, batch: int, checkpoints: Path, train_batch: int = 32,
    kernels: str = "auto", **extra: Any,
) -> Settings:
    """The service's defaults, but for the topics, a fresh group, the model, the batch sizes and the
    fast paths; ``extra`` sets any other setting (``role``, ``models_topic``...)."""
    group = unique_name("group")
    return Settings(
        **{
            "_env_file": None,
            "bootstrap_servers": bootstrap,
            "events_topic": events,
            "labels_topic": labels,
            "predictions_topic": outputs,
            "dead_letter_topic": DLQ,
            "group_id": group,
            "client_id": group,
            "input_dim": INPUT_DIM,
            "model": model,
            "max_batch_size": batch,
            "train_batch_size": train_batch,
            "checkpoint_dir": checkpoints,
            "metrics_port": 0,
            "log_level": "warning",
            "cpu_kernels": "off" if kernels == "off" else "auto",
            **extra,
        }
    )


async def output_window(bootstrap: str, topic: str, expected: int) -> dict[str, Any]:
    """Rate from the first to the last output record's Kafka timestamp, and a completeness check."""
    stamps, keys = await read_timestamps(bootstrap, topic, expected)
    first, last = (stamps.min() / 1000, stamps.max() / 1000) if stamps.size else (math.nan, math.nan)
    span = last - first
    return {
        "outputs": int(stamps.size), "distinct_keys": keys, "seconds": span, "rate": expected / span if span else math.nan,
        "first": first, "last": last,
    }  # fmt: skip


class Stoppable(Protocol):
    def stop(self) -> None: ...


SHUTDOWN_ERRORS: list[str] = []
"""Failures of in-process services while shutting down (after their figures were taken), for the report."""


async def stop_service(service: Stoppable, task: asyncio.Task[None]) -> None:
    """Stop the service; a failure while shutting down (after the figures are taken) is noted, not fatal."""
    service.stop()
    try:
        await task
    except Exception as exc:  # noqa: BLE001 - reported under the table
        SHUTDOWN_ERRORS.append(f"{type(exc).__name__}: {exc}")


def labels_used(service: Any) -> int:
    """Labels that went through an optimizer step of ``service`` (a Service): applied, or skipped by the guardrails."""
    counters = service.learner.trainer.counters
    return int(counters.examples_trained + counters.examples_skipped)


def fmt(x: Any, digits: int = 0) -> str:
    """A figure for a table: thousands separated, ``-`` for None or NaN."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:,.{digits}f}"


def progress_log(quiet: bool) -> Callable[[str], None]:
    """A progress line printer (stderr, seconds since now); silent when ``quiet``."""
    started = time.monotonic()

    def log(message: str) -> None:
        if not quiet:
            print(f"[{time.monotonic() - started:6.1f}s] {message}", file=sys.stderr, flush=True)

    return log


def quiet_logs() -> None:
    """Only the service's errors, and nothing from aiokafka, on the console."""
    from stream_learner.observability.logs import configure_logging

    configure_logging("error")
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)


def report(table: str, raw: dict[str, Any], heading: str, json_path: Path | None) -> None:
    """Print the run's heading and tables; write the raw figures where ``--json`` names a file."""
    print(heading + "\n")
    print(table)
    if json_path:
        json_path.write_bytes(orjson.dumps(raw, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
