"""The Checkpoint object: what may be committed, in which order the steps run, and what a failure leaves.

Plain fakes stand in for the rest of the service (drain, snapshot, offset commit); the store is
real files in a temporary directory.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition

from stream_learner.checkpointing.checkpoint import Checkpoint, CutSteps, Offsets
from stream_learner.checkpointing.store import CheckpointStore
from stream_learner.errors import CheckpointError
from stream_learner.observability.telemetry import Telemetry

TP = TopicPartition("events", 0)


class Recorder(Telemetry):
    """Records the steps in the order they happen."""

    def __init__(self, steps: list[str]) -> None:
        self.steps = steps

    def checkpoint_step(self, step: str, checkpoint: int) -> None:
        self.steps.append(step)


class FakeService:
    """Drain, snapshot and offset commit that record what they were asked."""

    def __init__(self, steps: list[str]) -> None:
        self.steps = steps
        self.committed: list[Offsets] = []
        self.failures: list[Exception] = []

    async def drain(self) -> None:
        self.steps.append("drain")

    async def snapshot(self) -> dict[str, Any]:
        self.steps.append("snapshot_taken")
        return {"model": [1.0, 2.0]}

    async def commit_offsets(self, offsets: Offsets) -> None:
        self.steps.append("kafka_commit")
        self.committed.append(dict(offsets))


def checkpoint_of(tmp_path: Path, *, background: bool = False) -> tuple[Checkpoint, FakeService, list[str]]:
    steps: list[str] = []
    fake = FakeService(steps)
    cut = CutSteps(fake.drain, fake.snapshot, fake.commit_offsets, fake.failures.append)
    return Checkpoint(CheckpointStore(tmp_path, keep=2), 0.0, cut, Recorder(steps), background=background), fake, steps


def test_store_offset_refuses_to_go_backwards(tmp_path: Path) -> None:
    checkpoint, _, _ = checkpoint_of(tmp_path)
    checkpoint.store_offset(TP, 10)
    checkpoint.store_offset(TP, 10)
    checkpoint.store_offset(TP, 12)
    with pytest.raises(CheckpointError, match="go back from 12 to 11"):
        checkpoint.store_offset(TP, 11)
    assert checkpoint.offsets == {TP: 12}


async def test_commit_runs_the_steps_in_order_and_commits_what_it_wrote(tmp_path: Path) -> None:
    checkpoint, fake, steps = checkpoint_of(tmp_path)
    checkpoint.store_offset(TP, 7)
    assert not checkpoint.due(), "nothing changed yet"
    checkpoint.touch()
    assert checkpoint.due()
    async with checkpoint.lock:
        assert await checkpoint.commit("interval")
    assert steps == [
        "drain",
        "drained",
        "snapshot_taken",
        "snapshot",
        "written_temp",
        "written",
        "kafka_commit",
        "committed",
    ]
    assert fake.committed == [{TP: 7}]
    saved = CheckpointStore(tmp_path, keep=2).load_latest()
    assert saved is not None and saved.state["offsets"] == {"events": {0: 7}} and saved.state["model"] == [1.0, 2.0]
    assert not checkpoint.due() and checkpoint.last["reason"] == "interval"


async def test_commit_needs_intake_stopped(tmp_path: Path) -> None:
    checkpoint, fake, steps = checkpoint_of(tmp_path)
    with pytest.raises(CheckpointError, match="intake stopped"):
        await checkpoint.commit("interval")
    assert not steps and not fake.committed


async def test_a_write_that_fails_commits_nothing_and_is_due_again(tmp_path: Path) -> None:
    checkpoint, fake, steps = checkpoint_of(tmp_path)

    def full_disk(state: dict[str, Any], **kwargs: Any) -> Path:
        raise OSError(28, "No space left on device")

    checkpoint.store.write = full_disk  # type: ignore[method-assign]
    checkpoint.store_offset(TP, 3)
    async with checkpoint.lock:
        assert not await checkpoint.commit("interval")
    assert "kafka_commit" not in steps and not fake.committed and checkpoint.dirty
    assert not list(tmp_path.iterdir())


async def test_offsets_stored_after_the_snapshot_wait_for_the_next_cut(tmp_path: Path) -> None:
    checkpoint, fake, _ = checkpoint_of(tmp_path, background=True)
    checkpoint.store_offset(TP, 5)
    async with checkpoint.lock:
        assert await checkpoint.commit("interval", wait=False)
    checkpoint.store_offset(TP, 9)  # intake resumed while steps 4 to 6 run in the background
    await checkpoint.finish_writing()
    assert fake.committed == [{TP: 5}], "a cut commits the offsets of its own snapshot"


async def test_after_a_failure_nothing_is_committed(tmp_path: Path) -> None:
    checkpoint, fake, steps = checkpoint_of(tmp_path)
    checkpoint.touch()
    checkpoint.abandon()
    assert not checkpoint.due(), "the loop asks no cut of an abandoned checkpoint"
    await checkpoint.commit_before_revoke()
    async with checkpoint.lock:
        with pytest.raises(CheckpointError, match="never after a failure"):
            await checkpoint.commit("shutdown")
    assert not steps and not fake.committed and not list(tmp_path.iterdir())


async def test_a_failed_cut_on_revoke_is_reported_as_a_failure(tmp_path: Path) -> None:
    checkpoint, fake, _ = checkpoint_of(tmp_path)

    async def unacknowledged() -> None:
        raise TimeoutError("the broker did not acknowledge")

    checkpoint._steps = CutSteps(unacknowledged, fake.snapshot, fake.commit_offsets, fake.failures.append)
    with pytest.raises(asyncio.TimeoutError):
        await checkpoint.commit_before_revoke()
    assert len(fake.failures) == 1 and not fake.committed
