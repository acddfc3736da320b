"""CheckpointStore: atomic writes, newest readable checkpoint wins, nothing in a file can run code."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
import torch
from structlog.testing import capture_logs

from stream_learner.checkpointing.store import CheckpointStore
from stream_learner.errors import CheckpointError


def state(step: int) -> dict[str, object]:
    return {"step": step, "weights": torch.full((3,), float(step)), "offsets": {"events": {0: step * 10}}}


def test_write_then_load_latest_round_trips(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "ckpt", keep=3)
    assert store.load_latest() is None
    path = store.write(state(1))
    loaded = store.load_latest()
    assert loaded is not None and loaded.path == path
    assert loaded.checkpoint_id == 1
    assert loaded.state["step"] == 1
    assert loaded.state["offsets"] == {"events": {0: 10}}
    assert torch.equal(loaded.state["weights"], torch.full((3,), 1.0))


def test_ids_increase_and_the_newest_wins(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep=10)
    ids = [CheckpointStore(tmp_path, keep=10).write(state(i)).name for i in range(1, 4)]
    assert ids == [f"checkpoint-{i:012d}.pt" for i in (1, 2, 3)]
    loaded = store.load_latest()
    assert loaded is not None and (loaded.checkpoint_id, loaded.state["step"]) == (3, 3)
    assert store.paths() == [tmp_path / name for name in reversed(ids)]


def test_prune_keeps_the_newest(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep=2)
    paths = [store.write(state(i)) for i in range(1, 6)]
    deleted = store.prune()
    assert sorted(deleted) == sorted(paths[:3])
    assert store.paths() == [paths[4], paths[3]]
    assert store.load_latest().checkpoint_id == 5  # type: ignore[union-attr]


@pytest.mark.parametrize("failing", ["replace", "fsync"])
def test_crash_mid_write_leaves_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str) -> None:
    store = CheckpointStore(tmp_path, keep=3)
    store.write(state(1))

    def crash(*args: object, **kwargs: object) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(os, failing, crash)
    with pytest.raises(OSError, match="disk on fire"):
        store.write(state(2))
    monkeypatch.undo()

    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-000000000001.pt"]  # temp file cleaned up
    loaded = store.load_latest()
    assert loaded is not None and loaded.state["step"] == 1
    assert store.write(state(3)).name == "checkpoint-000000000002.pt"


def test_half_written_temp_file_is_ignored_and_pruned(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep=3)
    good = store.write(state(1))
    stale = tmp_path / ".checkpoint-abc123.tmp"
    stale.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    loaded = store.load_latest()
    assert loaded is not None and loaded.path == good
    assert store.next_id() == 2
    assert stale in store.prune()
    assert not stale.exists() and good.exists()


def test_truncated_newest_falls_back_to_previous_with_a_warning(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep=3)
    older = store.write(state(1))
    newest = store.write(state(2))
    newest.write_bytes(newest.read_bytes()[:100])
    with capture_logs() as logs:
        loaded = store.load_latest()
    assert loaded is not None and loaded.path == older and loaded.state["step"] == 1
    assert [(e["event"], e["log_level"], e["path"]) for e in logs] == [("checkpoint_unreadable", "warning", str(newest))]


def test_foreign_torch_file_is_skipped(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep=3)
    older = store.write(state(1))
    torch.save({"not": "ours"}, tmp_path / "checkpoint-000000000002.pt")
    with capture_logs() as logs:
        loaded = store.load_latest()
    assert loaded is not None and loaded.path == older
    assert [e["error"] for e in logs] == ["not a stream_learner checkpoint"]


def test_all_files_corrupt_raises_instead_of_starting_fresh(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep=3)
    for path in (store.write(state(1)), store.write(state(2))):
        path.write_bytes(b"garbage")
    with capture_logs():
        with pytest.raises(CheckpointError):
            store.load_latest()


MARKER = "pwned.txt"


class Payload:
    """Unpickling this writes ``target``: proof that code ran."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (_touch, (str(self.target),))


def _touch(path: str) -> None:
    Path(path).write_text("code ran")


def test_checkpoint_with_pickled_object_never_runs_its_code(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "ckpt", keep=3)
    older = store.write(state(1))
    marker = tmp_path / MARKER
    evil = {**state(2), "checkpoint_id": 2, "format_version": 1, "payload": Payload(marker)}
    torch.save(evil, store.directory / "checkpoint-000000000002.pt")
    with capture_logs() as logs:
        loaded = store.load_latest()
    assert not marker.exists()
    assert loaded is not None and loaded.path == older
    assert logs and logs[0]["event"] == "checkpoint_unreadable"


def test_only_a_malicious_checkpoint_is_an_error_not_code_execution(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "ckpt", keep=3)
    store.directory.mkdir()
    marker = tmp_path / MARKER
    torch.save({"payload": Payload(marker)}, store.directory / "checkpoint-000000000001.pt")
    with capture_logs():
        with pytest.raises(CheckpointError):
            store.load_latest()
    assert not marker.exists()


def test_the_payload_really_runs_code_when_unpickled_unsafely(tmp_path: Path) -> None:
    """Control for the two tests above: without weights_only the marker does appear."""
    marker = tmp_path / MARKER
    torch.save({"payload": Payload(marker)}, tmp_path / "evil.pt")
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert marker.read_text() == "code ran"


def test_listing_while_the_directory_comes_and_goes_never_takes_it_for_a_file(tmp_path: Path) -> None:
    """The first write creates the directory while readers (the loop, a restore) list it. Checked
    as "is it a directory, else does it exist", a directory made between the two looked like a
    file (a ConfigError in CI), and one removed between them broke the listing."""
    directory, stop = tmp_path / "checkpoints", threading.Event()

    def come_and_go() -> None:
        while not stop.is_set():
            directory.mkdir(exist_ok=True)
            directory.rmdir()

    churn = threading.Thread(target=come_and_go, daemon=True)
    churn.start()
    store, deadline, listed = CheckpointStore(directory, keep=1), time.monotonic() + 1.0, 0
    try:
        while time.monotonic() < deadline:
            assert store.paths() == []
            listed += 1
    finally:
        stop.set()
        churn.join()
    assert listed > 1000
