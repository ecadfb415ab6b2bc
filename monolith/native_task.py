"""Monolith's task API (``native_training/native_task.py``): :class:`NativeTask`, the base of the
tasks Monolith's own tests train, its :class:`NativeContext`, and :class:`TFEstimatorSpec`, the
``tf.estimator.EstimatorSpec`` a task's ``model_fn`` returns.

A task makes its input with ``create_input_fn(mode)`` (a function returning a dataset of
:class:`~monolith.sparse.Batch`, e.g. ``Dataset.from_tensors({...}).map(advanced_parse)``) and its
step with ``create_model_fn()`` (``model_fn(features, mode, config)``), which declares slots through
``self.ctx.feature_factory`` on every step; the first declaration creates each slot and slice, the
later ones return the same (:class:`~monolith.feature.FeatureFactory`). Dense layers are torch
modules made in ``__init__`` (a task is a ``torch.nn.Module``). :class:`~monolith.cpu_training.CpuTraining`
runs a task with the :class:`~monolith.estimator.Estimator`, which computes the gradients and applies
them to the dense parameters and the tables: Monolith's ``tf.gradients`` / ``apply_gradients`` /
``train_op`` have no counterpart to write.
"""

from __future__ import annotations

import abc
from typing import Any, Callable, NamedTuple

import torch

from monolith.feature import FeatureFactory
from monolith.model import MonolithBaseModel
from monolith.params import InstantiableParams

__all__ = ["NativeContext", "NativeTask", "TFEstimatorSpec"]


class TFEstimatorSpec(NamedTuple):
    """``tf.estimator.EstimatorSpec(mode, predictions=, loss=, train_op=)`` as a task's ``model_fn``
    returns it. ``train_op`` is accepted and ignored (the Estimator updates the parameters);
    ``optimizer`` (not in TensorFlow's) is the dense optimizer, as in
    :class:`~monolith.spec.EstimatorSpec`."""

    mode: str
    predictions: Any = None
    loss: torch.Tensor | None = None
    train_op: Any = None
    optimizer: Any = None


class NativeContext:
    """A task's context (Monolith's ``NativeContext``): ``feature_factory`` declares the feature slots
    (set by :class:`~monolith.cpu_training.CpuTraining` when it takes the task)."""

    def __init__(self, feature_factory: FeatureFactory | None = None) -> None:
        self.feature_factory = feature_factory

    def create_feature_slot(self, config):
        """``feature_factory.create_feature_slot(config)``."""
        if self.feature_factory is None:
            raise RuntimeError("NativeContext.create_feature_slot: the task is not run by CpuTraining yet")
        return self.feature_factory.create_feature_slot(config)

    def add_async_function(self, target: Callable, args: tuple | None = None, kwargs: dict | None = None,
                           is_async: bool | None = None, queue_name: str = "async_queue") -> Any:
        """Calls ``target(*args, **kwargs)`` now and returns its result (Monolith queues it on a TF
        async queue when ``is_async``; here every step runs eagerly)."""
        return target(*(args or ()), **(kwargs or {}))


class NativeTask(torch.nn.Module, abc.ABC):
    """A task trained, evaluated and served by Monolith's machinery (Monolith's ``NativeTask``).

    ``params()`` is the same tree as :meth:`MonolithBaseModel.params` (``train.max_steps``,
    ``eval.*``, ``metrics.*``, ``serving.*``, ...); ``p.instantiate()`` makes the task.
    """

    @classmethod
    def params(cls) -> InstantiableParams:
        return MonolithBaseModel.params.__func__(cls)

    def __init__(self, params: InstantiableParams | None = None) -> None:
        super().__init__()
        self.p = params if params is not None else type(self).params()
        self._ctx = NativeContext()

    @property
    def ctx(self) -> NativeContext:
        return self._ctx

    def instantiate(self) -> NativeTask:
        """The task itself (``params.instantiate()`` also works on an instance, as in Monolith)."""
        return self

    @abc.abstractmethod
    def create_input_fn(self, mode: str) -> Callable[[], Any]:
        """A function returning the dataset (an iterable of ``Batch``) of ``mode``."""

    @abc.abstractmethod
    def create_model_fn(self) -> Callable[..., Any]:
        """``model_fn(features, mode, config)`` returning a :class:`TFEstimatorSpec` (or a
        :class:`~monolith.spec.EstimatorSpec`)."""

    def create_serving_input_receiver_fn(self) -> Callable[[], Any] | None:
        """The serving receiver's function; None by default (the task is not exported)."""
        return None
