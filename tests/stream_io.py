"""Producing contract records and reading predictions back, as a user's client would."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from typing import Any, Iterable

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from stream_learner.synthetic import SyntheticBatch


async def produce_events(producer: AIOKafkaProducer, topic: str, batch: SyntheticBatch, ts: float | None = None) -> None:
    futures = []
    for event_id, features in zip(batch.ids, batch.features.tolist()):
        value: dict[str, Any] = {"id": event_id, "features": features}
        if ts is not None:
            value["ts"] = ts
        futures.append(await producer.send(topic, orjson.dumps(value), key=event_id.encode()))
    await asyncio.gather(*futures)


async def produce_labels(producer: AIOKafkaProducer, topic: str, ids: Iterable[str], labels: Iterable[int]) -> None:
    futures = [
        await producer.send(topic, orjson.dumps({"id": i, "label": int(y)}), key=i.encode()) for i, y in zip(ids, labels)
    ]
    await asyncio.gather(*futures)


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


async def read_predictions(bootstrap: str, topic: str, *, expected: int, timeout: float) -> dict[str, list[dict[str, Any]]]:
    """Predictions grouped by event id."""
    by_id: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in await read_topic(bootstrap, topic, until_count=expected, timeout=timeout):
        value = orjson.loads(record.value)
        assert record.key == value["id"].encode(), "prediction key must be the event id"
        by_id[value["id"]].append(value)
    return by_id
