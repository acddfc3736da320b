"""How far reading got, as the loop asks it: catching up, read to the end, positions, pacing.

Pure logic over the reader's positions: a plain fake of the Reader Protocol stands in for the
consumer's assignment, positions and high watermarks (the broker paths are covered by the
end-to-end tests).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest
from aiokafka import TopicPartition

from stream_learner.checkpointing.checkpoint import Checkpoint, CutSteps
from stream_learner.checkpointing.store import CheckpointStore
from stream_learner.config import Settings
from stream_learner.errors import CheckpointError
from stream_learner.kafka.progress import ReadingProgress
from stream_learner.kafka.protocol import Fetched, Reader
from stream_learner.observability.telemetry import Telemetry
from stream_learner.records import RawRecord, RecordList, Rejected

EV0, EV1, LB0 = TopicPartition("ev", 0), TopicPartition("ev", 1), TopicPartition("lb", 0)


class FakeReader:
    """The Reader Protocol over fixed high watermarks and positions."""

    def __init__(self, highwater: dict[TopicPartition, int | None], positions: dict[TopicPartition, int] | None = None):
        self.high = highwater
        self.positions = positions or {}
        self._paused: set[TopicPartition] = set()

    async def fetch(self, timeout_s: float, offsets: Mapping[TopicPartition, int]) -> tuple[Fetched, list[Rejected]]:
        return {}, []

    def assignment(self) -> set[TopicPartition]:
        return set(self.high)

    def position(self, tp: TopicPartition) -> int | None:
        return self.positions.get(tp)

    def readable_end(self, tp: TopicPartition) -> int | None:
        return self.high[tp]

    def highwater(self, tp: TopicPartition) -> int | None:
        return self.high[tp]

    def partition_count(self, topic: str) -> int | None:
        return sum(tp.topic == topic for tp in self.high) or None

    def pause(self, partitions: Iterable[TopicPartition]) -> None:
        self._paused |= set(partitions)

    def resume(self, partitions: Iterable[TopicPartition]) -> None:
        self._paused -= set(partitions)

    def paused(self) -> set[TopicPartition]:
        return set(self._paused)

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        pass


def _reader(reader: FakeReader) -> Reader:
    return reader  # checked by mypy: the fake is a Reader


async def _nothing() -> None:
    pass


@pytest.fixture
def settings(clean_settings_sources: None, tmp_path: Path) -> Settings:
    return Settings(  # type: ignore[call-arg]
        _env_file=None, input_dim=4, events_topic="ev", labels_topic="lb", fetch_max_records=100,
        max_batch_size=50, checkpoint_dir=tmp_path / "ckpt", max_pending=1000,
    )  # fmt: skip


def progress(
    settings: Settings, reader: FakeReader, offsets: dict[TopicPartition, int], batched: int = 0
) -> ReadingProgress:
    steps = CutSteps(_nothing, lambda: _nothing(), lambda offsets: _nothing(), lambda exc: None)  # type: ignore[arg-type, return-value]
    checkpoint = Checkpoint(CheckpointStore(settings.checkpoint_dir, 2), 1.0, steps, Telemetry(), background=True)
    checkpoint.offsets.update(offsets)
    return ReadingProgress(_reader(reader), checkpoint, settings, lambda: batched)


def test_a_few_records_behind_a_moving_high_watermark_is_live(settings: Settings) -> None:
    reading = progress(settings, FakeReader({EV0: 1_030, EV1: 2_040, LB0: 90_000}), {EV0: 1_000, EV1: 2_000, LB0: 10})
    assert not reading.catching_up()  # 70 unread events; the labels backlog does not count


def test_more_unread_events_than_one_fetch_is_catching_up(settings: Settings) -> None:
    reading = progress(settings, FakeReader({EV0: 1_060, EV1: 2_050, LB0: 10}), {EV0: 1_000, EV1: 2_000, LB0: 10})
    assert reading.catching_up()  # 110 unread > FETCH_MAX_RECORDS = 100


def test_batched_events_count_toward_the_backlog(settings: Settings) -> None:
    assert not progress(settings, FakeReader({EV0: 1_050}), {EV0: 1_000}).catching_up()
    assert progress(settings, FakeReader({EV0: 1_050}), {EV0: 1_000}, batched=60).catching_up()  # 50 unread + 60


def test_an_events_partition_with_no_position_yet_counts_as_catching_up(settings: Settings) -> None:
    assert progress(settings, FakeReader({EV0: None}), {}).catching_up()


def test_a_backfill_ends_where_the_partitions_ended_when_it_began_though_the_stream_moves_on(settings: Settings) -> None:
    reader = FakeReader({EV0: None, LB0: None})
    reading = progress(settings, reader, {})
    assert reading.backfilling(), "from the start, before any end is known"
    reader.high = {EV0: 60, LB0: 60}  # a small backlog: not catching up, but backfilled
    reading._checkpoint.offsets.update({EV0: 0, LB0: 0})  # type: ignore[attr-defined]
    assert not reading.catching_up() and reading.backfilling()
    for read in range(10, 70, 10):  # live records keep arriving 5 ahead of the reading
        reader.high = {EV0: 60 + read + 5, LB0: 60 + read + 5}
        reading._checkpoint.offsets.update({EV0: read, LB0: read})  # type: ignore[attr-defined]
        assert reading.backfilling() == (read < 60), read
        assert not reading.everything_read()
    reader.high = {EV0: 300, LB0: 300}  # a live stream fallen behind by more than a fetch: caught up live
    assert reading.catching_up() and not reading.backfilling()


def test_in_a_backfill_no_event_waits_for_a_label_written_after_it_began(settings: Settings) -> None:
    reader = FakeReader({EV0: 500, LB0: 300})
    reading = progress(settings, reader, {EV0: 0, LB0: 0})
    assert reading.backfilling() and not reading.labels_backfilled(0)
    reader.high = {EV0: 520, LB0: 330}  # labels written since are live, yet to come
    reading._checkpoint.offsets.update({LB0: 300})  # type: ignore[attr-defined]
    assert reading.backfilling() and reading.labels_backfilled(0) and not reading.labels_read(0)


def test_positions_move_on_past_markers_and_never_back(settings: Settings) -> None:
    reader = FakeReader({EV0: 20, LB0: 5}, positions={EV0: 12, LB0: 3})
    reading = progress(settings, reader, {})
    record = RawRecord("ev", 0, 9, None, b"{}")
    reading.track_positions({EV0: RecordList([record])})
    # The consumer's position (past a transaction marker at 10 and 11) beats "last record + 1".
    assert reading._checkpoint.offsets == {EV0: 12, LB0: 3}
    reader.positions[EV0] = 8  # a seek back in a rebalance between the fetch and now
    reading.track_positions({EV0: RecordList([RawRecord("ev", 0, 12, None, b"{}")])})
    assert reading._checkpoint.offsets[EV0] == 13
    with pytest.raises(CheckpointError, match="go back"):
        reading._checkpoint.store_offset(EV0, 5)


def test_read_to_end_uses_the_readable_end_and_counts_other_members_partitions_as_read(settings: Settings) -> None:
    reading = progress(settings, FakeReader({EV0: 10, LB0: 4}), {EV0: 10, LB0: 3})
    assert reading.read_to_end(EV0) and not reading.read_to_end(LB0)
    assert reading.read_to_end(TopicPartition("ev", 7))  # owned by another member
    assert not reading.everything_read() and not reading.labels_read(0) and reading.events_read()
    assert reading.lag_by_partition() == {EV0: 0, LB0: 1} and not reading.backlog()


def test_labels_pause_while_early_labels_pile_up_and_events_are_unread(settings: Settings) -> None:
    reader = FakeReader({EV0: 1_000, LB0: 1_000})
    reading = progress(settings, reader, {EV0: 0, LB0: 900})
    reading.pace_labels(early_labels=501, early_label_bytes=0)  # above MAX_PENDING / 2
    assert reader.paused() == {LB0}
    reading.pace_labels(early_labels=300, early_label_bytes=0)  # not yet down to a quarter
    assert reader.paused() == {LB0}
    reading.pace_labels(early_labels=250, early_label_bytes=0)
    assert reader.paused() == set()
    done = progress(settings, FakeReader({EV0: 1_000, LB0: 1_000}), {EV0: 1_000, LB0: 900})
    done.pace_labels(early_labels=10_000, early_label_bytes=0)  # every event read: never paused
    assert done._reader.paused() == set()
