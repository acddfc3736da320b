"""The service: the run loop, wiring the parts together.

    events -> kafka (reader) -> intake (decode, batcher) -> learning (predict) -> kafka (writer: predictions)
    labels -> kafka (reader) -> intake (decode) -> learning (join, train) -> checkpointing (cut, store, commit)

Each turn: fetch, decode (rejects go to the dead-letter topic), predict the batches that are due,
join labels, train what is due, expire what waited too long, and take a checkpoint when due.
ROLE=trainer runs the same loop once elected, without publishing predictions (it still scores each
event, for the prequential metrics), and publishes model versions (:mod:`stream_learner.model_versions`);
ROLE=predictor is :mod:`stream_learner.predictor`. All
that changes state runs under the checkpoint's lock, so a rebalance callback sees a consistent cut;
the :class:`~stream_learner.checkpointing.checkpoint.Checkpoint` decides what may be committed.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog

from stream_learner.checkpointing.checkpoint import Checkpoint, CutSteps
from stream_learner.checkpointing.cut import model_spec
from stream_learner.checkpointing.store import CheckpointStore, by_topic
from stream_learner.config import Settings
from stream_learner.errors import CheckpointError, LeadershipLostError
from stream_learner.intake.batcher import MicroBatcher
from stream_learner.intake.fetched import decode_fetched
from stream_learner.kafka.progress import ReadingProgress
from stream_learner.kafka.protocol import Fetched, Reader, Rebalancing, Writer
from stream_learner.kafka.transport import make_connection
from stream_learner.learning.backfill import HELD_FETCHES, Predicted, next_backfill
from stream_learner.learning.learner import Learner
from stream_learner.model_versions.election import Election
from stream_learner.model_versions.publisher import ModelPublisher
from stream_learner.observability.logs import ProgressLog
from stream_learner.observability.report import ServiceReport
from stream_learner.observability.telemetry import Telemetry
from stream_learner.records import EventBatch, Rejected, Totals

log = structlog.get_logger(__name__)


class Service:
    """Predicts every event, trains on every label once, checkpoints with offsets."""

    _reader: Reader
    _writer: Writer
    _progress: ReadingProgress

    def __init__(self, settings: Settings, telemetry: Telemetry | None = None) -> None:
        s = self.settings = settings
        self.telemetry = telemetry or Telemetry()
        self.totals = Totals()
        self.learner = Learner(s, self.telemetry)
        self.batcher = MicroBatcher(s.max_batch_size, s.max_batch_delay_ms / 1000)
        self._stop = asyncio.Event()
        self.kafka = make_connection(s, self._stop, self.totals, self.telemetry)
        self.election = Election(s, self._stop) if s.role == "trainer" else None
        self.publisher: ModelPublisher | None = None
        steps = CutSteps(
            self._drain, self._snapshot, self.kafka.commit_offsets, self._fail, self._fence, self._publish_durable
        )
        store = CheckpointStore(s.checkpoint_dir, s.keep_checkpoints)
        exactly_once = s.delivery == "exactly_once"
        self.checkpoint = Checkpoint(store, s.checkpoint_interval_s, steps, self.telemetry, background=not exactly_once)
        self._serving = self._failed = self._held = False
        progress = lambda: self._progress if self._serving else None  # noqa: E731
        self.status = ServiceReport(
            self.totals, self.learner, self.checkpoint, self.kafka, progress, lambda: self._failed
        )
        self._failure: Exception | None = None
        self._progress_log = ProgressLog(s.log_interval_s)

    def stop(self) -> None:
        """Ask the run loop to finish: drain, final checkpoint, exit."""
        self._stop.set()

    async def run(self) -> None:
        """Serve until :meth:`stop`; raises if the service fails (no checkpoint is written then).

        A broker that cannot be reached at start is waited for, as are output topics that do not
        exist yet; a stop asked for while waiting ends the run at once (nothing was read).
        """
        try:
            if self.election is not None and not await self.election.lead():
                return
            if self.settings.delivery != "exactly_once":
                await self._restore(transactional=False)
            if not await self.kafka.connect(self._rebalancing(), self._restore):
                return
            self._start_serving()
            probe = asyncio.create_task(self.kafka.probe())
            try:
                while not self._stop.is_set():
                    await self._turn()
                if self._failure is not None:
                    raise self._failure
            finally:
                probe.cancel()
        except BaseException as exc:
            self._failed = True
            if self._failure is not None and exc is not self._failure:
                raise self._failure from exc  # the failure that stopped the loop, not what it cut short
            raise
        finally:
            await self._close()

    def _start_serving(self) -> None:
        assert self.kafka.reader is not None and self.kafka.writer is not None
        self._reader, self._writer = self.kafka.reader, self.kafka.writer
        self._progress = ReadingProgress(self._reader, self.checkpoint, self.settings, lambda: len(self.batcher))
        if self.election is not None:
            assert self.kafka.models_producer is not None
            s = self.settings
            publisher = ModelPublisher(
                self.kafka.models_producer, s.models_topic, self.election, model_spec(s), s.model_publish_interval_s
            )
            self.publisher = self.status.versions = publisher
        self._serving, device = True, str(self.learner.trainer.device)
        log.info("service_started", bootstrap_servers=self.settings.bootstrap_servers, device=device)

    async def _turn(self) -> None:
        # Events held for their labels (catching up) are not due: the turn waits for records.
        timeout = 0.05 if self._held else min(self.batcher.seconds_until_due(time.monotonic()), 0.05)
        fetched, unreadable = await self._reader.fetch(timeout, self.checkpoint.offsets)
        async with self.checkpoint.lock:
            await self._ingest(fetched, unreadable)
            self._held = False
            if self._progress.backfilling():
                self._held = await self._predict_backfill()
            else:
                await self._predict(self.batcher.take_due(time.monotonic()))
            expired = self.learner.expire()
            if await self.learner.train_due(self._progress) or expired:
                self.checkpoint.touch()
            self._writer.raise_failed()
            self._progress.pace_labels(self.learner.join.early_labels, self.learner.join.early_label_bytes)
            await self._publish_due()
            if self.checkpoint.due():
                await self.checkpoint.commit("interval", wait=False)
        self._progress_log.maybe(self.status.stats)

    async def _ingest(self, fetched: Fetched, unreadable: list[Rejected]) -> None:
        decoded = decode_fetched(fetched, self.settings)
        self.totals.update(events_consumed=decoded.events_read, labels_consumed=decoded.labels_read)
        if decoded.events is not None:
            self.batcher.add(decoded.events, time.monotonic())
        if decoded.labels is not None:
            self.learner.add_labels(decoded.labels)
        await self._writer.send_dead_letters(decoded.rejected + unreadable)
        self._progress.track_positions(fetched)
        if fetched:
            self.checkpoint.touch()

    async def _predict_backfill(self) -> bool:
        """Catching up: :func:`next_backfill`'s order, a step's worth at a time, trained in between;
        published a micro-batch at a time (:class:`Predicted`). True if events wait for their labels."""
        join, most, predicted = self.learner.join, HELD_FETCHES * self.settings.fetch_max_records, Predicted()
        label_read = lambda p, event_id: join.any_early([event_id]) or self._progress.labels_backfilled(p)  # noqa: E731
        held = False
        while len(self.batcher):
            in_turn = not self._reader.paused()
            events = next_backfill(self.batcher, self.learner.schedule, label_read, most, in_turn=in_turn)
            if events is None:
                held = True
                break
            served = await self.learner.predict(events, catching_up=True)
            self.learner.add_predicted(events, served.scores)
            if await self.learner.train_due(self._progress):
                self.checkpoint.touch()
            if len(predicted) and served.model != predicted.model:
                await self._send_predicted(predicted)
            predicted.add(events, served.scores, served.version, served.model)
            if len(predicted) >= self.batcher.max_batch_size:
                await self._send_predicted(predicted)
        if len(predicted):
            await self._send_predicted(predicted)
        return held

    async def _send_predicted(self, predicted: Predicted) -> None:
        model = predicted.model
        await self._writer.send_predictions(*predicted.take(), model=model)

    async def _predict(self, batches: list[EventBatch]) -> None:
        for events in batches:
            served = await self.learner.predict(events, catching_up=self._progress.catching_up())
            await self._writer.send_predictions(events, served.scores, served.version, model=served.model)
            self.learner.add_predicted(events, served.scores)
            # Test-then-train per batch: catching up, the next batch is predicted by weights that
            # already learned from the labels joined so far.
            if await self.learner.train_due(self._progress):
                self.checkpoint.touch()

    async def _publish_due(self) -> None:
        """A trainer publishes its weights every ``MODEL_PUBLISH_INTERVAL_S`` while they change (in the background)."""
        if self.publisher is not None and self.publisher.due(self.learner.trainer.model_version):
            weights, step = await self.learner.weights()
            self.publisher.publish_in_background(weights, step, by_topic(self.checkpoint.offsets), self._fail)

    async def _fence(self) -> None:
        if self.election is not None:
            await self.election.confirm()

    async def _publish_durable(self, state: dict[str, Any]) -> None:
        """After a durable checkpoint, a trainer publishes its weights (a failure other than a lost election
        only costs this version: the next one follows within ``MODEL_PUBLISH_INTERVAL_S``)."""
        if self.publisher is None:
            return
        step = int(state["trainer"]["counters"]["optimizer_steps"])
        try:
            await self.publisher.publish(state["trainer"]["model"], step, state["offsets"], durable=True)
        except LeadershipLostError:
            raise
        except Exception as exc:  # noqa: BLE001 - see the docstring
            log.warning("model_publish_failed", step=step, error=f"{type(exc).__name__}: {exc}")

    async def _drain(self) -> None:
        if not self._serving:
            return  # a revocation before the first fetch: nothing read, nothing to drain
        await self._predict(self.batcher.take_all())
        await self.learner.steps.finish(wait=True)
        await self._writer.flush()

    async def _snapshot(self) -> dict[str, Any]:
        parts = self.learner.parts(self.totals)
        return await self.learner.snapshot(parts, model_spec(self.settings), self.status.stats())

    async def _restore(self, *, transactional: bool = True) -> None:
        """Load the checkpoint to restore (``transactional``: exactly_once, called once earlier writers are fenced)."""
        parts, spec = self.learner.parts(self.totals), model_spec(self.settings)
        load = lambda state: self.learner.restore(parts, spec, state)  # noqa: E731
        await self.checkpoint.restore(load, self.settings, transactional=transactional)
        self.status.restored = True

    def _rebalancing(self) -> Rebalancing:
        labels, schedule = self.settings.labels_topic, self.learner.schedule
        assigned = lambda tps: schedule.set_partitions(tp.partition for tp in tps if tp.topic == labels)  # noqa: E731
        return Rebalancing(self.checkpoint.offsets, self.checkpoint.commit_before_revoke, assigned)

    def _fail(self, exc: Exception) -> None:
        """Fail the service from a task other than the run loop: the loop stops and re-raises ``exc``."""
        self._failed, self._failure = True, exc
        self.checkpoint.abandon()
        self._stop.set()

    async def _close(self) -> None:
        try:
            if not self._failed and self._serving:
                await self._final_checkpoint()
        except BaseException:
            self._failed = True
            raise
        finally:
            if self._failed:
                self.checkpoint.abandon()  # never commit after a failure
                await self.kafka.abort_transaction()
            if self.publisher is not None:
                await self.publisher.close()
            await self.kafka.close()
            if self.election is not None:
                await self.election.close()  # a standby takes over once the final checkpoint is written
            self.learner.device.close()
            self.telemetry.close()
            log.info("service_stopped", failed=self._failed, **self.status.stats())

    async def _final_checkpoint(self) -> None:
        """Everything read is predicted and trained, then checkpointed, within ``SHUTDOWN_TIMEOUT_S``."""
        timeout_s, why = self.settings.shutdown_timeout_s, "could not be written"
        try:
            async with asyncio.timeout(timeout_s), self.checkpoint.lock:
                await self._predict(self.batcher.take_all())
                await self.learner.train_all()
                if await self.checkpoint.commit("shutdown"):
                    return
        except TimeoutError:
            why = f"was not done within SHUTDOWN_TIMEOUT_S={timeout_s:g} s (the broker did not acknowledge)"
        raise CheckpointError(f"the final checkpoint {why}; the next start resumes from the last durable one")
