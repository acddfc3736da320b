"""JoinBuffer: each label meets its event once; memory is bounded by max_pending, the early
labels' id bytes and ttl_s."""

from __future__ import annotations

import gc
import io
import tracemalloc
from collections.abc import Callable, Iterable

import numpy as np
import pytest
import torch

from stream_learner.learning.event_keys import event_keys
from stream_learner.learning.join import MAX_EARLY_LABEL_BYTES, JoinBuffer, id_bytes

DIM, OUT = 3, 2


def buffer(
    max_pending: int = 100, ttl_s: float = 60.0, default_label: float | None = None, compiled: bool = True
) -> JoinBuffer:
    return JoinBuffer(DIM, OUT, max_pending, ttl_s, default_label=default_label, compiled=compiled)


def features_of(n: int) -> np.ndarray:
    """Row for event n: [n, n + 0.5, -n]."""
    return np.array([n, n + 0.5, -n], np.float32)


def scores_of(n: int) -> np.ndarray:
    return np.array([n / 100, 1 - n / 100], np.float32)


def predict(buf: JoinBuffer, numbers: list[int], now: float):
    ids = [f"e-{n}" for n in numbers]
    return buf.add_predictions(
        ids, np.stack([features_of(n) for n in numbers]), np.stack([scores_of(n) for n in numbers]), now
    )


def label(buf: JoinBuffer, numbers: list[int], labels: list[float], now: float):
    return buf.add_labels([f"e-{n}" for n in numbers], np.asarray(labels, np.float64), now)


def test_label_after_event_joins_with_that_events_features_and_scores() -> None:
    buf = buffer()
    assert len(predict(buf, [1, 2, 3], now=0.0)) == 0
    joined = label(buf, [2], [1.0], now=1.0)
    np.testing.assert_array_equal(joined.features, features_of(2)[None])
    np.testing.assert_array_equal(joined.scores, scores_of(2)[None])
    np.testing.assert_array_equal(joined.labels, [1.0])
    assert buf.pending_events == 2
    assert buf.counters.labels_joined == 1


def test_early_label_waits_and_joins_when_its_event_is_predicted() -> None:
    buf = buffer()
    assert len(label(buf, [5], [1.0], now=0.0)) == 0
    assert buf.early_labels == 1
    joined = predict(buf, [4, 5], now=1.0)
    np.testing.assert_array_equal(joined.features, features_of(5)[None])
    np.testing.assert_array_equal(joined.scores, scores_of(5)[None])
    np.testing.assert_array_equal(joined.labels, [1.0])
    # For the label-delay metric: the event arrived at 1.0 and met its label at once.
    np.testing.assert_array_equal(joined.event_arrived, [1.0])
    assert buf.early_labels == 0
    assert buf.pending_events == 1  # e-4 waits; e-5 was never stored
    assert buf.counters.labels_joined == 1


def test_labels_of_several_partitions_keep_each_ones_position_joined_or_early() -> None:
    buf = buffer()
    predict(buf, [1, 2], now=0.0)
    ids = ["e-1", "e-3", "e-2", "e-4"]
    joined = buf.add_labels(ids, np.ones(4), 1.0, np.array([0, 1, 2, 1]), np.array([10, 20, 30, 21]))
    np.testing.assert_array_equal(joined.partitions, [0, 2])
    np.testing.assert_array_equal(joined.offsets, [10, 30])
    assert buf.lowest_waiting_label(1) == (20, 1.0)  # e-3 and e-4 wait in partition 1
    assert buf.lowest_waiting_label(0) is None
    late = predict(buf, [3, 4], now=2.0)
    np.testing.assert_array_equal(late.partitions, [1, 1])
    np.testing.assert_array_equal(late.offsets, [20, 21])


def test_second_label_after_join_is_a_dropped_duplicate() -> None:
    buf = buffer()
    predict(buf, [1], now=0.0)
    assert len(label(buf, [1], [1.0], now=1.0)) == 1
    assert len(label(buf, [1], [0.0], now=2.0)) == 0
    assert buf.counters.labels_duplicate == 1
    assert buf.early_labels == 0  # not kept as an early label either


def test_second_label_in_the_same_batch_is_a_duplicate() -> None:
    buf = buffer()
    predict(buf, [1], now=0.0)
    joined = label(buf, [1, 1], [1.0, 0.0], now=1.0)
    np.testing.assert_array_equal(joined.labels, [1.0])
    assert buf.counters.labels_duplicate == 1


def test_second_early_label_is_a_duplicate_and_the_first_one_wins() -> None:
    buf = buffer()
    label(buf, [7], [1.0], now=0.0)
    label(buf, [7], [0.0], now=1.0)
    assert buf.counters.labels_duplicate == 1
    assert buf.early_labels == 1
    np.testing.assert_array_equal(predict(buf, [7], now=2.0).labels, [1.0])


def test_events_expire_after_ttl() -> None:
    buf = buffer(ttl_s=10.0)
    predict(buf, [1], now=0.0)
    predict(buf, [2], now=5.0)
    buf.expire(now=10.0)
    assert buf.pending_events == 2  # exactly ttl old is not yet expired
    buf.expire(now=12.0)
    assert buf.pending_events == 1
    assert buf.counters.events_expired == 1
    assert len(label(buf, [2], [1.0], now=12.0)) == 1
    assert len(label(buf, [1], [1.0], now=12.0)) == 0  # e-1 is gone: its label now waits as early
    assert buf.early_labels == 1


def test_expiry_past_many_joined_holes_drops_exactly_the_events_older_than_the_ttl() -> None:
    buf = buffer(max_pending=10_000, ttl_s=10.0)
    for second in range(5):  # 1,000 events a second; every third one joins and leaves a hole
        numbers = list(range(second * 1000, (second + 1) * 1000))
        predict(buf, numbers, now=float(second))
        label(buf, numbers[::3], [1.0] * len(numbers[::3]), now=float(second))
    buf.expire(now=13.0)  # events that arrived at 0, 1 and 2 s are older than 10 s
    waiting = [n for n in range(5000) if n % 1000 % 3]
    older, younger = [n for n in waiting if n < 3000], [n for n in waiting if n >= 3000]
    assert buf.counters.events_expired == len(older)
    assert buf.pending_events == len(younger)
    assert len(label(buf, older, [1.0] * len(older), now=13.0)) == 0
    assert len(label(buf, younger, [1.0] * len(younger), now=13.0)) == len(younger)
    label(buf, [0], [1.0], now=13.0)  # joined at 0 s and forgotten at 13 s: waits as an early label
    assert buf.counters.labels_duplicate == 0
    label(buf, [3003], [1.0], now=13.0)  # joined at 3 s, still remembered
    assert buf.counters.labels_duplicate == 1


def test_early_labels_expire_after_ttl() -> None:
    buf = buffer(ttl_s=10.0)
    label(buf, [1], [1.0], now=0.0)
    label(buf, [2], [1.0], now=8.0)
    buf.expire(now=15.0)
    assert buf.early_labels == 1
    assert buf.counters.labels_expired == 1
    assert len(predict(buf, [1], now=15.0)) == 0
    assert len(predict(buf, [2], now=15.0)) == 1


def test_max_pending_evicts_the_oldest_event_first() -> None:
    buf = buffer(max_pending=3)
    predict(buf, [1, 2, 3], now=0.0)
    predict(buf, [4, 5], now=1.0)
    assert buf.pending_events == 3
    assert buf.counters.events_evicted == 2
    assert len(label(buf, [1, 2], [1.0, 1.0], now=2.0)) == 0
    joined = label(buf, [3, 4, 5], [0.0, 1.0, 0.0], now=2.0)
    np.testing.assert_array_equal(joined.features, np.stack([features_of(n) for n in (3, 4, 5)]))


def test_early_labels_are_capped_and_the_oldest_is_evicted() -> None:
    buf = buffer(max_pending=2)
    label(buf, [1, 2, 3], [1.0, 0.0, 1.0], now=0.0)
    assert buf.early_labels == 2
    assert buf.counters.labels_evicted == 1
    joined = predict(buf, [1, 2, 3], now=1.0)
    np.testing.assert_array_equal(joined.labels, [0.0, 1.0])  # e-2 and e-3; e-1's label was evicted
    np.testing.assert_array_equal(joined.features, np.stack([features_of(2), features_of(3)]))


def test_default_label_policy_returns_evicted_and_expired_events() -> None:
    buf = buffer(max_pending=2, ttl_s=10.0, default_label=1.0)
    predict(buf, [1, 2], now=0.0)
    predict(buf, [3], now=5.0)  # evicts e-1
    buf.expire(now=11.0)  # expires e-2 (arrived 0.0), keeps e-3
    unlabeled = buf.take_unlabeled()
    np.testing.assert_array_equal(unlabeled.features, np.stack([features_of(1), features_of(2)]))
    np.testing.assert_array_equal(unlabeled.scores, np.stack([scores_of(1), scores_of(2)]))
    np.testing.assert_array_equal(unlabeled.labels, [1.0, 1.0])
    assert buf.counters.events_defaulted == 2
    assert len(buf.take_unlabeled()) == 0


def test_without_default_label_dropped_events_are_not_returned() -> None:
    buf = buffer(max_pending=1)
    predict(buf, [1, 2], now=0.0)
    assert len(buf.take_unlabeled()) == 0
    assert buf.counters.events_defaulted == 0


def test_features_are_stored_as_float32_arrays() -> None:
    buf = buffer()
    predict(buf, [1, 2], now=0.0)
    assert isinstance(buf._features, np.ndarray) and buf._features.dtype == np.float32
    assert buf._features.shape[1] == DIM
    assert buf.state_dict()["features"].dtype == torch.float32


def restored_from(buf: JoinBuffer) -> JoinBuffer:
    """A fresh buffer loaded from ``buf``'s state, through torch.save and torch.load(weights_only=True)."""
    blob = io.BytesIO()
    torch.save(buf.state_dict(), blob)
    blob.seek(0)
    restored = buffer(buf.max_pending, buf.ttl_s, buf.default_label, buf.compiled)
    restored.load_state_dict(torch.load(blob, weights_only=True))
    return restored


def busy_buffer() -> JoinBuffer:
    buf = buffer(max_pending=3, ttl_s=10.0, default_label=0.0)
    predict(buf, [1, 2, 3, 4], now=0.0)  # e-1 evicted -> unlabeled
    label(buf, [2], [1.0], now=1.0)  # joined
    label(buf, [8, 9], [1.0, 0.0], now=2.0)  # early
    label(buf, [9], [1.0], now=2.0)  # duplicate
    return buf


def test_state_dict_round_trip_keeps_pending_early_duplicates_and_counters() -> None:
    buf = busy_buffer()
    restored = restored_from(buf)
    assert restored.counters == buf.counters
    assert (restored.pending_events, restored.early_labels) == (2, 2)
    assert len(label(restored, [2], [0.0], now=3.0)) == 0  # still known as joined
    assert len(label(restored, [9], [0.0], now=3.0)) == 0  # still known as early
    assert restored.counters.labels_duplicate == buf.counters.labels_duplicate + 2
    joined = label(restored, [3, 4], [1.0, 0.0], now=3.0)
    np.testing.assert_array_equal(joined.features, np.stack([features_of(3), features_of(4)]))
    np.testing.assert_array_equal(joined.scores, np.stack([scores_of(3), scores_of(4)]))
    np.testing.assert_array_equal(predict(restored, [9, 8], now=3.0).labels, [0.0, 1.0])
    np.testing.assert_array_equal(restored.take_unlabeled().features, features_of(1)[None])
    predict(restored, [10, 11, 12, 13], now=4.0)  # the buffer still grows and evicts after loading
    assert restored.pending_events == 3


def test_state_dict_round_trip_keeps_arrival_times() -> None:
    restored = restored_from(busy_buffer())
    restored.expire(now=10.5)  # events arrived at 0.0, early labels at 2.0
    assert (restored.pending_events, restored.early_labels) == (0, 2)
    restored.expire(now=12.5)
    assert restored.early_labels == 0
    assert restored.counters.events_expired == 2
    assert restored.counters.labels_expired == 2


def test_empty_state_dict_round_trip() -> None:
    restored = restored_from(buffer())
    assert (restored.pending_events, restored.early_labels) == (0, 0)
    predict(restored, [1], now=0.0)
    assert len(label(restored, [1], [1.0], now=1.0)) == 1


def test_joined_ids_are_remembered_newest_max_pending_and_until_ttl() -> None:
    buf = buffer(max_pending=3, ttl_s=10.0)
    predict(buf, [1, 2, 3], now=0.0)
    label(buf, [1, 2, 3], [1.0] * 3, now=1.0)
    predict(buf, [4], now=1.0)
    label(buf, [4], [1.0], now=1.0)
    assert len(label(buf, [2, 3, 4], [0.0] * 3, now=2.0)) == 0
    assert (buf.counters.labels_duplicate, buf.early_labels) == (3, 0)
    label(buf, [1], [0.0], now=2.0)  # e-1 was forgotten (only the newest 3 are kept): it waits as an early label
    assert (buf.counters.labels_duplicate, buf.early_labels) == (3, 1)
    buf.expire(now=11.5)  # joined at 1.0, ttl 10 s
    label(buf, [2], [0.0], now=11.5)
    assert (buf.counters.labels_duplicate, buf.early_labels) == (3, 2)  # e-2 was forgotten: it waits, as e-1 does


def test_long_and_wide_joined_ids_are_told_apart() -> None:
    buf = buffer()
    ids = ["short", "twelve-bytes", "an id far longer than sixteen bytes", "an id far longer than sixteen bytez"]
    buf.add_predictions(ids, np.zeros((4, DIM), np.float32), np.zeros((4, OUT), np.float32), 0.0)
    assert len(buf.add_labels(ids[:3], np.ones(3), 1.0)) == 3
    assert len(buf.add_labels(ids, np.ones(4), 2.0)) == 1  # only the fourth was still waiting
    assert buf.counters.labels_duplicate == 3
    restored = restored_from(buf)
    assert len(restored.add_labels(ids, np.ones(4), 3.0)) == 0
    assert restored.counters.labels_duplicate == 3 + 4


def test_the_first_wide_id_still_finds_the_narrow_ids_waiting_beside_it() -> None:
    """The store widens its keys for the first id past 8 bytes; a lookup in that same batch reads the widened keys."""
    buf = buffer()
    predict(buf, [1, 2, 3], now=0.0)  # "e-1".."e-3": 8-byte keys
    ids = ["a wide-key-id", "e-2"]
    buf.add_predictions(ids, np.zeros((2, DIM), np.float32), np.zeros((2, OUT), np.float32), 1.0)
    assert (buf.pending_events, buf.counters.events_duplicate) == (4, 1), "e-2 replaced its waiting event"
    assert len(label(buf, [2], [1.0], now=2.0)) == 1
    assert len(label(buf, [2], [1.0], now=2.0)) == 0 and buf.counters.labels_duplicate == 1


def test_a_state_dict_with_joined_ids_as_strings_still_loads() -> None:
    state = busy_buffer().state_dict()
    for key in ("joined_keys", "joined_key_lengths"):
        del state[key]
    state["joined_ids"], state["joined_at"] = ["e-2"], torch.tensor([1.0], dtype=torch.float64)
    restored = buffer(3, 10.0, 0.0)
    restored.load_state_dict(state)
    label(restored, [2], [0.0], now=3.0)
    assert restored.counters.labels_duplicate == busy_buffer().counters.labels_duplicate + 1


@pytest.mark.parametrize("compiled", [True, False])
def test_random_batches_join_as_a_dict_model_does(compiled: bool) -> None:
    """Many predictions and labels over a small id space: repeats, stale table cells, rebuilds,
    batches big against the ring, and restores (a restored ring has no room to spare)."""
    rng = np.random.default_rng(7)
    buf = JoinBuffer(1, OUT, max_pending=10**6, ttl_s=1e9, compiled=compiled)
    pending: set[int] = set()
    joined: set[int] = set()
    early: set[int] = set()
    for _ in range(400):
        if rng.random() < 0.05:
            buf = restored_from(buf)
        numbers = rng.integers(0, 3000, rng.integers(1, 1500 if rng.random() < 0.2 else 300)).tolist()
        ids = [f"k{n}" for n in numbers]
        expected = []
        if rng.random() < 0.5:
            features = np.asarray(numbers, np.float32)[:, None]
            got = buf.add_predictions(ids, features, np.zeros((len(ids), OUT), np.float32), 0.0)
            for n in numbers:
                if n in early:
                    early.remove(n)
                    joined.add(n)
                    expected.append(n)
                else:
                    pending.add(n)
        else:
            got = buf.add_labels(ids, np.ones(len(ids)), 0.0)
            for n in numbers:
                if n in pending:
                    pending.remove(n)
                    joined.add(n)
                    expected.append(n)
                elif n not in joined:
                    early.add(n)
        assert sorted(got.features[:, 0].astype(int).tolist()) == sorted(expected)
        assert (buf.pending_events, buf.early_labels) == (len(pending), len(early))


@pytest.mark.parametrize("compiled", [True, False])
def test_a_batch_bigger_than_the_room_left_among_holes_overwrites_no_waiting_event(compiled: bool) -> None:
    """The ring grew by live + batch while the batch lands after the holes: it wrapped onto the oldest."""
    buf = buffer(max_pending=10**6, compiled=compiled)
    predict(buf, list(range(1024)), now=0.0)  # the ring is exactly full
    label(buf, list(range(500, 600)), [1.0] * 100, now=1.0)  # holes in the middle
    predict(buf, list(range(2000, 2300)), now=2.0)
    waiting = [*range(500), *range(600, 1024), *range(2000, 2300)]
    joined = label(buf, waiting, [0.0] * len(waiting), now=3.0)
    np.testing.assert_array_equal(joined.features, np.stack([features_of(n) for n in waiting]))
    assert (buf.pending_events, buf.early_labels) == (0, 0)


def test_events_homed_at_the_end_of_a_rebuilt_table_wrap_around_and_still_join() -> None:
    """A restore fills the table in one pass: keys whose probe runs past the last cell go to the front."""
    table_size = 1024  # what 500 pending events get
    end_homed = [n for n in range(20_000) if int(event_keys([f"e-{n}"]).hashes[0]) % table_size >= table_size - 4][:40]
    numbers = end_homed + [n for n in range(20_000, 20_460)]
    buf = buffer(max_pending=10**6)
    predict(buf, numbers, now=0.0)
    restored = buffer(max_pending=10**6)
    restored.load_state_dict(buf.state_dict())
    assert len(restored._pending.index.table) == table_size
    joined = label(restored, numbers, [1.0] * len(numbers), now=1.0)
    np.testing.assert_array_equal(joined.features, np.stack([features_of(n) for n in numbers]))
    assert (restored.pending_events, restored.early_labels) == (0, 0)


@pytest.mark.parametrize("compiled", [True, False])
def test_a_ring_that_wraps_grows_and_every_waiting_event_still_joins_with_its_own_features(compiled: bool) -> None:
    buf = buffer(max_pending=10_000, compiled=compiled)
    predict(buf, list(range(1000)), 0.0)  # rows 0..999 of 1024
    label(buf, list(range(500)), [1.0] * 500, 1.0)  # the oldest half leaves holes
    predict(buf, list(range(1000, 1400)), 2.0)  # wraps: rows 1000..1023, then 0..375
    predict(buf, list(range(1400, 1600)), 3.0)  # 1,100 waiting do not fit in 1,024: the ring grows while wrapped
    waiting = list(range(500, 1600))
    joined = label(buf, waiting, [0.0] * len(waiting), 4.0)
    assert len(joined) == len(waiting) and buf.pending_events == 0
    np.testing.assert_array_equal(joined.features, np.stack([features_of(n) for n in waiting]))
    assert buf.counters.labels_duplicate == 0
    label(buf, [0, 1599], [1.0, 1.0], 5.0)
    assert buf.counters.labels_duplicate == 2


# --- long ids ------------------------------------------------------------------------------------

LONG = 100_000
"""Characters of a long id: a label waiting with one holds 100 KB."""


def long_id(n: int, tail: str = "") -> str:
    """A fresh 100 KB id (a new string each call, so only the buffer can keep it alive)."""
    return f"e-{n}-" + "x" * LONG + tail


def predict_long(buf: JoinBuffer, numbers: Iterable[int], now: float) -> int:
    """Predict events with long ids; how many joined a waiting label."""
    numbers = list(numbers)
    ids = [long_id(n) for n in numbers]
    return len(
        buf.add_predictions(
            ids, np.stack([features_of(n) for n in numbers]), np.stack([scores_of(n) for n in numbers]), now
        )
    )


def label_long(buf: JoinBuffer, numbers: Iterable[int], now: float) -> np.ndarray:
    """Labels with long ids, at offsets ``numbers`` of partition 0; the offsets that joined."""
    numbers = list(numbers)
    ids = [long_id(n) for n in numbers]
    return buf.add_labels(ids, np.ones(len(numbers)), now, 0, np.asarray(numbers, np.int64)).offsets  # type: ignore[return-value]


def retained(action: Callable[[], object]) -> int:
    """Bytes of memory still allocated after ``action`` ran (and its garbage was collected)."""
    warm = JoinBuffer(DIM, OUT, 10, 60.0)  # first calls: lazily built caches are not the buffer's
    predict_long(warm, [0], 0.0)
    label_long(warm, [0, 1], 0.0)
    tracemalloc.start()
    try:
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        action()
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


def test_the_default_bound_of_early_label_ids_leaves_max_pending_the_bound_for_ordinary_ids() -> None:
    assert JoinBuffer(DIM, OUT, 10, 60.0).max_early_label_bytes == MAX_EARLY_LABEL_BYTES == 128 * 1024 * 1024
    uuid = "123e4567-e89b-12d3-a456-426614174000"
    assert 1_000_000 * id_bytes(uuid) < MAX_EARLY_LABEL_BYTES, "a million waiting UUIDs fit"
    with pytest.raises(ValueError, match="max_early_label_bytes"):
        JoinBuffer(DIM, OUT, 10, 60.0, max_early_label_bytes=0)


def test_early_labels_are_bounded_by_the_bytes_of_their_ids_and_the_oldest_go_first() -> None:
    limit = 1024 * 1024
    size = id_bytes(long_id(10))
    fits = limit // size
    assert LONG < size < LONG + 100 and fits == 10
    buffers: list[JoinBuffer] = []

    def flood() -> None:
        buf = JoinBuffer(DIM, OUT, max_pending=10_000, ttl_s=60.0, max_early_label_bytes=limit)
        buffers.append(buf)
        for start in range(0, 50, 5):  # 5 MB of labels whose events have not come
            assert len(label_long(buf, range(start, start + 5), now=float(start))) == 0
            assert buf.early_label_bytes <= limit

    held = retained(flood)
    (buf,) = buffers
    assert (buf.early_labels, buf.early_label_bytes) == (fits, fits * size)
    assert buf.counters.labels_evicted == 50 - fits and buf.counters.labels_expired == 0
    assert held < limit + 256 * 1024, f"{held} bytes held: evicted labels' ids must be freed, not just uncounted"
    assert buf.lowest_waiting_label(0) == (50 - fits, 40.0), "the oldest were evicted"

    # The newest labels waited and join their events; the evicted ones' events wait for labels.
    assert predict_long(buf, range(50), now=50.0) == fits
    assert (buf.early_labels, buf.early_label_bytes, buf.pending_events) == (0, 0, 50 - fits)
    assert buf.lowest_waiting_label(0) is None
    assert retained(lambda: label_long(buf, range(50 - fits, 50), now=51.0)) < 64 * 1024, (
        "joined again: duplicates, not kept"
    )
    assert buf.counters.labels_duplicate == fits


def test_labels_that_left_the_buffer_hold_no_memory_for_their_ids() -> None:
    buffers: list[JoinBuffer] = []

    def churn() -> None:
        buf = JoinBuffer(DIM, OUT, max_pending=10_000, ttl_s=10.0)
        buffers.append(buf)
        for round_ in range(10):  # each round's labels join or expire: none left waiting
            numbers = range(round_ * 10, round_ * 10 + 10)
            label_long(buf, numbers, now=float(round_ * 20))
            if round_ % 2:
                buf.expire(now=float(round_ * 20 + 11))
            else:
                predict_long(buf, numbers, now=float(round_ * 20 + 1))

    held = retained(churn)
    (buf,) = buffers
    assert (buf.early_labels, buf.early_label_bytes) == (0, 0)
    assert buf.counters.labels_joined == 50 and buf.counters.labels_expired == 50
    assert held < 512 * 1024, f"{held} bytes held for 100 labels that left: their ids (10 MB) must be freed"


def test_a_label_whose_id_alone_exceeds_the_bound_is_evicted_and_evicts_nothing() -> None:
    buf = JoinBuffer(DIM, OUT, max_pending=10, ttl_s=60.0, max_early_label_bytes=LONG // 2)
    label(buf, [1], [1.0], now=0.0)
    assert len(label_long(buf, [2], now=1.0)) == 0
    assert (buf.early_labels, buf.counters.labels_evicted) == (1, 1)
    assert buf.early_label_bytes == id_bytes("e-1")
    assert predict_long(buf, [2], now=2.0) == 0 and buf.pending_events == 1, "its event waits for a label"
    assert len(predict(buf, [1], now=2.0)) == 1


def test_pending_events_and_joined_ids_take_the_same_memory_whatever_the_length_of_their_ids() -> None:
    """Ids longer than 16 bytes are kept as digests: max_pending alone bounds events, and joined ids."""
    buffers: list[JoinBuffer] = []

    def events() -> None:
        buf = buffer(max_pending=10_000)
        buffers.append(buf)
        predict_long(buf, range(200), now=0.0)  # 20 MB of ids

    held = retained(events)
    (buf,) = buffers
    assert buf.pending_events == 200 and held < 256 * 1024, held
    ids = [long_id(0, tail="y"), long_id(1)]  # the same but for the last character, and a waiting one
    assert len(buf.add_labels(ids, np.ones(2), 1.0)) == 1, "told apart by the whole id"
    assert retained(lambda: label_long(buf, range(2, 200), now=1.0)) < 128 * 1024, "198 remembered joined ids"
    assert buf.counters.labels_joined == 199 and buf.pending_events == 1


def test_a_restored_buffer_counts_its_early_label_bytes_and_applies_its_own_bound() -> None:
    limit = 1024 * 1024
    buf = JoinBuffer(DIM, OUT, max_pending=100, ttl_s=60.0, max_early_label_bytes=limit)
    label_long(buf, range(8), now=0.0)
    state = buf.state_dict()
    same = JoinBuffer(DIM, OUT, max_pending=100, ttl_s=60.0, max_early_label_bytes=limit)
    same.load_state_dict(state)
    assert (same.early_labels, same.early_label_bytes, same.counters) == (8, buf.early_label_bytes, buf.counters)
    smaller = JoinBuffer(DIM, OUT, max_pending=100, ttl_s=60.0, max_early_label_bytes=limit // 2)
    smaller.load_state_dict(state)
    fits = (limit // 2) // id_bytes(long_id(0))
    assert (smaller.early_labels, smaller.counters.labels_evicted) == (fits, 8 - fits)
    assert smaller.lowest_waiting_label(0) == (8 - fits, 0.0), "the oldest were evicted"
    assert predict_long(smaller, range(8), now=1.0) == fits
