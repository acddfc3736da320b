"""The run loop's logic against plain fakes of the Kafka Reader and Writer Protocols.

No broker: a fake reader hands out records as a consumer would, a fake writer acknowledges
every send. The same loop code runs as in production (``Service._turn``); the integration
tests run it against a real broker.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import orjson
import pytest
from aiokafka import TopicPartition

from stream_learner.checkpointing.store import CheckpointStore
from stream_learner.config import Settings
from stream_learner.kafka.protocol import Fetched, Reader, Writer
from stream_learner.records import EventBatch, RawRecord, RecordList, Rejected
from stream_learner.service import Service

EVENTS, LABELS = TopicPartition("ev", 0), TopicPartition("lb", 0)


class FakeReader:
    """Hands out the records queued per partition, a fetch at a time; positions follow what it handed out."""

    def __init__(self, records: dict[TopicPartition, list[RawRecord]]) -> None:
        self.records = records
        self.positions = dict.fromkeys(records, 0)
        self.committed: list[dict[TopicPartition, int]] = []

    async def fetch(self, timeout_s: float, offsets: Mapping[TopicPartition, int]) -> tuple[Fetched, list[Rejected]]:
        fetched: Fetched = {}
        for tp, records in self.records.items():
            batch = records[self.positions[tp] : self.positions[tp] + 50]
            if batch:
                fetched[tp] = RecordList(batch)
                self.positions[tp] += len(batch)
        return fetched, []

    def assignment(self) -> set[TopicPartition]:
        return set(self.records)

    def position(self, tp: TopicPartition) -> int | None:
        handed_out = self.positions[tp]
        return self.records[tp][handed_out - 1].offset + 1 if handed_out else 0

    def readable_end(self, tp: TopicPartition) -> int | None:
        return self.records[tp][-1].offset + 1

    def highwater(self, tp: TopicPartition) -> int | None:
        return self.records[tp][-1].offset + 1

    def partition_count(self, topic: str) -> int | None:
        return 1

    def pause(self, partitions: Iterable[TopicPartition]) -> None:
        pass

    def resume(self, partitions: Iterable[TopicPartition]) -> None:
        pass

    def paused(self) -> set[TopicPartition]:
        return set()

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        self.committed.append(dict(offsets))


class FakeWriter:
    """Acknowledges every send at once and keeps what was sent."""

    def __init__(self) -> None:
        self.predicted: list[str] = []
        self.versions: list[int] = []
        self.dead: list[Rejected] = []

    async def send_predictions(
        self, events: EventBatch, scores: np.ndarray, model_version: int | np.ndarray, model_generation: int | None = None, model: str | None = None
    ) -> None:
        self.predicted += events.ids
        self.versions += np.broadcast_to(model_version, len(events)).tolist()

    async def send_dead_letters(self, rejected: list[Rejected]) -> None:
        self.dead += rejected

    def raise_failed(self) -> None:
        pass

    async def flush(self) -> None:
        pass


def _typed(reader: FakeReader, writer: FakeWriter) -> tuple[Reader, Writer]:
    return reader, writer  # mypy checks that the fakes are a Reader and a Writer


def stream(n: int) -> dict[TopicPartition, list[RawRecord]]:
    rng = np.random.default_rng(7)
    x = rng.normal(size=(n, 4))
    events = [
        RawRecord("ev", 0, i, f"e{i}".encode(), orjson.dumps({"id": f"e{i}", "features": x[i].tolist()}))
        for i in range(n)
    ]
    events[5] = RawRecord("ev", 0, 5, b"e5", b"not json")
    labels = [
        RawRecord("lb", 0, i, f"e{i}".encode(), orjson.dumps({"id": f"e{i}", "label": int(x[i, 0] > 0)}))
        for i in range(n)
        if i != 5
    ]
    return {EVENTS: events, LABELS: labels}


@pytest.fixture
def service(clean_settings_sources: None, tmp_path: Path) -> Service:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, input_dim=4, events_topic="ev", labels_topic="lb", checkpoint_dir=tmp_path / "ckpt",
        max_batch_size=32, train_batch_size=16, max_batch_delay_ms=0, checkpoint_interval_s=3600,
    )  # fmt: skip
    return Service(settings)


async def test_every_event_is_predicted_every_label_trained_and_the_cut_commits_what_was_read(
    service: Service, tmp_path: Path
) -> None:
    reader, writer = FakeReader(stream(400)), FakeWriter()
    _typed(reader, writer)
    service.kafka.reader, service.kafka.writer = reader, writer  # type: ignore[assignment]  # as connect() sets them
    service._start_serving()
    try:
        for _ in range(40):
            await service._turn()
        async with service.checkpoint.lock:
            assert await service.checkpoint.commit("shutdown")
    finally:
        service.learner.device.close()
    stats = service.status.stats()
    assert sorted(writer.predicted) == sorted(f"e{i}" for i in range(400) if i != 5)
    assert [d.reason for d in writer.dead] == ["invalid_json"] and writer.dead[0].record.where == "ev[0]@5"
    assert stats["labels_joined"] == stats["examples_trained"] == 399
    assert writer.versions[0] == 0 and writer.versions[-1] > 0, "later batches are predicted by trained weights"
    assert reader.committed == [{EVENTS: 400, LABELS: 400}]
    saved = CheckpointStore(tmp_path / "ckpt", keep=2).load_latest()
    assert saved is not None and saved.state["offsets"] == {"ev": {0: 400}, "lb": {0: 400}}
    assert saved.state["summary"]["examples_trained"] == 399
