"""The Kafka clients of one run: started with retries, probed while serving, stopped within a bound.

A broker that cannot be reached at start is waited for (``/readyz`` answers 503 meanwhile);
one that answers and refuses this client (SASL, TLS) stops the start with
:class:`~stream_learner.errors.BrokerRefusedError`. Output topics that do not exist yet are
waited for before anything is read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from stream_learner.config import Settings
from stream_learner.errors import BrokerRefusedError
from stream_learner.kafka.clients import make_consumer, make_producer, refusal
from stream_learner.kafka.fetching import Fetcher
from stream_learner.kafka.offset_resets import watch_offset_resets
from stream_learner.kafka.protocol import Rebalancing
from stream_learner.kafka.reader import KafkaReader
from stream_learner.kafka.rebalance import RebalanceHooks
from stream_learner.kafka.writer import KafkaWriter
from stream_learner.observability.telemetry import Telemetry
from stream_learner.records import Totals
from stream_learner.stopping import sleep_unless_stopped

log = structlog.get_logger(__name__)
RETRY_MIN_S, RETRY_MAX_S = 0.5, 5.0
"""Waits between tries to reach the broker at start (doubling from the first to the second)."""
CLIENT_STOP_S = 3.0
PROBE_EVERY_S = 2.0

Fenced = Callable[[], Awaitable[None]]


class KafkaConnection:
    """Owns the consumer and producer; ``reader`` and ``writer`` are set once :meth:`connect` is True."""

    def __init__(self, settings: Settings, stop: asyncio.Event, totals: Totals, telemetry: Telemetry) -> None:
        self.settings = settings
        self._stop = stop
        self._totals = totals
        self._telemetry = telemetry
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self.reader: KafkaReader | None = None
        self.writer: KafkaWriter | None = None
        self.broker_reachable = False

    async def connect(self, rebalancing: Rebalancing, fenced: Fenced) -> bool:
        """Start the clients, retrying while the broker cannot be reached; False when stopped first.

        ``fenced`` is for exactly_once, which runs on librdkafka only: never called here.
        """
        delay = RETRY_MIN_S
        while not self._stop.is_set():
            try:
                await self._start(rebalancing)
            except KafkaError as exc:
                if not exc.retriable:
                    raise
                await self.close()
                await self._raise_if_refused()
                log.warning(
                    "broker_unreachable",
                    bootstrap_servers=self.settings.bootstrap_servers,
                    error=f"{type(exc).__name__}: {exc}",
                    retry_in_s=delay,
                )
                await sleep_unless_stopped(self._stop, delay)
                delay = min(2 * delay, RETRY_MAX_S)
                continue
            if await self._await_output_topics():
                self.broker_reachable = True
                return True
        return False

    async def _start(self, rebalancing: Rebalancing) -> None:
        """Producer first (with exactly_once its start fences earlier instances), then the group consumer."""
        s = self.settings
        self.producer, self.consumer = make_producer(s), make_consumer(s)
        await self.producer.start()  # at least once: exactly_once needs librdkafka (config.py says why)
        topics = [s.events_topic] if s.role == "predictor" else [s.events_topic, s.labels_topic]
        self.consumer.subscribe(topics, listener=RebalanceHooks(self.consumer, rebalancing))
        await self.consumer.start()
        fetcher = Fetcher(self.consumer, self.producer.client, s.fetch_max_records, read_committed=True)
        reader = self.reader = KafkaReader(self.consumer, fetcher)
        source_partitions = lambda: reader.partition_count(s.events_topic)  # noqa: E731
        self.writer = KafkaWriter(self.producer, s, self._totals, self._telemetry, source_partitions)
        watch_offset_resets(self._offset_reset)

    @property
    def models_producer(self) -> AIOKafkaProducer | None:
        return self.producer

    def _offset_reset(self, tp: TopicPartition, offset: int) -> None:
        """The consumer's position on ``tp`` was out of range: records from ``offset`` on were deleted (retention)."""
        if self.reader is not None and tp in self.reader.assignment():
            self._totals["offset_resets"] += 1
            detail = "the records were deleted before they were read (retention); reading resumes at the log start"
            log.warning("offset_out_of_range", where=f"{tp.topic}[{tp.partition}]@{offset}", detail=detail)

    async def _raise_if_refused(self) -> None:
        refused = await refusal(self.settings)
        if refused is not None:
            raise BrokerRefusedError(
                f"the brokers refuse this client: {type(refused).__name__}: {refused}"
            ) from refused

    async def _await_output_topics(self) -> bool:
        """Wait until the predictions (a trainer: models) and dead-letter topics exist; False when stopped first.

        A send to a topic the producer has no metadata for waits for it holding the loop (up to
        ``DELIVERY_TIMEOUT_S``), so a missing output topic is found here, before anything is read.
        """
        assert self.producer is not None
        client = self.producer.client
        s = self.settings
        output = s.models_topic if s.role == "trainer" else s.predictions_topic
        wanted = (output, s.dead_letter_topic)
        while not self._stop.is_set():
            for topic in wanted:
                client.add_topic(topic)
            await client.force_metadata_update()
            missing = [t for t in wanted if not client.cluster.partitions_for_topic(t)]
            if not missing:
                return True
            log.warning("output_topics_missing", topics=missing, retry_in_s=RETRY_MAX_S)
            await sleep_unless_stopped(self._stop, RETRY_MAX_S)
        return False

    async def probe(self, timeout_s: float = 2.0) -> None:
        """Keep ``broker_reachable`` current with a metadata request every ``PROBE_EVERY_S`` (until cancelled)."""
        assert self.producer is not None
        client = self.producer.client
        while True:
            try:
                await asyncio.wait_for(client.fetch_all_metadata(), timeout_s)
                reachable = True
            except Exception:  # noqa: BLE001 - any failure means "not reachable now"
                reachable = False
            if reachable != self.broker_reachable:
                event = "broker_reachable" if reachable else "broker_unreachable"
                log.warning(event, bootstrap_servers=self.settings.bootstrap_servers)
            self.broker_reachable = reachable
            await asyncio.sleep(PROBE_EVERY_S)

    async def abort_transaction(self) -> None:
        """No transaction is ever open here (exactly_once runs on librdkafka)."""

    async def close(self) -> None:
        """Stop whatever clients were made, each within ``CLIENT_STOP_S`` (a silent broker cannot hold the exit)."""
        for client in (self.consumer, self.producer):
            if client is None:
                continue
            try:
                await asyncio.wait_for(client.stop(), CLIENT_STOP_S)
            except Exception as exc:  # noqa: BLE001 - stopping is best effort; the process is leaving or retrying
                log.warning("client_stop_failed", client=type(client).__name__, error=f"{type(exc).__name__}: {exc}")
        self.consumer = self.producer = None
        self.reader = self.writer = None

    async def commit_offsets(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Commit the offsets of the partitions this member holds to the group, where they are advisory
        (for lag tools): a failure is logged."""
        reader = self.reader
        held = reader.assignment() if reader is not None else set()
        assigned = {tp: offset for tp, offset in offsets.items() if tp in held}
        if assigned and reader is not None:
            try:
                await reader.commit(assigned)
            except Exception as exc:  # noqa: BLE001 - the checkpoint is durable; Kafka's offsets follow it
                log.warning("offset_commit_failed", error=f"{type(exc).__name__}: {exc}")
