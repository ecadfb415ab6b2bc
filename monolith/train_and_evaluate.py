"""Evaluation during training: :func:`train_and_evaluate` trains ``eval.steps_per_eval`` steps at a
time and evaluates after each (Monolith's ``train_and_eval`` loop in ``gpu_runner.py``, TensorFlow's
``tf.estimator.train_and_evaluate``), stopping early when :class:`EarlyStopping` says so.

Each round ends with a checkpoint (``Estimator.train`` writes one when it returns), so every
evaluation is of a checkpoint, and the best one can be evaluated again, exported or served later
(``Estimator.evaluate(checkpoint_path=...)``; it is kept while it is among the newest
``keep_checkpoint_max``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from monolith.estimator import Estimator

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class EarlyStopping:
    """When to stop training on a held-out metric.

    Args:
        metric: a key of :meth:`Estimator.evaluate`'s result (``"loss"``, ``"ctr/auc"``, ...).
        mode: ``"min"`` (lower is better, e.g. a loss) or ``"max"`` (e.g. an AUC).
        patience: evaluations in a row without improvement after which training stops (>= 1).
        min_delta: an improvement is a change of more than this in the better direction.
    """

    metric: str = "loss"
    mode: str = "min"
    patience: int = 1
    min_delta: float = 0.0

    def __post_init__(self) -> None:
        if self.mode not in ("min", "max"):
            raise ValueError(f"EarlyStopping.mode must be 'min' or 'max', got {self.mode!r}")
        if isinstance(self.patience, bool) or not isinstance(self.patience, int) or self.patience < 1:
            raise ValueError(f"EarlyStopping.patience must be an int >= 1, got {self.patience!r}")
        if not isinstance(self.min_delta, (int, float)) or self.min_delta < 0:
            raise ValueError(f"EarlyStopping.min_delta must be a number >= 0, got {self.min_delta!r}")

    def value(self, metrics: dict[str, float]) -> float:
        """The watched metric of one evaluation; a missing key names the ones there are."""
        if self.metric not in metrics:
            raise KeyError(f"EarlyStopping.metric {self.metric!r} is not in the evaluation's metrics {sorted(metrics)}")
        return float(metrics[self.metric])

    def improves(self, value: float, best: float | None) -> bool:
        """Whether ``value`` is better than ``best`` by more than ``min_delta`` (a NaN never is)."""
        if math.isnan(value):
            return False
        if best is None:
            return True
        return value < best - self.min_delta if self.mode == "min" else value > best + self.min_delta


@dataclasses.dataclass
class EvalHistory:
    """What :func:`train_and_evaluate` did: every evaluation (``evaluate``'s dicts, with the
    ``checkpoint`` evaluated), the best by the early-stopping metric (the last without early
    stopping) and whether training stopped early."""

    evaluations: list[dict] = dataclasses.field(default_factory=list)
    best: dict | None = None
    stopped_early: bool = False

    @property
    def best_checkpoint(self) -> str | None:
        """The path of the best evaluation's checkpoint."""
        return None if self.best is None else self.best["checkpoint"]


def train_and_evaluate(estimator: Estimator, max_steps: int | None = None, steps_per_eval: int | None = None,
                       eval_steps: int | None = None, early_stopping: EarlyStopping | None = None) -> EvalHistory:
    """Trains ``estimator`` to ``max_steps`` (default: the model's ``train.max_steps``), evaluating
    (``eval_steps`` batches of ``input_fn(EVAL)``, default ``eval.steps``: all of it) after every
    ``steps_per_eval`` steps (default: the model's ``eval.steps_per_eval``) and at the end.

    Training stops at ``max_steps``, when its input ends, or when ``early_stopping`` sees no
    improvement for its ``patience`` evaluations. Returns the :class:`EvalHistory`.
    """
    p = estimator.model.p
    max_steps = max_steps if max_steps is not None else p.train.max_steps
    steps_per_eval = steps_per_eval if steps_per_eval is not None else p.eval.steps_per_eval
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"train_and_evaluate: max_steps (or the train.max_steps param) must be an int >= 1, "
                         f"got {max_steps!r}")
    if isinstance(steps_per_eval, bool) or not isinstance(steps_per_eval, int) or steps_per_eval < 1:
        raise ValueError(f"train_and_evaluate: steps_per_eval (or the eval.steps_per_eval param) must be an int "
                         f">= 1, got {steps_per_eval!r}")
    history = EvalHistory()
    best_value, since_best = None, 0
    while estimator.global_step < max_steps:
        before = estimator.global_step
        target = min(before + steps_per_eval, max_steps)
        estimator.train(max_steps=target)
        if estimator.global_step == before:  # the input is used up (or the run had already finished)
            break
        metrics = {**estimator.evaluate(steps=eval_steps), "checkpoint": estimator.checkpoint_path}
        history.evaluations.append(metrics)
        if early_stopping is None:
            history.best = metrics
        else:
            value = early_stopping.value(metrics)
            if early_stopping.improves(value, best_value):
                best_value, since_best, history.best = value, 0, metrics
            else:
                since_best += 1
                if since_best >= early_stopping.patience:
                    logger.warning("train_and_evaluate: %s has not improved on %s for %d evaluation(s); stopping at "
                                   "global step %d", early_stopping.metric, best_value, since_best,
                                   estimator.global_step)
                    history.stopped_early = True
                    break
        if estimator.global_step < target:  # the input ended inside this round
            break
    return history
