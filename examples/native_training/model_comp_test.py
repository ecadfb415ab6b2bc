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

import os
os.environ["MONOLITH_WITH_HOROVOD"] = "True"
os.environ["HOROVOD_AUTOTUNE"] = "1"
os.environ["HOROVOD_CYCLE_TIME"] = "0.1"
os.environ["MONOLITH_SYNC_EMPTY_RANK0_PS_SHARD"] = "0"
os.environ["MONOLITH_WITH_ALLREDUCE_FUSION"] = "one"
os.environ['MONOLITH_ROOT_LOG_INTERVAL'] = "10"

import time
import copy
import functools
import unittest
import torch
torch.manual_seed(42)
import getpass

from monolith import cpu_training
from monolith.native_model import MonolithModel
from monolith.estimator import Estimator, EstimatorSpec
from monolith.data import AUTOTUNE, Dataset, advanced_parse
from monolith.entry import (AdagradOptimizer, Fp16Compressor,
                                            ZerosInitializer)
from monolith import layers
from monolith.distributed import get_rank, get_world_size
from monolith.fid import SIGNATURE_MASK_V2, make_fid

deep = {
    "initializer":
        ZerosInitializer(),
    "optimizer":
        AdagradOptimizer(learning_rate=0.05,
                         weight_decay_factor=0.0,
                         initial_accumulator_value=0.1,
                         warmup_steps=0),
    "compressor":
        Fp16Compressor()
}

num_features = 17
batch_size = 455
emb_dim = 15
feature_names = [f'feature{i}' for i in range(num_features)]
fid_max_val = 100000


def lookup_tf_embedding(features, f_name, dim, params):
  f = features[f_name]
  embeddings = torch.nn.functional.embedding(
      weight=params,
      input=f.values() & SIGNATURE_MASK_V2)
  return torch.zeros(len(f), dim).index_add(0, torch.repeat_interleave(torch.arange(len(f)), f.lengths()), embeddings)

class EmbeddingUpdateTask(MonolithModel):
  """A test task that will compare TF and monolith embedding update."""
  
  def __init__(self, params=None):
    super(EmbeddingUpdateTask, self).__init__(params)
    self.train.max_steps = 50
    self.train.per_replica_batch_size = batch_size

  def input_fn(self, mode):

    def decomp_func(features):
      # (Monolith copies each ragged feature's values and row splits here: TF loses them; they stay jagged here)
      return advanced_parse(features)

    def input_tensors():
      features = {}
      for i in range(num_features):
        # ids carry their feature's slot (i + 1, given in creation order): a merged table keeps features apart by it
        features[f'feature{i}'] = make_fid(i + 1, torch.randint(0, fid_max_val, (int(torch.randint(1, 25, ())),)))
      features['label'] = torch.randint(0, 2, ()).to(torch.float32)
      return features

    return Dataset.counter(0, 1).map(lambda _: input_tensors(), AUTOTUNE).\
      ragged_batch(batch_size, True).\
        map(decomp_func, AUTOTUNE).prefetch(AUTOTUNE)
    

  def model_fn(self, features, mode):
    with torch.device("cpu"):
      for f_name in feature_names:
        # Monolith's filter reads thresholds by the FIDs' slot, 0 for its raw ids: none applies there
        self.create_embedding_feature_column(f_name, occurrence_threshold=0)

      if not self.ctx.built:  # a new graph (the build pass): new TF variables, as TF makes them here
        self.tf_variables = torch.nn.ParameterList(
          [torch.nn.Parameter(torch.zeros(fid_max_val + 1, emb_dim)) for _ in feature_names])
      tf_embeddings = [lookup_tf_embedding(features, f_name, emb_dim, v) for f_name, v in zip(feature_names, self.tf_variables)]
      embeddings = self.lookup_embedding_slice(features=feature_names,
                                              slice_name='vec',
                                              slice_dim=emb_dim,
                                              **deep)
      # if mode == tf.estimator.ModeKeys.PREDICT:
      #   return tf.estimator.EstimatorSpec(mode, predictions=tf.constant(0))

      embed_concat = torch.cat(embeddings, dim=1)
      tf_embed_concat = torch.cat(tf_embeddings, dim=1)

      torch.testing.assert_close(embed_concat, tf_embed_concat)
      # pred = layers.MLP(
      #   output_dims=[64, 32, 1], activations='relu')(embed_concat)

      if not self.ctx.built:  # one tower, copied: the same start gives both embeddings the same gradients
        self.tower = torch.nn.Sequential(
          torch.nn.Linear(num_features * emb_dim, 64), torch.nn.ReLU(),
          torch.nn.Linear(64, 32), torch.nn.ReLU(),
          torch.nn.Linear(32, 1)
        )
        self.tf_tower = copy.deepcopy(self.tower)
      pred = self.tower(embed_concat)
      tf_pred = self.tf_tower(tf_embed_concat)

      label = features['label']
      loss = torch.mean(torch.square(pred.squeeze(1) - label))
      tf_loss = torch.mean(torch.square(tf_pred.squeeze(1) - label))
      
      optimizer = functools.partial(torch.optim.Adagrad, lr=0.05, initial_accumulator_value=0.1)
      # with tf.device("/device:CPU:0"):
        # loss = tf.compat.v1.Print(loss, [loss], 'monolith loss')
        # tf_loss = tf.compat.v1.Print(tf_loss, [tf_loss], 'tf loss')
      
      return EstimatorSpec(
        loss=loss + tf_loss,
        pred=[pred, tf_pred],
        label=[label, label],
        head_name=['monolith', 'tf'],
        classification=[False, False],
        optimizer=optimizer
      )
  def serving_input_receiver_fn(self):
    pass


class CpuSyncTrainTest(unittest.TestCase):
  
  def _create_config(self, gpu, multi_hash_table):
    return cpu_training.DistributedCpuTrainingConfig(
      # save_checkpoints_steps=10000,
      num_ps=0,
      num_workers=get_world_size(),
      model_dir=f'/tmp/{getpass.getuser()}/monolith_test/{int(time.time())}',
      reorder_fids_in_data_pipeline=True,
      embedding_prefetch_capacity=0,
      enable_sync_training=True,
      enable_gpu_training=gpu,
      enable_realtime_training=False,
      use_native_multi_hash_table=multi_hash_table,
      index=get_rank(),
    )

  def test_embedding_update(self):
    p = EmbeddingUpdateTask.params().instantiate()
    config = self._create_config(False, False)
    cpu_training.distributed_sync_train(config, p)

    config = self._create_config(False, True)
    cpu_training.distributed_sync_train(config, p)

    if torch.cuda.is_available():
      config = self._create_config(True, False)
      cpu_training.distributed_sync_train(config, p)
      
      config = self._create_config(True, True)
      cpu_training.distributed_sync_train(config, p)

if __name__ == "__main__":
  unittest.main()
