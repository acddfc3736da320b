"""``KAFKA_CLIENT``: the connection of the chosen client, aiokafka or librdkafka, behind one Protocol."""

from __future__ import annotations

import asyncio

from stream_learner.config import Settings
from stream_learner.errors import ConfigError
from stream_learner.kafka.protocol import Connection
from stream_learner.observability.telemetry import Telemetry
from stream_learner.records import Totals


def make_connection(settings: Settings, stop: asyncio.Event, totals: Totals, telemetry: Telemetry) -> Connection:
    """The clients of one run, not yet started."""
    if settings.kafka_client == "librdkafka":
        try:
            from stream_learner.kafka.librdkafka.connection import LibrdkafkaConnection
        except ImportError as exc:
            raise ConfigError(
                f"kafka_client=librdkafka needs confluent-kafka: pip install 'stream-learner[librdkafka]' ({exc})"
            ) from exc
        return LibrdkafkaConnection(settings, stop, totals, telemetry)
    from stream_learner.kafka.connection import KafkaConnection

    return KafkaConnection(settings, stop, totals, telemetry)
