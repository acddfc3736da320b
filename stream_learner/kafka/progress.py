"""How far reading got: positions, what is read to its end, lag, catch-up, and pacing the labels.

Each assigned partition's next offset is the consumer's own position, stored in the
:class:`~stream_learner.checkpointing.checkpoint.Checkpoint` once the records handed out are
ingested; unlike "last record + 1" it passes transaction markers, aborted ranges and records
deleted before they were read, so a partition that ends in a marker counts as read to its end.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from aiokafka import TopicPartition

from stream_learner.config import Settings
from stream_learner.kafka.protocol import Fetched, Reader

EARLY_LABELS_HIGH = 4096
"""Early labels above which the labels partitions pause while events are left to read."""


class OffsetBook(Protocol):
    """Where the next offset of each partition read is kept: the :class:`~stream_learner.checkpointing.
    checkpoint.Checkpoint`, or a predictor's :class:`~stream_learner.kafka.commit_window.CommitWindow`."""

    @property
    def offsets(self) -> dict[TopicPartition, int]: ...
    def store_offset(self, tp: TopicPartition, offset: int) -> None: ...
    def touch(self) -> None: ...


class ReadingProgress:
    """Reads ``reader``'s state against ``checkpoint``'s offsets; ``batched`` counts events read, not predicted."""

    def __init__(self, reader: Reader, checkpoint: OffsetBook, settings: Settings, batched: Callable[[], int]) -> None:
        self._reader = reader
        self._checkpoint = checkpoint
        self._settings = settings
        self._batched = batched
        self._early_high = max(1, min(EARLY_LABELS_HIGH, settings.max_pending // 2))
        self._backfilling = True
        self._backfill_ends: dict[TopicPartition, int] | None = None
        """Where the partitions ended when the backfill began (None until each end is known)."""

    def track_positions(self, fetched: Fetched) -> None:
        """Store each assigned partition's next offset once ``fetched`` is ingested.

        A position behind the records just ingested (a seek in a rebalance between the fetch and
        now) keeps their end, so nothing is read twice.
        """
        offsets = self._checkpoint.offsets
        for tp in self._reader.assignment():
            records = fetched.get(tp)
            read = records.next_offset() if records else offsets.get(tp)
            position = self._reader.position(tp)
            if position is not None and (read is None or position > read):
                self._checkpoint.store_offset(tp, position)
                if read is not None:
                    self._checkpoint.touch()
            elif read is not None:
                self._checkpoint.store_offset(tp, read)

    def read_to_end(self, tp: TopicPartition) -> bool:
        """No records of ``tp`` left to read; a partition owned by another member counts as read."""
        assigned = self._reader.assignment()
        if tp not in assigned:
            return bool(assigned)
        end, offset = self._reader.readable_end(tp), self._checkpoint.offsets.get(tp)
        return end is not None and offset is not None and offset >= end

    def labels_read(self, partition: int) -> bool:
        return self.read_to_end(TopicPartition(self._settings.labels_topic, partition))

    def events_read(self) -> bool:
        """Every assigned events partition read to its end, and every read event predicted."""
        return not self._batched() and all(self.read_to_end(tp) for tp in self._topic(self._settings.events_topic))

    def everything_read(self) -> bool:
        """Every assigned partition read to its end and every read event predicted (false mid-rebalance)."""
        assigned = self._reader.assignment()
        return bool(assigned) and not self._batched() and all(self.read_to_end(tp) for tp in assigned)

    def lag_by_partition(self) -> dict[TopicPartition, int]:
        """Records not yet read per assigned partition (high watermark minus next offset)."""
        lags = {}
        for tp in self._reader.assignment():
            high = self._reader.highwater(tp)
            if high is not None:
                lags[tp] = max(0, high - self._checkpoint.offsets.get(tp, 0))
        return lags

    def backlog(self) -> bool:
        """More records left to read than one turn fetches."""
        return sum(self.lag_by_partition().values()) > self._settings.fetch_max_records

    def catching_up(self) -> bool:
        """More events wait to be read or predicted than one turn fetches (``FETCH_MAX_RECORDS``).

        Not "read to the end": live, the high watermark moves on while a fetch is in flight, so the
        consumer is a few records behind most of the time, and predictions would wait behind steps.
        """
        lags, offsets = self.lag_by_partition(), self._checkpoint.offsets
        events = self._topic(self._settings.events_topic)
        if any(tp not in lags or tp not in offsets for tp in events):
            return True  # no position or high watermark yet: nothing says the backlog is small
        return self._batched() + sum(lags[tp] for tp in events) > self._settings.fetch_max_records

    def backfilling(self) -> bool:
        """From the start until every partition assigned then is read up to where it ended then, and every
        read event is predicted: the backlog found at the start (a restart after an outage, or history to
        bootstrap from), however small. What arrives meanwhile is read live.

        The end is fixed when the backfill begins: live, the consumer is a few records behind the moving
        high watermark most of the time, and "read to the end" alone would hold a live stream in it. A
        live stream that falls behind later is :meth:`catching_up`, not backfilled: a backfill predicts a
        step's worth at a time and costs throughput, which a stream that fell behind needs most.
        """
        if self._backfilling and self._backfill_ends is None:
            self._backfill_ends = self._readable_ends()
        ends = self._backfill_ends
        if self._backfilling and ends is not None and not self._batched() and self._read_up_to(ends):
            self._backfilling = False
        return self._backfilling

    def labels_backfilled(self, partition: int) -> bool:
        """Labels partition ``partition`` is read up to where it ended when the backfill began: a label
        not read yet was not in the backlog (live, it is yet to come), so no event waits for it."""
        tp = TopicPartition(self._settings.labels_topic, partition)
        ends = self._backfill_ends
        if ends is None or tp not in ends:
            return self.read_to_end(tp)
        return self._read_up_to({tp: ends[tp]})

    def _readable_ends(self) -> dict[TopicPartition, int] | None:
        """Each assigned partition's readable end; None while one is unknown (or none is assigned)."""
        ends = {tp: self._reader.readable_end(tp) for tp in self._reader.assignment()}
        if not ends or any(end is None for end in ends.values()):
            return None
        return {tp: int(end) for tp, end in ends.items() if end is not None}

    def _read_up_to(self, ends: dict[TopicPartition, int]) -> bool:
        offsets, assigned = self._checkpoint.offsets, self._reader.assignment()
        return all(offsets.get(tp, -1) >= end for tp, end in ends.items() if tp in assigned)

    def pace_labels(self, early_labels: int, early_label_bytes: int) -> None:
        """Pause the labels partitions while labels wait for events that are still to be read.

        In catch-up the labels topic can be read ahead of the events (its records are smaller), and
        they would pile up as early labels. Never paused while every event is read: no waiting
        label's event is on its way then, and pausing could only stall training.
        """
        labels = self._topic(self._settings.labels_topic)
        paused = self._reader.paused() & set(labels)
        most = self._settings.max_early_label_bytes
        too_many = early_labels > self._early_high or early_label_bytes > most // 2
        few = early_labels <= self._early_high // 2 and early_label_bytes <= most // 4
        if not paused and too_many and not self.events_read():
            self._reader.pause(labels)
        elif paused and (few or self.events_read()):
            self._reader.resume(paused)

    def _topic(self, topic: str) -> list[TopicPartition]:
        return [tp for tp in self._reader.assignment() if tp.topic == topic]
