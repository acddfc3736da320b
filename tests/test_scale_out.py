"""Scale-out: predictor replicas and one fenced trainer, as real processes on the real broker.

Each test starts ``stream-learner run`` children with ROLE=trainer and ROLE=predictor on fresh topics
(the models topic has one partition) and checks what users rely on: every event predicted at least
once, every label trained exactly once (the trainer's checkpoint counters), and per partition the
served ``model_version`` never going back within one trainer generation.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest

from .conftest import BrokerInfo, StartService, TestTopics
from .observe import read_to_end
from .service_process import ServiceProcess, checkpoint_show
from .test_crash_safety import PacedStream, wait_until_joined

pytestmark = pytest.mark.integration

FAST = {
    "session_timeout_ms": 6000,
    "checkpoint_interval_s": 1,
    "model_publish_interval_s": 0.5,
    "commit_interval_s": 0.5,
    "log_interval_s": 0.3,
}


def trainer(start_service: StartService, **overrides: Any) -> ServiceProcess:
    return start_service(role="trainer", **{**FAST, **overrides})


def predictor(start_service: StartService, **overrides: Any) -> ServiceProcess:
    return start_service(role="predictor", **{**FAST, **overrides})


async def served_predictions(bootstrap: str, topics: TestTopics) -> list[tuple[int, int, dict[str, Any]]]:
    """Every prediction as (partition, offset, value), in offset order per partition."""
    records = await read_to_end(bootstrap, topics.predictions)
    return sorted((r.partition, r.offset, orjson.loads(r.value)) for r in records)


def assert_versions_never_go_back(predictions: list[tuple[int, int, dict[str, Any]]]) -> None:
    """Per partition, within one generation, model_version never decreases."""
    newest: dict[tuple[int, int], int] = {}
    for partition, offset, value in predictions:
        key = (partition, value["model_generation"])
        assert value["model_version"] >= newest.get(key, 0), f"partition {partition} went back at offset {offset}"
        newest[key] = value["model_version"]


def assert_trained_once(checkpoints: Path, total: int) -> None:
    shown = checkpoint_show(checkpoints)
    assert shown["labels_joined"] == shown["examples_trained"] == total, shown
    assert shown["pending_events"] == 0 and shown["dead_lettered"] == 0, shown


async def wait_for(condition: Any, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


async def test_two_predictors_and_a_trainer_predict_every_event_and_train_every_label_once(
    kafka_broker: BrokerInfo, topics: TestTopics, start_service: StartService, tmp_path: Path
) -> None:
    total = 3000
    leader = trainer(start_service)
    leader.wait_for_log("trainer_elected", timeout=60)
    replicas = [predictor(start_service), predictor(start_service)]
    for replica in replicas:
        replica.wait_for_log("predictor_started", timeout=60)
    stream = PacedStream(kafka_broker.bootstrap_servers, topics, total, rate=600, label_lag=200)
    await stream.run()
    await wait_until_joined(leader, total)

    predictions = await served_predictions(kafka_broker.bootstrap_servers, topics)
    assert {value["id"] for _, _, value in predictions} == set(stream.stream.batch(0, total).ids)
    assert_versions_never_go_back(predictions)
    generations = {value["model_generation"] for _, _, value in predictions}
    assert len(generations) == 1 and min(generations) >= 1, generations
    assert max(value["model_version"] for _, _, value in predictions) > 0, "the predictors never served a trained model"
    assert leader.stop() == 0
    assert_trained_once(tmp_path / "checkpoints", total)
    for replica in replicas:
        assert replica.stop() == 0
