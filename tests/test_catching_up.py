"""When predictions wait for queued training steps: only while a backlog is left to catch up.

Pure logic over the consumer's positions: a plain fake stands in for the consumer's
assignment and high watermarks (the broker paths are covered by the end-to-end tests).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from aiokafka import TopicPartition

from stream_learner.config import Settings
from stream_learner.records import EventBatch
from stream_learner.service import Service


class FakePositions:
    """The two consumer calls ``Service._catching_up`` reads."""

    def __init__(self, highwater: dict[TopicPartition, int | None]) -> None:
        self._highwater = highwater

    def assignment(self) -> set[TopicPartition]:
        return set(self._highwater)

    def highwater(self, tp: TopicPartition) -> int | None:
        return self._highwater[tp]


@pytest.fixture
def service(clean_settings_sources: None, tmp_path: Path) -> Iterator[Service]:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, input_dim=4, events_topic="ev", labels_topic="lb", fetch_max_records=100,
        max_batch_size=50, checkpoint_dir=tmp_path / "ckpt",
    )
    service = Service(settings)
    yield service
    service._device.close()


EV0, EV1, LB0 = TopicPartition("ev", 0), TopicPartition("ev", 1), TopicPartition("lb", 0)


def test_a_few_records_behind_a_moving_high_watermark_is_live(service: Service) -> None:
    service._consumer = FakePositions({EV0: 1_030, EV1: 2_040, LB0: 90_000})  # type: ignore[assignment]
    service.offsets = {EV0: 1_000, EV1: 2_000, LB0: 10}
    assert not service._catching_up()  # 70 unread events; the labels backlog does not count


def test_more_unread_events_than_one_fetch_is_catching_up(service: Service) -> None:
    service._consumer = FakePositions({EV0: 1_060, EV1: 2_050, LB0: 10})  # type: ignore[assignment]
    service.offsets = {EV0: 1_000, EV1: 2_000, LB0: 10}
    assert service._catching_up()  # 110 unread > FETCH_MAX_RECORDS = 100


def test_batched_events_count_toward_the_backlog(service: Service) -> None:
    service._consumer = FakePositions({EV0: 1_050})  # type: ignore[assignment]
    service.offsets = {EV0: 1_000}
    assert not service._catching_up()
    batch = EventBatch([f"e{i}" for i in range(60)], np.zeros((60, 4), np.float32), np.full(60, np.nan), np.zeros(60))
    service.batcher.add(batch, now=0.0)
    assert service._catching_up()  # 50 unread + 60 batched


def test_an_events_partition_with_no_position_yet_counts_as_catching_up(service: Service) -> None:
    service._consumer = FakePositions({EV0: None})  # type: ignore[assignment]
    service.offsets = {}
    assert service._catching_up()
