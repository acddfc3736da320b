"""One partition's messages of one consume call, as :class:`~stream_learner.records.ReadRecords` columns."""

from __future__ import annotations

import numpy as np
from confluent_kafka import Message

from stream_learner.records import RawRecord


class MessageColumns:
    """librdkafka ``Message`` objects of one partition, in offset order, read as columns."""

    def __init__(self, topic: str, partition: int, messages: list[Message]) -> None:
        self._topic, self._partition, self._messages = topic, partition, messages

    def __len__(self) -> int:
        return len(self._messages)

    def values(self) -> list[bytes | None]:
        return [m.value() for m in self._messages]

    def partitions(self) -> np.ndarray:
        return np.full(len(self._messages), self._partition, np.int64)

    def offsets(self) -> np.ndarray:
        return np.fromiter((m.offset() for m in self._messages), np.int64, len(self._messages))

    def raw(self, i: int) -> RawRecord:
        return raw_record(self._messages[i])

    def next_offset(self) -> int:
        return int(self._messages[-1].offset() or 0) + 1


def raw_record(message: Message) -> RawRecord:
    """``message`` as a :class:`RawRecord` (headers as read; a header without a value reads as empty)."""
    headers = tuple((key, _as_bytes(value) or b"") for key, value in _header_list(message))
    return RawRecord(
        topic=message.topic() or "",
        partition=int(message.partition() or 0),
        offset=int(message.offset() or 0),
        key=_as_bytes(message.key()),
        value=_as_bytes(message.value()),
        headers=headers,
        timestamp_ms=message.timestamp()[1],
    )


def _header_list(message: Message) -> list[tuple[str, str | bytes | None]]:
    headers = message.headers()
    return list(headers.items()) if isinstance(headers, dict) else list(headers or ())


def _as_bytes(data: str | bytes | None) -> bytes | None:
    return data.encode() if isinstance(data, str) else data
