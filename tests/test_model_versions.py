"""Model version records, the election's assignor and the predictor's feed: pure logic, no broker."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
from typing import Any

import orjson
import pytest
import torch
from aiokafka.coordinator.protocol import ConsumerProtocolMemberMetadata

from stream_learner.model_versions.election import _assignor
from stream_learner.model_versions.feed import ModelFeed
from stream_learner.model_versions.record import (
    HEADER,
    BadVersionError,
    ModelVersion,
    VersionAssembler,
    encode_version,
    read_info,
)

SPEC = {"task": "classification", "input_dim": 3, "output_dim": 2, "model": "linear"}


def weights(scale: float = 1.0) -> dict[str, torch.Tensor]:
    return {"net.weight": torch.full((2, 3), float(scale)), "net.bias": torch.zeros(2)}


def records(generation: int, step: int, w: dict[str, torch.Tensor] | None = None, **kwargs: Any) -> list[Any]:
    kwargs.setdefault("max_chunk_bytes", 256)
    encoded = encode_version(
        w or weights(step), generation, step, trained_through={"labels": {0: 7}}, spec=SPEC, durable=False, **kwargs
    )
    return encoded


def assemble(encoded: list[Any]) -> ModelVersion | None:
    assembler, version = VersionAssembler(), None
    for _, value, headers in encoded:
        version = assembler.add(value, headers) or version
    return version


def test_a_version_in_chunks_comes_back_whole_with_its_metadata() -> None:
    encoded = records(3, 42)
    assert len(encoded) > 2, "the small chunk size must split it"
    version = assemble(encoded)
    assert version is not None
    assert version.info.order == (3, 42) and version.info.chunks == len(encoded)
    assert version.info.trained_through == {"labels": {"0": 7}} and version.info.spec == SPEC
    loaded = version.weights()
    assert set(loaded) == set(weights()) and torch.equal(loaded["net.weight"], weights(42)["net.weight"])


def test_a_flipped_byte_fails_the_checksum() -> None:
    encoded = records(1, 5)
    key, value, headers = encoded[1]
    encoded[1] = (key, bytes([value[0] ^ 1]) + value[1:], headers)
    with pytest.raises(BadVersionError, match="sha256"):
        assemble(encoded)


def test_a_missing_chunk_is_refused_and_the_next_version_still_assembles() -> None:
    assembler = VersionAssembler()
    first, second = records(1, 5), records(1, 6)
    with pytest.raises(BadVersionError):
        for _, value, headers in [first[0], first[2]]:
            assembler.add(value, headers)
    version = None
    for _, value, headers in second:
        version = assembler.add(value, headers) or version
    assert version is not None and version.info.step == 6


def test_interleaved_chunks_of_a_deposed_trainer_do_not_mix_into_a_version() -> None:
    old, new = records(1, 9), records(2, 3)
    assembler, versions, refused = VersionAssembler(), [], 0
    for _, value, headers in [new[0], old[1], *new[1:]]:
        try:
            version = assembler.add(value, headers)
        except BadVersionError:
            refused += 1
            continue
        if version is not None:
            versions.append(version)
    assert refused >= 1 and all(v.info.generation == 2 for v in versions)


class Evil:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("echo pwned",))


def test_a_payload_that_would_run_code_is_refused() -> None:
    buffer = io.BytesIO()
    torch.save({"net.weight": Evil()}, buffer)
    key, _, headers = records(1, 1)[0]
    payload = buffer.getvalue()
    meta = {**orjson.loads(headers[0][1]), "size": len(payload), "chunks": 1, "chunk": 0}
    meta["sha256"] = hashlib.sha256(payload).hexdigest()
    version = assemble([(key, payload, [(HEADER, orjson.dumps(meta))])])
    assert version is not None
    with pytest.raises(BadVersionError, match="do not load"):
        version.weights()


@pytest.mark.parametrize(
    "headers",
    [
        None,
        [],
        [(HEADER, b"{not json")],
        [(HEADER, b'{"generation": 1}')],
        [
            (
                HEADER,
                orjson.dumps(
                    {"generation": -1, "step": 0, "sha256": "", "created_at": 0, "size": 0, "chunk": 0, "chunks": 1}
                ),
            )
        ],
    ],
    ids=["none", "empty", "not-json", "incomplete", "negative"],
)
def test_a_record_without_a_usable_header_is_refused(headers: Any) -> None:
    with pytest.raises(BadVersionError):
        read_info(headers)


def assign(claims: dict[str, dict[str, float]]) -> str:
    assignor = _assignor(lambda: b"")

    class Cluster:
        def partitions_for_topic(self, topic: str) -> set[int]:
            return {0}

    members = {m: ConsumerProtocolMemberMetadata(0, ["models"], orjson.dumps(c)) for m, c in claims.items()}
    assignment = assignor.assign(Cluster(), members)
    [leader] = [m for m, a in assignment.items() if a.assignment]
    return leader


def test_the_sitting_leader_keeps_the_election_when_a_standby_joins() -> None:
    assert (
        assign({"a-new": {"generation": 0, "waiting_since": 1.0}, "z-leader": {"generation": 4, "waiting_since": 9.0}})
        == "z-leader"
    )


def test_the_longest_waiting_standby_leads_when_there_is_no_leader() -> None:
    assert assign({"a": {"generation": 0, "waiting_since": 5.0}, "b": {"generation": 0, "waiting_since": 2.0}}) == "b"


def test_a_resumed_zombie_does_not_win_back_the_election() -> None:
    assert (
        assign({"zombie": {"generation": 2, "waiting_since": 1.0}, "new": {"generation": 3, "waiting_since": 8.0}})
        == "new"
    )


class FakeTopic:
    """What the feed reads: a newest version, then polls of records."""

    def __init__(self, newest: ModelVersion | None, polls: list[list[Any]]) -> None:
        self._newest, self._polls = newest, polls

    async def newest(self, rejected: list[str]) -> tuple[ModelVersion | None, int]:
        return self._newest, 0

    def follow_from(self, offset: int) -> None:
        pass

    async def poll(self, timeout_s: float) -> list[Any]:
        if not self._polls:
            await asyncio.sleep(3600)
        return self._polls.pop(0)


class Record:
    def __init__(self, offset: int, value: bytes, headers: Any) -> None:
        self.offset, self.value, self.headers = offset, value, headers


def as_records(encoded: list[Any]) -> list[Record]:
    return [Record(i, value, headers) for i, (_, value, headers) in enumerate(encoded)]


async def feed_through(newest: ModelVersion | None, polls: list[list[Any]]) -> tuple[ModelFeed, list[tuple[int, int]]]:
    feed = ModelFeed(FakeTopic(newest, polls), weights(), SPEC)  # type: ignore[arg-type]
    task = asyncio.create_task(feed.run())
    served = []
    for _ in range(50):
        await asyncio.sleep(0.01)
        loaded = feed.take()
        if loaded is not None:
            served.append(loaded.info.order)
    task.cancel()
    return feed, served


async def test_the_feed_serves_newer_versions_and_skips_older_corrupt_and_misfitting_ones() -> None:
    corrupt = records(2, 20)
    key, value, headers = corrupt[-1]
    corrupt[-1] = (key, value[:-1] + bytes([value[-1] ^ 1]), headers)
    misfit = records(2, 30, {"net.weight": torch.zeros(5, 5), "net.bias": torch.zeros(2)})
    polls = [as_records(records(2, 10)), as_records(records(1, 99)), as_records(corrupt), as_records(misfit)]
    feed, served = await feed_through(assemble(records(1, 50)), polls)
    assert served[-1] == (2, 10) and set(served) <= {(1, 50), (2, 10)}, "newer versions only, the newest last"
    assert feed.counts == {"loaded": 2, "ignored": 1, "rejected": 2}
    assert feed.newest is not None and feed.newest.order == (2, 10)


async def test_a_deposed_trainers_late_version_in_the_same_poll_does_not_hide_its_successors() -> None:
    # the successor's first version, then the zombie's last (sent after its confirm, before its pause)
    one_poll = as_records(records(2, 10) + records(1, 60))
    feed, served = await feed_through(assemble(records(1, 50)), [one_poll])
    assert served[-1] == (2, 10)
    assert feed.newest is not None and feed.newest.order == (2, 10)
