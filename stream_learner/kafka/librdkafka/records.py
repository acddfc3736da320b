"""One partition's messages of one consume call, as :class:`~stream_learner.records.ReadRecords` columns."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from confluent_kafka import Message

from stream_learner.records import RawRecord


@dataclass(frozen=True, slots=True)
class MessageRecord(RawRecord):
    """A record as librdkafka handed it out, whose headers may not be the ones produced.

    librdkafka ends a header key at its first NUL character, and confluent-kafka cannot read a
    key that is not UTF-8 at all (``headers()`` raises): such a record's headers are read again
    from the raw batch before it goes to the dead-letter topic (``read_past.exact_headers``).
    """

    headers_to_reread: bool = False
    """It has headers (or unreadable ones): what librdkafka made of them may differ from the log."""


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


def raw_record(message: Message) -> MessageRecord:
    """``message`` as a :class:`MessageRecord` (headers as read; a header without a value reads as empty)."""
    try:
        headers = tuple((key, _as_bytes(value) or b"") for key, value in _header_list(message))
        reread = bool(headers)
    except (SystemError, UnicodeDecodeError):  # a header key that is not UTF-8
        headers, reread = (), True
    return MessageRecord(
        topic=message.topic() or "",
        partition=int(message.partition() or 0),
        offset=int(message.offset() or 0),
        key=_as_bytes(message.key()),
        value=_as_bytes(message.value()),
        headers=headers,
        timestamp_ms=message.timestamp()[1],
        headers_to_reread=reread,
    )


def _header_list(message: Message) -> list[tuple[str, str | bytes | None]]:
    headers = message.headers()
    return list(headers.items()) if isinstance(headers, dict) else list(headers or ())


def _as_bytes(data: str | bytes | None) -> bytes | None:
    return data.encode() if isinstance(data, str) else data
