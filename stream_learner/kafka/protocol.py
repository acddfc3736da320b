"""What the run loop needs of Kafka, as two small Protocols: a reader and a writer.

:class:`~stream_learner.kafka.reader.KafkaReader` and :class:`~stream_learner.kafka.writer.KafkaWriter`
are the aiokafka implementations; the loop's logic is tested with plain fakes of these.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol

import numpy as np
from aiokafka import TopicPartition

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
