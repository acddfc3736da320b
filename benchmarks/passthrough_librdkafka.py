"""The floor on librdkafka (confluent-kafka): the same bare loop as :mod:`benchmarks.passthrough`, on the other client.

Consumes the events topic in its own group (``consume()`` in batches of ``FETCH_MAX_RECORDS``,
called in a worker thread so the event loop stays free, as a service would), decodes each event
with orjson, produces one output record of a prediction's shape with the event's key, and commits
the consumed offsets after each batch's records are all acknowledged (``flush``), as the
aiokafka pass-through awaits its sends. librdkafka batches, compresses and retries in its own
threads.
"""

from __future__ import annotations

import asyncio
import time

import orjson
from confluent_kafka import Consumer, KafkaException, Producer

from stream_learner.config import Settings

from .passthrough import PassthroughResult


def _clients(settings: Settings) -> tuple[Consumer, Producer]:
    consumer = Consumer(
        {
            "bootstrap.servers": settings.bootstrap_servers,
            "group.id": settings.group_id,
            "client.id": settings.client_id,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": settings.session_timeout_ms,
        }
    )
    producer = Producer(
        {
            "bootstrap.servers": settings.bootstrap_servers,
            "client.id": settings.client_id,
            "linger.ms": 5,
            "acks": "all",
            "enable.idempotence": True,
        }
    )
    return consumer, producer


def _pass_batch(messages: list, producer: Producer, sink: str) -> int:  # type: ignore[type-arg]
    """Produce one output record per message; the messages' errors raise."""
    for message in messages:
        if message.error() is not None:
            raise KafkaException(message.error())
        event = orjson.loads(message.value())
        value = orjson.dumps(
            {"id": event["id"], "prediction": 0, "scores": [0.5, 0.5], "model_version": 0, "ts": event.get("ts")}
        )
        while True:
            try:
                producer.produce(sink, value, message.key())
                break
            except BufferError:  # the local queue is full: let deliveries drain
                producer.poll(0.05)
    return len(messages)


async def passthrough_librdkafka(settings: Settings, expected: int, idle_timeout_s: float = 30.0) -> PassthroughResult:
    """Pass ``settings.events_topic`` through to ``settings.predictions_topic`` until ``expected`` records
    were sent and acknowledged."""
    consumer, producer = _clients(settings)
    consumer.subscribe([settings.events_topic])
    sent, first, last, idle_since = 0, 0.0, 0.0, time.monotonic()
    try:
        while sent < expected:
            messages = await asyncio.to_thread(consumer.consume, settings.fetch_max_records, 0.05)
            if not messages:
                if time.monotonic() - idle_since > idle_timeout_s:
                    raise TimeoutError(f"pass-through idle for {idle_timeout_s}s after {sent} records")
                continue
            idle_since = time.monotonic()
            first = first or time.monotonic()
            sent += await asyncio.to_thread(_pass_batch, messages, producer, settings.predictions_topic)
            last = time.monotonic()
            left = await asyncio.to_thread(producer.flush, 30.0)
            if left:
                raise TimeoutError(f"{left} records not acknowledged within 30 s")
            await asyncio.to_thread(consumer.commit, asynchronous=False)
    finally:
        await asyncio.to_thread(consumer.close)
    return PassthroughResult(sent, first, last)
