"""Rebalances: the checkpoint decides where reading resumes, and Kafka follows.

On revocation a checkpoint is taken before the partitions go; on assignment every partition
the checkpoint knows is read on from its offset, and any other starts at the group's committed
offset, else the earliest.
"""

from __future__ import annotations

from collections.abc import Iterable

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener

from stream_learner.kafka.protocol import Rebalancing

log = structlog.get_logger(__name__)


class RebalanceHooks(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka has no type information
    """aiokafka's rebalance callbacks, doing what ``rebalancing`` says."""

    def __init__(self, consumer: AIOKafkaConsumer, rebalancing: Rebalancing) -> None:
        self._consumer = consumer
        self._offsets = rebalancing.offsets
        self._before_revoke = rebalancing.before_revoke
        self._assigned = rebalancing.assigned

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        revoked = list(revoked)
        if revoked:
            await self._before_revoke()
            log.info("partitions_revoked", partitions=named(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        assigned = list(assigned)
        for tp in assigned:
            if tp in self._offsets:
                self._consumer.seek(tp, self._offsets[tp])
        self._assigned(assigned)
        log.info("partitions_assigned", partitions=named(assigned))


def named(partitions: Iterable[TopicPartition]) -> list[str]:
    return sorted(f"{tp.topic}[{tp.partition}]" for tp in partitions)
