"""Shared pieces of the benchmarks: the event stream, fast pre-filling, reading a topic back.

Events follow the contract (docs/contract.md) and are about 200 bytes each: 32 features
rounded to two decimals (``{"id": "e-12345", "features": [...], "ts": ...}``).
Keys are partitioned like the Java client does (murmur2 of the key), so an
event and its label land on the same partition number.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.partitioner import murmur2

from stream_learner.tools.synthetic import DriftingStream

PARTITIONS = 4
INPUT_DIM = 32


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
