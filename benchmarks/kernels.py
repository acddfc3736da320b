"""One fast path switched off at a time inside a benchmark process, to measure what each buys alone.

``CPU_KERNELS=off`` switches every fast path off at once; these switches exist only here, for
the on/off table of docs/benchmarks.md, and are undone when the block ends.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any
from unittest import mock

SINGLE = ("record_batch", "id_table")
"""The fast paths that can be switched off alone: the record-batch writer and the join's id table."""


@contextmanager
def single_off(names: tuple[str, ...]) -> Iterator[None]:
    """Within the block, the fast paths ``names`` (of :data:`SINGLE`) take their library path."""
    with ExitStack() as stack:
        for name in names:
            stack.enter_context(_OFF[name]())
        yield


def _record_batch_off() -> Any:
    return mock.patch("stream_learner.kafka.partitioned_send.packs_batches", lambda producer: False)


def _id_table_off() -> Any:
    from stream_learner.learning import id_index

    return mock.patch("stream_learner.learning.pending_events.make_id_index", lambda compiled: id_index.make_id_index(False))


_OFF = {"record_batch": _record_batch_off, "id_table": _id_table_off}
