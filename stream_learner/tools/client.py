"""Typed clients for the people on either side of the topics (the contract in docs/contract.md).

:class:`EventProducer` sends events and labels the service can use, and refuses
(``ValueError``) what the service would dead-letter; :class:`PredictionConsumer`
(from :mod:`stream_learner.tools.predictions`, re-exported here) reads the predictions
back as :class:`Prediction` values::

    async with EventProducer("kafka:9092", input_dim=8) as producer:
        await producer.send_event("e-1", [0.1] * 8, ts=time.time())
        await producer.send_label("e-1", 1)          # later, when the outcome is known

    async with PredictionConsumer("kafka:9092") as predictions:
        async for p in predictions:
            print(p.id, p.prediction, p.scores, p.model_version)

Keys are the event ids, so with the default partitioner an event and its label land in
the same partition number of two co-partitioned topics. Sends return the delivery future
(await it for the broker's acknowledgement, or call :meth:`EventProducer.flush`); a failed
delivery is raised as :class:`~stream_learner.errors.DeliveryError` by the next send or flush.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self, cast

import numpy as np
import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.structs import RecordMetadata

from stream_learner.errors import DeliveryError
from stream_learner.kafka.clients import security_kwargs
from stream_learner.tools.predictions import Prediction, PredictionConsumer

if TYPE_CHECKING:
    from stream_learner.config import Settings

__all__ = ["EventProducer", "Prediction", "PredictionConsumer"]

Task = Literal["classification", "regression"]
Delivery = asyncio.Future[RecordMetadata]
_NUMBER_TYPES = (int, float, np.integer, np.floating)
_BOOL_TYPES = (bool, np.bool_)


class EventProducer:
    """Sends contract events and labels. An async context manager: flushes and stops on exit.

    Checks what it can know: ids are non-empty strings, features finite numbers (as float32,
    like the service), ``input_dim`` of them when given, ``ts`` a finite number, labels
    finite numbers and, for classification, class indices (below ``num_classes`` when given).
    A bad input raises ``ValueError`` before anything of it is sent.

    Pass ``producer=`` to send through an aiokafka producer you started (it is neither started
    nor stopped here); otherwise one is made from ``bootstrap_servers`` and ``kafka_options``
    (any :class:`aiokafka.AIOKafkaProducer` argument, e.g. SASL/SSL ones).
    """

    def __init__(
        self,
        bootstrap_servers: str | None = None,
        *,
        events_topic: str = "events",
        labels_topic: str = "labels",
        input_dim: int | None = None,
        task: Task = "classification",
        num_classes: int | None = None,
        producer: AIOKafkaProducer | None = None,
        **kafka_options: Any,
    ) -> None:
        if (producer is None) == (bootstrap_servers is None):
            raise ValueError("give either bootstrap_servers or producer")
        if task not in ("classification", "regression"):
            raise ValueError(f"task must be 'classification' or 'regression', got {task!r}")
        self.events_topic, self.labels_topic = events_topic, labels_topic
        self.input_dim, self.task, self.num_classes = input_dim, task, num_classes
        self._owned = producer is None
        self._producer = producer or AIOKafkaProducer(
            bootstrap_servers=bootstrap_servers, **{"acks": "all", "linger_ms": 5, **kafka_options}
        )
        self._pending: set[Delivery] = set()
        self._failure: BaseException | None = None
        self._failures = 0

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> EventProducer:
        """A producer for the service configured by ``settings``: its brokers, security, topics and shapes."""
        options: dict[str, Any] = {
            "events_topic": settings.events_topic,
            "labels_topic": settings.labels_topic,
            "input_dim": settings.input_dim,
            "task": settings.task,
            "num_classes": settings.num_classes if settings.task == "classification" else None,
            **security_kwargs(settings),
            **overrides,
        }
        return cls(settings.bootstrap_servers, **options)

    async def start(self) -> None:
        """Connect (only a producer made here; one passed in is the caller's to start)."""
        if self._owned:
            await self._producer.start()

    async def stop(self) -> None:
        """Stop the producer made here (after sending what is buffered)."""
        if self._owned:
            await self._producer.stop()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if exc_type is None:
                await self.flush()
        finally:
            await self.stop()

    async def send_event(self, id: str, features: Sequence[float] | np.ndarray, ts: float | None = None) -> Delivery:
        """Send one event; returns its delivery future."""
        _check_id(id)
        row = self._feature_rows([features], 1)[0]
        value = {"id": id, "features": row, **({} if ts is None else {"ts": _check_ts(ts)})}
        return await self._send(self.events_topic, id, value)

    async def send_events(
        self,
        ids: Sequence[str],
        features: Sequence[Sequence[float]] | np.ndarray,
        ts: float | Sequence[float] | None = None,
    ) -> asyncio.Future[list[RecordMetadata]]:
        """Send many events (row ``i`` of ``features`` is ``ids[i]``'s); ``ts`` one time for all, or one each.

        Everything is checked before the first send; returns one future for all deliveries.
        """
        ids = list(ids)
        for event_id in ids:
            _check_id(event_id)
        rows = self._feature_rows(features, len(ids))
        times: list[float | None]
        if ts is None:
            times = [None] * len(ids)
        elif isinstance(ts, _NUMBER_TYPES) and not isinstance(ts, _BOOL_TYPES):
            times = [_check_ts(ts)] * len(ids)
        else:
            times = [_check_ts(t) for t in cast("Sequence[float]", ts)]
            if len(times) != len(ids):
                raise ValueError(f"{len(ids)} ids but {len(times)} ts values")
        futures = []
        for event_id, row, t in zip(ids, rows, times, strict=True):
            value = {"id": event_id, "features": row, **({} if t is None else {"ts": t})}
            futures.append(await self._send(self.events_topic, event_id, value))
        return _quiet(asyncio.gather(*futures))

    async def send_label(self, id: str, label: float) -> Delivery:
        """Send the label of event ``id``; returns its delivery future."""
        _check_id(id)
        return await self._send(self.labels_topic, id, {"id": id, "label": self._check_label(label)})

    async def send_labels(
        self, ids: Sequence[str], labels: Sequence[float] | np.ndarray
    ) -> asyncio.Future[list[RecordMetadata]]:
        """Send many labels (``labels[i]`` is ``ids[i]``'s); all are checked first; one future for all deliveries."""
        ids = list(ids)
        values = [self._check_label(label) for label in (labels.tolist() if isinstance(labels, np.ndarray) else labels)]
        if len(values) != len(ids):
            raise ValueError(f"{len(ids)} ids but {len(values)} labels")
        for event_id in ids:
            _check_id(event_id)
        futures = [
            await self._send(self.labels_topic, i, {"id": i, "label": y}) for i, y in zip(ids, values, strict=True)
        ]
        return _quiet(asyncio.gather(*futures))

    async def flush(self) -> None:
        """Wait until every record sent so far is acknowledged; raises DeliveryError if any was not."""
        await self._producer.flush()
        if self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)
        self._raise_failure()

    async def _send(self, topic: str, event_id: str, value: dict[str, Any]) -> Delivery:
        self._raise_failure()
        payload = orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)
        future: Delivery = await self._producer.send(topic, payload, key=event_id.encode())
        if future.done():
            self._delivered(future)
        else:
            self._pending.add(future)
            future.add_done_callback(self._delivered)
        return future

    def _delivered(self, future: Delivery) -> None:
        self._pending.discard(future)
        if future.cancelled():
            return
        error = future.exception()  # also marks it retrieved: no "never retrieved" noise
        if error is not None:
            self._failures += 1
            self._failure = self._failure or error

    def _raise_failure(self) -> None:
        if self._failure is not None:
            error, count = self._failure, self._failures
            self._failure, self._failures = None, 0
            raise DeliveryError(f"{count} sent record(s) were not acknowledged: {error!r}") from error

    def _feature_rows(self, features: Any, count: int) -> list[np.ndarray]:
        if isinstance(features, np.ndarray):
            matrix = features
            if matrix.dtype.kind not in "fiu":
                raise ValueError(f"features must be numbers, got an array of dtype {matrix.dtype}")
        else:
            rows = list(features)
            for row in rows:
                if isinstance(row, (str, bytes)) or not isinstance(row, (Sequence, np.ndarray)):
                    raise ValueError(f"features must be a sequence of numbers, got {type(row).__name__}")
                if isinstance(row, np.ndarray):
                    if row.dtype.kind not in "fiu":
                        raise ValueError(f"features must be numbers, got an array of dtype {row.dtype}")
                elif any(not isinstance(v, _NUMBER_TYPES) or isinstance(v, _BOOL_TYPES) for v in row):
                    raise ValueError("features must hold only numbers (not booleans or strings)")
            try:
                matrix = np.asarray(rows, dtype=np.float64)
            except ValueError as exc:
                raise ValueError(f"features rows must all have the same length: {exc}") from exc
        if matrix.ndim != 2 or matrix.shape[0] != count:
            raise ValueError(f"features must be {count} rows of numbers, got shape {list(matrix.shape)}")
        if self.input_dim is not None and matrix.shape[1] != self.input_dim:
            raise ValueError(f"features must have input_dim={self.input_dim} values, got {matrix.shape[1]}")
        with np.errstate(over="ignore", invalid="ignore"):
            finite = np.isfinite(matrix.astype(np.float32)).all(axis=1)  # what the service will make of them
        if not finite.all():
            raise ValueError(f"features of row {int(np.flatnonzero(~finite)[0])} are not all finite float32 values")
        # float64 text is exact for float32 input too, so the service decodes the very same values.
        return list(np.ascontiguousarray(matrix, dtype=np.float64))

    def _check_label(self, label: Any) -> int | float:
        if not isinstance(label, _NUMBER_TYPES) or isinstance(label, _BOOL_TYPES) or not math.isfinite(label):
            raise ValueError(f"a label must be a finite number, got {label!r}")
        if self.task == "regression":
            return float(label)
        if label != int(label) or label < 0:
            raise ValueError(f"a class label must be a non-negative integer, got {label!r}")
        if self.num_classes is not None and label >= self.num_classes:
            raise ValueError(f"class label {label!r} is outside [0, {self.num_classes})")
        return int(label)


def _check_id(event_id: Any) -> None:
    if not isinstance(event_id, str) or not event_id:
        raise ValueError(f"an event id must be a non-empty string, got {event_id!r}")


def _check_ts(ts: Any) -> float:
    if not isinstance(ts, _NUMBER_TYPES) or isinstance(ts, _BOOL_TYPES) or not math.isfinite(ts):
        raise ValueError(f"ts must be a finite number of epoch seconds, got {ts!r}")
    return float(ts)


def _quiet(future: asyncio.Future[Any]) -> asyncio.Future[Any]:
    """Mark an unawaited gather's exception retrieved (each delivery's own callback records it)."""
    future.add_done_callback(lambda f: f.cancelled() or f.exception())
    return future
