"""Rebalances on librdkafka: its callbacks, called in the consuming thread, run the service's on the loop.

librdkafka calls ``on_assign``/``on_revoke`` inside ``consume()``; each runs what
:class:`~stream_learner.kafka.protocol.Rebalancing` says on the event loop and waits for it there, as
aiokafka's listener does inside ``getmany()``. So a checkpoint is taken before partitions go, and
an assigned partition the checkpoint knows is read on from the checkpoint's offset (any other from
the group's committed offset, else the earliest), before any of its records is handed out.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, Protocol, TypeVar

import structlog
from aiokafka import TopicPartition
from confluent_kafka import Consumer
from confluent_kafka import TopicPartition as RdTopicPartition

from stream_learner.kafka.protocol import Rebalancing
from stream_learner.kafka.rebalance import named

log = structlog.get_logger(__name__)
T = TypeVar("T")
COMMITTED_TIMEOUT_S = 10.0


class AssignmentBook(Protocol):
    """Where the reader keeps the assignment (librdkafka's own ``assignment()`` can block)."""

    def assigned(self, partitions: list[TopicPartition]) -> None: ...
    def unassigned(self) -> None: ...
    def run_ops(self, *, revoking: bool = False) -> None: ...

    group_metadata: object | None
    starts: dict[TopicPartition, int]


class RebalanceBridge:
    """``on_assign``, ``on_revoke`` and ``on_lost`` for ``Consumer.subscribe``; each also tells ``reader``."""

    def __init__(self, loop: asyncio.AbstractEventLoop, rebalancing: Rebalancing, reader: AssignmentBook) -> None:
        self._loop = loop
        self._rebalancing = rebalancing
        self._reader = reader
        self.closing = False
        """Set before the consumer closes: leaving the group takes no checkpoint (the final one is written)."""

    def on_assign(self, consumer: Consumer, partitions: list[RdTopicPartition]) -> None:
        assigned = [TopicPartition(p.topic, p.partition) for p in partitions]
        offsets = self._on_loop(self._assigned(assigned))
        unknown = [p for p, tp in zip(partitions, assigned, strict=True) if tp not in offsets]
        if unknown:  # the group's committed offsets, so that a position is known before a record is read
            committed = consumer.committed(unknown, timeout=COMMITTED_TIMEOUT_S)
            offsets.update({TopicPartition(c.topic, c.partition): c.offset for c in committed if c.offset >= 0})
        for p, tp in zip(partitions, assigned, strict=True):
            if tp in offsets:
                p.offset = offsets[tp]
        consumer.assign(partitions)
        self._reader.starts = offsets
        self._reader.group_metadata = consumer.consumer_group_metadata()  # this generation's
        log.info("partitions_assigned", partitions=named(assigned))

    async def _assigned(self, assigned: list[TopicPartition]) -> dict[TopicPartition, int]:
        self._reader.assigned(assigned)
        self._rebalancing.assigned(assigned)
        known = self._rebalancing.offsets
        return {tp: known[tp] for tp in assigned if tp in known}

    def on_revoke(self, consumer: Consumer, partitions: list[RdTopicPartition]) -> None:
        if not partitions or self.closing:
            self._reader.unassigned()
            return
        self._on_loop(self._before_revoke())
        self._reader.run_ops(revoking=True)  # the checkpoint's commit, before the partitions go
        self._reader.unassigned()
        log.info("partitions_revoked", partitions=named(TopicPartition(p.topic, p.partition) for p in partitions))

    def on_lost(self, consumer: Consumer, partitions: list[RdTopicPartition]) -> None:
        """The group went on without this member (its session expired): the partitions may be read by
        another already, so nothing is committed for them. The state in memory stays consistent with
        ``offsets``, where reading resumes if they come back."""
        self._reader.unassigned()
        lost = named(TopicPartition(p.topic, p.partition) for p in partitions)
        log.warning("partitions_lost", partitions=lost, detail="the session expired; the last checkpoint stands")

    async def _before_revoke(self) -> None:
        await self._rebalancing.before_revoke()

    def _on_loop(self, work: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(work, self._loop).result()
