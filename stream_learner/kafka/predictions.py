"""Predictions to the JSON values of the predictions topic (docs/contract.md)."""

from __future__ import annotations

import itertools

import numpy as np
import orjson

from stream_learner.records import Predictions


def encode_predictions(predictions: Predictions, task: str) -> list[bytes]:
    """One JSON value per event: id, prediction, scores (classification), model_version, model_generation
    (from a predictor), model (with challengers), ts."""
    events = predictions.events
    version = predictions.model_version
    versions = version.tolist() if isinstance(version, np.ndarray) else itertools.repeat(version)
    generation = predictions.model_generation
    has_ts = ~np.isnan(events.ts)
    ts = events.ts.tolist()
    if task == "classification":
        classes = predictions.scores.argmax(axis=1).tolist()
        scores = np.round(predictions.scores.astype(np.float64), 6).tolist()
        out = [
            {"id": i, "prediction": c, "scores": s, "model_version": v}
            for i, c, s, v in zip(events.ids, classes, scores, versions, strict=False)
        ]
    else:
        values = predictions.scores[:, 0].astype(np.float64).tolist()
        out = [
            {"id": i, "prediction": p, "model_version": v}
            for i, p, v in zip(events.ids, values, versions, strict=False)
        ]
    if generation is not None:
        for row in out:
            row["model_generation"] = generation
    if predictions.model is not None:
        for row in out:
            row["model"] = predictions.model
    for row, given, t in zip(out, has_ts.tolist(), ts, strict=False):
        if given:
            row["ts"] = t
    return [orjson.dumps(row) for row in out]
