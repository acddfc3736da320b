"""The running service's figures and readiness, read from its parts: the :class:`ServiceStatus` it shows."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import torch
from aiokafka import TopicPartition

from stream_learner.checkpointing.checkpoint import Checkpoint
from stream_learner.kafka.progress import ReadingProgress
from stream_learner.kafka.protocol import Connection
from stream_learner.learning.learner import Learner
from stream_learner.records import Totals

Totalled = ("events_consumed", "events_predicted", "labels_consumed", "dead_lettered")


class VersionStatus(Protocol):
    """The model versions of a scaled-out role: published (trainer) or served (predictor)."""

    @property
    def counts(self) -> Mapping[str, int]:
        """Versions by outcome: published; or loaded, rejected, ignored."""

    def generation(self) -> int | None:
        """The generation of the version published or served (None before the first)."""

    def age_s(self) -> float | None:
        """Seconds since that version was made (None before the first)."""

    def ready(self) -> bool:
        """A predictor has a model; a trainer leads."""


class ServiceReport:
    """Implements :class:`~stream_learner.observability.status.ServiceStatus` over the service's parts.

    ``progress`` answers None until the service reads; ``failed`` tells whether it has failed.
    """

    def __init__(
        self,
        totals: Totals,
        learner: Learner,
        checkpoint: Checkpoint | None,
        kafka: Connection,
        progress: Callable[[], ReadingProgress | None],
        failed: Callable[[], bool],
    ) -> None:
        self._totals, self._learner, self._checkpoint, self._kafka = totals, learner, checkpoint, kafka
        self._progress, self._failed = progress, failed
        self.restored = False
        """True once the checkpoint is restored (or none was found): the totals are the service's own."""
        self.versions: VersionStatus | None = None
        """Set in ROLE=predictor and trainer."""
        self.max_model_age_s = float("inf")

    def lag_by_partition(self) -> dict[TopicPartition, int]:
        """Records not yet read per assigned partition (high watermark minus next offset)."""
        progress = self._progress()
        return progress.lag_by_partition() if progress is not None else {}

    def stats(self) -> dict[str, Any]:
        """Totals, join and training state, prequential metrics and lag, for logs, the demo and the metrics."""
        t = self._totals
        return {
            **{k: t[k] for k in Totalled},
            **self._learner.stats(),
            "dead_lettered_by_reason": {k.split(".", 1)[1]: v for k, v in t.items() if k.startswith("dead_lettered.")},
            "lag": sum(self.lag_by_partition().values()),
            **self._version_stats(),
        }

    def _version_stats(self) -> dict[str, Any]:
        versions = self.versions
        if versions is None:
            return {"model_generation": None, "model_age_s": None, "model_stale": None, "model_versions": {}}
        age = versions.age_s()
        return {
            "model_generation": versions.generation(),
            "model_age_s": age,
            "model_stale": None if age is None else int(age > self.max_model_age_s),
            "model_versions": dict(versions.counts),
        }

    def health(self) -> dict[str, Any]:
        """Readiness and its parts; checkpoints are current when the newest is younger than
        3 x the interval, or nothing changed since."""
        reader = self._kafka.reader
        assigned = len(reader.assignment()) if reader is not None else 0
        checkpoint = self._checkpoint
        age = time.time() - checkpoint.last_at if checkpoint is not None else 0.0
        checks = {
            "broker_reachable": self._kafka.broker_reachable,
            "partitions_assigned": assigned > 0,
            "model_loaded": self.versions is None or self.versions.ready(),
            "checkpoint_current": checkpoint is None or not checkpoint.dirty or age < 3 * checkpoint.interval_s,
        }
        ready = all(checks.values()) and not self._failed()
        return {"ready": ready, **checks, "checkpoint_age_s": age, "assigned_partitions": assigned}

    def named_parameters(self) -> list[tuple[str, torch.Tensor]]:
        return self._learner.named_parameters()
