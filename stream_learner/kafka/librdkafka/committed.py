"""A consumer group's committed offsets, read with librdkafka (for exactly-once's restore)."""

from __future__ import annotations

from aiokafka import TopicPartition
from confluent_kafka import Consumer
from confluent_kafka import TopicPartition as RdTopicPartition

from stream_learner.config import Settings
from stream_learner.kafka.librdkafka.config import common_properties

TIMEOUT_S = 10.0


def read_committed_offsets(settings: Settings, topics: list[str]) -> dict[TopicPartition, int]:
    """Every partition of ``topics`` with the group's committed offset (negative where there is none).
    Blocking: call it in a thread."""
    consumer = Consumer({**common_properties(settings), "group.id": settings.group_id, "enable.auto.commit": False})
    try:
        metadata = consumer.list_topics(timeout=TIMEOUT_S)
        partitions = [
            RdTopicPartition(topic, p)
            for topic in topics
            if topic in metadata.topics
            for p in metadata.topics[topic].partitions
        ]
        found = consumer.committed(partitions, timeout=TIMEOUT_S) if partitions else []
        return {TopicPartition(tp.topic, tp.partition): tp.offset for tp in found}
    finally:
        consumer.close()
