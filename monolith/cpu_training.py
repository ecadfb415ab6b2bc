"""Monolith's ``cpu_training`` import path: :class:`CpuTraining`, :func:`distributed_sync_train`,
:func:`local_train` and the training config names.

Monolith's ``CpuTrainingConfig`` and ``DistributedCpuTrainingConfig`` are the bases of its
``RunnerConfig``; here the one :class:`~monolith.runner_config.RunnerConfig` carries all their
fields, so the three names are the same class.
"""

from __future__ import annotations

import os
import shutil
from typing import Any, Sequence

from monolith.estimator import Estimator
from monolith.feature import FeatureFactory
from monolith.model import MonolithBaseModel, TrainingHook
from monolith.native_task import NativeTask, TFEstimatorSpec
from monolith.params import InstantiableParams
from monolith.runner_config import RunnerConfig
from monolith.sparse import Batch
from monolith.spec import EstimatorSpec

__all__ = ["CpuTraining", "CpuTrainingConfig", "DistributedCpuTrainingConfig", "distributed_sync_train",
           "local_train"]

CpuTrainingConfig = RunnerConfig
DistributedCpuTrainingConfig = RunnerConfig


def local_train(params: InstantiableParams | MonolithBaseModel,
                num_ps: int = 0,
                model_dir: str | None = None,
                steps: int = 100,
                save_checkpoints_steps: int = 50,
                profiling: bool = False,
                enable_embedding_prefetch: bool = True,
                enable_embedding_postpush: bool = True,
                remove_model_dir_if_exists: bool = True,
                only_feature_engineering: bool = False) -> Estimator:
    """Trains ``params``' model in this process for ``steps`` steps, as Monolith's local demo runner.

    As in Monolith, ``model_dir`` defaults to ``/tmp/<user>/<model name>`` and is deleted first
    unless ``remove_model_dir_if_exists`` is False (then training resumes from its checkpoints).
    ``num_ps`` (Monolith starts that many in-process parameter servers; the tables live in this
    process here, with the same result), ``profiling`` and the embedding prefetch/postpush switches
    (TensorFlow pipeline tuning) are accepted and ignored. Returns the :class:`Estimator`, ready
    for ``evaluate`` / ``predict`` / ``export_saved_model``.

    Raises:
        NotImplementedError: ``only_feature_engineering`` (Monolith's feature-engineering dump).
    """
    if only_feature_engineering:
        raise NotImplementedError("local_train(only_feature_engineering=True): Monolith's feature-engineering "
                                  "dump is not supported; iterate model.input_fn(mode) to inspect the input")
    config = RunnerConfig(is_local=True, num_ps=num_ps, model_dir=model_dir or "", model_name=params.name,
                          save_checkpoints_steps=save_checkpoints_steps)
    run_dir = config.to_run_config(params.name).model_dir
    if remove_model_dir_if_exists and os.path.isdir(run_dir):
        shutil.rmtree(run_dir)
    estimator = Estimator(params, config)
    estimator.train(steps=steps)
    return estimator


class CpuTraining(MonolithBaseModel):
    """A :class:`~monolith.native_task.NativeTask` as a model the :class:`~monolith.estimator.Estimator`
    trains (Monolith's ``CpuTraining``, which wraps a task for its TF Estimator).

    ``Estimator(CpuTraining(config, task), run_config)`` trains it; ``create_input_fn(mode)`` is the
    task's input for ``Estimator.train(input_fn=...)``. The task's ``model_fn`` is made once and run
    every step with ``config=`` this config; its ``ctx.feature_factory`` declares slots on this
    model's tables. The task's torch modules are this model's (dense parameters, checkpoints).
    ``sync_backend`` (Monolith's parameter-sync backend) is accepted and ignored: pass a
    :class:`~monolith.streaming.ParameterSync` to ``Estimator.train(hooks=)``.
    """

    def __init__(self, config: RunnerConfig, task: NativeTask, sync_backend: Any = None) -> None:
        if not isinstance(task, NativeTask):
            raise TypeError(f"CpuTraining needs a NativeTask, got {type(task).__name__}")
        if config.server_type not in ("worker", "chief"):
            raise ValueError("server_type in CpuTraining must be `worker`")
        super().__init__(task.p)
        if not config.model_name:
            config.model_name = task.p.metrics.deep_insight_name or f"di_name_{type(task).__name__}"
        self.task = task
        self._config = config
        task.ctx.feature_factory = FeatureFactory(lambda: self.ctx)
        self._task_model_fn = task.create_model_fn()

    @property
    def config(self) -> RunnerConfig:
        return self._config

    def input_fn(self, mode: str) -> Any:
        return self.task.create_input_fn(mode)()

    def model_fn(self, features: Batch, mode: str) -> EstimatorSpec:
        spec = self._task_model_fn(features, mode, config=self._config)
        if isinstance(spec, EstimatorSpec):
            return spec
        if not isinstance(spec, TFEstimatorSpec):
            raise TypeError(f"the task's model_fn must return a TFEstimatorSpec or an EstimatorSpec, "
                            f"got {type(spec).__name__}")
        # No labels: a task's TF spec has none, so no metrics; the loss is what trains.
        return EstimatorSpec(label=None, pred=spec.predictions, loss=spec.loss, optimizer=spec.optimizer,
                             classification=False)

    def serving_input_receiver_fn(self) -> Any:
        receiver_fn = self.task.create_serving_input_receiver_fn()
        return None if receiver_fn is None else receiver_fn()


def distributed_sync_train(config: RunnerConfig, params: InstantiableParams | MonolithBaseModel | NativeTask,
                           sync_backend: Any = None,
                           user_hooks: Sequence[TrainingHook] | None = None) -> Estimator:
    """Trains the model of ``params`` (params, a model or a task; a task is run by :class:`CpuTraining`)
    to its ``train.max_steps``, synchronously over the torchrun ranks when started by torchrun
    (Monolith's Horovod sync training), in this process otherwise. Returns the Estimator.

    The same model instance trained again (Monolith's ``model_comp_test`` trains one instance under
    two configs) starts from fresh tables.
    """
    task = params.instantiate()
    model = CpuTraining(config, task, sync_backend) if isinstance(task, NativeTask) else task
    if not isinstance(model, MonolithBaseModel):
        raise ValueError(f"distributed train only support NativeTask. Got {task}")
    estimator = Estimator(model, config)
    estimator.train(max_steps=task.p.train.max_steps, hooks=user_hooks)
    return estimator
