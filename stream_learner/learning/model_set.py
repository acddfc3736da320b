"""The default model and its challengers (``CHALLENGERS``), trained as one: the same examples, in the same step order.

Guarantees:
- Every member is given every step, in the order the schedule makes them; a member's own guardrail may
  skip its own step (counted in its own counters).
- Before a step, each member predicts the step's examples, which it has not trained on: these scores
  decide the champion (:mod:`.promotion`). A promotion is logged (``model_promoted``) and counted.
- ``SELECTION=champion`` serves the champion's predictions; ``average`` serves the mean of every member's
  scores (class probabilities, or outputs in the target's units) and promotes none.
- The counters, ``model_version`` and the weights (to publish or roll back by) are the serving model's:
  the champion's, or under ``average`` the default model's.
- :meth:`state_dict` is the default model's trainer state with each challenger's and the contest's added:
  one cut. A restored challenger that is no longer configured is dropped, a configured one the state
  lacks starts afresh (both logged); a plain :class:`Trainer` loads the default model's part alone.
- Methods run on the device thread, as the trainer's.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import structlog
import torch
from torch import nn

from stream_learner.config import Settings
from stream_learner.config_types import DEFAULT_MODEL_NAME, ChallengerSpec
from stream_learner.learning.examples import Examples
from stream_learner.learning.model import build_model
from stream_learner.learning.promotion import Contest
from stream_learner.learning.trainer import OptimizerChange, TrainCounters, Trainer

log = structlog.get_logger(__name__)
AVERAGE = "average"
"""What predictions name as their model under ``SELECTION=average``."""


def member_settings(settings: Settings, spec: ChallengerSpec) -> Settings:
    """The settings of challenger ``spec``: the default model's, with the challenger's own."""
    overrides = spec.overrides()
    factor = overrides.pop("learning_rate_factor", None)
    member = settings.model_copy(update={**overrides, "challengers": []})
    if factor is not None:
        member = member.model_copy(update={"learning_rate": factor * member.effective_learning_rate})
    return member


class ModelSet:
    """The members by name (the default model first), their contest, and the one that serves."""

    def __init__(self, settings: Settings, device: torch.device) -> None:
        self.device = device
        self.members = {DEFAULT_MODEL_NAME: Trainer(build_model(settings), settings, device)}
        for spec in settings.challengers:
            member = member_settings(settings, spec)
            self.members[spec.label] = Trainer(build_model(member), member, device)
        self.average = settings.selection == "average"
        self.contest = Contest(list(self.members), settings.task, settings.promotion_window, settings.promotion_margin)

    @property
    def serving(self) -> str:
        """The name predictions carry: the champion's, or ``average``."""
        return AVERAGE if self.average else self.contest.champion

    @property
    def lead(self) -> Trainer:
        """The member whose counters, version and weights the set reports: the champion (under average, the default)."""
        return self.members[DEFAULT_MODEL_NAME if self.average else self.contest.champion]

    @property
    def counters(self) -> TrainCounters:
        return self.lead.counters

    @property
    def model_version(self) -> int:
        return self.lead.model_version

    @property
    def model(self) -> nn.Module:
        return self.lead.model

    def predict_many(self, features: np.ndarray) -> np.ndarray:
        """The serving model's scores, or the mean of every member's."""
        if not self.average:
            return self.lead.predict_many(features)
        mean: np.ndarray = np.mean([t.predict_many(features) for t in self.members.values()], axis=0)
        return mean.astype(np.float32, copy=False)

    def learn_many(self, examples: Examples) -> float:
        """Each member scores, then steps on, ``examples``; the lead's loss (NaN when its step was skipped)."""
        lead, loss = self.lead, float("nan")
        self.contest.score([t.predict_many(examples.features) for t in self.members.values()], examples.labels)
        for trainer in self.members.values():
            member_loss = trainer.learn_many(examples)
            loss = member_loss if trainer is lead else loss
        promotion = None if self.average else self.contest.after_step(len(examples))
        if promotion is not None:
            log.info(
                "model_promoted", model=promotion.model, replaced=promotion.replaced, error=promotion.error,
                champion_error=promotion.champion_error, window=self.contest.window, promotions=self.contest.promotions,
            )  # fmt: skip
        return loss

    def rollback(self, state: dict[str, Any]) -> None:
        """Every member back to its part of a :meth:`state_dict` (one it lacks keeps its weights)."""
        self.members[DEFAULT_MODEL_NAME].rollback(state)
        for name, saved in state.get("challengers", {}).items():
            if name in self.members:
                self.members[name].rollback(saved)

    def weights(self) -> dict[str, torch.Tensor]:
        return self.lead.weights()

    def state_dict(self) -> dict[str, Any]:
        state = self.members[DEFAULT_MODEL_NAME].state_dict()
        state["challengers"] = {n: t.state_dict() for n, t in self.members.items() if n != DEFAULT_MODEL_NAME}
        state["contest"] = self.contest.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> list[OptimizerChange]:
        """Restore a :meth:`state_dict` (see the module's guarantees); the optimizer changes, as the trainer's."""
        changes = self.members[DEFAULT_MODEL_NAME].load_state_dict(state)
        saved = state.get("challengers", {})
        for name, trainer in self.members.items():
            if name in saved:
                changes += trainer.load_state_dict(saved[name])
            elif name != DEFAULT_MODEL_NAME:
                log.warning("challenger_added", model=name, detail="not in the checkpoint: it starts afresh")
        for name in sorted(set(saved) - set(self.members)):
            log.warning("challenger_dropped", model=name, detail="in the checkpoint, no longer configured")
        if "contest" in state:
            self.contest.load_state_dict(state["contest"])
        return changes

    def stats(self) -> dict[str, Any]:
        """Per model: its error over the window, examples it scored and trained, optimizer steps, and
        whether it serves; the serving name and the promotions."""
        errors = self.contest.errors()
        models = {
            name: {
                "error": errors[name],
                "scored": int(self.contest.scored[i]),
                "examples_trained": t.counters.examples_trained,
                "optimizer_steps": t.counters.optimizer_steps,
                "serving": self.average or name == self.contest.champion,
            }
            for i, (name, t) in enumerate(self.members.items())
        }
        return {"serving_model": self.serving, "promotions": self.contest.promotions, "models": models}
