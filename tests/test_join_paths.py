"""JoinBuffer(compiled=True) (the compiled id table) and JoinBuffer(compiled=False) (a dict) give the
same examples, counters and state for the same calls, restores from a state dict included."""

from __future__ import annotations

import io
from dataclasses import fields

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_learner.learning.join import Examples, JoinBuffer

DIM, OUT = 2, 2

ID_FORMS = ("k{}", "wide-key-{:05d}", "a long id, past sixteen bytes: {}")
"""Narrow (8-byte keys), wide (16-byte keys) and digested ids: the store widens for the first wide one."""


def ids_for(seed: int, size: int, space: int, forms: int) -> list[str]:
    numbers = np.random.default_rng(seed).integers(0, space, size).tolist()
    return [ID_FORMS[n % forms].format(n) for n in numbers]


operation = st.one_of(
    st.tuples(st.just("predict"), st.integers(0, 2**32), st.integers(0, 40), st.integers(0, 2)),
    st.tuples(st.just("label"), st.integers(0, 2**32), st.integers(0, 40), st.integers(0, 2)),
    st.tuples(st.just("big"), st.integers(0, 2**32), st.integers(300, 1500), st.integers(0, 2)),
    st.tuples(st.just("expire"), st.integers(0, 2**32), st.just(0), st.just(0)),
    st.tuples(st.just("restore"), st.integers(0, 2**32), st.just(0), st.just(0)),
    st.tuples(st.just("unlabeled"), st.integers(0, 2**32), st.just(0), st.just(0)),
)


def assert_same_examples(a: Examples, b: Examples) -> None:
    for field in fields(Examples):
        x, y = getattr(a, field.name), getattr(b, field.name)
        assert (x is None) == (y is None), field.name
        if x is not None:
            np.testing.assert_array_equal(x, y, err_msg=field.name)
            assert x.dtype == y.dtype, field.name


def assert_same_state(a: dict[str, object], b: dict[str, object]) -> None:
    assert a.keys() == b.keys()
    for key, x in a.items():
        y = b[key]
        if isinstance(x, torch.Tensor):
            assert isinstance(y, torch.Tensor) and x.dtype == y.dtype, key
            assert torch.equal(x, y), key
        else:
            assert x == y, key


def assert_same_buffers(a: JoinBuffer, b: JoinBuffer) -> None:
    assert a.counters == b.counters
    for what in ("pending_events", "early_labels", "early_label_bytes"):
        assert getattr(a, what) == getattr(b, what), what
    for partition in range(3):
        assert a.lowest_waiting_label(partition) == b.lowest_waiting_label(partition)


def restored(buf: JoinBuffer) -> JoinBuffer:
    blob = io.BytesIO()
    torch.save(buf.state_dict(), blob)
    blob.seek(0)
    options = {"default_label": buf.default_label, "max_early_label_bytes": buf.max_early_label_bytes}
    fresh = JoinBuffer(DIM, OUT, buf.max_pending, buf.ttl_s, compiled=buf.compiled, **options)
    fresh.load_state_dict(torch.load(blob, weights_only=True))
    return fresh


def apply(buf: JoinBuffer, op: tuple[str, int, int, int], now: float) -> tuple[JoinBuffer, Examples | None]:
    """Run one operation on ``buf``: the buffer to go on with, and the examples it returned."""
    kind, seed, size, forms_past_narrow = op
    rng = np.random.default_rng(seed)
    if kind == "expire":
        buf.expire(now)
        return buf, None
    if kind == "restore":
        return restored(buf), None
    if kind == "unlabeled":
        return buf, buf.take_unlabeled()
    space = 3000 if kind == "big" else 60
    ids = ids_for(seed, size, space, 1 + forms_past_narrow)
    if kind == "label" or (kind == "big" and seed % 2):
        partitions = rng.integers(0, 3, len(ids))
        offsets = rng.integers(0, 10_000, len(ids))
        return buf, buf.add_labels(ids, rng.random(len(ids)), now, partitions, offsets)
    features = rng.random((len(ids), DIM), dtype=np.float32)
    scores = rng.random((len(ids), OUT), dtype=np.float32)
    return buf, buf.add_predictions(ids, features, scores, now)


@settings(max_examples=80, deadline=None)
@given(
    operations=st.lists(operation, max_size=30),
    max_pending=st.sampled_from([1, 5, 50, 10**6]),
    ttl_s=st.sampled_from([2.5, 1e9]),
    default_label=st.sampled_from([None, 1.0]),
    max_early_label_bytes=st.sampled_from([200, 2**27]),
)
def test_the_compiled_and_the_dict_id_index_give_the_same_examples_counters_and_state(
    operations: list[tuple[str, int, int, int]],
    max_pending: int,
    ttl_s: float,
    default_label: float | None,
    max_early_label_bytes: int,
) -> None:
    options = {"default_label": default_label, "max_early_label_bytes": max_early_label_bytes}
    with_table = JoinBuffer(DIM, OUT, max_pending, ttl_s, compiled=True, **options)
    with_dict = JoinBuffer(DIM, OUT, max_pending, ttl_s, compiled=False, **options)
    for step, op in enumerate(operations):
        with_table, from_table = apply(with_table, op, now=float(step))
        with_dict, from_dict = apply(with_dict, op, now=float(step))
        assert (from_table is None) == (from_dict is None)
        if from_table is not None and from_dict is not None:
            assert_same_examples(from_table, from_dict)
        assert_same_buffers(with_table, with_dict)
    assert_same_state(with_table.state_dict(), with_dict.state_dict())
