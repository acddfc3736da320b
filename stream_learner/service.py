"""The service: one run loop wiring the parts together.

    events -> codec -> batcher -> model (device thread) -> predictions + join
    labels -> codec -> join -> trainer (optimizer step) -> checkpoint -> offset commit

Each turn of the loop: fetch, decode (rejects go to the dead-letter topic),
predict the batches that are due, join labels, train the examples that are due,
expire what waited too long, and checkpoint when due. The checkpoint protocol is
:meth:`Service.checkpoint` (docs/reliability.md tells why it holds); everything
that mutates state runs under one lock, so a rebalance callback sees a consistent cut.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple, TypeVar

import numpy as np
import structlog
import torch
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from threadpoolctl import threadpool_limits

from stream_learner.checkpointing.cut import restore_state, snapshot_state
from stream_learner.checkpointing.store import CheckpointStore
from stream_learner.checkpointing.transactions import Transactions, choose_checkpoint, committed_offsets
from stream_learner.config import Settings
from stream_learner.errors import BrokerRefusedError, CheckpointError, DeliveryError
from stream_learner.intake.batcher import MicroBatcher
from stream_learner.intake.codec import decode_events, decode_labels, encode_predictions
from stream_learner.kafka.clients import (
    RebalanceHooks,
    dead_letter_headers,
    known_position,
    make_consumer,
    make_producer,
    refusal,
    send_partitioned,
    watch_offset_resets,
)
from stream_learner.kafka.fetching import Fetcher
from stream_learner.kernels.record_batch import PackedRecords
from stream_learner.learning.device_thread import DeviceThread
from stream_learner.learning.join import Examples, JoinBuffer
from stream_learner.learning.model import build_model, resolve_device
from stream_learner.learning.prequential import PrequentialMetrics
from stream_learner.learning.schedule import TrainingSchedule
from stream_learner.learning.trainer import Trainer
from stream_learner.observability.telemetry import Telemetry
from stream_learner.records import EventBatch, Predictions, Rejected

log = structlog.get_logger(__name__)
CHECKPOINT_RETRY_S = 5.0
BROKER_RETRY_MIN_S, BROKER_RETRY_MAX_S = 0.5, 5.0
"""Waits between tries to reach the broker at start (doubling from the first to the second)."""
CLIENT_STOP_S = 3.0
MAX_QUEUED_STEPS = 32
"""Optimizer steps queued on the device thread before the loop waits for them."""
INLINE_INFERENCE_MAX_S = 0.002
"""A CPU forward pass quicker than this runs in the loop's thread when the device thread is idle:
the handoff to the thread and back took longer (batch taken to prediction sent: p50 1.8 vs 1.1 ms,
p90 3.9 vs 2.2 ms at 5k events/s on 2 busy cores, measured)."""
INLINE_TRAINING_MAX_S = 0.005
"""With a backlog, a CPU optimizer step that took less CPU time than this runs in the loop's
thread when the device thread is idle: the loop never idles then and the next prediction waits
for the step anyway, so the thread bought only the two threads taking turns on the GIL around
each small torch op (catch-up at MAX_BATCH_SIZE 256 and TRAIN_BATCH_SIZE 32: 20.0-22.4k against
17.3-18.2k events/s, measured)."""
EARLY_LABELS_HIGH = 4096
"""Early labels above which the labels partitions pause while events are left to read."""
T = TypeVar("T")


class StepOutcome(NamedTuple):
    """What one queued optimizer step did, reported back to the loop (a tuple: a frozen dataclass's
    ``__init__`` cost a few µs, and a step of 32 examples is reported thousands of times a second)."""

    examples: int
    loss: float
    seconds: float
    model_version: int
    poisoned: bool
    rolled_back: bool
    dropped: int
    """Examples left out of the step for a loss of their own that is not finite."""
    features: np.ndarray
    """The step's features, for the debug log's digest (their sum: equal step sequences log equal digests)."""


def _memoized(function: Callable[[int], T]) -> Callable[[int], T]:
    """``function`` answering each argument once (``functools.cache`` costs more to make than this saves per call)."""
    known: dict[int, T] = {}

    def memoized(argument: int) -> T:
        if argument not in known:
            known[argument] = function(argument)
        return known[argument]

    return memoized


class Service:
    """Predicts every event, trains on every label once, checkpoints with offsets."""

    def __init__(self, settings: Settings, telemetry: Telemetry | None = None) -> None:
        s = settings
        self.settings = s
        self.telemetry = telemetry or Telemetry()
        if s.torch_threads:
            torch.set_num_threads(s.torch_threads)
            # numpy's BLAS (the dense net's products): its idle threads spin, taking the cores
            # the event loop and the broker need (mlp 256 paced: p50 104 ms against 56 with one).
            threadpool_limits(s.torch_threads, user_api="blas")
        self.trainer = Trainer(build_model(s), s, resolve_device(s.device))
        default_label = s.default_label if s.missing_label_policy == "default" else None
        self.join = JoinBuffer(
            s.input_dim, s.output_dim, s.max_pending, s.label_ttl_s,
            default_label=default_label, max_early_label_bytes=s.max_early_label_bytes,
        )  # fmt: skip
        self.batcher = MicroBatcher(s.max_batch_size, s.max_batch_delay_ms / 1000)
        self.schedule = TrainingSchedule(s.train_batch_size, s.max_batch_delay_ms / 1000, max_held=s.max_pending)
        self.metrics = PrequentialMetrics(s.task, s.metrics_window)
        self.store = CheckpointStore(s.checkpoint_dir, s.keep_checkpoints)
        self.counters: Counter[str] = Counter()
        self.offsets: dict[TopicPartition, int] = {}
        self.last_checkpoint: dict[str, Any] = {}
        self._device = DeviceThread()
        self._inline_inference = False
        """Whether the last forward pass was a quick one on the CPU (see :meth:`_infer`)."""
        self._inline_training = False
        """Whether the last optimizer step was a quick one on the CPU (see :meth:`_train`)."""
        self._deliveries: list[asyncio.Future[Any]] = []
        self._steps: list[asyncio.Future[StepOutcome]] = []
        self._writing: asyncio.Task[None] | None = None
        """Steps 4 to 6 of the last checkpoint, while they run in the background (see :meth:`checkpoint`)."""
        self._transactions: Transactions | None = None
        self._lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self._failed = False
        self._failure: Exception | None = None
        self._early_labels_high = max(1, min(EARLY_LABELS_HIGH, s.max_pending // 2))
        self._dirty = False
        self._checkpoints_this_run = 0
        self._next_checkpoint = time.monotonic() + s.checkpoint_interval_s
        self._next_log = time.monotonic() + s.log_interval_s
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._fetcher: Fetcher | None = None
        self._broker_reachable = False
        self._last_good_trainer_state: dict[str, Any] | None = None
        self.restored = False
        """True once the checkpoint is restored (or none was found): the totals are the service's own."""
        self._last_checkpoint_at = time.time()

    def stop(self) -> None:
        """Ask the run loop to finish: drain, final checkpoint, exit."""
        self._stop.set()

    async def run(self) -> None:
        """Serve until :meth:`stop`; raises if the service fails (no checkpoint is written then).

        A broker that cannot be reached at start is waited for, as are output topics that do not
        exist yet (``/readyz`` answers 503 meanwhile); a stop asked for while waiting ends the run
        at once: nothing was read, so there is nothing to checkpoint.
        """
        if self.settings.delivery != "exactly_once":
            await self._restore()
        try:
            if not await self._connect():
                return
            log.info(
                "service_started", bootstrap_servers=self.settings.bootstrap_servers, device=str(self.trainer.device)
            )
            probe = asyncio.create_task(self._probe_broker())
            try:
                while not self._stop.is_set():
                    await self._turn()
                if self._failure is not None:
                    raise self._failure
            finally:
                probe.cancel()
        except BaseException:
            self._failed = True
            raise
        finally:
            await self._close()

    async def _connect(self) -> bool:
        """Start the clients, retrying while the broker cannot be reached; False when stopped first."""
        delay = BROKER_RETRY_MIN_S
        while not self._stop.is_set():
            try:
                await self._start_clients()
            except KafkaError as exc:
                if not exc.retriable:
                    raise
                await self._stop_clients()
                refused = await refusal(self.settings)
                if refused is not None:
                    raise BrokerRefusedError(
                        f"the brokers refuse this client: {type(refused).__name__}: {refused}"
                    ) from refused
                log.warning("broker_unreachable", bootstrap_servers=self.settings.bootstrap_servers,
                            error=f"{type(exc).__name__}: {exc}", retry_in_s=delay)  # fmt: skip
                await self._sleep_unless_stopped(delay)
                delay = min(2 * delay, BROKER_RETRY_MAX_S)
                continue
            if await self._await_output_topics():
                self._broker_reachable = True
                return True
        return False

    async def _start_clients(self) -> None:
        """Producer first (with exactly_once its start fences earlier instances), then the group consumer."""
        s = self.settings
        self._producer, self._consumer = make_producer(s), make_consumer(s)
        if s.delivery == "exactly_once":
            self._transactions = Transactions(self._producer, s.group_id)
            # Fence earlier instances (their open transaction ends) before reading what they committed.
            await self._transactions.start()
            await self._restore(committed=await committed_offsets(s))
        else:
            await self._producer.start()
        self._consumer.subscribe(
            [s.events_topic, s.labels_topic], listener=RebalanceHooks(self._on_revoked, self._on_assigned)
        )
        await self._consumer.start()
        self._fetcher = Fetcher(self._consumer, self._producer.client, s.fetch_max_records, read_committed=True)
        watch_offset_resets(self._offset_reset)

    async def _stop_clients(self) -> None:
        """Stop whatever clients were made, each within ``CLIENT_STOP_S`` (a silent broker cannot hold the exit)."""
        for client in (self._consumer, self._producer):
            if client is None:
                continue
            try:
                await asyncio.wait_for(client.stop(), CLIENT_STOP_S)
            except Exception as exc:  # noqa: BLE001 - stopping is best effort; the process is leaving or retrying
                log.warning("client_stop_failed", client=type(client).__name__, error=f"{type(exc).__name__}: {exc}")
        self._consumer = self._producer = self._transactions = None

    async def _await_output_topics(self) -> bool:
        """Wait until the predictions and dead-letter topics exist; False when stopped first.

        A send to a topic the producer has no metadata for waits for it holding the loop (up to
        ``DELIVERY_TIMEOUT_S``), so a missing output topic is found here, before anything is read.
        """
        assert self._producer is not None
        client = self._producer.client
        wanted = (self.settings.predictions_topic, self.settings.dead_letter_topic)
        while not self._stop.is_set():
            for topic in wanted:
                client.add_topic(topic)
            await client.force_metadata_update()
            missing = [t for t in wanted if not client.cluster.partitions_for_topic(t)]
            if not missing:
                return True
            log.warning("output_topics_missing", topics=missing, retry_in_s=BROKER_RETRY_MAX_S)
            await self._sleep_unless_stopped(BROKER_RETRY_MAX_S)
        return False

    async def _sleep_unless_stopped(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stop.wait(), seconds)
        except TimeoutError:
            pass

    def _offset_reset(self, tp: TopicPartition, offset: int) -> None:
        """The consumer's position on ``tp`` was out of range: records from ``offset`` on were deleted (retention)."""
        if tp in self._consumer_assignment():
            self.counters["offset_resets"] += 1
            log.warning("offset_out_of_range", where=f"{tp.topic}[{tp.partition}]@{offset}",
                        detail="the records were deleted before they were read (retention); reading resumes at the log start")  # fmt: skip

    def _consumer_assignment(self) -> set[TopicPartition]:
        return self._consumer.assignment() if self._consumer is not None else set()

    async def _turn(self) -> None:
        assert self._consumer is not None
        timeout = min(self.batcher.seconds_until_due(time.monotonic()), 0.05)
        assert self._fetcher is not None
        fetched, unreadable = await self._fetcher.fetch(timeout, self.offsets)
        async with self._lock:
            assigned = self._consumer.assignment()
            fetched = {tp: records for tp, records in fetched.items() if tp in assigned and records}
            await self._ingest(fetched)
            await self._dead_letter(unreadable)
            self._track_positions(fetched)
            await self._predict(self.batcher.take_due(time.monotonic()))
            await self._expire()
            await self._train_due()
            await self._finish_steps(wait=False)
            self._check_deliveries()
            self._pace_labels()
            if self._checkpoint_due():
                await self.checkpoint("interval", wait=False)
        if time.monotonic() >= self._next_log:
            self._next_log = time.monotonic() + self.settings.log_interval_s
            log.info("progress", **self.stats())

    def _checkpoint_due(self) -> bool:
        """Something changed, the interval passed, and the last checkpoint's background write is done."""
        writing = self._writing is not None and not self._writing.done()
        return self._dirty and time.monotonic() >= self._next_checkpoint and not writing

    async def _ingest(self, fetched: dict[TopicPartition, list[Any]]) -> None:
        """Decode consumed records (aiokafka ``ConsumerRecord``s or :class:`RawRecord`s), one call per topic.

        One call per topic, not per partition: a turn of a live stream holds a few records of
        each partition, and the decoders' and the join's cost per call outweighed their cost per
        record (decoding and joining 56 labels of 4 partitions took 37 % as long in one call as
        in four, measured).
        """
        s = self.settings
        events = [r for tp, records in fetched.items() if tp.topic == s.events_topic for r in records]
        labels = [r for tp, records in fetched.items() if tp.topic != s.events_topic for r in records]
        rejected: list[Rejected] = []
        if events:
            decoded, rejected = decode_events(events, s.input_dim, time.time())
            self.counters["events_consumed"] += len(events)
            self.batcher.add(decoded, time.monotonic())
        if labels:
            decoded_labels, rejected_labels = decode_labels(labels, s.task, s.num_classes)
            self.counters["labels_consumed"] += len(labels)
            joined = self.join.add_labels(
                decoded_labels.ids,
                decoded_labels.labels,
                time.time(),
                decoded_labels.partitions,
                decoded_labels.offsets,
            )
            self._learn_from(joined)
            rejected += rejected_labels
        await self._dead_letter(rejected)
        self._dirty = self._dirty or bool(fetched)

    async def _predict(self, batches: list[EventBatch]) -> None:
        assert self._producer is not None
        for events in batches:
            started = time.perf_counter()
            scores, version = await self._infer(events.features)
            self.telemetry.batch_predicted(len(events), time.perf_counter() - started, events.event_times())
            values = encode_predictions(Predictions(events, scores, version), self.settings.task)
            records = PackedRecords.of([event_id.encode() for event_id in events.ids], values)
            source_partitions = (
                self._consumer.partitions_for_topic(self.settings.events_topic) if self._consumer else None
            )
            if self._transactions is not None:
                await self._transactions.begin()
            self._deliveries += await send_partitioned(
                self._producer,
                self.settings.predictions_topic,
                records,
                events.partitions,
                len(source_partitions) if source_partitions else None,
            )
            self.counters["events_predicted"] += len(events)
            self.telemetry.predictions_published(len(events))
            self._learn_from(self.join.add_predictions(events.ids, events.features, scores, time.time()))
            # Test-then-train per batch: in catch-up, the next batch is predicted by weights
            # that already learned from the labels joined so far.
            await self._train_due()
            await self._finish_steps(wait=False)

    async def _infer(self, features: Any) -> tuple[Any, int]:
        """Scores and the model version that made them.

        Live, a prediction runs ahead of queued steps (latency); catching up, it waits for them,
        so each batch is predicted by weights that learned every label joined before it. With
        nothing queued or running on the device thread, a CPU model whose last forward pass was
        quick runs right here instead, where it runs next either way.
        """
        if self._inline_inference and self._device.idle():
            return self._predict_on_device(features)
        predict = self._device.run if self._catching_up() else self._device.run_first
        return await predict(self._predict_on_device, features)

    def _predict_on_device(self, features: Any) -> tuple[Any, int]:
        started = time.perf_counter()
        scores = self.trainer.predict_many(features)
        self._inline_inference = (
            self.trainer.device.type == "cpu" and time.perf_counter() - started < INLINE_INFERENCE_MAX_S
        )
        return scores, self.trainer.model_version

    def _learn_from(self, examples: Examples) -> None:
        """Score the predictions made before these labels were known, then queue them for training."""
        self.metrics.update(examples.scores, examples.labels)
        self.schedule.add(examples, time.monotonic())
        if examples.event_arrived is not None and len(examples):
            self.telemetry.labels_joined(time.time() - examples.event_arrived)

    async def _train_due(self) -> None:
        assert self._consumer is not None
        labels_topic = self.settings.labels_topic
        # Memoized: nothing they read changes during take_due, which asks once per turn it passes.
        steps = self.schedule.take_due(
            time.monotonic(),
            everything_read=self._everything_read(),
            read_to_end=_memoized(lambda p: self._read_to_end(TopicPartition(labels_topic, p))),
            lowest_waiting=_memoized(self.join.lowest_waiting_label),
            events_unread=not self._events_read(),
        )
        await self._train(steps)

    def _everything_read(self) -> bool:
        """Every assigned partition read to its end and every read event predicted (false mid-rebalance)."""
        assert self._consumer is not None
        assigned = self._consumer.assignment()
        return bool(assigned) and not self.batcher and all(self._read_to_end(tp) for tp in assigned)

    def _pace_labels(self) -> None:
        """Pause the labels partitions while labels wait for events that are still to be read.

        In catch-up the labels topic can be read ahead of the events (its records are smaller,
        so a fetch of the same size carries more of them), and they pile up as early labels
        (evicted past ``MAX_PENDING``). Paused, they come once their events are in. Never while
        every event is read: then no waiting label's event is on its way, and pausing could only
        stall training.
        """
        assert self._consumer is not None
        labels = [tp for tp in self._consumer.assignment() if tp.topic == self.settings.labels_topic]
        paused = self._consumer.paused() & set(labels)
        early, early_bytes, most_bytes = (
            self.join.early_labels,
            self.join.early_label_bytes,
            self.settings.max_early_label_bytes,
        )
        if (
            not paused
            and (early > self._early_labels_high or early_bytes > most_bytes // 2)
            and not self._events_read()
        ):
            self._consumer.pause(*labels)
        elif paused and (
            early <= self._early_labels_high // 2 and early_bytes <= most_bytes // 4 or self._events_read()
        ):
            self._consumer.resume(*paused)

    def _catching_up(self) -> bool:
        """More events wait to be read or predicted than one turn fetches (``FETCH_MAX_RECORDS``).

        Not "read to the end": live, the high watermark moves on while a fetch is in flight, so
        the consumer is a few records behind most of the time, and predictions then waited behind
        queued steps (about 40 % of the batches at 10k events/s, measured).
        """
        assert self._consumer is not None
        lags = self.lag_by_partition()
        events = [tp for tp in self._consumer.assignment() if tp.topic == self.settings.events_topic]
        if any(tp not in lags or tp not in self.offsets for tp in events):
            return True  # no position or high watermark yet: nothing says the backlog is small
        return len(self.batcher) + sum(lags[tp] for tp in events) > self.settings.fetch_max_records

    def _events_read(self) -> bool:
        """Every assigned events partition read to its end, and every read event predicted."""
        assert self._consumer is not None
        events = [tp for tp in self._consumer.assignment() if tp.topic == self.settings.events_topic]
        return not self.batcher and all(self._read_to_end(tp) for tp in events)

    def _read_to_end(self, tp: TopicPartition) -> bool:
        """No records of ``tp`` left to read; a partition owned by another member counts as read."""
        assert self._consumer is not None
        assigned = self._consumer.assignment()
        if tp not in assigned:
            return bool(assigned)
        end = self._readable_end(tp)
        return end is not None and tp in self.offsets and self.offsets[tp] >= end

    def _readable_end(self, tp: TopicPartition) -> int | None:
        """Where reading ``tp`` ends for now: its last stable offset (records of an upstream transaction
        still open cannot be read yet), or its high watermark where the broker reports no sound one."""
        assert self._consumer is not None
        high, stable = self._consumer.highwater(tp), self._consumer.last_stable_offset(tp)
        return stable if high is not None and stable is not None and 0 <= stable <= high else high

    def _track_positions(self, fetched: dict[TopicPartition, list[Any]]) -> None:
        """Each assigned partition's next offset: the consumer's own position.

        Every record handed out is ingested in the same turn, so the position is the first offset
        whose effect is not in the state; unlike "last record + 1" it passes transaction markers,
        aborted ranges and records deleted before they were read, so a partition that ends in a
        marker counts as read to its end. A position behind the records just ingested (a seek
        in a rebalance between the fetch and now) keeps their end, so nothing is read twice.
        """
        assert self._consumer is not None
        for tp in self._consumer.assignment():
            records = fetched.get(tp)
            read = records[-1].offset + 1 if records else self.offsets.get(tp)
            position = known_position(self._consumer, tp)
            if position is not None and (read is None or position > read):
                self.offsets[tp] = position
                self._dirty = self._dirty or read is not None
            elif read is not None:
                self.offsets[tp] = read

    async def _train(self, batches: list[Examples]) -> None:
        """Queue optimizer steps on the device thread, in order, without waiting for each.

        They run while the loop decodes and produces; the checkpoint's snapshot, queued
        after them, sees their effect. At most ``MAX_QUEUED_STEPS`` wait: beyond that the
        loop waits, which is the backpressure on intake. :meth:`_finish_steps` reports them.
        With more records left to read than a turn fetches, quick CPU steps run right here
        instead (``INLINE_TRAINING_MAX_S``): the loop is never idle then.
        """
        backlog = bool(batches) and self.lag() > self.settings.fetch_max_records
        for examples in batches:
            here = backlog and self._inline_training  # a step that ran slow sends the next ones to the thread
            self._steps.append(self._device.submit_here_if_idle(here, self._train_on_device, examples))
            self._dirty = True
            if len(self._steps) > MAX_QUEUED_STEPS and not self._steps[-MAX_QUEUED_STEPS - 1].done():
                await asyncio.wait([self._steps[-MAX_QUEUED_STEPS - 1]])

    def _train_on_device(self, examples: Examples) -> StepOutcome:
        """One step, and the guardrail's rollback right after a poisoned one.

        On the device thread, or in the loop's thread (see :meth:`_train`)."""
        started, cpu_started = time.perf_counter(), time.thread_time()
        poisoned_before, skipped_before = self.trainer.counters.poisoned_steps, self.trainer.counters.examples_skipped
        loss = self.trainer.learn_many(examples)
        poisoned = self.trainer.counters.poisoned_steps != poisoned_before
        good = self._last_good_trainer_state
        rolled_back = poisoned and self.settings.guardrail_action == "rollback" and good is not None
        if rolled_back:
            self.trainer.rollback(good)  # type: ignore[arg-type]
        seconds, version = time.perf_counter() - started, self.trainer.model_version
        # CPU time, not wall: on the device thread a step's wall time includes waits for the GIL.
        self._inline_training = (
            self.trainer.device.type == "cpu" and time.thread_time() - cpu_started < INLINE_TRAINING_MAX_S
        )
        dropped = self.trainer.counters.examples_skipped - skipped_before if loss == loss else 0
        return StepOutcome(len(examples), loss, seconds, version, poisoned, rolled_back, dropped, examples.features)

    async def _finish_steps(self, wait: bool) -> None:
        """Report the queued steps that are done, in order (all of them with ``wait``); a failed step fails the service."""
        if wait and self._steps:
            await asyncio.wait(self._steps)
        debug = bool(self._steps) and self._steps[0].done() and log.is_enabled_for(logging.DEBUG)
        while self._steps and self._steps[0].done():
            outcome = self._steps.pop(0).result()
            self.telemetry.step_trained(outcome.examples, outcome.seconds, outcome.loss, outcome.model_version)
            if debug:  # the sum of a step's features costs more than the rest of its report
                log.debug(
                    "train_step",
                    examples=outcome.examples,
                    version=outcome.model_version,
                    digest=float(outcome.features.sum()),
                )
            if outcome.rolled_back:
                log.warning("training_rolled_back", examples=outcome.examples, model_version=outcome.model_version)
            elif outcome.poisoned:
                log.warning("training_step_skipped", reason="loss spike", examples=outcome.examples)
            elif outcome.loss != outcome.loss:
                log.warning("training_step_skipped", reason="non-finite loss or gradient", examples=outcome.examples)
            elif outcome.dropped:
                log.warning(
                    "training_examples_dropped", reason="non-finite loss of their own", examples=outcome.dropped
                )

    async def _expire(self) -> None:
        before = self.join.counters.events_expired + self.join.counters.labels_expired
        self.join.expire(time.time())
        unlabeled = self.join.take_unlabeled() if self.join.default_label is not None else None
        if unlabeled is not None and len(unlabeled):
            self._learn_from(unlabeled)
        if self.join.counters.events_expired + self.join.counters.labels_expired != before:
            self._dirty = True

    async def _dead_letter(self, rejected: list[Rejected]) -> None:
        assert self._producer is not None
        if rejected and self._transactions is not None:
            await self._transactions.begin()
        for item in rejected:
            r = item.record
            log.warning("record_dead_lettered", where=r.where, reason=item.reason, detail=item.detail)
            future = await self._producer.send(
                self.settings.dead_letter_topic, r.value, key=r.key, headers=dead_letter_headers(item)
            )
            self._deliveries.append(future)
            self.counters[f"dead_lettered.{item.reason}"] += 1
            self.telemetry.dead_lettered(item.reason)
            self.counters["dead_lettered"] += 1

    def _check_deliveries(self) -> None:
        """Forget acknowledged sends; a failed one fails the service (the cut cannot pass it)."""
        pending = []
        for future in self._deliveries:
            if not future.done():
                pending.append(future)
            elif future.exception() is not None:
                raise DeliveryError(f"a produced record was not acknowledged: {future.exception()!r}")
        self._deliveries = pending

    async def _flush_deliveries(self) -> None:
        deliveries, self._deliveries = self._deliveries, []
        results = await asyncio.gather(*deliveries, return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise DeliveryError(f"{len(errors)} produced records were not acknowledged: {errors[0]!r}")
        self.counters["predictions_acknowledged"] = self.counters["events_predicted"]

    async def checkpoint(self, reason: str, wait: bool = True) -> bool:
        """Take a checkpoint; False when it could not be written (nothing committed then; a write in
        the background reports its failure in the log and retries).

        The caller holds ``self._lock``, which is Step 1, stopping intake. Steps 2 and 3 (drain,
        snapshot) are done when this returns. Steps 4 to 6 (write, commit, prune) are done too,
        unless ``wait`` is false and delivery is at-least-once: then they run in the background
        on the snapshot already taken, while intake resumes (a cut of 200k pending events held
        intake for 117-172 ms, 72-95 of them writing, measured). They finish before the next
        checkpoint's step 2, so checkpoints are written and committed in order. Exactly-once
        always waits: its transaction must commit before anything past the cut is produced.
        """
        assert self._consumer is not None
        await self._finish_writing()
        started = time.monotonic()
        self._checkpoints_this_run += 1
        # Step 2. Drain: every batched event predicted, every produced record acknowledged.
        await self._predict(self.batcher.take_all())
        await self._finish_steps(wait=True)
        await self._flush_deliveries()
        self._crash_point("drained")
        # Step 3. Snapshot on the device thread: no inference or training step runs meanwhile.
        state = await self._device.run(snapshot_state, self)
        self._crash_point("snapshot")
        self._last_good_trainer_state = state["trainer"]
        self._dirty = False
        self._next_checkpoint = time.monotonic() + self.settings.checkpoint_interval_s
        if wait or self._transactions is not None:
            written = await self._persist(state, reason, started)
        else:
            self._writing, written = asyncio.create_task(self._persist_in_background(state, reason, started)), True
        # Step 7. Resume intake: the caller releases the lock (with steps 4 to 6 still running, see above).
        self.telemetry.intake_paused(time.monotonic() - started)
        return written

    async def _persist(self, state: dict[str, Any], reason: str, started: float) -> bool:
        """Steps 4 to 6 of a checkpoint of ``state``; False when it could not be written (retried soon)."""
        # Step 4. Write atomically; on failure keep serving and retry soon, committing nothing.
        try:
            path = await asyncio.to_thread(
                self.store.write, state, before_rename=lambda: self._crash_point("written_temp")
            )
        except Exception as exc:  # noqa: BLE001 - whatever the disk did (ENOSPC surfaces from torch as a RuntimeError), retry
            log.error(
                "checkpoint_write_failed",
                reason=reason,
                error=f"{type(exc).__name__}: {exc}",
                retry_in_s=CHECKPOINT_RETRY_S,
            )
            self._dirty = True
            self._next_checkpoint = time.monotonic() + CHECKPOINT_RETRY_S
            return False
        self._crash_point("written")
        # Step 5. Commit the same offsets to Kafka: for lag tools, the checkpoint being the source of
        # truth; or, with exactly_once, with the transaction of everything produced since the last cut.
        if self._transactions is not None:
            await self._transactions.commit(self._assigned(state["offsets"]))
        else:
            await self._commit(state["offsets"])
        self._crash_point("committed")
        # Step 6. Prune old checkpoints; a failure here costs disk space, not safety.
        try:
            await asyncio.to_thread(self.store.prune)
        except Exception as exc:  # noqa: BLE001
            log.warning("checkpoint_prune_failed", error=str(exc))
        self.last_checkpoint = {"path": str(path), "reason": reason, "at": time.time()}
        self._last_checkpoint_at = time.time()
        self.telemetry.checkpoint_written(time.monotonic() - started, reason)
        log.info("checkpoint_written", reason=reason, path=str(path), seconds=round(time.monotonic() - started, 3))
        return True

    async def _persist_in_background(self, state: dict[str, Any], reason: str, started: float) -> None:
        """:meth:`_persist` as a task of its own: what fails it fails the service, as in the run loop."""
        try:
            await self._persist(state, reason, started)
        except Exception as exc:
            self._fail_from_outside(exc)

    def _fail_from_outside(self, exc: Exception) -> None:
        """Fail the service from a task other than the run loop: the loop stops and re-raises ``exc``."""
        self._failed, self._failure = True, exc
        self._stop.set()

    async def _finish_writing(self) -> None:
        """Wait for the background steps 4 to 6 of the last checkpoint, if they are still running."""
        writing, self._writing = self._writing, None
        if writing is not None:
            await writing

    def _crash_point(self, step: str) -> None:
        self.telemetry.checkpoint_step(step, self._checkpoints_this_run)

    def _assigned(self, offsets: dict[str, dict[int, int]]) -> dict[TopicPartition, int]:
        """The checkpoint's offsets of the partitions this member holds."""
        assert self._consumer is not None
        assigned = self._consumer.assignment()
        return {
            tp: offset
            for topic, parts in offsets.items()
            for partition, offset in parts.items()
            if (tp := TopicPartition(topic, partition)) in assigned
        }

    async def _commit(self, offsets: dict[str, dict[int, int]]) -> None:
        assert self._consumer is not None
        to_commit = self._assigned(offsets)
        if not to_commit:
            return
        try:
            await self._consumer.commit(to_commit)
        except Exception as exc:  # noqa: BLE001 - Kafka's offsets are advisory; the checkpoint is durable
            log.warning("offset_commit_failed", error=f"{type(exc).__name__}: {exc}")

    async def _restore(self, committed: dict[TopicPartition, int] | None = None) -> None:
        """Load the newest checkpoint; with ``committed`` (exactly_once), the newest whose transaction committed."""
        if committed is None:
            loaded = await asyncio.to_thread(self.store.load_latest)
        else:
            loaded = await asyncio.to_thread(lambda: choose_checkpoint(self.store.load_all(), committed))
        if loaded is None:
            log.info("no_checkpoint", directory=str(self.store.directory))
        else:
            await self._device.run(restore_state, self, loaded.state)
            self._last_good_trainer_state = loaded.state["trainer"]
            log.info("checkpoint_restored", path=str(loaded.path), model_version=self.trainer.model_version)
        self.restored = True

    async def _on_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        assert self._consumer is not None
        assigned = list(assigned)
        for tp in assigned:
            if tp in self.offsets:
                self._consumer.seek(tp, self.offsets[tp])
        self.schedule.set_partitions(tp.partition for tp in assigned if tp.topic == self.settings.labels_topic)
        log.info("partitions_assigned", partitions=sorted(f"{tp.topic}[{tp.partition}]" for tp in assigned))

    async def _on_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        revoked = list(revoked)
        if not revoked or self._failed:
            return
        try:
            async with self._lock:
                # Even with nothing new since the last cut: the revocation is then always on record
                # as a checkpoint whose offsets were committed just before the partitions went.
                await self.checkpoint("revoked")
        except Exception as exc:
            # aiokafka logs and swallows a listener's error; the run loop re-raises it instead.
            self._fail_from_outside(exc)
            raise
        log.info("partitions_revoked", partitions=sorted(f"{tp.topic}[{tp.partition}]" for tp in revoked))

    async def _close(self) -> None:
        try:
            if not self._failed and self._consumer is not None:
                try:
                    await asyncio.wait_for(self._final_checkpoint(), self.settings.shutdown_timeout_s)
                except TimeoutError:
                    raise CheckpointError(
                        f"the final checkpoint was not done within SHUTDOWN_TIMEOUT_S={self.settings.shutdown_timeout_s:g} s "
                        "(the broker did not acknowledge); the next start resumes from the last durable one"
                    ) from None
        except BaseException:
            self._failed = True
            raise
        finally:
            if self._failed and self._writing is not None:
                self._writing.cancel()  # never commit after a failure; a file it already wrote is a whole cut
            if self._failed and self._transactions is not None and self._transactions.open:
                await self._abort_transaction()
            await self._stop_clients()
            self._device.close()
            self.telemetry.close()
            log.info("service_stopped", failed=self._failed, **self.stats())

    async def _final_checkpoint(self) -> None:
        """Everything read is predicted and trained, then checkpointed."""
        async with self._lock:
            await self._predict(self.batcher.take_all())
            await self._train(self.schedule.take_all())
            if not await self.checkpoint("shutdown"):
                raise CheckpointError(
                    "the final checkpoint could not be written; the next start resumes from the last durable one"
                )

    async def _abort_transaction(self) -> None:
        """Best effort: end the open transaction now rather than at the broker's transaction timeout."""
        assert self._producer is not None
        try:
            await asyncio.wait_for(self._producer.abort_transaction(), 5.0)
        except Exception as exc:  # noqa: BLE001 - the next start's fencing aborts it anyway
            log.warning("transaction_abort_failed", error=f"{type(exc).__name__}: {exc}")

    async def _probe_broker(self, every_s: float = 2.0, timeout_s: float = 2.0) -> None:
        """Keep ``_broker_reachable`` current with a metadata request every ``every_s``."""
        assert self._producer is not None
        client = self._producer.client
        while True:
            try:
                await asyncio.wait_for(client.fetch_all_metadata(), timeout_s)
                reachable = True
            except Exception:  # noqa: BLE001 - any failure means "not reachable now"
                reachable = False
            if reachable != self._broker_reachable:
                log.warning(
                    "broker_reachable" if reachable else "broker_unreachable",
                    bootstrap_servers=self.settings.bootstrap_servers,
                )
            self._broker_reachable = reachable
            await asyncio.sleep(every_s)

    def health(self) -> dict[str, Any]:
        """Readiness and its parts: broker reachable, partitions assigned, model loaded, checkpoints current.

        Checkpoints are current when the newest is younger than 3 x the interval, or nothing changed since.
        """
        assigned = len(self._consumer.assignment()) if self._consumer is not None else 0
        age = time.time() - self._last_checkpoint_at
        checkpoint_ok = not self._dirty or age < 3 * self.settings.checkpoint_interval_s
        checks = {
            "broker_reachable": self._broker_reachable,
            "partitions_assigned": assigned > 0,
            "model_loaded": True,
            "checkpoint_current": checkpoint_ok,
        }
        return {
            "ready": all(checks.values()) and not self._failed,
            **checks,
            "checkpoint_age_s": age,
            "assigned_partitions": assigned,
        }

    def lag_by_partition(self) -> dict[TopicPartition, int]:
        """Records not yet read per assigned partition (high watermark minus next offset)."""
        if self._consumer is None:
            return {}
        lags = {}
        for tp in self._consumer.assignment():
            high = self._consumer.highwater(tp)
            if high is not None:
                lags[tp] = max(0, high - self.offsets.get(tp, 0))
        return lags

    def lag(self) -> int:
        """Records not yet read: high watermark minus next offset, summed over assigned partitions."""
        return sum(self.lag_by_partition().values())

    def stats(self) -> dict[str, Any]:
        """Counters, join and training state, prequential metrics and lag, for logs and the demo."""
        j, t = self.join.counters, self.trainer.counters
        return {
            "events_consumed": self.counters["events_consumed"],
            "events_predicted": self.counters["events_predicted"],
            "labels_consumed": self.counters["labels_consumed"],
            "labels_joined": j.labels_joined,
            "examples_trained": t.examples_trained,
            "model_version": self.trainer.model_version,
            "pending_events": self.join.pending_events,
            "early_labels": self.join.early_labels,
            "queued_examples": len(self.schedule),
            "dead_lettered": self.counters["dead_lettered"],
            **{k: v for k, v in vars(j).items() if k != "labels_joined"},
            "examples_skipped": t.examples_skipped,
            "poisoned_steps": t.poisoned_steps,
            "rollbacks": t.rollbacks,
            "skipped_steps": t.skipped_steps,
            "lag": self.lag(),
            **{f"prequential_{k}": v for k, v in self.metrics.summary().items()},
        }
