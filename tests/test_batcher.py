"""MicroBatcher: a batch leaves when it is full, or max_delay_s after its first event arrived."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stream_learner.intake.batcher import MicroBatcher
from stream_learner.records import EventBatch

DIM = 3


def events(start: int, n: int) -> EventBatch:
    """Events ``e-start .. e-(start+n-1)``; feature row i is filled with its index."""
    index = np.arange(start, start + n)
    features = np.repeat(index[:, None], DIM, axis=1).astype(np.float32)
    return EventBatch([f"e-{i}" for i in index], features, index.astype(np.float64), np.full(n, 100.0))


def ids(batches: list[EventBatch]) -> list[list[str]]:
    return [b.ids for b in batches]


def test_empty_batcher_is_never_due() -> None:
    batcher = MicroBatcher(max_batch_size=4, max_delay_s=0.5)
    batcher.add(EventBatch.empty(DIM), now=0.0)
    assert len(batcher) == 0
    assert batcher.seconds_until_due(now=0.0) == math.inf
    assert batcher.take_due(now=1e9) == []


def test_full_batch_leaves_immediately_and_never_bigger() -> None:
    batcher = MicroBatcher(max_batch_size=4, max_delay_s=10.0)
    batcher.add(events(0, 3), now=0.0)
    assert batcher.take_due(now=0.0) == []
    batcher.add(events(3, 2), now=0.0)
    assert batcher.seconds_until_due(now=0.0) == 0.0
    due = batcher.take_due(now=0.0)
    assert ids(due) == [["e-0", "e-1", "e-2", "e-3"]]
    assert len(batcher) == 1  # e-4 waits for its own delay


def test_one_big_add_gives_several_full_batches_and_keeps_the_rest() -> None:
    batcher = MicroBatcher(max_batch_size=4, max_delay_s=10.0)
    batcher.add(events(0, 11), now=0.0)
    due = batcher.take_due(now=0.0)
    assert [len(b) for b in due] == [4, 4]
    assert ids(due) == [[f"e-{i}" for i in range(0, 4)], [f"e-{i}" for i in range(4, 8)]]
    assert len(batcher) == 3
    np.testing.assert_array_equal(due[1].features[:, 0], np.arange(4, 8, dtype=np.float32))
    np.testing.assert_array_equal(due[1].ts, np.arange(4, 8, dtype=np.float64))


def test_partial_batch_is_due_exactly_delay_after_its_first_event() -> None:
    batcher = MicroBatcher(max_batch_size=100, max_delay_s=0.5)
    batcher.add(events(0, 1), now=10.0)
    batcher.add(events(1, 1), now=10.25)  # a later event does not push the deadline back
    assert batcher.seconds_until_due(now=10.0) == pytest.approx(0.5)
    assert batcher.seconds_until_due(now=10.4) == pytest.approx(0.1)
    assert batcher.take_due(now=10.49) == []
    assert ids(batcher.take_due(now=10.5)) == [["e-0", "e-1"]]
    assert batcher.seconds_until_due(now=10.5) == math.inf


def test_seconds_until_due_is_zero_once_overdue() -> None:
    batcher = MicroBatcher(max_batch_size=100, max_delay_s=0.5)
    batcher.add(events(0, 2), now=1.0)
    assert batcher.seconds_until_due(now=7.0) == 0.0


def test_remainder_of_a_split_chunk_keeps_its_arrival_time() -> None:
    batcher = MicroBatcher(max_batch_size=4, max_delay_s=1.0)
    batcher.add(events(0, 6), now=5.0)
    assert ids(batcher.take_due(now=5.0)) == [["e-0", "e-1", "e-2", "e-3"]]
    batcher.add(events(6, 1), now=5.8)
    # The first waiting event (e-4) arrived at 5.0, so the rest is due at 6.0, not 6.8.
    assert batcher.seconds_until_due(now=5.5) == pytest.approx(0.5)
    assert ids(batcher.take_due(now=6.0)) == [["e-4", "e-5", "e-6"]]


def test_order_is_preserved_across_chunks() -> None:
    batcher = MicroBatcher(max_batch_size=5, max_delay_s=1.0)
    for start, n in [(0, 2), (2, 3), (5, 4), (9, 1), (10, 3)]:
        batcher.add(events(start, n), now=0.0)
    due = batcher.take_due(now=0.0) + batcher.take_due(now=1.0)
    assert [len(b) for b in due] == [5, 5, 3]
    flat = [i for b in due for i in b.ids]
    assert flat == [f"e-{i}" for i in range(13)]
    features = np.concatenate([b.features[:, 0] for b in due])
    np.testing.assert_array_equal(features, np.arange(13, dtype=np.float32))


def test_take_all_drains_in_batches_of_at_most_max_size() -> None:
    batcher = MicroBatcher(max_batch_size=4, max_delay_s=100.0)
    batcher.add(events(0, 3), now=0.0)
    batcher.add(events(3, 7), now=1.0)
    drained = batcher.take_all()
    assert [len(b) for b in drained] == [4, 4, 2]
    assert [i for b in drained for i in b.ids] == [f"e-{i}" for i in range(10)]
    assert len(batcher) == 0
    assert batcher.take_all() == []


def test_one_partitions_events_leave_in_arrival_order_and_the_rest_keep_theirs() -> None:
    batcher = MicroBatcher(max_batch_size=4, max_delay_s=10.0)
    first, second = events(0, 6), events(6, 3)
    batcher.add(EventBatch(first.ids, first.features, first.ts, first.received_at, np.array([1, 0, 1, 0, 1, 1])), 0.0)
    batcher.add(EventBatch(second.ids, second.features, second.ts, second.received_at, np.array([0, 1, 1])), 1.0)
    assert batcher.heads() == {0: "e-1", 1: "e-0"}
    taken = batcher.take_partition(1, 5)
    assert taken is not None and taken.ids == ["e-0", "e-2", "e-4", "e-5", "e-7"]
    assert taken.features[:, 0].tolist() == [0, 2, 4, 5, 7] and len(batcher) == 4
    assert batcher.take_partition(2, 5) is None
    assert batcher.take_first(3).ids == ["e-1", "e-3", "e-6"]
    assert ids(batcher.take_all()) == [["e-8"]] and len(batcher) == 0
