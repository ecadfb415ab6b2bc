"""Model dump: recorded fields against the model's own configuration, file round trip, restores."""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import logging
import math

import numpy as np
import pytest
import torch

from monolith.dump import (
    SERVING_SIGNATURE,
    InputFeatureDump,
    ModelDump,
)
from monolith.estimator import Estimator, EstimatorSpec, RunConfig
from monolith.fid import make_fid
from monolith.layout import OutConfig
from monolith.losses import get_sigmoid_loss_and_pred
from monolith.mode_keys import ModeKeys
from monolith.model import MonolithModel, TrainingHook
from monolith.modules.combiners import FirstN, ReduceSum
from monolith.optim import (
    AdadeltaOptimizer,
    AdaGradWithGroupLassoOptimizer,
    AdagradOptimizer,
    AdamOptimizer,
    AmsgradOptimizer,
    Compressor,
    ConstantsInitializer,
    FixedR8Compressor,
    Fp16Compressor,
    Fp32Compressor,
    FtrlOptimizer,
    Initializer,
    MomentumOptimizer,
    MovingAverageOptimizer,
    RandomUniformInitializer,
    RmspropOptimizer,
    RmspropV2Optimizer,
    SgdOptimizer,
    SliceOptimizer,
    ZerosInitializer,
    from_config,
)
from monolith.params import Params
from monolith.sparse import Batch, JaggedTensor, KeyedJaggedTensor

BATCH = 8
SEQ = 3
SLOTS = {"uid": 1, "mov": 2, "mov_alt": 3, "hist": 4}


def make_batch(seed: int) -> Batch:
    """uid/mov/mov_alt: one id per example; hist: 0..4 ids per example (a sequence)."""
    rng = np.random.default_rng(seed)
    jagged = {name: JaggedTensor(torch.from_numpy(make_fid(slot, rng.integers(0, 20, BATCH))),
                                 torch.ones(BATCH, dtype=torch.int64))
              for name, slot in SLOTS.items() if name != "hist"}
    lengths = rng.integers(0, 5, BATCH)
    jagged["hist"] = JaggedTensor(torch.from_numpy(make_fid(SLOTS["hist"], rng.integers(0, 20, lengths.sum()))),
                                  torch.from_numpy(lengths))
    dense = {"label": torch.from_numpy((rng.random(BATCH) < 0.5).astype(np.float32)),
             "ctx_dense": torch.from_numpy(rng.normal(size=(BATCH, 5)).astype(np.float32))}
    return Batch(KeyedJaggedTensor.from_jagged_dict(jagged), dense)


class DumpModel(MonolithModel):
    """uid (threshold 2), mov (expire 7 days), mov_alt sharing mov's embedding, hist pooled by first_n."""

    @classmethod
    def params(cls):
        p = super().params()
        p.define("tower", Params(), "Dense tower.")
        p.tower.define("hidden", (8, 4), "Hidden sizes (a tuple).")
        p.tower.define("activation", torch.nn.functional.relu, "A function, recorded by name.")
        p.define("weights", {1: 0.5, "b": [1.0, None]}, "A dict with a non-str key.")
        return p

    def __init__(self, params=None):
        super().__init__(params)
        self.batch_size = BATCH
        self.aux_weight = 0.5
        self.register_slots(SLOTS)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(3 * 4 + SEQ * 2 + 5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
        self.hook: TrainingHook | None = None
        self.slice_lr_fn = None

    def input_fn(self, mode):
        return [make_batch(i) for i in range(3)]

    def model_fn(self, features, mode):
        self.create_embedding_feature_column("uid", occurrence_threshold=2)
        self.create_embedding_feature_column("mov", expire_time=7)
        self.create_embedding_feature_column("mov_alt", shared_name="mov")
        self.create_embedding_feature_column("hist", max_seq_length=SEQ)
        vec = self.lookup_embedding_slice(
            ["uid", "mov", "mov_alt"], "vec", 4, out_type="concat",
            initializer=ConstantsInitializer(0.01),
            optimizer=FtrlOptimizer(learning_rate=0.05, l1_regularization=0.1, l2_regularization=0.2),
            compressor=FixedR8Compressor(2.0), learning_rate_fn=self.slice_lr_fn)
        bias = self.lookup_embedding_slice(["uid", "mov"], "bias", 1, out_type="add_n", optimizer=SgdOptimizer(0.1))
        (seq,) = self.lookup_embedding_slice(["hist"], "seq", 2)
        if self.hook is not None:
            self.add_training_hook(self.hook)
        self.add_extra_output("embedding", {"vec": vec})
        logits = self.mlp(torch.cat([vec, seq.reshape(BATCH, -1), features["ctx_dense"]], 1)).reshape(-1)
        logits = logits + bias.reshape(-1)
        loss, pred = get_sigmoid_loss_and_pred("ctr", logits, features["label"], BATCH, mode=mode)
        self.add_loss(self.aux_weight * (vec ** 2).mean())
        return EstimatorSpec(label=features["label"], pred=pred, head_name="ctr", loss=loss,
                             optimizer=functools.partial(torch.optim.Adam, lr=1e-2, betas=(0.8, 0.95)))

    def serving_input_receiver_fn(self):
        return None


class Receiver:
    """Monolith's ``ServingInputReceiver`` shape: a ``features`` mapping."""

    def __init__(self, features):
        self.features = features


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    model = DumpModel()
    estimator = Estimator(model, RunConfig(model_dir=str(tmp_path_factory.mktemp("run")), progress_bar=False,
                                           enable_summaries=False))
    estimator.train(max_steps=2)
    batch = make_batch(7)
    output = estimator.train_step(batch)
    receiver = Receiver({"uid": batch.sparse["uid"], "ctx_dense": batch.dense["ctx_dense"]})
    dump = ModelDump.from_model(model, output, estimator._dense_optimizer, batch, receiver,
                                run_config=estimator.config, input_source=model.input_fn("train"))
    return model, estimator, batch, output, dump


def test_run_config_user_params_losses_and_input_source(trained, tmp_path):
    model, estimator, _, output, dump = trained
    assert dump.run_config == json.loads(json.dumps(dataclasses.asdict(estimator.config)))
    assert dump.user_params == {"aux_weight": 0.5, "hook": None, "slice_lr_fn": None}  # batch_size lives in p
    assert dump.model_fn.has_loss and dump.model_fn.extra_losses == 1  # model_fn's add_loss
    assert dump.input_source == {"type": "builtins.list", "variant_type": None}
    dump.dump(tmp_path / "dump.json")
    loaded = ModelDump.load(tmp_path / "dump.json")
    assert (loaded.run_config, loaded.user_params, loaded.input_source) == (
        dump.run_config, dump.user_params, dump.input_source)


def test_features_match_the_model(trained):
    model, _, _, _, dump = trained
    assert [f.name for f in dump.features] == list(model.fc_dict) == list(SLOTS)
    for f in dump.features:
        fc = model.fc_dict[f.name]
        assert f.slot == SLOTS[f.name]
        assert f.slot_name == fc.feature_slot.name
        assert f.occurrence_threshold == fc.feature_slot.config.occurrence_threshold
        assert f.expire_time == fc.feature_slot.config.expire_time
        assert (f.combiner, f.max_seq_length) == (fc.combiner.name, fc.combiner.max_seq_length)
    by_name = {f.name: f for f in dump.features}
    assert by_name["mov_alt"].shared_name == "mov" and by_name["mov_alt"].slot_name == "mov"
    assert by_name["uid"].shared_name is None
    assert (by_name["uid"].occurrence_threshold, by_name["mov"].expire_time) == (2, 7)
    assert (by_name["hist"].combiner, by_name["hist"].max_seq_length) == ("first_n", SEQ)
    assert dump.get_slot_to_occurrence_threshold() == {1: 2, 2: 0, 3: 0, 4: 0}
    assert dump.get_slot_to_expire_time() == {1: 36500, 2: 7, 3: 7, 4: 36500}
    combiners = dump.feature_combiners
    assert isinstance(combiners["uid"], ReduceSum) and isinstance(combiners["hist"], FirstN)
    assert combiners["hist"].max_seq_length == SEQ


def test_slices_and_tables_match_the_model(trained):
    model, _, _, _, dump = trained
    slots = {fc.feature_slot.name: fc.feature_slot for fc in model.fc_dict.values()}
    assert list(dump.emb_slices) == list(slots) == ["uid", "mov", "hist"]
    for name, slices in dump.emb_slices.items():
        fs = slots[name]
        by_start = {s.start: n for n, s in fs.named_slices.items()}
        starts = np.cumsum([0] + [c.dim for c in fs.slices])[:-1]
        assert [s.name for s in slices] == [by_start[int(st)] for st in starts]
        assert [s.dim for s in slices] == [c.dim for c in fs.slices]
        for s, c in zip(slices, fs.slices):
            assert s.initializer == c.initializer.config()
            assert s.optimizer == c.optimizer.config()
            assert s.compressor == c.compressor.config()
            restored = s.restore()
            assert restored.describe() == {**c.describe(), "name": s.name}
    assert [s.name for s in dump.emb_slices["uid"]] == ["vec", "bias"]
    assert dump.emb_slices["uid"][0].optimizer["l1_regularization_strength"] == 0.1
    assert dump.feature_slice_dims == {"uid": [4, 1], "mov": [4, 1], "mov_alt": [4, 1], "hist": [2]}

    assert list(dump.table_configs) == list(model.ctx.tables)
    for name, module in model.ctx.tables.items():
        table = dump.table_configs[name]
        assert table.dim == module.table.dim
        assert table.slots == [module.table.slot_config(c.slot) for c in table.slots]
    assert [c.slot for c in dump.table_configs["mov"].slots] == [2, 3]  # mov_alt's FIDs go to mov's table
    assert dump.table_configs["mov"].slots[1].expire_time == 7
    assert dump.has_collected()


def test_layouts_outputs_inputs_and_signatures(trained):
    model, _, batch, output, dump = trained
    assert dump.layouts == {n: json.loads(json.dumps(c.to_dict())) for n, c in model.layout_dict.items()}
    fn = dump.model_fn
    assert fn.head_names == output.head_names == ["ctr"]
    assert fn.classification == output.classification
    assert fn.label_shapes == [[-1]] and fn.pred_shapes == [[-1, *output.preds[0].shape[1:]]]
    assert fn.extra_outputs == list(output.extra_outputs) == ["embedding"]
    assert list(dump.input_features) == batch.keys()
    assert dump.input_features["hist"] == InputFeatureDump(True, None, None)
    assert dump.input_features["ctx_dense"] == InputFeatureDump(False, "float32", 5)
    assert dump.input_features["label"] == InputFeatureDump(False, "float32", 0)
    assert dump.serving_input_receiver == {"uid": InputFeatureDump(True, None, None),
                                           "ctx_dense": InputFeatureDump(False, "float32", 5)}
    assert {n: (s.inputs, s.outputs) for n, s in dump.signatures.items()} == {
        SERVING_SIGNATURE: (["uid", "ctx_dense"], ["ctr"]), "embedding": (["uid", "ctx_dense"], ["vec"])}


def test_file_round_trip(trained, tmp_path):
    dump = trained[-1]
    path = tmp_path / "sub" / "model_dump.json"
    dump.dump(path)
    assert ModelDump.load(path) == dump
    assert [p.name for p in path.parent.iterdir()] == ["model_dump.json"]  # no temporary left behind


@pytest.mark.parametrize("content", [b"", b'{"format": "monolith.model_dump", "version": 1, "model_dump": {',
                                     b'{"format": "something else"}', b"\xff\xfe", b"[1, 2]"])
def test_foreign_or_truncated_file_names_the_path(tmp_path, content):
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="bad.json"):
        ModelDump.load(path)


def test_wrong_record_fields_are_rejected(trained, tmp_path):
    path = tmp_path / "d.json"
    trained[-1].dump(path)
    data = json.loads(path.read_text())
    data["model_dump"]["features"][0]["slot"] = "one"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="d.json"):
        ModelDump.load(path)


def test_restore_params(trained, tmp_path):
    model, _, _, _, dump = trained
    path = tmp_path / "d.json"
    dump.dump(path)
    p, layouts = ModelDump.load(path).restore_params()
    assert p == model.p and p is not model.p
    assert p.cls is DumpModel and p.tower.hidden == (8, 4) and p.tower.activation is torch.nn.functional.relu
    assert p.weights == {1: 0.5, "b": [1.0, None]}
    assert layouts == model.layout_dict and all(isinstance(c, OutConfig) for c in layouts.values())
    assert isinstance(p.instantiate(), DumpModel)


def test_restore_params_needs_layouts():
    with pytest.raises(ValueError, match="layout_dict is empty"):
        ModelDump(params={"$params": "monolith.params:Params", "items": {}}).restore_params()
    assert not ModelDump().has_collected()


def test_unserialisable_params_are_skipped_with_a_warning(trained, caplog):
    model = trained[0]
    model.p.define("scorer", lambda x: x, "A lambda: cannot be imported back.")
    try:
        with caplog.at_level(logging.WARNING, logger="monolith.dump"):
            dump = ModelDump.from_model(model)
        p = dump.restore_params().p
    finally:
        model.p.delete("scorer")
    assert "p.scorer" in caplog.text
    assert not p.contain("scorer") and p == model.p


def test_partly_collected_dump_raises(trained):
    dump = ModelDump.from_model(trained[0])
    dump.table_configs = {}
    with pytest.raises(ValueError, match="partly collected"):
        dump.has_collected()


def test_learning_rate_fn_is_refused():
    model = DumpModel()
    model.slice_lr_fn = lambda step: 0.01
    model.create_model_fn()(make_batch(0), ModeKeys.TRAIN)
    with pytest.raises(Exception, match="learning_rate_fn is not allowed"):
        ModelDump.from_model(model)


def test_training_hooks_are_refused():
    model = DumpModel()
    model.hook = TrainingHook()
    output = model.create_model_fn()(make_batch(0), ModeKeys.TRAIN)
    with pytest.raises(Exception, match="customer hooks is not allowed"):
        ModelDump.from_model(model, output)


def test_dense_optimizer_round_trip_gives_the_same_updates(trained, tmp_path):
    model, estimator, _, _, dump = trained
    original = estimator._dense_optimizer
    path = tmp_path / "d.json"
    dump.dump(path)
    recorded = ModelDump.load(path).dense_optimizer
    assert recorded.cls == "torch.optim.adam:Adam"

    twin = DumpModel()
    twin.load_dense_state_dict(model.dense_state_dict())  # its dense weights (no tables: twin has none built)
    restored = recorded.restore(twin)
    assert type(restored) is type(original) and restored.defaults == original.defaults
    strip = lambda groups: [{k: v for k, v in g.items() if k != "params"} for g in groups]  # noqa: E731
    assert strip(restored.param_groups) == strip(original.param_groups)
    assert restored.param_groups[0]["betas"] == (0.8, 0.95)
    # Same moments, so the next step must be the same (copied: load_state_dict keeps the tensors it is given).
    restored.load_state_dict(copy.deepcopy(original.state_dict()))
    torch.manual_seed(0)
    for twin_p, p in zip(twin.parameters(), model.parameters()):
        p.grad = torch.randn_like(p)
        twin_p.grad = p.grad.clone()
    original.step()
    restored.step()
    for twin_p, p in zip(twin.parameters(), model.parameters()):
        torch.testing.assert_close(twin_p, p, rtol=0, atol=0)


def test_dense_optimizer_of_foreign_tensors_is_refused(trained):
    foreign = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
    with pytest.raises(ValueError, match="not parameters of the model"):
        ModelDump.from_model(trained[0], optimizer=foreign)


SLICE_OPTIMIZERS = [
    SgdOptimizer(0.3),
    AdagradOptimizer(0.02, initial_accumulator_value=0.5, weight_decay_factor=0.01, warmup_steps=3),
    FtrlOptimizer(0.05, initial_accumulator_value=0.2, beta=1.0, l1_regularization=0.1, l2_regularization=0.2),
    AdamOptimizer(0.01, beta1=0.8, beta2=0.9, use_beta1_warmup=True, use_nesterov=True, epsilon=0.02),
    AmsgradOptimizer(0.01, beta1=0.7, weight_decay_factor=0.1),
    MomentumOptimizer(0.1, momentum=0.5, use_nesterov=True),
    MovingAverageOptimizer(0.7),
    RmspropOptimizer(0.1, weight_decay_factor=0.01, momentum=0.8),
    RmspropV2Optimizer(0.1, momentum=0.8),
    AdadeltaOptimizer(0.2, averaging_ratio=0.8, epsilon=0.03),
    AdaGradWithGroupLassoOptimizer(0.05, beta=0.5, initial_accumulator_value=0.3, l2_regularization=0.01),
]


@pytest.mark.parametrize("optimizer", SLICE_OPTIMIZERS, ids=lambda o: type(o).__name__)
def test_slice_optimizer_config_round_trip_gives_the_same_updates(optimizer):
    restored = from_config(json.loads(json.dumps(optimizer.config())), SliceOptimizer)
    assert type(restored) is type(optimizer) and restored.config() == optimizer.config()
    rng = np.random.default_rng(0)
    dim, rows = 3, np.array([0, 2, 0])
    grads = rng.normal(size=(3, dim)).astype(np.float32)
    results = []
    for opt in (optimizer, restored):
        weights = np.full((4, dim), 0.1, np.float32)
        state = np.zeros((4, opt.state_width(dim)), np.float32)
        opt.init_state(state)
        opt.apply(weights, state, rows, grads, opt.learning_rate, 1)
        results.append((weights, state))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])


@pytest.mark.parametrize("obj, base", [
    (ZerosInitializer(), Initializer),
    (ConstantsInitializer(0.25), Initializer),
    (RandomUniformInitializer(-0.2, 0.3), Initializer),
    (Fp32Compressor(), Compressor),
    (Fp16Compressor(), Compressor),
    (FixedR8Compressor(3.0), Compressor),
], ids=lambda x: x.__name__ if isinstance(x, type) else type(x).__name__)
def test_initializer_and_compressor_config_round_trip(obj, base):
    restored = from_config(obj.config(), base)
    assert type(restored) is type(obj) and restored.config() == obj.config()


def test_restore_refuses_a_config_of_the_wrong_kind():
    with pytest.raises(ValueError, match="names no SliceOptimizer"):
        from_config(Fp16Compressor().config(), SliceOptimizer)
    with pytest.raises(ValueError, match="names no Initializer"):
        from_config({"type": "NoSuchInitializer"}, Initializer)
    assert math.isclose(from_config({"type": "FixedR8Compressor", "r": 2.0}, Compressor).r, 2.0)
