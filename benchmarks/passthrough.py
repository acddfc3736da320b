"""The floor: a bare aiokafka loop that consumes events, decodes them with orjson, encodes one
output record each and produces it.

It uses the service's own client construction (``stream_learner.kafka.clients.make_consumer`` and
``make_producer``), so the difference between the two is the service's own work, not a
different fetch or batching configuration. Each output record has the shape of a
prediction (``id``, ``prediction``, ``scores``, ``model_version``, ``ts``) and the event's key;
``producer.send`` picks its partition as any plain client does.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import orjson

from stream_learner.config import Settings
from stream_learner.kafka.clients import make_consumer, make_producer


@dataclass
class PassthroughResult:
    records: int
    first_sent: float
    last_sent: float
    """``time.monotonic()`` of the first and last ``send``."""


async def passthrough(
    settings: Settings,
    expected: int | None = None,
    stop: asyncio.Event | None = None,
    ready: asyncio.Event | None = None,
    idle_timeout_s: float = 30.0,
) -> PassthroughResult:
    """Pass ``settings.events_topic`` through to ``settings.predictions_topic`` until ``expected``
    records were sent or ``stop`` is set; every send is acknowledged before it returns.
    ``ready`` is set once the consumer has its partitions."""
    consumer = make_consumer(settings)
    producer = make_producer(settings)
    await producer.start()
    consumer.subscribe([settings.events_topic])
    await consumer.start()
    sent, first, last = 0, 0.0, 0.0
    futures: list[asyncio.Future[object]] = []
    sink = settings.predictions_topic
    idle_since = time.monotonic()
    try:
        while (expected is None or sent < expected) and not (stop is not None and stop.is_set()):
            fetched = await consumer.getmany(timeout_ms=50, max_records=settings.fetch_max_records)
            if ready is not None and not ready.is_set() and consumer.assignment():
                ready.set()
            if not fetched:
                if time.monotonic() - idle_since > idle_timeout_s:
                    raise TimeoutError(f"pass-through idle for {idle_timeout_s}s after {sent} records")
                continue
            idle_since = time.monotonic()
            if not sent:
                first = time.monotonic()
            for records in fetched.values():
                for record in records:
                    event = orjson.loads(record.value)
                    value = orjson.dumps(
                        {"id": event["id"], "prediction": 0, "scores": [0.5, 0.5], "model_version": 0, "ts": event.get("ts")}
                    )
                    futures.append(await producer.send(sink, value, key=record.key))
                sent += len(records)
            last = time.monotonic()
            futures = [f for f in futures if not f.done() or f.result() is None]
        await asyncio.gather(*futures)
    finally:
        await consumer.stop()
        await producer.stop()
    return PassthroughResult(sent, first, last)
