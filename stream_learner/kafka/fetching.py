"""Reading the assigned partitions: a share of every turn for each, and a way past batches aiokafka cannot decode.

aiokafka decodes fetched record batches inside ``getmany()``. A batch it cannot decode (a codec
library missing, a CRC mismatch, a header key that is not UTF-8, which Kafka allows) raises
there, again on every fetch of that partition, and records other partitions had handed out in
the same call are lost with the exception (their positions already moved). So:

- a failed ``getmany`` of several partitions rewinds every assigned partition to the next
  offset the caller has accounted for, and the next turns read partition by partition, so the
  next failure names its partition;
- that partition's batch is then read by :mod:`.batch_reader` from raw Fetch bytes: its records
  come back as usual (a binary header key decoded with backslash escapes), or, where even that
  cannot read them (corrupt, an unknown codec), the whole batch comes back as one
  :class:`~stream_learner.records.Rejected` naming its offset range, for the dead-letter topic.
  Either way the consumer then seeks past the batch: no partition stalls, the service goes on.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any, NamedTuple

import structlog
from aiokafka import AIOKafkaClient, AIOKafkaConsumer, TopicPartition
from aiokafka.errors import CorruptRecordException, KafkaError, UnsupportedCodecError

from stream_learner.kafka.batch_reader import read_batch_at, unreadable_batch
from stream_learner.kafka.positions import known_position
from stream_learner.records import RawRecord, Rejected

log = structlog.get_logger(__name__)

CAREFUL_S = 10.0
"""How long partitions are read one by one after a failed fetch of several, to find the one at fault."""
MAX_UNEXPLAINED = 3
"""Failed fetches in a row that no single partition reproduces before the error is raised after all."""


class Fetched(NamedTuple):
    """One turn's reading."""

    records: dict[TopicPartition, list[Any]]
    """Records per partition (aiokafka ``ConsumerRecord``s, or :class:`RawRecord`s read past aiokafka)."""
    unreadable: list[Rejected]
    """Batches that could not be read at all, one rejected record each (the batch's raw bytes as its value)."""


class Fetcher:
    """Reads the assigned, unpaused partitions of ``consumer``; ``client`` sends the raw fetches."""

    def __init__(
        self, consumer: AIOKafkaConsumer, client: AIOKafkaClient, max_records: int, *, read_committed: bool
    ) -> None:
        self.consumer, self.client = consumer, client
        self.max_records, self.read_committed = max_records, read_committed
        self._careful_until = 0.0
        self._unexplained = 0

    async def fetch(self, timeout_s: float, accounted: Mapping[TopicPartition, int]) -> Fetched:
        """This turn's records; ``accounted``: per partition, the next offset whose record the caller has not taken in.

        Never raises for a batch that cannot be decoded; other errors of ``getmany`` propagate.
        """
        if time.monotonic() < self._careful_until:
            return await self._one_by_one(timeout_s)
        try:
            fetched = await self.consumer.getmany(timeout_ms=int(timeout_s * 1000), max_records=self.max_records)
        except Exception as exc:
            if not _may_be_undecodable(exc) or self._unexplained >= MAX_UNEXPLAINED:
                raise
            self._unexplained += 1
            log.warning(
                "fetch_failed",
                error=f"{type(exc).__name__}: {exc}",
                detail="reading partition by partition to find the batch",
            )
            await self._rewind(accounted)
            self._careful_until = time.monotonic() + CAREFUL_S
            return Fetched({}, [])
        self._unexplained = 0
        return await self._with_shares(fetched)

    async def _with_shares(self, fetched: dict[TopicPartition, list[Any]]) -> Fetched:
        """``fetched``, then every assigned partition that got none gets a share of its own.

        aiokafka drains its buffered fetch results in order, each up to a partition's fetch size,
        so in catch-up a few partitions could fill every ``getmany`` for many turns: the labels
        waited behind most of the events, and the schedule (partitions take turns) waited for the
        starved labels partitions, so nothing trained meanwhile. A share each prevents that.
        """
        assigned = self.consumer.assignment()
        starved = assigned - self.consumer.paused() - {tp for tp, records in fetched.items() if records}
        share = max(1, self.max_records // max(1, len(assigned)))
        unreadable: list[Rejected] = []
        for tp in starved:
            records, rejected = await self._read_partition(tp, share)
            fetched[tp] = records
            unreadable += rejected
        return Fetched(fetched, unreadable)

    async def _one_by_one(self, timeout_s: float) -> Fetched:
        """Each partition alone, so that a batch that cannot be decoded is known by its partition."""
        fetched, unreadable = await self._with_shares({})
        if not any(fetched.values()) and not unreadable:
            await asyncio.sleep(timeout_s)
        return Fetched(fetched, unreadable)

    async def _read_partition(self, tp: TopicPartition, most: int) -> tuple[list[Any], list[Rejected]]:
        try:
            found = await self.consumer.getmany(tp, timeout_ms=0, max_records=most)
        except Exception as exc:
            if not _may_be_undecodable(exc):
                raise
            return await self._read_past(tp, exc)
        return found.get(tp, []), []

    async def _read_past(self, tp: TopicPartition, error: Exception) -> tuple[list[RawRecord], list[Rejected]]:
        """The batch at ``tp``'s position, read from raw bytes; the consumer then continues after it."""
        position = known_position(self.consumer, tp)
        if position is None:
            return [], []
        batch = await read_batch_at(self.client, tp, position, read_committed=self.read_committed)
        self._careful_until, self._unexplained = 0.0, 0
        if batch is None:
            return [], []
        self.consumer.seek(tp, batch.next_offset)
        where = f"{tp.topic}[{tp.partition}]@{batch.base_offset}..{batch.last_offset}"
        if batch.problem is None:
            log.warning(
                "batch_read_past_aiokafka",
                where=where,
                records=len(batch.records),
                error=f"{type(error).__name__}: {error}",
            )
            return list(batch.records), []
        return [], [unreadable_batch(tp, batch)]

    async def _rewind(self, accounted: Mapping[TopicPartition, int]) -> None:
        """Every assigned partition back to what the caller took in (the failed call lost what it drained)."""
        for tp in self.consumer.assignment():
            if tp in accounted:
                self.consumer.seek(tp, accounted[tp])
                continue
            committed = await self.consumer.committed(tp)
            if committed is not None and committed >= 0:
                self.consumer.seek(tp, committed)
            else:
                await self.consumer.seek_to_beginning(tp)


def _may_be_undecodable(exc: Exception) -> bool:
    """Decoding errors (aiokafka's own, or anything that is not a Kafka error, e.g. UnicodeDecodeError)."""
    return isinstance(exc, (UnsupportedCodecError, CorruptRecordException)) or not isinstance(exc, KafkaError)
