"""Rebalances: the checkpoint decides where reading resumes, and Kafka follows.

On revocation a checkpoint is taken before the partitions go; on assignment every partition
the checkpoint knows is read on from its offset, and any other starts at the group's committed
offset, else the earliest.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener

log = structlog.get_logger(__name__)


class RebalanceHooks(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka has no type information
    """aiokafka's rebalance callbacks: ``before_revoke`` takes the checkpoint; ``offsets`` says where to seek."""

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        offsets: Mapping[TopicPartition, int],
        before_revoke: Callable[[], Awaitable[None]],
        assigned: Callable[[list[TopicPartition]], None],
    ) -> None:
        self._consumer = consumer
        self._offsets = offsets
        self._before_revoke = before_revoke
        self._assigned = assigned

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        revoked = list(revoked)
        if revoked:
            await self._before_revoke()
            log.info("partitions_revoked", partitions=_named(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        assigned = list(assigned)
        for tp in assigned:
            if tp in self._offsets:
                self._consumer.seek(tp, self._offsets[tp])
        self._assigned(assigned)
        log.info("partitions_assigned", partitions=_named(assigned))


def _named(partitions: list[TopicPartition]) -> list[str]:
    return sorted(f"{tp.topic}[{tp.partition}]" for tp in partitions)
