"""Exactly-once on librdkafka: what one checkpoint interval produced, committed with its offsets.

With ``DELIVERY=exactly_once`` the producer is transactional (``transactional.id``): its
``init_transactions()`` at start fences every earlier producer with the same id (and ends its
open transaction) before anything is read. Every record produced between two checkpoints goes
into one transaction, begun at the first send after a checkpoint; checkpoint step 5 adds the
checkpoint's offsets with ``send_offsets_to_transaction`` and the consumer's group metadata
(KIP-447: a member the group has moved past is fenced by its generation) and commits. Any failure
of that commit fails the service: the next start restores the checkpoint whose offsets the group
committed (docs/architecture.md, exactly-once).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

import structlog
from aiokafka import TopicPartition
from confluent_kafka import KafkaException, Producer

from stream_learner.errors import BrokerCapabilityError, DeliveryError
from stream_learner.kafka.librdkafka.reader import rd_partitions
from stream_learner.kafka.librdkafka.threads import DaemonThread

log = structlog.get_logger(__name__)
TRANSACTION_TIMEOUT_S = 30.0


class LibrdkafkaTransactions:
    """The open transaction of a transactional producer: begun lazily, committed with offsets."""

    def __init__(self, producer: Producer, blocking: DaemonThread, group_metadata: Callable[[], Any]) -> None:
        self._producer = producer
        self._blocking = blocking
        self._group_metadata = group_metadata
        """The consumer's group metadata as of its last assignment (taken in the consuming thread)."""
        self.open = False

    async def start(self) -> None:
        """Fence earlier producers with this transactional id; their open transaction ends.
        Raises :class:`BrokerCapabilityError` where the broker refuses a transactional producer."""
        try:
            await self._call(self._producer.init_transactions, TRANSACTION_TIMEOUT_S)
        except KafkaException as exc:
            raise BrokerCapabilityError(
                f"delivery=exactly_once: the broker refused the transactional producer ({exc.args[0].str()}). "
                "It needs Kafka transactions (Apache Kafka 0.11 or later). Use delivery=at_least_once with it."
            ) from exc

    def begin(self) -> None:
        """Open a transaction unless one is open (a local call)."""
        if not self.open:
            self._producer.begin_transaction()
            self.open = True

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Add ``offsets`` (next offsets to read) to the transaction and commit it; raises
        :class:`DeliveryError` when the transaction did not commit (fenced, aborted, timed out)."""
        self.begin()
        try:
            if offsets:
                group = self._group_metadata()
                if group is None:
                    raise DeliveryError("exactly_once: no consumer group metadata to commit the offsets with")
                positions = rd_partitions(offsets, offsets)
                await self._call(self._producer.send_offsets_to_transaction, positions, group, TRANSACTION_TIMEOUT_S)
            await self._call(self._producer.commit_transaction, TRANSACTION_TIMEOUT_S)
        except KafkaException as exc:
            raise DeliveryError(f"the transaction did not commit: {exc.args[0].str()}") from exc
        self.open = False

    async def abort(self) -> None:
        """Best effort: end the open transaction now rather than at the broker's transaction timeout."""
        if not self.open:
            return
        try:
            await asyncio.wait_for(self._call(self._producer.abort_transaction, 5.0), 6.0)
        except Exception as exc:  # noqa: BLE001 - the next start's fencing aborts it anyway
            log.warning("transaction_abort_failed", error=f"{type(exc).__name__}: {exc}")
        self.open = False

    async def _call(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._blocking, fn, *args)
