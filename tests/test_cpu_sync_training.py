# Copyright 2022 ByteDance and/or its affiliates.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
# Monolith's native_training/cpu_sync_training_test.py, ported: the task API (NativeTask,
# ctx.feature_factory, FeatureColumnV1, CpuTraining, distributed_sync_train).
# Changed against Monolith's: the imports; TF tensor code as torch (ragged constants as JaggedTensor,
# tf.gradients / apply_gradients / train_op / tf.print dropped: the Estimator applies the gradients;
# the TF variable of EmbeddingUpdateTask made once in __init__); tf.estimator.Estimator(model_fn) ->
# Estimator(training); Horovod's init and size -> one process; NonFeatureTask is left out (an input
# element is a Batch of features). Added: asserts on what training did.

import os
import functools

import numpy as np
import pytest
import torch

from monolith import cpu_training, feature
from monolith.data import Dataset, advanced_parse
from monolith.estimator import Estimator, RunConfig
from monolith.mode_keys import ModeKeys
from monolith.modules import combiners as embedding_combiners
from monolith.native_task import NativeTask, TFEstimatorSpec
from monolith.sparse import JaggedTensor
from monolith import entry


@pytest.fixture(autouse=True)
def _test_folder(tmp_path):
  global test_folder
  test_folder = str(tmp_path)


class FeatureTask(NativeTask):
  """A test task that will collect some information in model_fn."""

  def create_input_fn(self, _):

    def input_fn():
      return Dataset.from_tensors({
          "feature": JaggedTensor.from_lists([[1, 2, 3, 4]])
      }).map(advanced_parse).repeat(5)

    return input_fn

  def create_model_fn(self):

    def model_fn(features, mode, config, **kwargs):
      slot = self.ctx.feature_factory.create_feature_slot(
          feature.FeatureSlotConfig(name="slot"))
      s = slot.add_feature_slice(5)
      fc = feature.FeatureColumnV1(slot, "feature")
      embedding = fc.embedding_lookup(s)
      if mode == ModeKeys.PREDICT:
        return TFEstimatorSpec(mode, predictions=torch.tensor(0))
      loss = torch.sum(embedding)
      return TFEstimatorSpec(mode,
                             loss=loss,
                             predictions=torch.tensor(0))

    return model_fn


class EmbeddingUpdateTask(NativeTask):
  """A test task that will compare TF and monolith embedding update."""

  def __init__(self, params):
    super().__init__(params)
    self.tf_embeddings = torch.nn.Parameter(torch.zeros(4, 5))

  def create_input_fn(self, _):

    def input_fn():
      return Dataset.from_tensors({
          "feature": JaggedTensor.from_lists([[1, 2, 3, 4]]),
          "tf_feature": torch.tensor([[0, 1, 2, 3]], dtype=torch.int64),
      }).map(advanced_parse).repeat(10)

    return input_fn

  def create_model_fn(self):

    def model_fn(features, mode, config):
      slot = self.ctx.feature_factory.create_feature_slot(
          feature.FeatureSlotConfig(
              name="slot",
              default_vec_initializer=entry.ConstantsInitializer(0),
              default_vec_optimizer=entry.AdagradOptimizer(
                  learning_rate=0.1, initial_accumulator_value=1)))
      s = slot.add_feature_slice(5)
      fc = feature.FeatureColumnV1(slot, "feature")
      embedding = fc.embedding_lookup(s)
      tf_embedding = torch.sum(self.tf_embeddings[features["tf_feature"]], dim=1)
      if mode == ModeKeys.PREDICT:
        return TFEstimatorSpec(mode, predictions=torch.tensor(0))
      loss = torch.sum(embedding)
      tf_loss = torch.sum(tf_embedding)
      torch.testing.assert_close(embedding, tf_embedding)
      return TFEstimatorSpec(mode,
                             loss=loss + tf_loss,
                             predictions=torch.tensor(0),
                             optimizer=functools.partial(torch.optim.Adagrad, lr=0.1,
                                                         initial_accumulator_value=1))

    return model_fn


class FloatFeatureTask(NativeTask):
  """A test task that will use float feature in model_fn."""

  def create_input_fn(self, _):

    def input_fn():
      return Dataset.from_tensors({
          "ragged_feature": JaggedTensor.from_lists([[0, 0]]),
          "float_feature": torch.tensor([[1.]], dtype=torch.float32)
      }).map(advanced_parse)

    return input_fn

  def create_model_fn(self):

    def model_fn(features, mode, **kwargs):
      slot = self.ctx.feature_factory.create_feature_slot(
          feature.FeatureSlotConfig(name="slot"))
      s = slot.add_feature_slice(5)
      fc = feature.FeatureColumnV1(slot, "ragged_feature")
      embedding = fc.embedding_lookup(s)
      float_feature = features["float_feature"]
      predictions = torch.sum(float_feature, dim=-1)
      if mode == ModeKeys.PREDICT:
        return TFEstimatorSpec(mode, predictions=predictions)
      loss = torch.sum(embedding)
      return TFEstimatorSpec(mode,
                             loss=loss,
                             predictions=predictions)

    return model_fn


class SequenceFeatureTask(NativeTask):
  """A test task that will use float feature in model_fn."""

  def create_input_fn(self, mode):
    del mode

    def input_fn():
      return Dataset.from_tensors({
          "sequence_feature":
              JaggedTensor.from_lists([[1, 2], [], [3, 4, 5]]),
      }).map(advanced_parse)

    return input_fn

  def create_model_fn(self):

    def model_fn(features, mode, **kwargs):
      slot = self.ctx.feature_factory.create_feature_slot(
          feature.FeatureSlotConfig(name="slot"))
      s = slot.add_feature_slice(5)
      fc = feature.FeatureColumnV1(slot,
                                   "sequence_feature",
                                   combiner=embedding_combiners.FirstN(2))
      embedding = fc.embedding_lookup(s)
      sequence_feature = features["sequence_feature"]
      predictions = torch.tensor([sum(row) for row in sequence_feature.to_lists()])
      if mode == ModeKeys.PREDICT:
        return TFEstimatorSpec(mode, predictions=predictions)
      loss = torch.sum(embedding)
      return TFEstimatorSpec(mode,
                             loss=loss,
                             predictions=predictions)

    return model_fn


class TestCpuSyncTrain:

  def test_cpu_training_feature(self):
    p = FeatureTask.params()
    p.name = "feature_task"
    task = FeatureTask(p)
    training = cpu_training.CpuTraining(
        cpu_training.CpuTrainingConfig(num_workers=1,
                                       num_ps=0,
                                       reorder_fids_in_data_pipeline=True,
                                       embedding_prefetch_capacity=1,
                                       enable_sync_training=True), task)
    run_config = RunConfig(
        model_dir=os.path.join(test_folder, "test_cpu_sync_training_feature"))
    est = Estimator(training, config=run_config)
    est.train(input_fn=training.create_input_fn(ModeKeys.TRAIN), steps=2)
    # The slot and its slice were created once, not once a step.
    assert est.global_step == 2
    assert [(fs.name, fs.dim) for fs in training.ctx.feature_slots] == [("slot", 5)]
    assert list(training.ctx.tables["slot"].table.slices) == training.ctx.feature_slots[0].slices

  def test_embedding_update(self):
    p = EmbeddingUpdateTask.params()
    p.name = "embedding_update_task"
    task = EmbeddingUpdateTask(p)
    training = cpu_training.CpuTraining(
        cpu_training.CpuTrainingConfig(num_workers=1,
                                       num_ps=0,
                                       reorder_fids_in_data_pipeline=True,
                                       embedding_prefetch_capacity=0,
                                       enable_sync_training=True), task)
    run_config = RunConfig(
        model_dir=os.path.join(test_folder, "test_embedding_update"))
    est = Estimator(training, config=run_config)
    est.train(input_fn=training.create_input_fn(ModeKeys.TRAIN), steps=10)
    # Each step compared the two embeddings (model_fn); after the tenth update they still agree.
    rows = training.ctx.tables["slot"].table.lookup(torch.tensor([1, 2, 3, 4]))
    torch.testing.assert_close(rows, task.tf_embeddings.detach())
    g = np.ones(10)
    assert rows[0, 0].item() == pytest.approx(-np.sum(0.1 * g / np.sqrt(1 + np.cumsum(g ** 2))), rel=1e-5)

  def test_cpu_training_float_feature(self):
    p = FloatFeatureTask.params()
    p.name = "float_feature_task"
    task = FloatFeatureTask(p)
    training = cpu_training.CpuTraining(
        cpu_training.CpuTrainingConfig(num_workers=1,
                                       num_ps=0,
                                       reorder_fids_in_data_pipeline=True,
                                       embedding_prefetch_capacity=1,
                                       enable_sync_training=True), task)
    run_config = RunConfig(
        model_dir=os.path.join(test_folder,
                               "test_cpu_sync_training_float_feature"))
    est = Estimator(training, config=run_config)
    est.train(input_fn=training.create_input_fn(ModeKeys.TRAIN), steps=2)
    assert est.global_step == 1  # the input has one batch
    assert est.predict().__next__() == 1.0  # the float feature summed

  def test_cpu_training_sequence_feature(self):
    p = SequenceFeatureTask.params()
    p.name = "sequence_feature_task"
    task = SequenceFeatureTask(p)
    training = cpu_training.CpuTraining(
        cpu_training.CpuTrainingConfig(num_workers=1,
                                       num_ps=0,
                                       reorder_fids_in_data_pipeline=True,
                                       embedding_prefetch_capacity=1,
                                       enable_sync_training=True,
                                       hashtable_init_capacity=100000,
                                       enable_embedding_postpush=True), task)
    run_config = RunConfig(
        model_dir=os.path.join(test_folder,
                               "test_cpu_training_sequence_feature"))
    est = Estimator(training, config=run_config)
    est.train(input_fn=training.create_input_fn(ModeKeys.TRAIN), steps=2)
    assert est.global_step == 1
    assert sorted(training.ctx.tables["slot"].table.items()[0].tolist()) == [1, 2, 3, 4, 5]


class TestDistributedSyncTrain:

  def test_basic(self):
    model_dir = os.path.join(test_folder, "sync_training_basic")
    params = FeatureTask.params()
    params.name = "test_task"
    params.train.max_steps = 2
    est = cpu_training.distributed_sync_train(
        cpu_training.DistributedCpuTrainingConfig(
            model_dir=model_dir,
            enable_sync_training=True,
            reorder_fids_in_data_pipeline=True,
            embedding_prefetch_capacity=1,
            hashtable_init_capacity=100000,
            enable_embedding_postpush=False), params)
    assert est.global_step == 2 and est.checkpoint_path.endswith("ckpt-2")

  def test_sparse_pipelining(self):
    model_dir = os.path.join(test_folder, "sync_training_pipelined")
    params = FeatureTask.params()
    params.name = "test_task"
    params.train.max_steps = 4
    est = cpu_training.distributed_sync_train(
        cpu_training.DistributedCpuTrainingConfig(
            model_dir=model_dir,
            enable_sync_training=True,
            reorder_fids_in_data_pipeline=True,
            embedding_prefetch_capacity=1,
            enable_pipelined_bwda2a=True,
            enable_pipelined_fwda2a=True,
            hashtable_init_capacity=100000,
            enable_embedding_postpush=False), params)
    assert est.global_step == 4
