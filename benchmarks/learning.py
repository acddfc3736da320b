"""Learning quality beside River, on River's bundled public streams (``pip install -e '.[quality]'``).

    .venv/bin/python -m benchmarks.learning

Each stream is replayed as the live service sees it at about 400 events/s: every event is
predicted when it arrives, its label arrives ``LAG`` events later, and an optimizer step runs on the
labels that arrived every ``EVERY`` events (the batch delay, 10 ms, at that rate). Prequential:
each event is scored by the prediction made before its label was known. River runs the matching
pipeline (``StandardScaler`` and a linear model) with the same label delay, learning one example
at a time. This is the service's own trainer in-process, not through Kafka: the figures isolate
learning from transport.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch

from stream_learner.config import Settings
from stream_learner.learning.examples import Examples
from stream_learner.learning.model import build_model
from stream_learner.learning.model_set import ModelSet
from stream_learner.learning.trainer import Trainer

from .common import quiet_logs

LAG, EVERY = 5, 4
Rows = list[tuple[dict[str, Any], Any]]


def arrays(rows: Rows) -> tuple[np.ndarray, np.ndarray]:
    keys = list(rows[0][0])
    x = np.array([[float(features[k]) for k in keys] for features, _ in rows], np.float32)
    y = np.array([float(target) for _, target in rows], np.float64)
    return x, y


def service_scores(rows: Rows, task: str, **settings: Any) -> np.ndarray:
    """Prequential predictions of the service's trainer (class indices, or regression values)."""
    x, y = arrays(rows)
    classes = int(y.max()) + 1 if task == "classification" else 2
    s = Settings(input_dim=x.shape[1], task=task, num_classes=max(classes, 2), **settings)  # type: ignore[arg-type]
    trainer = ModelSet(s, torch.device("cpu")) if s.challengers else Trainer(build_model(s), s, torch.device("cpu"))
    trained = 0
    predicted = np.zeros(len(y))
    for i in range(len(y)):
        scores = trainer.predict_many(x[i : i + 1])[0]
        predicted[i] = scores.argmax() if task == "classification" else scores[0]
        if (i + 1) % EVERY == 0 and i + 1 - LAG > trained:
            upto = i + 1 - LAG
            width = classes if task == "classification" else 1
            trainer.learn_many(Examples(x[trained:upto], y[trained:upto], np.zeros((upto - trained, width), np.float32)))
            trained = upto
    return predicted


def river_scores(rows: Rows, model: Any) -> np.ndarray:
    predicted, waiting = [], []
    for features, target in rows:
        guess = model.predict_one(features)
        predicted.append(float(guess) if guess is not None else 0.0)
        waiting.append((features, target))
        if len(waiting) > LAG:
            model.learn_one(*waiting.pop(0))
    return np.array(predicted)


def score(task: str, predicted: np.ndarray, rows: Rows) -> float:
    _, y = arrays(rows)
    return float((predicted == y).mean() * 100) if task == "classification" else float(np.abs(predicted - y).mean())


def streams() -> Iterable[tuple[str, str, Rows, Callable[[], Any]]]:
    from river import datasets, linear_model, preprocessing

    def scaled(model: Any) -> Callable[[], Any]:
        return lambda: preprocessing.StandardScaler() | model()

    yield "TrumpApproval", "regression", list(datasets.TrumpApproval()), scaled(linear_model.LinearRegression)
    yield "ChickWeights", "regression", list(datasets.ChickWeights()), scaled(linear_model.LinearRegression)
    yield "Phishing", "classification", [(x, int(y)) for x, y in datasets.Phishing()], scaled(linear_model.LogisticRegression)
    yield "Bananas", "classification", [(x, int(y)) for x, y in datasets.Bananas()], scaled(linear_model.LogisticRegression)


SETTINGS: tuple[dict[str, Any], ...] = (
    {},
    {"optimizer": "sgd"},
    {"model": "mlp"},
    {"challengers": "learning_rates"},
    {"challengers": "learning_rates", "selection": "average"},
    {"challengers": "learning_rates", "model": "mlp"},
)
PROMOTION = "PROMOTION_WINDOW={} and PROMOTION_MARGIN={} (the defaults)".format(
    Settings.model_fields["promotion_window"].default, Settings.model_fields["promotion_margin"].default
)


def main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    quiet_logs()
    print(f"Prequential, labels {LAG} events late, a step every {EVERY} events. Regression: MAE (lower is better); "
          "classification: accuracy % (higher is better).\n")
    print(f"Challengers: CHALLENGERS=learning_rates (the model at 1/5 and 5x its learning rate), {PROMOTION}.\n")
    print(
        "| stream | task | events | River (StandardScaler + linear) | service linear, adam | linear, sgd | mlp, adam "
        "| linear + challengers | linear, average of 3 | mlp + challengers |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, task, rows, river_model in streams():
        figures = [score(task, river_scores(rows, river_model()), rows)]
        for settings in SETTINGS:
            figures.append(score(task, service_scores(rows, task, **settings), rows))
        print(f"| {name} | {task} | {len(rows):,} | " + " | ".join(f"{f:.3f}" if task == "regression" else f"{f:.1f}" for f in figures) + " |")


if __name__ == "__main__":
    main()
