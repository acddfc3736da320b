"""What the run loop needs of Kafka, as small Protocols: a connection holding a reader and a writer.

Two clients implement them: aiokafka (:class:`~stream_learner.kafka.connection.KafkaConnection`,
:class:`~stream_learner.kafka.reader.KafkaReader`, :class:`~stream_learner.kafka.writer.KafkaWriter`) and
librdkafka (:mod:`stream_learner.kafka.librdkafka`); ``KAFKA_CLIENT`` picks one
(:func:`~stream_learner.kafka.transport.make_connection`). The loop's logic is tested with plain fakes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from aiokafka import AIOKafkaProducer, TopicPartition

from stream_learner.records import EventBatch, ReadRecords, Rejected

Fetched = dict[TopicPartition, ReadRecords]
"""Records handed out by one fetch, per partition (never empty), as columns."""


class Reader(Protocol):
    """The group consumer of the events and labels topics, as the loop reads it."""

    async def fetch(self, timeout_s: float, offsets: Mapping[TopicPartition, int]) -> tuple[Fetched, list[Rejected]]:
        """Records of the assigned partitions, and batches that could not be read (as rejects)."""
        ...

    def assignment(self) -> set[TopicPartition]:
        """Partitions this member holds now."""
        ...

    def position(self, tp: TopicPartition) -> int | None:
        """The consumer's next offset on ``tp``, where it already has one."""
        ...

    def readable_end(self, tp: TopicPartition) -> int | None:
        """Where reading ``tp`` ends for now (its last stable offset, else its high watermark)."""
        ...

    def highwater(self, tp: TopicPartition) -> int | None:
        """The high watermark of ``tp`` as of the last fetch."""
        ...

    def partition_count(self, topic: str) -> int | None:
        """Partitions of ``topic``, where known."""
        ...

    def pause(self, partitions: Iterable[TopicPartition]) -> None:
        """Stop fetching ``partitions`` until resumed."""
        ...

    def resume(self, partitions: Iterable[TopicPartition]) -> None:
        """Fetch ``partitions`` again."""
        ...

    def paused(self) -> set[TopicPartition]:
        """Partitions paused now."""
        ...

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Commit ``offsets`` (next offsets to read) to the group."""
        ...


class Writer(Protocol):
    """The producer of predictions and dead letters; every send is awaited by :meth:`flush`."""

    async def send_predictions(
        self,
        events: EventBatch,
        scores: np.ndarray,
        model_version: int | np.ndarray,
        model_generation: int | None = None,
        model: str | None = None,
    ) -> None:
        """Encode and produce one prediction per event, co-partitioned with the events where possible."""
        ...

    async def send_dead_letters(self, rejected: list[Rejected]) -> None:
        """Produce each rejected record to the dead-letter topic with its reason."""
        ...

    def raise_failed(self) -> None:
        """Forget acknowledged sends; raise :class:`~stream_learner.errors.DeliveryError` for a failed one."""
        ...

    async def flush(self) -> None:
        """Wait for every send's acknowledgement; raise :class:`~stream_learner.errors.DeliveryError` if any failed."""
        ...


@dataclass(frozen=True)
class Rebalancing:
    """What the service does when its partitions move, whichever client's callbacks call it."""

    offsets: Mapping[TopicPartition, int]
    """Where reading resumes on an assigned partition that this maps (the checkpoint's offsets); any
    other partition resumes at the group's committed offset, else the earliest."""
    before_revoke: Callable[[], Awaitable[None]]
    """Runs before partitions are revoked (a checkpoint), on the event loop; the rebalance waits for it."""
    assigned: Callable[[list[TopicPartition]], None]
    """Told the partitions assigned, on the event loop, before any of their records is handed out."""


class Connection(Protocol):
    """The clients of one run; ``reader`` and ``writer`` are set once :meth:`connect` returned True."""

    @property
    def reader(self) -> Reader | None: ...
    @property
    def writer(self) -> Writer | None: ...
    @property
    def broker_reachable(self) -> bool: ...
    @property
    def models_producer(self) -> AIOKafkaProducer | None:
        """A trainer's producer of model versions (aiokafka whichever the client: see docs/architecture.md)."""
        ...

    async def connect(self, rebalancing: Rebalancing, fenced: Callable[[], Awaitable[None]]) -> bool:
        """Start the clients, waiting for the broker; False when stopped first. With exactly_once, ``fenced``
        runs once earlier instances are fenced, before the group is joined."""
        ...

    async def probe(self) -> None:
        """Keep ``broker_reachable`` current (until cancelled)."""
        ...

    async def commit_offsets(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Commit the offsets of the partitions held (with exactly_once, in the open transaction, which commits)."""
        ...

    async def abort_transaction(self) -> None:
        """Best effort: end an open transaction now."""
        ...

    async def close(self) -> None:
        """Stop the clients within a bound."""
        ...
