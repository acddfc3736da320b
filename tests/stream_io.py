"""Producing contract records and reading predictions back, as a user's client would (stream_learner.client)."""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any, Iterable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from stream_learner.tools.client import EventProducer, PredictionConsumer
from stream_learner.tools.synthetic import DriftingStream, SyntheticBatch


async def produce_events(producer: AIOKafkaProducer, topic: str, batch: SyntheticBatch, ts: float | None = None) -> None:
    """Send ``batch`` as events and wait for every acknowledgement."""
    events = EventProducer(producer=producer, events_topic=topic)
    await (await events.send_events(batch.ids, batch.features, ts=ts))


async def produce_labels(producer: AIOKafkaProducer, topic: str, ids: Iterable[str], labels: Iterable[int]) -> None:
    """Send the labels and wait for every acknowledgement."""
    sender = EventProducer(producer=producer, labels_topic=topic)
    await (await sender.send_labels(list(ids), [int(y) for y in labels]))


async def produce_slice(bootstrap: str, topics: Any, stream: DriftingStream, start: int, n: int) -> list[str]:
    """Events ``start .. start+n-1`` of ``stream``, then their labels, all acknowledged; returns their ids."""
    batch = stream.batch(start, n)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        await produce_events(producer, topics.events, batch)
        await produce_labels(producer, topics.labels, batch.ids, batch.labels)
    finally:
        await producer.stop()
    return batch.ids


async def read_topic(bootstrap: str, topic: str, *, until_count: int, timeout: float) -> list[Any]:
    """Every record of ``topic`` from the beginning, until ``until_count`` are read or ``timeout`` passes."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        consumer.assign([TopicPartition(topic, p) for p in partitions])
        records: list[Any] = []
        deadline = time.monotonic() + timeout
        while len(records) < until_count and time.monotonic() < deadline:
            fetched = await consumer.getmany(timeout_ms=200)
            for batch in fetched.values():
                records.extend(batch)
        return records
    finally:
        await consumer.stop()


async def read_predictions(
    bootstrap: str, topic: str, *, expected: int, timeout: float, **kafka_options: Any
) -> dict[str, list[dict[str, Any]]]:
    """Predictions grouped by event id, as contract JSON objects (the consumer checks key == id)."""
    by_id: dict[str, list[dict[str, Any]]] = defaultdict(list)
    async with PredictionConsumer(bootstrap, topic=topic, **kafka_options) as consumer:
        read = await consumer.read(expected, timeout)
        read += await consumer.getmany(timeout_s=0.2)  # and whatever follows at once: duplicates must show
        for prediction in read:
            by_id[prediction.id].append(prediction.to_dict())
    return by_id
