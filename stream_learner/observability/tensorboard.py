"""Loss, prequential metrics and weight histograms over model version, as TensorBoard event files.

Optional: needs the ``tensorboard`` package (the ``[tensorboard]`` extra).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from stream_learner.errors import ConfigError

if TYPE_CHECKING:
    import torch

Prequential = Callable[[], dict[str, Any]]
"""Reads the prequential summary (:meth:`PrequentialMetrics.summary`'s keys) at write time."""
Weights = Callable[[], Iterable[tuple[str, "torch.Tensor"]]]
"""Reads the model's named parameters at write time."""


class TensorBoardLog:
    """Loss, prequential metrics and weight histograms over model version, as TensorBoard event files.

    Written from the event loop on ``step_trained``: scalars at most every ``scalars_every_s``
    (the loss is the mean of the applied steps since the last write), weight histograms at most
    every ``histograms_every_s``; both at the first step. The writer's own thread does the file I/O.
    """

    def __init__(
        self, directory: Path, *, scalars_every_s: float = 1.0, histograms_every_s: float = 30.0, flush_secs: int = 10
    ) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise ConfigError(
                f"TENSORBOARD_DIR is set but TensorBoard logging needs the tensorboard package ({exc}): "
                "pip install 'stream-learner[tensorboard]', or unset TENSORBOARD_DIR"
            ) from exc
        self.directory = Path(directory)
        self._writer = SummaryWriter(log_dir=str(self.directory), flush_secs=flush_secs)
        self._scalars_every_s = scalars_every_s
        self._histograms_every_s = histograms_every_s
        self._next_scalars = -math.inf
        self._next_histograms = -math.inf
        self._loss_sum = 0.0
        self._loss_n = 0
        self._skipped = 0
        self._prequential: Prequential = dict
        self._weights: Weights = list

    def bind(self, prequential: Prequential, weights: Weights) -> None:
        """Where the prequential summary and the named parameters are read at write time."""
        self._prequential = prequential
        self._weights = weights

    def step_trained(self, loss: float, model_version: int) -> None:
        """Count one optimizer step (``loss`` NaN: skipped); write what is due at ``model_version``."""
        if math.isnan(loss):
            self._skipped += 1
        else:
            self._loss_sum += loss
            self._loss_n += 1
        now = time.monotonic()
        if now >= self._next_scalars:
            self._next_scalars = now + self._scalars_every_s
            self._write_scalars(model_version)
        if now >= self._next_histograms:
            self._next_histograms = now + self._histograms_every_s
            self._write_histograms(model_version)

    def _write_scalars(self, step: int) -> None:
        w = self._writer
        if self._loss_n:
            w.add_scalar("train/loss", self._loss_sum / self._loss_n, step)
        w.add_scalar("train/skipped_steps", self._skipped, step)
        self._loss_sum, self._loss_n = 0.0, 0
        for key, value in self._prequential().items():
            if key != "examples" and value is not None:
                w.add_scalar(f"prequential/{key}", value, step)

    def _write_histograms(self, step: int) -> None:
        # The parameters belong to the device thread, and this runs on the event loop: a step that
        # runs meanwhile can change a tensor while it is read, so a histogram may mix two versions'
        # values (torn). Acceptable for a histogram, and it never blocks the device thread.
        for name, param in self._weights():
            values = param.detach().float().cpu().numpy()
            if np.isfinite(values).all():
                self._writer.add_histogram(f"weights/{name}", values, step)

    def close(self) -> None:
        """Flush and close the event file."""
        self._writer.close()
