"""The producer of predictions and dead letters: :class:`~stream_learner.kafka.protocol.Writer` on aiokafka.

Every send's delivery is kept until it is acknowledged; a checkpoint's drain awaits them all
(:meth:`KafkaWriter.flush`), so no cut passes a prediction the broker has not acknowledged.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
import structlog
from aiokafka import AIOKafkaProducer

from stream_learner.config import Settings
from stream_learner.errors import DeliveryError
from stream_learner.kafka.dead_letters import account_dead_letter, dead_letter_headers
from stream_learner.kafka.partitioned_send import send_partitioned
from stream_learner.kafka.predictions import encode_predictions
from stream_learner.kernels.record_batch import PackedRecords
from stream_learner.observability.telemetry import Telemetry
from stream_learner.records import EventBatch, Predictions, Rejected

log = structlog.get_logger(__name__)


class KafkaWriter:
    """Produces through a started :class:`AIOKafkaProducer` (at least once)."""

    def __init__(
        self,
        producer: AIOKafkaProducer,
        settings: Settings,
        totals: Counter[str],
        telemetry: Telemetry,
        source_partitions: Callable[[], int | None],
    ) -> None:
        self.producer = producer
        self._settings = settings
        self._totals = totals
        self._telemetry = telemetry
        self._source_partitions = source_partitions
        self._deliveries: list[asyncio.Future[Any]] = []

    async def send_predictions(
        self,
        events: EventBatch,
        scores: np.ndarray,
        model_version: int | np.ndarray,
        model_generation: int | None = None,
        model: str | None = None,
    ) -> None:
        if self._settings.role == "trainer":
            return  # a trainer scores events for its prequential metrics; the predictors publish
        predictions = Predictions(events, scores, model_version, model_generation, model)
        values = encode_predictions(predictions, self._settings.task)
        records = PackedRecords.of([event_id.encode() for event_id in events.ids], values)
        self._deliveries += await send_partitioned(
            self.producer,
            self._settings.predictions_topic,
            records,
            events.partitions,
            self._source_partitions(),
            packed=self._settings.cpu_kernels == "auto",
        )
        self._totals["events_predicted"] += len(events)
        self._telemetry.predictions_published(len(events))

    async def send_dead_letters(self, rejected: list[Rejected]) -> None:
        for item in rejected:
            r = item.record
            future = await self.producer.send(
                self._settings.dead_letter_topic, r.value, key=r.key, headers=dead_letter_headers(item)
            )
            self._deliveries.append(future)
            account_dead_letter(item, self._totals, self._telemetry)

    def raise_failed(self) -> None:
        pending = []
        for future in self._deliveries:
            if not future.done():
                pending.append(future)
            elif future.exception() is not None:
                raise DeliveryError(f"a produced record was not acknowledged: {future.exception()!r}")
        self._deliveries = pending

    async def flush(self) -> None:
        deliveries, self._deliveries = self._deliveries, []
        results = await asyncio.gather(*deliveries, return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise DeliveryError(f"{len(errors)} produced records were not acknowledged: {errors[0]!r}")
        self._totals["predictions_acknowledged"] = self._totals["events_predicted"]
