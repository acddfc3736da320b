"""Bytes per pending join entry: ``n`` predicted events waiting for labels in a JoinBuffer;
and bytes per joined id the buffer remembers (to tell a later label for it as a duplicate).

Measured with tracemalloc (every allocation the buffer keeps, numpy arrays included,
capacity that is allocated but not yet used counted too), ids like ``"e-123456"`` made
by the caller as the service's decoder makes them. The ids are counted: the buffer
keeps what it needs of them alive.
"""

from __future__ import annotations

import gc
import tracemalloc

import numpy as np

from stream_learner.learning.join import JoinBuffer


def _bytes_held_per_event(n: int, input_dim: int, output_dim: int, batch: int, label: bool) -> tuple[float, JoinBuffer]:
    """tracemalloc bytes a JoinBuffer holds per event after ``n`` events were predicted (and labelled, with ``label``)."""
    rng = np.random.default_rng(0)
    features = rng.normal(size=(batch, input_dim)).astype(np.float32)
    scores = rng.random((batch, output_dim)).astype(np.float32)
    labels = np.ones(batch)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        buffer = JoinBuffer(input_dim, output_dim, max_pending=10 * n, ttl_s=3600.0)
        for start in range(100_000, 100_000 + n, batch):
            count = min(batch, 100_000 + n - start)
            ids = [f"e-{i}" for i in range(start, start + count)]  # like the decoder's: new str objects
            buffer.add_predictions(ids, features[:count], scores[:count], 0.0)
            if label:
                buffer.add_labels([f"e-{i}" for i in range(start, start + count)], labels[:count], 0.0)
            del ids
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    return held / n, buffer


def bytes_per_pending_entry(n: int = 200_000, input_dim: int = 32, output_dim: int = 2, batch: int = 1024) -> float:
    """tracemalloc bytes held per pending event after ``n`` events were predicted and none labelled."""
    held, buffer = _bytes_held_per_event(n, input_dim, output_dim, batch, label=False)
    assert buffer.pending_events == n
    return held


def bytes_per_joined_id(n: int = 200_000, input_dim: int = 32, output_dim: int = 2, batch: int = 1024) -> float:
    """tracemalloc bytes held per remembered joined id after ``n`` events were predicted and labelled.

    Nothing is pending at the end (every event met its label), so what the buffer holds is the
    joined ids and the capacity its stores keep.
    """
    held, buffer = _bytes_held_per_event(n, input_dim, output_dim, batch, label=True)
    assert buffer.pending_events == 0 and buffer.counters.labels_joined == n
    return held


if __name__ == "__main__":
    for n in (50_000, 200_000, 1_000_000):
        print(f"{n:>9} pending: {bytes_per_pending_entry(n):7.1f} bytes/entry   joined: {bytes_per_joined_id(n):7.1f} bytes/id")
