"""Run modes, with the string values of ``tf.estimator.ModeKeys`` so Monolith model code ports unchanged."""

from __future__ import annotations


class ModeKeys:
    """``TRAIN`` = ``"train"``, ``EVAL`` = ``"eval"``, ``PREDICT`` = ``"infer"`` (plain strings)."""

    TRAIN = "train"
    EVAL = "eval"
    PREDICT = "infer"

    ALL = (TRAIN, EVAL, PREDICT)

    @classmethod
    def check(cls, mode: str) -> str:
        """Return ``mode`` if it is one of :attr:`ALL`, else raise ValueError naming it."""
        if mode not in cls.ALL:
            raise ValueError(f"mode must be one of {cls.ALL}, got {mode!r}")
        return mode
