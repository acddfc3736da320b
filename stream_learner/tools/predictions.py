"""The reading side of the contract: :class:`PredictionConsumer` reads predictions as :class:`Prediction` values."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import orjson
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from stream_learner.kafka.clients import security_kwargs

if TYPE_CHECKING:
    from stream_learner.config import Settings

__all__ = ["Prediction", "PredictionConsumer"]


@dataclass(frozen=True, slots=True)
class Prediction:
    """One record of the predictions topic."""

    id: str
    """The event id."""
    prediction: int | float
    """Arg-max class index (classification) or the predicted number (regression)."""
    scores: tuple[float, ...] | None
    """Class probabilities (classification); None for regression."""
    model_version: int
    """Optimizer steps applied to the weights that made the prediction."""
    ts: float | None
    """The event's ``ts``, when it had one."""
    model_generation: int | None = None
    """The trainer generation of the model version, from a ``ROLE=predictor`` replica."""
    model: str | None = None
    """With challengers: the name of the model that served (``default``, a challenger's, or ``average``)."""

    @classmethod
    def from_json(cls, value: bytes | str) -> Prediction:
        """Parse a prediction value; ``ValueError`` when it does not follow the contract."""
        try:
            obj = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"a prediction must be JSON: {exc}") from exc
        if not isinstance(obj, dict):
            raise ValueError(f"a prediction must be a JSON object, got {type(obj).__name__}")
        try:
            event_id, prediction, version = obj["id"], obj["prediction"], obj["model_version"]
        except KeyError as exc:
            raise ValueError(f"a prediction needs {exc.args[0]!r}: {obj!r}") from exc
        scores, ts, generation = obj.get("scores"), obj.get("ts"), obj.get("model_generation")
        if not isinstance(event_id, str) or not event_id:
            raise ValueError(f"'id' must be a non-empty string: {obj!r}")
        if not _is_number(prediction) or not isinstance(version, int) or isinstance(version, bool) or version < 0:
            raise ValueError(f"'prediction' must be a number and 'model_version' a count: {obj!r}")
        if scores is not None and (not isinstance(scores, list) or not all(_is_number(s) for s in scores)):
            raise ValueError(f"'scores' must be an array of numbers: {obj!r}")
        if ts is not None and not _is_number(ts):
            raise ValueError(f"'ts' must be a number: {obj!r}")
        if generation is not None and (
            not isinstance(generation, int) or isinstance(generation, bool) or generation < 1
        ):
            raise ValueError(f"'model_generation' must be a positive integer: {obj!r}")
        model = obj.get("model")
        if model is not None and (not isinstance(model, str) or not model):
            raise ValueError(f"'model' must be a non-empty string: {obj!r}")
        return cls(event_id, prediction, None if scores is None else tuple(scores), version, ts, generation, model)

    def to_dict(self) -> dict[str, Any]:
        """The contract's JSON object: ``scores`` and ``ts`` only when present."""
        out: dict[str, Any] = {"id": self.id, "prediction": self.prediction}
        if self.scores is not None:
            out["scores"] = list(self.scores)
        out["model_version"] = self.model_version
        if self.model_generation is not None:
            out["model_generation"] = self.model_generation
        if self.model is not None:
            out["model"] = self.model
        if self.ts is not None:
            out["ts"] = self.ts
        return out


class PredictionConsumer:
    """Reads the predictions topic as :class:`Prediction` values: ``async for p in consumer``.

    ``group_id=None`` (the default) assigns every partition of the topic and reads from the
    beginning, committing nothing; with a ``group_id`` it joins that consumer group
    (``auto_offset_reset`` "earliest" unless given in ``kafka_options``). A record whose key
    is not its value's ``id``, or whose value is not a contract prediction, raises ``ValueError``.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        topic: str = "predictions",
        group_id: str | None = None,
        **kafka_options: Any,
    ) -> None:
        self.topic, self.group_id = topic, group_id
        options = {"auto_offset_reset": "earliest", **kafka_options}
        if group_id is None:
            options["enable_auto_commit"] = False
        self._consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, group_id=group_id, **options)
        self._buffer: list[Prediction] = []

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> PredictionConsumer:
        """A reader of the predictions of the service configured by ``settings`` (its brokers and security)."""
        return cls(
            settings.bootstrap_servers,
            **{"topic": settings.predictions_topic, **security_kwargs(settings), **overrides},
        )

    async def start(self) -> None:
        """Connect; without a group, assign every partition of the topic from the beginning."""
        await self._consumer.start()
        if self.group_id is None:
            partitions = await _partitions(self._consumer, self.topic)
            self._consumer.assign([TopicPartition(self.topic, p) for p in sorted(partitions)])
            await self._consumer.seek_to_beginning()
        else:
            self._consumer.subscribe([self.topic])

    async def stop(self) -> None:
        """Disconnect."""
        await self._consumer.stop()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def getmany(self, timeout_s: float = 1.0, max_records: int | None = None) -> list[Prediction]:
        """The predictions that arrive within ``timeout_s`` (possibly none), in partition order."""
        fetched = await self._consumer.getmany(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        return [_parse(record) for records in fetched.values() for record in records]

    async def read(self, count: int, timeout_s: float) -> list[Prediction]:
        """Up to ``count`` predictions: returns once that many arrived, or when ``timeout_s`` has passed."""
        out: list[Prediction] = []
        deadline = time.monotonic() + timeout_s
        while len(out) < count and (left := deadline - time.monotonic()) > 0:
            out.extend(await self.getmany(min(0.2, left), max_records=count - len(out)))
        return out

    def __aiter__(self) -> AsyncIterator[Prediction]:
        return self

    async def __anext__(self) -> Prediction:
        while not self._buffer:
            self._buffer = await self.getmany(timeout_s=1.0)
            self._buffer.reverse()
        return self._buffer.pop()


def _parse(record: ConsumerRecord[bytes, bytes]) -> Prediction:
    where = f"{record.topic}[{record.partition}]@{record.offset}"
    if record.value is None:
        raise ValueError(f"{where}: a prediction record has no value")
    try:
        prediction = Prediction.from_json(record.value)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from exc
    if record.key != prediction.id.encode():
        raise ValueError(f"{where}: key {record.key!r} is not the prediction's id {prediction.id!r}")
    return prediction


async def _partitions(consumer: AIOKafkaConsumer, topic: str, timeout_s: float = 10.0) -> set[int]:
    """The topic's partitions, waiting briefly for metadata (a topic made just now may not show yet)."""
    deadline = time.monotonic() + timeout_s
    partitions = consumer.partitions_for_topic(topic)
    while True:
        if partitions:
            return set(partitions)
        if time.monotonic() >= deadline:
            raise ValueError(f"topic {topic!r} does not exist (no partitions after {timeout_s:g} s)")
        await asyncio.sleep(0.2)
        cluster = await consumer._client.fetch_all_metadata()  # private API: aiokafka has no public per-topic refresh
        partitions = cluster.partitions_for_topic(topic)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
