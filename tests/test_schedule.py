"""The training schedule makes steps from the data (label partition and offset), not from arrival timing."""

from __future__ import annotations

import random

import numpy as np
import torch

from stream_learner.learning.join import Examples
from stream_learner.learning.schedule import TrainingSchedule

B = 4


def examples(partition: int, offsets: list[int]) -> Examples:
    n = len(offsets)
    features = np.array([[partition, o] for o in offsets], np.float32).reshape(n, 2)
    return Examples(
        features,
        np.array(offsets, np.float64),
        np.zeros((n, 2), np.float32),
        np.full(n, partition, np.int64),
        np.array(offsets, np.int64),
    )


def steps_as_positions(steps: list[Examples]) -> list[list[tuple[int, int]]]:
    return [[(int(p), int(o)) for p, o in step.features] for step in steps]


def run(arrivals: list[tuple[int, list[int]]]) -> list[list[tuple[int, int]]]:
    """Feed arrivals in the given order while nothing is caught up, then drain as a shutdown would."""
    schedule = TrainingSchedule(batch_size=B, max_wait_s=0.01)
    schedule.set_partitions([0, 1, 2])
    steps: list[Examples] = []
    for now, (p, offsets) in enumerate(arrivals):
        schedule.add(examples(p, offsets), float(now))
        steps += schedule.take_due(float(now), False, read_to_end=lambda p: False, lowest_waiting=lambda p: None)
    return steps_as_positions(steps + schedule.take_all())


def test_steps_do_not_depend_on_how_partitions_interleave() -> None:
    per_partition = {p: [(p, list(range(a, a + n))) for a, n in ((0, 3), (3, 6), (9, 5), (14, 2))] for p in range(3)}
    baseline = run([chunk for p in range(3) for chunk in per_partition[p]])
    rng = random.Random(5)
    for _ in range(20):
        # Kafka delivers each partition in offset order; how partitions interleave is timing.
        turns = [p for p in range(3) for _ in per_partition[p]]
        rng.shuffle(turns)
        queues = {p: list(chunks) for p, chunks in per_partition.items()}
        assert run([queues[p].pop(0) for p in turns]) == baseline
    assert all(len(step) == B for step in baseline[:-3])
    assert [step[0][0] for step in baseline[:6]] == [0, 1, 2, 0, 1, 2]


def test_a_label_waiting_for_its_event_holds_later_offsets_back() -> None:
    schedule = TrainingSchedule(batch_size=B, max_wait_s=0.01, hold_s=5.0)
    schedule.set_partitions([0])
    schedule.add(examples(0, [0, 1, 3, 4, 5]), now=0.0)
    waiting = lambda p: (2, -100.0)  # noqa: E731 - offset 2 waits for its event
    assert schedule.take_due(1.0, False, read_to_end=lambda p: True, lowest_waiting=waiting) == []
    schedule.add(examples(0, [2]), now=1.5)
    steps = schedule.take_due(2.0, False, read_to_end=lambda p: False, lowest_waiting=lambda p: None)
    assert steps_as_positions(steps) == [[(0, 0), (0, 1), (0, 2), (0, 3)]]


def test_a_label_whose_event_never_comes_holds_back_only_for_hold_s_of_this_process() -> None:
    schedule = TrainingSchedule(batch_size=B, max_wait_s=0.01, hold_s=5.0)
    schedule.set_partitions([0])
    schedule.add(examples(0, [0, 1, 3, 4]), now=0.0)
    waiting = lambda p: (2, -100.0)  # noqa: E731 - arrival before a restart does not count
    assert schedule.take_due(0.0, False, read_to_end=lambda p: False, lowest_waiting=waiting) == []
    assert schedule.take_due(4.0, False, read_to_end=lambda p: False, lowest_waiting=waiting) == []
    steps = schedule.take_due(6.0, False, read_to_end=lambda p: False, lowest_waiting=waiting)
    assert steps_as_positions(steps) == [[(0, 0), (0, 1), (0, 3), (0, 4)]]


def test_while_events_are_left_to_read_a_waiting_label_holds_however_long_it_takes() -> None:
    # In catch-up, labels can be read far ahead of their events: how long a label waits is
    # timing, so the hold must end on the data (events read, or too much queued), not on a clock.
    schedule = TrainingSchedule(batch_size=B, max_wait_s=0.01, hold_s=5.0, max_held=8)
    schedule.set_partitions([0])
    schedule.add(examples(0, [0, 1, 3, 4]), now=0.0)
    waiting = lambda p: (2, -100.0)  # noqa: E731
    for now in (0.0, 60.0, 3600.0):
        assert (
            schedule.take_due(now, False, read_to_end=lambda p: True, lowest_waiting=waiting, events_unread=True) == []
        )
    schedule.add(examples(0, [5, 6, 7, 8]), now=3600.0)  # 8 queued behind the waiting label: the cap
    # From the cap on (as once every event is read), the clock of hold_s runs.
    assert (
        schedule.take_due(3600.0, False, read_to_end=lambda p: False, lowest_waiting=waiting, events_unread=True) == []
    )
    steps = schedule.take_due(3606.0, False, read_to_end=lambda p: False, lowest_waiting=waiting, events_unread=True)
    assert steps_as_positions(steps)[0] == [(0, 0), (0, 1), (0, 3), (0, 4)]


def test_once_everything_is_read_a_remainder_trains_after_the_delay() -> None:
    schedule = TrainingSchedule(batch_size=B, max_wait_s=0.5)
    schedule.set_partitions([0, 1])
    schedule.add(examples(1, [7, 8]), now=0.0)
    assert schedule.take_due(0.2, True, read_to_end=lambda p: True, lowest_waiting=lambda p: None) == []
    steps = schedule.take_due(0.6, True, read_to_end=lambda p: True, lowest_waiting=lambda p: None)
    assert steps_as_positions(steps) == [[(1, 7), (1, 8)]]


def test_a_partition_still_being_read_makes_the_turn_wait() -> None:
    schedule = TrainingSchedule(batch_size=B, max_wait_s=0.01)
    schedule.set_partitions([0, 1])
    schedule.add(examples(1, [0, 1, 2, 3]), now=0.0)
    schedule.add(examples(0, [0, 1]), now=0.0)
    assert schedule.take_due(9.0, False, read_to_end=lambda p: p != 0, lowest_waiting=lambda p: None) == []
    schedule.add(examples(0, [2, 3]), now=9.0)
    steps = schedule.take_due(9.0, False, read_to_end=lambda p: p != 0, lowest_waiting=lambda p: None)
    assert [s[0][0] for s in steps_as_positions(steps)] == [0, 1]


def test_state_round_trip_keeps_queues_and_turn(tmp_path: object) -> None:
    schedule = TrainingSchedule(batch_size=B, max_wait_s=0.01)
    schedule.set_partitions([0, 1])
    schedule.add(examples(0, [0, 1, 2, 3, 4]), now=0.0)
    schedule.add(examples(1, [0, 1]), now=0.0)
    schedule.take_due(0.0, False, read_to_end=lambda p: False, lowest_waiting=lambda p: None)
    path = f"{tmp_path}/s.pt"
    torch.save(schedule.state_dict(), path)
    restored = TrainingSchedule(batch_size=B, max_wait_s=0.01)
    restored.load_state_dict(torch.load(path, weights_only=True))
    assert len(restored) == len(schedule) == 3
    assert steps_as_positions(restored.take_all()) == steps_as_positions(schedule.take_all())


def test_a_partition_with_nothing_left_to_read_is_passed_not_waited_for() -> None:
    schedule = TrainingSchedule(batch_size=B, max_wait_s=0.01)
    schedule.set_partitions([0, 1])
    schedule.add(examples(0, [0]), now=0.0)
    schedule.add(examples(1, [0, 1, 2, 3]), now=0.0)
    steps = schedule.take_due(9.0, False, read_to_end=lambda p: p == 0, lowest_waiting=lambda p: None)
    assert steps_as_positions(steps) == [[(1, 0), (1, 1), (1, 2), (1, 3)]]
    assert len(schedule) == 1, "a remainder waits until everything is read"
