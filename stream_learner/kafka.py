"""aiokafka adapters: client construction, record conversion, dead letters, rebalance hooks.

The service owns offsets: auto-commit is off, reading resumes where the
checkpoint says, and Kafka's committed offsets only follow durable checkpoints.
"""

from __future__ import annotations

from typing import Awaitable, Callable, Iterable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener

from .config import Settings
from .records import RawRecord, Rejected

DLQ_REASON = "dlq.reason"
DLQ_DETAIL = "dlq.detail"
DLQ_TOPIC = "dlq.source.topic"
DLQ_PARTITION = "dlq.source.partition"
DLQ_OFFSET = "dlq.source.offset"
MAX_REQUEST_BYTES = 16 * 1024 * 1024


def make_consumer(settings: Settings) -> AIOKafkaConsumer:
    """A group consumer with manual offsets, starting from the earliest record it has no offset for."""
    return AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        group_id=settings.group_id,
        client_id=settings.client_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=MAX_REQUEST_BYTES,
        fetch_max_bytes=4 * MAX_REQUEST_BYTES,
    )


def make_producer(settings: Settings) -> AIOKafkaProducer:
    """A producer that batches for throughput and waits for every replica's acknowledgement."""
    return AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers,
        client_id=settings.client_id,
        acks="all",
        linger_ms=2,
        max_batch_size=256 * 1024,
        max_request_size=MAX_REQUEST_BYTES,
    )


def to_raw(record: ConsumerRecord[bytes, bytes]) -> RawRecord:
    """The parts of an aiokafka record that stream_learner uses."""
    return RawRecord(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        key=record.key,
        value=record.value,
        headers=tuple(record.headers or ()),
        timestamp_ms=record.timestamp,
    )


def dead_letter_headers(rejected: Rejected) -> list[tuple[str, bytes]]:
    """The record's own headers, then the reason and the record's source position."""
    r = rejected.record
    return [
        *r.headers,
        (DLQ_REASON, rejected.reason.encode()),
        (DLQ_DETAIL, rejected.detail.encode()[:1000]),
        (DLQ_TOPIC, r.topic.encode()),
        (DLQ_PARTITION, str(r.partition).encode()),
        (DLQ_OFFSET, str(r.offset).encode()),
    ]


class RebalanceHooks(ConsumerRebalanceListener):  # type: ignore[misc]
    """Forwards aiokafka's rebalance callbacks to the service (checkpoint on revoke, seek on assign)."""

    def __init__(
        self,
        on_revoked: Callable[[Iterable[TopicPartition]], Awaitable[None]],
        on_assigned: Callable[[Iterable[TopicPartition]], Awaitable[None]],
    ) -> None:
        self._on_revoked = on_revoked
        self._on_assigned = on_assigned

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self._on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        await self._on_assigned(assigned)
