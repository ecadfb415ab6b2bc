"""Monolith's ``model_comp_test`` in one process: the framework's embeddings against a plain PyTorch
embedding + segment sum, trained side by side, must stay equal at every step.

17 features, batch 455, dim 15, FIDs below 100000 (signatures; the FIDs carry their feature's slot),
1..24 ids per feature and row, 50 steps, two identical MLP towers (one on each embedding) with an
MSE loss each, summed; with one table per slot and with merged tables.

Exactness: both embeddings start from the same seeded non-zero rows (the framework's rows are
assigned by a hook before the first step) and are updated by SGD with the same learning rate: the
framework's slice optimizer applies one update per occurrence (local dedup), which for SGD is the
summed gradient that ``torch.optim.SGD`` applies to the reference ``nn.Embedding``. The reference is
a dense parameter, so its gradient goes through the estimator's clipping and weight decay: decay is
0, and without a sparse warm-up both kinds of gradient get the same global-norm scale.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from monolith.estimator import Estimator, EstimatorSpec, RunConfig
from monolith.fid import SIGNATURE_MASK_V2, make_fid
from monolith.model import MonolithModel, TrainingHook
from monolith.optim.compressors import Fp16Compressor
from monolith.optim.initializers import ZerosInitializer
from monolith.optim.optimizers import SgdOptimizer
from monolith.sparse import Batch, KeyedJaggedTensor

NUM_FEATURES, BATCH, DIM, FID_MAX, STEPS = 17, 455, 15, 100_000, 50
EMB_LR, TOWER_LR = 20.0, 0.05  # embedding gradients of a mean loss are small: a large rate moves the rows
FEATURES = [f"feature{i}" for i in range(NUM_FEATURES)]
SLOTS = {name: i + 1 for i, name in enumerate(FEATURES)}


def make_batches(seed: int = 42):
    rng = np.random.default_rng(seed)
    for _ in range(STEPS):
        lengths = rng.integers(1, 25, size=(NUM_FEATURES, BATCH))
        values = [make_fid(SLOTS[name], rng.integers(0, FID_MAX, int(lengths[i].sum())))
                  for i, name in enumerate(FEATURES)]
        sparse = KeyedJaggedTensor(FEATURES, torch.from_numpy(np.concatenate(values)),
                                   torch.from_numpy(lengths.reshape(-1)))
        label = torch.from_numpy(rng.integers(0, 2, BATCH).astype(np.float32))
        yield Batch(sparse, {"label": label})


def mlp() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(NUM_FEATURES * DIM, 64), torch.nn.ReLU(),
                               torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))


class AssignRows(TrainingHook):
    """Before the first step: the framework's rows := the reference embedding's rows."""

    def __init__(self, model: "EmbeddingUpdateTask"):
        self.model = model

    def begin(self, estimator):
        ctx = estimator.model.ctx
        assert ctx.built and estimator.global_step == 0
        signatures = np.arange(FID_MAX, dtype=np.int64)
        for i, name in enumerate(FEATURES):
            table = ctx.table_of_slot(SLOTS[name]).table
            table.assign(make_fid(SLOTS[name], signatures), self.model.tf_embeddings[i].weight.detach())
        self.model.assigned = True


class EmbeddingUpdateTask(MonolithModel):
    """Compares the framework's embedding updates with a plain PyTorch embedding's."""

    def __init__(self, params=None):
        super().__init__(params)
        self.p.train.max_steps = STEPS
        self.p.train.per_replica_batch_size = BATCH
        self.p.dense_weight_decay = 0.0  # the reference embedding is a dense parameter: no decay on it
        self.p.sparse_norm_warmup_steps = None  # dense and sparse gradients share one clip scale
        self.register_slots(SLOTS)
        generator = torch.Generator().manual_seed(42)
        self.tf_embeddings = torch.nn.ModuleList()
        for _ in FEATURES:
            emb = torch.nn.Embedding(FID_MAX, DIM, sparse=True)
            with torch.no_grad():
                emb.weight.uniform_(-0.1, 0.1, generator=generator)
            self.tf_embeddings.append(emb)
        self.tower = mlp()
        self.tf_tower = copy.deepcopy(self.tower)  # identical towers give identical embedding gradients
        self.hook = AssignRows(self)
        self.assigned = False
        self.checked_steps = 0
        self.max_gap = 0.0

    def input_fn(self, mode):
        return make_batches()

    def lookup_tf_embedding(self, features, i: int) -> torch.Tensor:
        jagged = features.sparse[FEATURES[i]]
        ids = jagged.values() & SIGNATURE_MASK_V2
        rows = self.tf_embeddings[i](ids)
        segment = torch.repeat_interleave(torch.arange(features.batch_size), jagged.lengths())
        return torch.zeros(features.batch_size, DIM).index_add(0, segment, rows)

    def model_fn(self, features, mode):
        for name in FEATURES:
            self.create_embedding_feature_column(name, occurrence_threshold=1)
        tf_embeddings = [self.lookup_tf_embedding(features, i) for i in range(NUM_FEATURES)]
        embeddings = self.lookup_embedding_slice(features=FEATURES, slice_name="vec", slice_dim=DIM,
                                                 initializer=ZerosInitializer(), optimizer=SgdOptimizer(EMB_LR),
                                                 compressor=Fp16Compressor())
        embed_concat = torch.cat(embeddings, dim=1)
        tf_embed_concat = torch.cat(tf_embeddings, dim=1)
        if self.assigned:  # the build pass looks up zeros before the tables exist
            gap = float((embed_concat - tf_embed_concat).abs().max().detach())
            self.max_gap = max(self.max_gap, gap)
            torch.testing.assert_close(embed_concat, tf_embed_concat, atol=1e-5, rtol=0)
            self.checked_steps += 1

        pred = self.tower(embed_concat).reshape(-1)
        tf_pred = self.tf_tower(tf_embed_concat).reshape(-1)
        label = features["label"]
        loss = F.mse_loss(pred, label)
        tf_loss = F.mse_loss(tf_pred, label)
        self.add_training_hook(self.hook)
        return EstimatorSpec(loss=loss + tf_loss, pred=[pred, tf_pred], label=[label, label],
                             head_name=["monolith", "tf"], classification=[False, False],
                             optimizer=self.dense_optimizer)

    def dense_optimizer(self, params):
        towers = list(self.tower.parameters()) + list(self.tf_tower.parameters())
        assert len(towers) + NUM_FEATURES == len(list(params))
        return torch.optim.SGD([{"params": towers, "lr": TOWER_LR},
                                {"params": list(self.tf_embeddings.parameters()), "lr": EMB_LR}])

    def serving_input_receiver_fn(self):
        pass


@pytest.mark.parametrize("multi_hash_table", [True, False])
def test_embedding_update(tmp_path, multi_hash_table):
    torch.manual_seed(0)
    model = EmbeddingUpdateTask.params().instantiate()
    estimator = Estimator(model, RunConfig(model_dir=str(tmp_path / "model"), use_native_multi_hash_table=multi_hash_table,
                                           log_step_count_steps=STEPS, enable_summaries=False, progress_bar=False))
    result = estimator.train()
    assert estimator.global_step == STEPS and result["global_step"] == STEPS
    assert model.checked_steps == STEPS  # the embeddings were compared before every step
    assert len(model.ctx.tables) == (NUM_FEATURES if multi_hash_table else 1)

    # After the last update: every row of every feature, touched or not, equals the reference,
    # and training moved the rows far more than the tolerance.
    generator = torch.Generator().manual_seed(42)
    moved = 0.0
    for i, name in enumerate(FEATURES):
        table = model.ctx.table_of_slot(SLOTS[name]).table
        reference = model.tf_embeddings[i].weight.detach()
        rows = table.lookup(make_fid(SLOTS[name], np.arange(FID_MAX, dtype=np.int64)))
        torch.testing.assert_close(rows, reference, atol=1e-5, rtol=0)
        initial = torch.empty(FID_MAX, DIM).uniform_(-0.1, 0.1, generator=generator)
        moved = max(moved, float((rows - initial).abs().max()))
    assert moved > 1e-3
    # The towers stayed identical, and both heads' MSE was tracked.
    for a, b in zip(model.tower.parameters(), model.tf_tower.parameters()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert result["monolith/mse"] == pytest.approx(result["tf/mse"], rel=1e-4)
