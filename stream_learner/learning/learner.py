"""The learning side of the loop: predict on the device thread, join labels, train what is due.

Test-then-train: an event is predicted before its label can train the model, and each joined
example is scored (prequential metrics) by the prediction made before its label was known.
Every torch call runs on the one device thread (or, when that is idle and the call is quick,
in the loop's own thread, where it would run next anyway): nothing here touches Kafka.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, Protocol, TypeVar

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from stream_learner.checkpointing.cut import Part, restore_cut, take_cut
from stream_learner.config import Settings
from stream_learner.learning.device_thread import DeviceThread
from stream_learner.learning.join import Examples, JoinBuffer
from stream_learner.learning.model import build_model, resolve_device
from stream_learner.learning.model_set import ModelSet
from stream_learner.learning.prequential import PrequentialMetrics
from stream_learner.learning.schedule import TrainingSchedule
from stream_learner.learning.step_queue import StepQueue
from stream_learner.learning.trainer import Trainer
from stream_learner.observability.telemetry import Telemetry
from stream_learner.records import EventBatch, LabelBatch

INLINE_INFERENCE_MAX_S = 0.002
"""A CPU forward pass quicker than this runs in the loop's thread when the device thread is idle:
the handoff to the thread and back takes longer (docs/benchmarks.md)."""
T = TypeVar("T")


class Served(NamedTuple):
    """A micro-batch's predictions and what made them."""

    scores: np.ndarray
    version: int
    model: str | None
    """The serving model's name (:mod:`.model_set`), with challengers; else None."""


class ReadingState(Protocol):
    """How far reading got, as training asks it (see :mod:`stream_learner.kafka.progress`)."""

    def everything_read(self) -> bool: ...
    def events_read(self) -> bool: ...
    def labels_read(self, partition: int) -> bool: ...
    def backlog(self) -> bool: ...


class Learner:
    """The model, its join and training schedule, and the prequential metrics, on one device thread."""

    def __init__(self, settings: Settings, telemetry: Telemetry) -> None:
        s = settings
        if s.torch_threads:
            torch.set_num_threads(s.torch_threads)
            # numpy's BLAS (the dense net's products): its idle threads spin, taking the cores
            # that the event loop and the broker need.
            threadpool_limits(s.torch_threads, user_api="blas")
        kernels = s.cpu_kernels == "auto"
        device = resolve_device(s.device)
        self.trainer: Trainer | ModelSet = ModelSet(s, device) if s.challengers else Trainer(build_model(s), s, device)
        default_label = s.default_label if s.missing_label_policy == "default" else None
        self.join = JoinBuffer(
            s.input_dim, s.output_dim, s.max_pending, s.label_ttl_s,
            default_label=default_label, max_early_label_bytes=s.max_early_label_bytes, compiled=kernels,
        )  # fmt: skip
        self.schedule = TrainingSchedule(s.train_batch_size, s.max_batch_delay_ms / 1000, max_held=s.max_pending)
        self.metrics = PrequentialMetrics(s.task, s.metrics_window)
        self.device = DeviceThread()
        self.steps = StepQueue(self.trainer, self.device, telemetry, rollback=s.guardrail_action == "rollback")
        self._telemetry = telemetry
        self._inline_inference = False

    async def predict(self, events: EventBatch, *, catching_up: bool) -> Served:
        """Scores, and the model version (and, with challengers, the model) that made them.

        Live, a prediction runs ahead of queued steps (latency); catching up, it waits for them, so
        each batch is predicted by weights that learned every label joined before it.
        """
        started = time.perf_counter()
        if self._inline_inference and self.device.idle():
            served = self._predict_here(events.features)
        else:
            predict = self.device.run if catching_up else self.device.run_first
            served = await predict(self._predict_here, events.features)
        self._telemetry.batch_predicted(len(events), time.perf_counter() - started, events.event_times())
        return served

    def _predict_here(self, features: np.ndarray) -> Served:
        started = time.perf_counter()
        trainer = self.trainer
        scores = trainer.predict_many(features)
        quick = time.perf_counter() - started < INLINE_INFERENCE_MAX_S
        self._inline_inference = trainer.device.type == "cpu" and quick
        return Served(scores, trainer.model_version, trainer.serving if isinstance(trainer, ModelSet) else None)

    def add_predicted(self, events: EventBatch, scores: np.ndarray) -> None:
        """Predicted events wait for their labels (or meet the early ones)."""
        self._learn_from(self.join.add_predictions(events.ids, events.features, scores, time.time()))

    def add_labels(self, labels: LabelBatch) -> None:
        """Labels meet their predicted events (or wait for them)."""
        self._learn_from(
            self.join.add_labels(labels.ids, labels.labels, time.time(), labels.partitions, labels.offsets)
        )

    def expire(self) -> bool:
        """Drop what waited longer than ``LABEL_TTL_S`` (training the default label where set); True if any."""
        before = self.join.counters.events_expired + self.join.counters.labels_expired
        self.join.expire(time.time())
        unlabeled = self.join.take_unlabeled() if self.join.default_label is not None else None
        if unlabeled is not None and len(unlabeled):
            self._learn_from(unlabeled)
        return self.join.counters.events_expired + self.join.counters.labels_expired != before

    def _learn_from(self, examples: Examples) -> None:
        """Score the predictions made before these labels were known, then queue them for training."""
        self.metrics.update(examples.scores, examples.labels)
        self.schedule.add(examples, time.monotonic())
        if examples.event_arrived is not None and len(examples):
            self._telemetry.labels_joined(time.time() - examples.event_arrived)

    async def train_due(self, reading: ReadingState) -> bool:
        """Queue the steps that are due and report the finished ones; True if any was queued."""
        steps = self.schedule.take_due(
            time.monotonic(),
            everything_read=reading.everything_read(),
            read_to_end=_memoized(reading.labels_read),
            lowest_waiting=_memoized(self.join.lowest_waiting_label),
            events_unread=not reading.events_read(),
        )
        await self.steps.submit(steps, backlog=bool(steps) and reading.backlog())
        await self.steps.finish(wait=False)
        return bool(steps)

    async def train_all(self) -> None:
        """Every queued example trained, the remainders included (at shutdown)."""
        await self.steps.submit(self.schedule.take_all(), backlog=False)
        await self.steps.finish(wait=True)

    def parts(self, totals: Part) -> dict[str, Part]:
        """The components in a cut besides the trainer, by the name the checkpoint stores them under."""
        return {"join": self.join, "schedule": self.schedule, "metrics": self.metrics, "counters": totals}

    async def snapshot(
        self, parts: Mapping[str, Part], spec: dict[str, Any], summary: dict[str, Any]
    ) -> dict[str, Any]:
        """A cut on the device thread, after every queued step; it becomes the rollback state."""
        state = await self.device.run(take_cut, self.trainer, parts, spec, summary)
        self.steps.last_good_state = state["trainer"]
        return state

    async def restore(self, parts: Mapping[str, Part], spec: dict[str, Any], state: dict[str, Any]) -> None:
        """Load a cut on the device thread."""
        await self.device.run(restore_cut, self.trainer, parts, spec, state)
        self.steps.last_good_state = state["trainer"]

    async def weights(self) -> tuple[dict[str, torch.Tensor], int]:
        """The model's ``state_dict`` copied to the CPU after every queued step, and its version (to publish)."""
        return await self.device.run(lambda: (self.trainer.weights(), self.trainer.model_version))

    async def serve(self, weights: dict[str, torch.Tensor], step: int) -> None:
        """Predict with ``weights`` from now on (a predictor's model version, trained through ``step`` steps).

        The caller checked that they fit the model; the copy runs on the device thread, between predictions.
        """
        await self.device.run(self.trainer.model.load_state_dict, weights)
        self.trainer.counters.optimizer_steps = step

    def named_parameters(self) -> list[tuple[str, torch.Tensor]]:
        return list(self.trainer.model.named_parameters())

    def stats(self) -> dict[str, Any]:
        """Join, training and prequential figures, for logs, the demo and the metrics."""
        j, t = self.join.counters, self.trainer.counters
        return {
            "labels_joined": j.labels_joined,
            "examples_trained": t.examples_trained,
            "model_version": self.trainer.model_version,
            "pending_events": self.join.pending_events,
            "early_labels": self.join.early_labels,
            "queued_examples": len(self.schedule),
            **{k: v for k, v in vars(j).items() if k != "labels_joined"},
            "examples_skipped": t.examples_skipped,
            "poisoned_steps": t.poisoned_steps,
            "rollbacks": t.rollbacks,
            "skipped_steps": t.skipped_steps,
            "optimizer_steps": t.optimizer_steps,
            "last_loss": t.last_loss if t.last_loss == t.last_loss else None,
            "scored_examples": self.metrics.count,
            "device": str(self.trainer.device),
            **{f"prequential_{k}": v for k, v in self.metrics.summary().items()},
            **(self.trainer.stats() if isinstance(self.trainer, ModelSet) else {}),
        }


def _memoized(function: Callable[[int], T]) -> Callable[[int], T]:
    """``function`` answering each argument once (``functools.cache`` costs more to make than this saves)."""
    known: dict[int, T] = {}

    def memoized(argument: int) -> T:
        if argument not in known:
            known[argument] = function(argument)
        return known[argument]

    return memoized
