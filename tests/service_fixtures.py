"""Fixture that starts the service as child processes on the test's own topics."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Callable

import pytest

from .conftest import BrokerInfo, TestTopics
from .service_process import ServiceProcess

INPUT_DIM = 8
StartService = Callable[..., ServiceProcess]


@pytest.fixture
def start_service(kafka_broker: BrokerInfo, topics: TestTopics, tmp_path: Path) -> Iterator[StartService]:
    """Starts ``stream-learner run`` children (settings as keyword overrides); all are killed at teardown."""
    started: list[ServiceProcess] = []
    env = {
        "STREAM_LEARNER_BOOTSTRAP_SERVERS": kafka_broker.bootstrap_servers,
        "STREAM_LEARNER_EVENTS_TOPIC": topics.events,
        "STREAM_LEARNER_LABELS_TOPIC": topics.labels,
        "STREAM_LEARNER_PREDICTIONS_TOPIC": topics.predictions,
        "STREAM_LEARNER_DEAD_LETTER_TOPIC": topics.dead_letter,
        "STREAM_LEARNER_GROUP_ID": f"group-{topics.events}",
        "STREAM_LEARNER_INPUT_DIM": str(INPUT_DIM),
        "STREAM_LEARNER_CHECKPOINT_DIR": str(tmp_path / "checkpoints"),
        "STREAM_LEARNER_CHECKPOINT_INTERVAL_S": "2",
        "STREAM_LEARNER_LOG_INTERVAL_S": "0.5",
    }

    def start(**overrides: object) -> ServiceProcess:
        extra = {f"STREAM_LEARNER_{k.upper()}": str(v) for k, v in overrides.items()}
        service = ServiceProcess({**env, **extra}, tmp_path / f"service-{len(started)}.log").start()
        started.append(service)
        return service

    try:
        yield start
    finally:
        for service in started:
            service.kill()
