"""Monolith's ``cpu_training`` import path: :func:`local_train` and the training config names.

Monolith's ``CpuTrainingConfig`` and ``DistributedCpuTrainingConfig`` are the bases of its
``RunnerConfig``; here the one :class:`~monolith.runner_config.RunnerConfig` carries all their
fields, so the three names are the same class.
"""

from __future__ import annotations

import os
import shutil

from monolith.estimator import Estimator
from monolith.model import MonolithBaseModel
from monolith.params import InstantiableParams
from monolith.runner_config import RunnerConfig

__all__ = ["CpuTrainingConfig", "DistributedCpuTrainingConfig", "local_train"]

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
