"""The running service's figures and readiness, read from its parts: the :class:`ServiceStatus` it shows."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from aiokafka import TopicPartition

from stream_learner.checkpointing.checkpoint import Checkpoint
from stream_learner.kafka.connection import KafkaConnection
from stream_learner.kafka.progress import ReadingProgress
from stream_learner.learning.learner import Learner
from stream_learner.records import Totals

Totalled = ("events_consumed", "events_predicted", "labels_consumed", "dead_lettered")


class ServiceReport:
    """Implements :class:`~stream_learner.observability.status.ServiceStatus` over the service's parts.

    ``progress`` answers None until the service reads; ``failed`` tells whether it has failed.
    """

    def __init__(
        self,
        totals: Totals,
        learner: Learner,
        checkpoint: Checkpoint,
        kafka: KafkaConnection,
        progress: Callable[[], ReadingProgress | None],
        failed: Callable[[], bool],
    ) -> None:
        self._totals, self._learner, self._checkpoint, self._kafka = totals, learner, checkpoint, kafka
        self._progress, self._failed = progress, failed
        self.restored = False
        """True once the checkpoint is restored (or none was found): the totals are the service's own."""

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
        }

    def health(self) -> dict[str, Any]:
        """Readiness and its parts; checkpoints are current when the newest is younger than
        3 x the interval, or nothing changed since."""
        reader = self._kafka.reader
        assigned = len(reader.assignment()) if reader is not None else 0
        age = time.time() - self._checkpoint.last_at
        checks = {
            "broker_reachable": self._kafka.broker_reachable,
            "partitions_assigned": assigned > 0,
            "model_loaded": True,
            "checkpoint_current": not self._checkpoint.dirty or age < 3 * self._checkpoint.interval_s,
        }
        ready = all(checks.values()) and not self._failed()
        return {"ready": ready, **checks, "checkpoint_age_s": age, "assigned_partitions": assigned}

    def named_parameters(self) -> list[tuple[str, torch.Tensor]]:
        return self._learner.named_parameters()
