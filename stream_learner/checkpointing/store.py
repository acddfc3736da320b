"""Checkpoint files: one consistent cut of the service's state, written atomically.

A checkpoint holds the model, optimizer, standardizer, join buffer, training
queue, metric state, counters and ``offsets`` (topic -> partition -> the next
offset to read, i.e. the first offset whose effect is *not* in the state).

Guarantees:
- A file appears under its final name only once fully written and fsynced
  (temp file in the same directory, fsync, ``os.replace``, fsync the directory),
  so a crash mid-write leaves the previous checkpoint as the newest readable one.
- Files load with ``torch.load(weights_only=True)``: a checkpoint cannot run code.
- The newest checkpoint that reads back whole wins; a corrupt newer one is
  skipped with a warning.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
import torch
from aiokafka import TopicPartition

from stream_learner.errors import CheckpointError, ConfigError

FORMAT_VERSION = 1
_NAME = re.compile(r"^checkpoint-(\d{12})\.pt$")
log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A checkpoint read back from disk."""

    path: Path
    """The file it came from."""
    state: dict[str, Any]
    """Its contents, as written by :meth:`CheckpointStore.write`."""

    @property
    def checkpoint_id(self) -> int:
        """Monotonic id; a larger id is a later checkpoint."""
        return int(self.state["checkpoint_id"])


class CheckpointStore:
    """The checkpoint files of one service in one directory."""

    def __init__(self, directory: Path, keep: int) -> None:
        self.directory = Path(directory)
        self.keep = keep

    def paths(self) -> list[Path]:
        """Checkpoint files, newest first; a path that exists but is no directory is an error.

        One listing, not "is it a directory, else does it exist": the first write creates the
        directory, and between those two checks a reader took it for a file (seen in CI)."""
        try:
            entries = list(self.directory.iterdir())
        except FileNotFoundError:
            return []
        except NotADirectoryError:
            raise ConfigError(f"checkpoint directory {self.directory} exists but is not a directory") from None
        named = [(int(m.group(1)), p) for p in entries if (m := _NAME.match(p.name))]
        return [p for _, p in sorted(named, reverse=True)]

    def next_id(self) -> int:
        """An id larger than that of every checkpoint file present."""
        newest = next((m for p in self.paths() if (m := _NAME.match(p.name))), None)
        return int(newest.group(1)) + 1 if newest else 1

    def write(self, state: dict[str, Any], *, before_rename: Callable[[], None] | None = None) -> Path:
        """Write ``state`` as the newest checkpoint, durably; returns its path.

        Adds ``checkpoint_id``, ``created_at`` and ``format_version`` to ``state``.
        ``before_rename`` runs when the temp file is written but not yet in place (a test hook).
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        checkpoint_id = self.next_id()
        state = {**state, "checkpoint_id": checkpoint_id, "created_at": time.time(), "format_version": FORMAT_VERSION}
        final = self.directory / f"checkpoint-{checkpoint_id:012d}.pt"
        fd, tmp_name = tempfile.mkstemp(prefix=".checkpoint-", suffix=".tmp", dir=self.directory)
        try:
            with os.fdopen(fd, "wb") as tmp:
                torch.save(state, tmp)
                tmp.flush()
                os.fsync(tmp.fileno())
            if before_rename is not None:
                before_rename()
            os.replace(tmp_name, final)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        fsync_path(self.directory)
        return final

    def load_latest(self) -> LoadedCheckpoint | None:
        """The newest checkpoint that reads back whole, or None when there is none."""
        return next(iter(self.load_all()), None)

    def load_all(self) -> Iterator[LoadedCheckpoint]:
        """Every checkpoint that reads back whole, newest first; unreadable ones are skipped with a warning.

        Raises :class:`CheckpointError` when there are checkpoint files but none reads back.
        """
        read_any = False
        for path in self.paths():
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as exc:  # noqa: BLE001 - any unreadable file means "try the previous one"
                log.warning("checkpoint_unreadable", path=str(path), error=f"{type(exc).__name__}: {exc}")
                continue
            if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
                log.warning("checkpoint_unreadable", path=str(path), error="not a stream_learner checkpoint")
                continue
            read_any = True
            yield LoadedCheckpoint(path, state)
        if not read_any and self.paths():
            raise CheckpointError(f"no checkpoint in {self.directory} could be read; refusing to start from scratch")

    def prune(self) -> list[Path]:
        """Delete all but the newest ``keep`` checkpoints and stale temp files; returns what was deleted."""
        doomed = self.paths()[self.keep :]
        doomed += [p for p in self.directory.glob(".checkpoint-*.tmp")] if self.directory.is_dir() else []
        for path in doomed:
            path.unlink(missing_ok=True)
        return doomed


def fsync_path(path: Path) -> None:
    """Flush a file's contents, or a directory's entries, to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def by_topic(offsets: Mapping[TopicPartition, int]) -> dict[str, dict[int, int]]:
    """Offsets as a checkpoint stores them: topic -> partition -> next offset."""
    stored: dict[str, dict[int, int]] = {}
    for tp, offset in sorted(offsets.items()):
        stored.setdefault(tp.topic, {})[tp.partition] = offset
    return stored


def from_topics(stored: dict[str, dict[int, int]]) -> dict[TopicPartition, int]:
    """The inverse of :func:`by_topic`."""
    return {TopicPartition(t, int(p)): int(o) for t, parts in stored.items() for p, o in parts.items()}
