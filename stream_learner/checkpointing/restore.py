"""Which checkpoint a start restores: the newest that reads back whole, or, with exactly_once,
the newest whose transaction committed (its offsets equal the group's committed ones)."""

from __future__ import annotations

import asyncio

from stream_learner.checkpointing.store import CheckpointStore, LoadedCheckpoint
from stream_learner.checkpointing.transactions import choose_checkpoint, committed_offsets
from stream_learner.config import Settings


async def checkpoint_to_restore(
    store: CheckpointStore, settings: Settings, *, transactional: bool
) -> LoadedCheckpoint | None:
    """The checkpoint to restore, None to start fresh; a corrupt or truncated file is skipped with a warning."""
    if not transactional:
        return await asyncio.to_thread(store.load_latest)
    committed = await committed_offsets(settings)
    return await asyncio.to_thread(lambda: choose_checkpoint(store.load_all(), committed))
