"""Monolith's import path for learning-rate schedules; the implementation is :mod:`monolith.optim.learning_rate`."""

from monolith.optim.learning_rate import LearningRateFunction, PolynomialDecay

__all__ = ["LearningRateFunction", "PolynomialDecay"]
