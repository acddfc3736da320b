"""The fetcher's way past an undecodable batch, on a plain fake consumer (the real broker runs in
test_field_faults.py and test_unreadable_batches.py)."""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import TopicAuthorizationFailedError

from stream_learner.kafka import fetching
from stream_learner.kafka.batch_reader import BatchProblem, RecordBatch
from stream_learner.kafka.fetching import Fetcher
from stream_learner.records import RawRecord

EVENTS = [TopicPartition("events", p) for p in range(3)]


class FakeConsumer:
    """Three assigned partitions; partition 2's next batch cannot be decoded."""

    def __init__(self) -> None:
        self.positions = {tp: 10 for tp in EVENTS}
        self.seeks: list[tuple[TopicPartition, int]] = []
        self.to_beginning: list[TopicPartition] = []

    def assignment(self) -> set[TopicPartition]:
        return set(EVENTS)

    def paused(self) -> set[TopicPartition]:
        return set()

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[Any, Any]:
        if not partitions:
            # Like aiokafka: partition 0's records were drained (its position moved), then partition 2 raised.
            self.positions[EVENTS[0]] = 15
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")
        (tp,) = partitions
        if tp == EVENTS[2] and self.positions[tp] == 10:
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")
        return {}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp, offset))
        self.positions[tp] = offset

    async def committed(self, tp: TopicPartition) -> int | None:
        return None

    async def seek_to_beginning(self, *partitions: TopicPartition) -> None:
        self.to_beginning += partitions


@pytest.fixture
def consumer(monkeypatch: pytest.MonkeyPatch) -> FakeConsumer:
    fake = FakeConsumer()
    monkeypatch.setattr(fetching, "known_position", lambda c, tp: c.positions[tp])
    return fake


def batch_at_10(records: tuple[RawRecord, ...] = (), problem: BatchProblem | None = None) -> RecordBatch:
    return RecordBatch(10, 14, -1, False, False, "none", records, problem)


async def test_a_failed_fetch_rewinds_every_partition_to_what_was_taken_in(
    consumer: FakeConsumer, monkeypatch: pytest.MonkeyPatch
) -> None:
    fetcher = Fetcher(consumer, client=None, max_records=30, read_committed=True)
    fetched = await fetcher.fetch(0.0, {EVENTS[0]: 10, EVENTS[1]: 10})
    assert fetched == ({}, [])
    # Partition 0's drained records come again; partition 2, never taken in, restarts where the group would.
    assert sorted(consumer.seeks) == [(EVENTS[0], 10), (EVENTS[1], 10)] and consumer.to_beginning == [EVENTS[2]]


async def test_the_partition_at_fault_is_read_past_aiokafka_and_the_consumer_goes_on_after_its_batch(
    consumer: FakeConsumer, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = RawRecord("events", 2, 12, b"e-1", b'{"id": "e-1", "features": [1.0]}', (("\\xff", b"h"),))
    asked: list[tuple[TopicPartition, int]] = []

    async def read_batch_at(client: object, tp: TopicPartition, offset: int, *, read_committed: bool) -> RecordBatch:
        asked.append((tp, offset))
        return batch_at_10((record,))

    monkeypatch.setattr(fetching, "read_batch_at", read_batch_at)
    fetcher = Fetcher(consumer, client=None, max_records=30, read_committed=True)
    await fetcher.fetch(0.0, {tp: 10 for tp in EVENTS})
    consumer.seeks.clear()
    records, unreadable = await fetcher.fetch(0.0, {tp: 10 for tp in EVENTS})
    assert asked == [(EVENTS[2], 10)] and records[EVENTS[2]] == [record] and unreadable == []
    assert consumer.seeks == [(EVENTS[2], 15)]


async def test_a_batch_no_client_can_read_is_one_rejected_record_with_its_offset_range(
    consumer: FakeConsumer, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def read_batch_at(client: object, tp: TopicPartition, offset: int, *, read_committed: bool) -> RecordBatch:
        return batch_at_10(problem=BatchProblem("unsupported_codec", "codec 5 is not a Kafka codec", b"raw"))

    monkeypatch.setattr(fetching, "read_batch_at", read_batch_at)
    fetcher = Fetcher(consumer, client=None, max_records=30, read_committed=True)
    await fetcher.fetch(0.0, {tp: 10 for tp in EVENTS})
    records, unreadable = await fetcher.fetch(0.0, {tp: 10 for tp in EVENTS})
    assert not any(records.values())
    (rejected,) = unreadable
    assert (rejected.reason, rejected.record.where, rejected.record.value) == (
        "unsupported_codec",
        "events[2]@10",
        b"raw",
    )
    assert "offsets 10..14 of events[2]" in rejected.detail
    assert consumer.positions[EVENTS[2]] == 15


async def test_an_error_that_is_no_decoding_error_propagates(consumer: FakeConsumer) -> None:
    async def refused(*partitions: TopicPartition, **kwargs: Any) -> dict[Any, Any]:
        raise TopicAuthorizationFailedError("events")

    consumer.getmany = refused  # type: ignore[method-assign]  # one consumer refuses every fetch
    fetcher = Fetcher(consumer, client=None, max_records=30, read_committed=True)
    with pytest.raises(TopicAuthorizationFailedError):
        await fetcher.fetch(0.0, {})
