"""ROLE=predictor: a stateless replica that predicts every event with the newest model version.

    events -> kafka (reader) -> intake (decode, batcher) -> learning (predict) -> kafka (writer: predictions)
    models topic -> model_versions (feed) -> learning (serve, between micro-batches)

Any number run in the group ``GROUP_ID``, on the events topic only. Nothing is read before the first
model version is loaded (``/readyz`` says so); then each turn swaps in a newer version if one is
loaded, fetches, decodes (rejects go to the dead-letter topic) and predicts the batches that are due.
Offsets are committed every ``COMMIT_INTERVAL_S`` and on revocation, each time after every batched
event was predicted and every prediction acknowledged: at least once, and a crash repeats at most the
window since the last commit. A rebalance restores nothing: a predictor holds no training state.
"""

from __future__ import annotations

import asyncio
import time

import structlog

from stream_learner.checkpointing.cut import model_spec
from stream_learner.config import Settings
from stream_learner.intake.batcher import MicroBatcher
from stream_learner.intake.fetched import decode_fetched
from stream_learner.kafka.commit_window import CommitWindow
from stream_learner.kafka.progress import ReadingProgress
from stream_learner.kafka.protocol import Reader, Rebalancing, Writer
from stream_learner.kafka.transport import make_connection
from stream_learner.learning.learner import Learner
from stream_learner.model_versions.feed import ModelFeed
from stream_learner.model_versions.models_topic import ModelsTopic
from stream_learner.observability.logs import ProgressLog
from stream_learner.observability.report import ServiceReport
from stream_learner.observability.telemetry import Telemetry
from stream_learner.records import EventBatch, Totals
from stream_learner.stopping import until_stopped_or

log = structlog.get_logger(__name__)


class Predictor:
    """Predicts every event at least once with the newest good model version; trains nothing."""

    _reader: Reader
    _writer: Writer

    def __init__(self, settings: Settings, telemetry: Telemetry | None = None) -> None:
        s = self.settings = settings
        self.telemetry = telemetry or Telemetry()
        self.totals = Totals()
        self.learner = Learner(s, self.telemetry)
        self.batcher = MicroBatcher(s.max_batch_size, s.max_batch_delay_ms / 1000)
        self._stop = asyncio.Event()
        self._lock = asyncio.Lock()
        self.kafka = make_connection(s, self._stop, self.totals, self.telemetry)
        self.window = CommitWindow(s.commit_interval_s, self._drain, self.kafka.commit_offsets)
        self.feed = ModelFeed(ModelsTopic(s), self.learner.trainer.weights(), model_spec(s))
        self.generation: int | None = None
        self._serving = self._failed = False
        progress = lambda: self._progress if self._serving else None  # noqa: E731
        self.status = ServiceReport(self.totals, self.learner, None, self.kafka, progress, lambda: self._failed)
        self.status.versions, self.status.max_model_age_s = self.feed, s.max_model_age_s
        self._progress_log = ProgressLog(s.log_interval_s)

    def stop(self) -> None:
        """Ask the run loop to finish: predict what was read, commit, exit."""
        self._stop.set()

    async def run(self) -> None:
        """Serve until :meth:`stop`; raises if the predictor fails."""
        feed = asyncio.create_task(self._follow_models())
        try:
            if not await self._first_model(feed) or not await self.kafka.connect(self._rebalancing(), _no_fencing):
                return
            self._start_serving()
            probe = asyncio.create_task(self.kafka.probe())
            try:
                while not self._stop.is_set():
                    await self._turn()
                    if feed.done():
                        feed.result()  # the feed failed: fail with it
            finally:
                probe.cancel()
        except BaseException:
            self._failed = True
            raise
        finally:
            feed.cancel()
            await self._close()

    async def _follow_models(self) -> None:
        if await self.feed.start(self._stop):
            await self.feed.run()

    async def _first_model(self, feed: asyncio.Task[None]) -> bool:
        """Wait for the first model version; False when stopped first (raises if the feed failed)."""
        log.info("predictor_waiting_for_model", models_topic=self.settings.models_topic)
        await until_stopped_or(self._stop, self.feed.first(), feed)
        if feed.done():
            feed.result()
        await self._swap_model()
        self.status.restored = True
        return not self._stop.is_set()

    def _start_serving(self) -> None:
        assert self.kafka.reader is not None and self.kafka.writer is not None
        self._reader, self._writer = self.kafka.reader, self.kafka.writer
        self._progress = ReadingProgress(self._reader, self.window, self.settings, lambda: len(self.batcher))
        self._serving = True
        log.info("predictor_started", bootstrap_servers=self.settings.bootstrap_servers, group=self.settings.group_id)

    async def _turn(self) -> None:
        timeout = min(self.batcher.seconds_until_due(time.monotonic()), 0.05)
        fetched, unreadable = await self._reader.fetch(timeout, self.window.offsets)
        async with self._lock:
            await self._swap_model()
            decoded = decode_fetched(fetched, self.settings)
            self.totals.update(events_consumed=decoded.events_read)
            if decoded.events is not None:
                self.batcher.add(decoded.events, time.monotonic())
            await self._writer.send_dead_letters(decoded.rejected + unreadable)
            self._progress.track_positions(fetched)
            if fetched or unreadable:
                self.window.touch()
            await self._predict(self.batcher.take_due(time.monotonic()))
            self._writer.raise_failed()
            if self.window.due():
                await self.window.commit()
        self._progress_log.maybe(self.status.stats)

    async def _swap_model(self) -> None:
        """Serve the newest loaded version from the next micro-batch on."""
        loaded = self.feed.take()
        if loaded is not None:
            await self.learner.serve(loaded.weights, loaded.info.step)
            self.generation = loaded.info.generation

    async def _predict(self, batches: list[EventBatch]) -> None:
        for events in batches:
            served = await self.learner.predict(events, catching_up=False)
            await self._writer.send_predictions(events, served.scores, served.version, self.generation)

    async def _drain(self) -> None:
        await self._predict(self.batcher.take_all())
        await self._writer.flush()

    def _rebalancing(self) -> Rebalancing:
        return Rebalancing(self.window.offsets, self._before_revoke, lambda tps: None)

    async def _before_revoke(self) -> None:
        if not self._serving:
            return
        async with self._lock:
            await self.window.commit()
            self.window.forget(list(self.window.offsets))

    async def _close(self) -> None:
        try:
            if not self._failed and self._serving:
                async with asyncio.timeout(self.settings.shutdown_timeout_s), self._lock:
                    await self.window.commit()
        except BaseException:
            self._failed = True
            raise
        finally:
            await self.kafka.close()
            await self.feed.close()
            self.learner.device.close()
            self.telemetry.close()
            log.info("predictor_stopped", failed=self._failed, **self.status.stats())


async def _no_fencing() -> None:
    """Predictors publish at least once: there is no transactional producer to fence with."""
