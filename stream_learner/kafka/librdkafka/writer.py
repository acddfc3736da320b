"""The producer of predictions and dead letters on librdkafka: :class:`~stream_learner.kafka.protocol.Writer`.

librdkafka batches, compresses and retries in its own threads; the loop only hands it records.
Only failed deliveries are reported (``delivery.report.only.error``), so an acknowledged record costs
no Python call; :meth:`LibrdkafkaWriter.flush` waits until every record is acknowledged or failed,
so a checkpoint's drain passes no prediction the broker has not acknowledged.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence

import numpy as np
import structlog
from confluent_kafka import KafkaError, Message, Producer

from stream_learner.config import Settings
from stream_learner.errors import DeliveryError
from stream_learner.kafka.dead_letters import account_dead_letter, dead_letter_headers
from stream_learner.kafka.librdkafka.threads import DaemonThread
from stream_learner.kafka.librdkafka.transactions import LibrdkafkaTransactions
from stream_learner.kafka.predictions import encode_predictions
from stream_learner.observability.telemetry import Telemetry
from stream_learner.records import EventBatch, Predictions, Rejected

log = structlog.get_logger(__name__)
QUEUE_FULL_WAIT_S = 0.05


class DeliveryReports:
    """librdkafka's delivery callback (``on_delivery``): it is called for failed records only."""

    def __init__(self) -> None:
        self.failed: list[str] = []

    def __call__(self, error: KafkaError | None, message: Message) -> None:
        if error is not None:
            self.failed.append(f"{message.topic()}[{message.partition()}]: {error.str()}")


class LibrdkafkaWriter:
    """Produces through ``producer``, whose ``on_delivery`` is ``reports``; its blocking calls run in ``flushing``.
    With ``transactions`` every send goes into the open transaction (begun at the first send after a checkpoint)."""

    def __init__(
        self,
        producer: Producer,
        reports: DeliveryReports,
        flushing: DaemonThread,
        settings: Settings,
        totals: Counter[str],
        telemetry: Telemetry,
        partition_count: Callable[[str], int | None],
        exact_headers: Callable[[list[Rejected]], Awaitable[list[Rejected]]],
        transactions: LibrdkafkaTransactions | None = None,
    ) -> None:
        self.producer = producer
        self._reports = reports
        self._flushing = flushing
        self._settings = settings
        self._totals = totals
        self._telemetry = telemetry
        self._partition_count = partition_count
        self._transactions = transactions
        self._exact_headers = exact_headers

    async def send_predictions(
        self,
        events: EventBatch,
        scores: np.ndarray,
        model_version: int | np.ndarray,
        model_generation: int | None = None,
        model: str | None = None,
    ) -> None:
        """Record ``i`` goes to the events partition it came from where the predictions topic has as many
        partitions as the events topic (co-partitioned), else where the producer's murmur2 partitioner
        puts its key, as the Java client and aiokafka would."""
        if self._settings.role == "trainer":
            return  # a trainer scores events for its prequential metrics; the predictors publish
        s = self._settings
        values = encode_predictions(Predictions(events, scores, model_version, model_generation, model), s.task)
        keys = [event_id.encode() for event_id in events.ids]
        same = self._partition_count(s.predictions_topic) == self._partition_count(s.events_topic)
        partitions = events.partitions.tolist() if same and events.partitions is not None else None
        await self._produce(s.predictions_topic, keys, values, partitions)
        self._totals["events_predicted"] += len(events)
        self._telemetry.predictions_published(len(events))

    async def _produce(
        self, topic: str, keys: Sequence[bytes], values: Sequence[bytes], partitions: list[int] | None
    ) -> None:
        if self._transactions is not None:
            self._transactions.begin()
        produce, done = self.producer.produce, 0
        while done < len(values):
            try:
                if partitions is None:
                    for i in range(done, len(values)):
                        produce(topic, values[i], keys[i])
                        done += 1
                else:
                    for i in range(done, len(values)):
                        produce(topic, values[i], keys[i], partitions[i])
                        done += 1
            except BufferError:  # librdkafka's queue is full: let it deliver some first
                await self._in_thread(self.producer.poll, QUEUE_FULL_WAIT_S)

    async def send_dead_letters(self, rejected: list[Rejected]) -> None:
        """Each record with its headers as in the log (see ``MessageRecord``); librdkafka would end a key
        at a NUL, so a NUL in a key is written escaped (``"\\x00"``), as a key that is not UTF-8 is."""
        if rejected:
            rejected = await self._exact_headers(rejected)
        if rejected and self._transactions is not None:
            self._transactions.begin()
        for item in rejected:
            r = item.record
            headers: list[tuple[str, str | bytes | None]] = [
                (key.replace("\x00", "\\x00"), value) for key, value in dead_letter_headers(item)
            ]
            while True:
                try:
                    self.producer.produce(self._settings.dead_letter_topic, r.value, r.key, headers=headers)
                    break
                except BufferError:
                    await self._in_thread(self.producer.poll, QUEUE_FULL_WAIT_S)
            account_dead_letter(item, self._totals, self._telemetry)

    def raise_failed(self) -> None:
        self.producer.poll(0)
        self._raise_reported()

    async def flush(self) -> None:
        left = await self._in_thread(self.producer.flush, self._settings.delivery_timeout_s)
        self._raise_reported()
        if left:
            raise DeliveryError(f"{left} produced records were not acknowledged within DELIVERY_TIMEOUT_S")
        self._totals["predictions_acknowledged"] = self._totals["events_predicted"]

    async def _in_thread(self, call: Callable[[float], int], timeout_s: float) -> int:
        return await asyncio.get_running_loop().run_in_executor(self._flushing, call, timeout_s)

    def _raise_reported(self) -> None:
        failed, self._reports.failed = self._reports.failed, []
        if failed:
            raise DeliveryError(f"{len(failed)} produced records were not acknowledged: {failed[0]}")
