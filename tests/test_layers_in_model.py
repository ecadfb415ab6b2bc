"""Monolith's layers inside a model: built by the Estimator's first step (input sizes inferred),
trained by the dense optimizer, checkpointed and restored, exported and served with the
estimator's predictions."""

from __future__ import annotations

import functools

import numpy as np
import torch

from monolith.estimator import Estimator, EstimatorSpec, RunConfig
from monolith.export import ServingInputReceiver
from monolith.fid import make_fid
from monolith.layers import DCN, MLP
from monolith.losses import get_sigmoid_loss_and_pred
from monolith.mode_keys import ModeKeys
from monolith.model import MonolithModel
from monolith.optim.compressors import Fp32Compressor
from monolith.optim.optimizers import SgdOptimizer
from monolith.serving import ServingModel
from monolith.sparse import Batch, KeyedJaggedTensor


def batches(n: int, seed: int) -> list[Batch]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        rows = {"uid": [[make_fid(1, int(rng.integers(10)))] for _ in range(8)]}
        dense = {"ctx": torch.from_numpy(rng.normal(size=(8, 3)).astype(np.float32)),
                 "label": torch.from_numpy((rng.random(8) < 0.5).astype(np.float32))}
        out.append(Batch(KeyedJaggedTensor.from_lists(rows), dense))
    return out


class LayersModel(MonolithModel):
    def __init__(self):
        super().__init__()
        self.register_slots({"uid": 1})
        self.cross = DCN(layer_num=2)
        self.mlp = MLP(output_dims=[8, 1])
        self.batch_size = 8

    def input_fn(self, mode):
        return batches(4, 0 if mode == ModeKeys.TRAIN else 1)

    def model_fn(self, features, mode):
        self.create_embedding_feature_column("uid")
        vec = self.lookup_embedding_slice(["uid"], "vec", 4, out_type="concat",
                                          optimizer=SgdOptimizer(0.1), compressor=Fp32Compressor())
        x = torch.cat([vec, features["ctx"]], 1)
        logits = self.mlp(self.cross(x)).reshape(-1)
        label = features.dense.get("label") if mode != ModeKeys.PREDICT else None
        loss, pred = get_sigmoid_loss_and_pred("ctr", logits, label, self.batch_size, mode=mode)
        return EstimatorSpec(label=label, pred=pred, loss=loss,
                             optimizer=functools.partial(torch.optim.SGD, lr=0.1))

    def serving_input_receiver_fn(self):
        return ServingInputReceiver(["uid"], {"ctx": 3})


def test_layers_train_checkpoint_export_and_serve(tmp_path):
    torch.manual_seed(0)
    config = RunConfig(model_dir=str(tmp_path / "run"), log_step_count_steps=1000, enable_summaries=False,
                       progress_bar=False)
    est = Estimator(LayersModel(), config)
    est.train(max_steps=1)
    kernel = est.model.mlp.get_layer(0).kernel
    assert kernel.shape == (7, 8)  # 4 embedding + 3 dense inputs, inferred on the first step
    before = kernel.detach().clone()
    est.train(max_steps=4)
    assert not torch.equal(before, est.model.mlp.get_layer(0).kernel)
    preds = np.array(list(est.predict()))

    torch.manual_seed(1)
    restored = Estimator(LayersModel(), config)
    restored_preds = np.array(list(restored.predict()))
    np.testing.assert_allclose(restored_preds, preds, atol=1e-6, rtol=0)

    path = est.export_saved_model(str(tmp_path / "export"))
    served = ServingModel.load(path)
    outputs = [served.predict({"uid": b.sparse["uid"].to_lists()}, {"ctx": b.dense["ctx"].tolist()})
               for b in batches(4, 1)]
    (head,) = outputs[0]  # one prediction head
    np.testing.assert_allclose(np.concatenate([o[head] for o in outputs]), preds, atol=1e-6, rtol=0)
