"""The group consumer of the events and labels topics: :class:`~stream_learner.kafka.protocol.Reader` on aiokafka."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from aiokafka import AIOKafkaConsumer, TopicPartition

from stream_learner.kafka.fetching import Fetcher
from stream_learner.kafka.positions import known_position
from stream_learner.kafka.protocol import Fetched
from stream_learner.records import RecordList, Rejected


class KafkaReader:
    """Reads through a started :class:`AIOKafkaConsumer`; fetching goes through :class:`Fetcher`,
    which reads past batches aiokafka cannot decode."""

    def __init__(self, consumer: AIOKafkaConsumer, fetcher: Fetcher) -> None:
        self.consumer = consumer
        self._fetcher = fetcher

    async def fetch(self, timeout_s: float, offsets: Mapping[TopicPartition, int]) -> tuple[Fetched, list[Rejected]]:
        fetched, unreadable = await self._fetcher.fetch(timeout_s, offsets)
        assigned = self.consumer.assignment()
        return {tp: RecordList(records) for tp, records in fetched.items() if tp in assigned and records}, unreadable

    def assignment(self) -> set[TopicPartition]:
        return set(self.consumer.assignment())

    def position(self, tp: TopicPartition) -> int | None:
        return known_position(self.consumer, tp)

    def readable_end(self, tp: TopicPartition) -> int | None:
        """Its last stable offset (records of an upstream transaction still open cannot be read yet),
        or its high watermark where the broker reports no sound one."""
        high, stable = self.consumer.highwater(tp), self.consumer.last_stable_offset(tp)
        end = stable if high is not None and stable is not None and 0 <= stable <= high else high
        return None if end is None else int(end)

    def highwater(self, tp: TopicPartition) -> int | None:
        high = self.consumer.highwater(tp)
        return None if high is None else int(high)

    def partition_count(self, topic: str) -> int | None:
        partitions = self.consumer.partitions_for_topic(topic)
        return len(partitions) if partitions else None

    def pause(self, partitions: Iterable[TopicPartition]) -> None:
        self.consumer.pause(*partitions)

    def resume(self, partitions: Iterable[TopicPartition]) -> None:
        self.consumer.resume(*partitions)

    def paused(self) -> set[TopicPartition]:
        return set(self.consumer.paused())

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        await self.consumer.commit(dict(offsets))
