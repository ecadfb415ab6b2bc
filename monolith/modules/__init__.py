"""Differentiable building blocks used by Monolith models (embedding combiners, ...)."""

from monolith.modules.combiners import Combiner, FirstN, ReduceMean, ReduceSum, make_combiner

__all__ = ["Combiner", "FirstN", "ReduceMean", "ReduceSum", "make_combiner"]
