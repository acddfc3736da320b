"""The librdkafka clients of one run: started once the broker answers, probed while serving, stopped within a bound.

librdkafka connects in the background and never fails a constructor for an absent broker, so a
metadata request stands for "reachable" here: until one answers, the start waits and retries (as
with aiokafka); a broker that answers and refuses this client (SASL, TLS, reported through
``error_cb``) stops the start with :class:`~stream_learner.errors.BrokerRefusedError`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import structlog
from aiokafka import AIOKafkaClient, AIOKafkaProducer, TopicPartition
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer

from stream_learner.config import Settings
from stream_learner.errors import BrokerRefusedError
from stream_learner.kafka.clients import make_producer, security_kwargs, unused_security_settings
from stream_learner.kafka.connection import CLIENT_STOP_S, PROBE_EVERY_S, RETRY_MAX_S, RETRY_MIN_S
from stream_learner.kafka.librdkafka.config import consumer_properties, producer_properties
from stream_learner.kafka.librdkafka.read_past import ReadingPast
from stream_learner.kafka.librdkafka.reader import LibrdkafkaReader, commit_reported
from stream_learner.kafka.librdkafka.rebalance import RebalanceBridge
from stream_learner.kafka.librdkafka.threads import DaemonThread
from stream_learner.kafka.librdkafka.transactions import LibrdkafkaTransactions
from stream_learner.kafka.librdkafka.writer import DeliveryReports, LibrdkafkaWriter
from stream_learner.kafka.protocol import Rebalancing
from stream_learner.observability.telemetry import Telemetry
from stream_learner.records import Totals
from stream_learner.stopping import sleep_unless_stopped

log = structlog.get_logger(__name__)
METADATA_TIMEOUT_S = 5.0
REFUSALS = {KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED, KafkaError._SSL}


class LibrdkafkaConnection:
    """Owns the consumer and producer; ``reader`` and ``writer`` are set once :meth:`connect` is True."""

    def __init__(self, settings: Settings, stop: asyncio.Event, totals: Totals, telemetry: Telemetry) -> None:
        self.settings = settings
        self._stop = stop
        self._totals = totals
        self._telemetry = telemetry
        self.consumer: Consumer | None = None
        self.producer: Producer | None = None
        self.reader: LibrdkafkaReader | None = None
        self.writer: LibrdkafkaWriter | None = None
        self.broker_reachable = False
        self._models_producer: AIOKafkaProducer | None = None
        self.transactions: LibrdkafkaTransactions | None = None
        self._reading_past: ReadingPast | None = None
        self._bridge: RebalanceBridge | None = None
        self._consuming = DaemonThread("librdkafka-consume")
        self._flushing = DaemonThread("librdkafka-flush")
        self._probing = DaemonThread("librdkafka-metadata")
        self._refused: KafkaError | None = None

    @property
    def models_producer(self) -> AIOKafkaProducer | None:
        return self._models_producer

    async def connect(self, rebalancing: Rebalancing, fenced: Callable[[], Awaitable[None]]) -> bool:
        """Start the clients, retrying while the broker cannot be reached; False when stopped first."""
        unused = unused_security_settings(self.settings)
        if unused:
            log.warning("security_settings_unused", security_protocol=self.settings.security_protocol, settings=unused)
        delay = RETRY_MIN_S
        while not self._stop.is_set():
            self.producer = Producer(self._with_callbacks(producer_properties(self.settings), DeliveryReports()))
            metadata = await self._metadata(self.producer)
            if metadata is None:
                await asyncio.get_running_loop().run_in_executor(self._probing, self.producer.poll, 0.1)  # error_cb
                self._raise_if_refused()
                log.warning("broker_unreachable", bootstrap_servers=self.settings.bootstrap_servers, retry_in_s=delay)
                await sleep_unless_stopped(self._stop, delay)
                delay = min(2 * delay, RETRY_MAX_S)
                continue
            if not await self._await_output_topics():
                return False
            await self._start(rebalancing, fenced)
            self.broker_reachable = True
            return True
        return False

    def _with_callbacks(self, props: dict[str, Any], reports: DeliveryReports | None = None) -> dict[str, Any]:
        props["error_cb"] = self._client_error
        if reports is not None:
            props["on_delivery"] = self._reports = reports
        return props

    def _client_error(self, error: KafkaError) -> None:
        """librdkafka's client-level errors (called from its threads): a refusal is kept for the start."""
        if error.code() in REFUSALS:
            self._refused = error
        log.debug("librdkafka_error", error=error.str(), code=error.name())

    def _raise_if_refused(self) -> None:
        if self._refused is not None:
            raise BrokerRefusedError(f"the brokers refuse this client: {self._refused.name()}: {self._refused.str()}")

    async def _start(self, rebalancing: Rebalancing, fenced: Callable[[], Awaitable[None]]) -> None:
        """With exactly_once the transactional producer fences earlier instances, and ``fenced`` restores the
        committed checkpoint, before the consumer joins the group."""
        s, loop = self.settings, asyncio.get_running_loop()
        assert self.producer is not None
        if s.delivery == "exactly_once":
            group_metadata = lambda: self.reader.group_metadata if self.reader is not None else None  # noqa: E731
            self.transactions = LibrdkafkaTransactions(self.producer, self._flushing, group_metadata)
            await self.transactions.start()
            await fenced()
        self.consumer = Consumer({**self._with_callbacks(consumer_properties(s)), "on_commit": commit_reported})
        raw = AIOKafkaClient(**security_kwargs(s), bootstrap_servers=s.bootstrap_servers, client_id=s.client_id)
        await raw.bootstrap()
        reading_past = self._reading_past = ReadingPast(raw)
        consuming, most = self._consuming, s.fetch_max_records
        reader = self.reader = LibrdkafkaReader(self.consumer, consuming, most, self._totals, reading_past)
        await self._read_partition_counts()
        self._bridge = RebalanceBridge(loop, rebalancing, reader)
        topics = [s.events_topic] if s.role == "predictor" else [s.events_topic, s.labels_topic]
        bridge = self._bridge
        self.consumer.subscribe(topics, on_assign=bridge.on_assign, on_revoke=bridge.on_revoke, on_lost=bridge.on_lost)
        self.writer = LibrdkafkaWriter(
            self.producer,
            self._reports,
            self._flushing,
            s,
            self._totals,
            self._telemetry,
            reader.partition_count,
            reading_past.exact_headers,
            self.transactions,
        )
        if s.role == "trainer":
            self._models_producer = make_producer(s)  # see Connection.models_producer
            await self._models_producer.start()

    async def _metadata(self, client: Producer | Consumer, timeout_s: float = METADATA_TIMEOUT_S) -> Any | None:
        """The cluster's metadata, or None when no broker answered within ``timeout_s``."""
        try:
            return await asyncio.get_running_loop().run_in_executor(self._probing, client.list_topics, None, timeout_s)
        except KafkaException:
            return None

    async def _read_partition_counts(self) -> bool:
        assert self.producer is not None and self.reader is not None
        metadata = await self._metadata(self.producer)
        if metadata is None:
            return False
        counts = {name: len(t.partitions) for name, t in metadata.topics.items() if t.error is None and t.partitions}
        self.reader.partition_counts = counts
        return True

    async def _await_output_topics(self) -> bool:
        """Wait until the predictions (a trainer: models) and dead-letter topics exist; False when stopped first."""
        assert self.producer is not None
        s = self.settings
        output = s.models_topic if s.role == "trainer" else s.predictions_topic
        while not self._stop.is_set():
            metadata = await self._metadata(self.producer)
            topics = metadata.topics if metadata is not None else {}
            missing = [t for t in (output, s.dead_letter_topic) if t not in topics or not topics[t].partitions]
            if not missing:
                return True
            log.warning("output_topics_missing", topics=missing, retry_in_s=RETRY_MAX_S)
            await sleep_unless_stopped(self._stop, RETRY_MAX_S)
        return False

    async def probe(self) -> None:
        """Keep ``broker_reachable`` (and the partition counts) current every ``PROBE_EVERY_S`` (until cancelled)."""
        while True:
            reachable = await self._read_partition_counts()
            if reachable != self.broker_reachable:
                event = "broker_reachable" if reachable else "broker_unreachable"
                log.warning(event, bootstrap_servers=self.settings.bootstrap_servers)
            self.broker_reachable = reachable
            await asyncio.sleep(PROBE_EVERY_S)

    async def commit_offsets(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Commit the offsets of the partitions this member holds: with exactly_once in the open transaction,
        which commits (a failure fails the service), else to the group, where they are advisory (for lag
        tools) and a failure is logged."""
        reader = self.reader
        held = reader.assignment() if reader is not None else set()
        assigned = {tp: offset for tp, offset in offsets.items() if tp in held}
        if self.transactions is not None:
            await self.transactions.commit(assigned)
        elif assigned and reader is not None:
            try:
                await reader.commit(assigned)
            except Exception as exc:  # noqa: BLE001 - the checkpoint is durable; Kafka's offsets follow it
                log.warning("offset_commit_failed", error=f"{type(exc).__name__}: {exc}")

    async def abort_transaction(self) -> None:
        """Best effort: end an open transaction now rather than at the broker's transaction timeout."""
        if self.transactions is not None:
            await self.transactions.abort()

    async def close(self) -> None:
        """Leave the group and stop the clients, each within ``CLIENT_STOP_S``."""
        if self._bridge is not None:
            self._bridge.closing = True
        stops: list[tuple[str, Awaitable[Any]]] = []  # the quick ones first: a slow one cannot hold them
        if self._reading_past is not None:
            stops.append(("AIOKafkaClient", self._reading_past.close()))
        if self._models_producer is not None:
            stops.append(("AIOKafkaProducer", self._models_producer.stop()))
        if self.producer is not None:
            flushed = asyncio.get_running_loop().run_in_executor(self._flushing, self.producer.flush, CLIENT_STOP_S)
            stops.append(("Producer", flushed))
        if self.reader is not None:
            stops.append(("Consumer", self.reader.close()))
        for name, stop in stops:
            try:
                await asyncio.wait_for(stop, CLIENT_STOP_S)
            except Exception as exc:  # noqa: BLE001 - stopping is best effort; the process is leaving
                log.warning("client_stop_failed", client=name, error=f"{type(exc).__name__}: {exc}")
        for thread in (self._consuming, self._flushing, self._probing):
            thread.shutdown(wait=False)
        self.consumer = self.producer = self._models_producer = self.transactions = None
        self.reader = self.writer = None
