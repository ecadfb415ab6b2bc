"""Export for serving: the layout and signature of an export, predictions of the export loaded in a
process without the model's code against ``Estimator.predict`` (Fp32 exact, Fp16 within half
precision, FixedR8 rows quantised as configured), the TorchScript fallback, exporting from a
checkpoint into a fresh estimator, the check of the saved program at batch size 1, replacing an
export without a moment of half of one, exports kept in step with checkpoints, and the errors of a
model that cannot be served.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import subprocess
import sys
import textwrap
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import monolith.export.exporter as exporter
from monolith.dump import ModelDump
from monolith.estimator import Estimator, EstimatorSpec, RunConfig
from monolith.export import ExportSignature, ServingInputReceiver
from monolith.export.exporter import export_saved_model
from monolith.fid import make_fid
from monolith.losses import get_sigmoid_loss_and_pred
from monolith.mode_keys import ModeKeys
from monolith.model import MonolithModel
from monolith.optim.compressors import FixedR8Compressor, Fp32Compressor
from monolith.optim.initializers import RandomUniformInitializer
from monolith.optim.optimizers import SgdOptimizer
from monolith.serving import ServingModel
from monolith.sparse import Batch, KeyedJaggedTensor

SLOTS = {"uid": 1, "mov": 2, "hist": 3}
DIM, SEQ, CTX = 4, 3, 3
BIAS_RANGE = 0.5
TRAIN_POOL, PREDICT_POOL = 12, 16  # predicted FIDs beyond the trained pool are absent: they read zeros


def make_batches(n: int, batch_size: int, seed: int, pool: int = TRAIN_POOL) -> list[Batch]:
    """uid: one FID; mov: 0-3 FIDs (mean-pooled); hist: 0-4 FIDs of mov's table (first 3 kept); ctx: 3 floats."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        rows = {"uid": [[make_fid(1, int(rng.integers(pool)))] for _ in range(batch_size)],
                "mov": [[make_fid(2, int(v)) for v in rng.integers(0, pool, rng.integers(0, 4))]
                        for _ in range(batch_size)],
                "hist": [[make_fid(2, int(v)) for v in rng.integers(0, pool, rng.integers(0, 5))]
                         for _ in range(batch_size)]}
        dense = {"ctx": torch.from_numpy(rng.normal(size=(batch_size, CTX)).astype(np.float32)),
                 "label": torch.from_numpy((rng.random(batch_size) < 0.5).astype(np.float32)),
                 "target": torch.from_numpy(rng.normal(size=batch_size).astype(np.float32))}
        out.append(Batch(KeyedJaggedTensor.from_lists(rows), dense))
    return out


def request_of(batch: Batch) -> tuple[dict, dict]:
    """The serving request (sparse, dense) carrying ``batch``'s features."""
    return ({name: batch.sparse[name].to_lists() for name in SLOTS}, {"ctx": batch.dense["ctx"].tolist()})


class ServeModel(MonolithModel):
    """Two heads (ctr: sigmoid, bid: regression) on uid/mov/hist embeddings and a dense ``ctx``, a
    FixedR8-able bias slice and an extra output; ``branchy`` adds a value check torch.export rejects,
    ``batch_branch`` doubles the vectors of a batch of one example (a branch on the batch size)."""

    def __init__(self, vec_compressor=None, bias_compressor=None, branchy=False, receiver=None, batch_branch=False):
        super().__init__()
        self.register_slots(SLOTS)
        self.tower = torch.nn.Sequential(torch.nn.Linear(3 * DIM + CTX, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        self.vec_compressor, self.bias_compressor = vec_compressor, bias_compressor
        self.branchy, self.batch_branch = branchy, batch_branch
        self.receiver = receiver or ServingInputReceiver(list(SLOTS), {"ctx": CTX})
        self.batch_size = 16

    def input_fn(self, mode):
        if mode == ModeKeys.TRAIN:
            return make_batches(8, self.batch_size, 0)
        return make_batches(2, self.batch_size, 1, pool=PREDICT_POOL)

    def model_fn(self, features, mode):
        self.create_embedding_feature_column("uid")
        self.create_embedding_feature_column("mov", combiner="reduce_mean")
        self.create_embedding_feature_column("hist", max_seq_length=SEQ, shared_name="mov")
        sgd = {"initializer": RandomUniformInitializer(-0.5, 0.5), "optimizer": SgdOptimizer(0.2)}
        vec = self.lookup_embedding_slice(["uid", "mov"], "vec", DIM, out_type="concat",
                                          compressor=self.vec_compressor, **sgd)
        hist = self.lookup_embedding_slice(["hist"], "vec", DIM)[0]  # [batch, SEQ, DIM]
        if self.batch_branch and vec.shape[0] == 1:
            vec = vec * 2
        bias = self.lookup_embedding_slice(["uid", "mov"], "bias", 1, out_type="add_n",
                                           compressor=self.bias_compressor, **sgd)
        out = self.tower(torch.cat([vec, hist.mean(1), features["ctx"]], 1))
        logits = out[:, 0] + bias.reshape(-1)
        if self.branchy and not bool(torch.isfinite(logits).all()):
            raise FloatingPointError("non-finite logits")
        label = features.dense.get("label") if mode != ModeKeys.PREDICT else None
        loss, ctr = get_sigmoid_loss_and_pred("ctr", logits, label, self.batch_size, mode=mode)
        bid = out[:, 1]
        if loss is not None:
            loss = loss + (bid - features["target"]).pow(2).sum()
        self.add_extra_output("logits", logits)
        return EstimatorSpec(label=None if label is None else {"ctr": label, "bid": features["target"]},
                             pred={"ctr": ctr, "bid": bid}, loss=loss, classification=[True, False],
                             optimizer=functools.partial(torch.optim.SGD, lr=0.05))

    def serving_input_receiver_fn(self):
        return self.receiver


def make_estimator(model_dir, model_class=ServeModel, config_args=None, **model_args) -> Estimator:
    torch.manual_seed(0)
    config = RunConfig(model_dir=str(model_dir), log_step_count_steps=1000, enable_summaries=False,
                       progress_bar=False, **(config_args or {}))
    return Estimator(model_class(**model_args), config)


def trained(model_dir, steps: int = 8, **model_args) -> Estimator:
    est = make_estimator(model_dir, **model_args)
    est.train(max_steps=steps)
    return est


def estimator_predictions(est: Estimator) -> dict[str, np.ndarray]:
    preds = list(est.predict())
    return {head: np.array([p[head] for p in preds]) for head in ("ctr", "bid")}


def served_predictions(model: ServingModel, batches: list[Batch]) -> dict[str, np.ndarray]:
    outputs = [model.predict(*request_of(b)) for b in batches]
    return {name: np.concatenate([o[name] for o in outputs]) for name in outputs[0]}


def predict_batches() -> list[Batch]:
    return make_batches(2, 16, 1, pool=PREDICT_POOL)


def quantize_slice(est: Estimator, columns: slice, compressor) -> None:
    """Stores the estimator's rows of ``columns`` as serving does (through ``compressor``)."""
    for module in est.model.ctx.tables.values():
        keys, rows = module.table.items()
        part = rows[:, columns]
        rows[:, columns] = compressor.decode(compressor.encode(part), part.shape[1])
        module.table.assign(keys, rows)


@pytest.fixture(scope="module")
def fp32_export(tmp_path_factory):
    """A model with Fp32 vectors and a FixedR8 bias slice, trained 8 steps and exported; the rows
    of its tables at export time (tests may change the estimator's)."""
    root = tmp_path_factory.mktemp("fp32")
    est = trained(root / "run", vec_compressor=Fp32Compressor(), bias_compressor=FixedR8Compressor(BIAS_RANGE))
    rows = {name: module.table.items() for name, module in est.model.ctx.tables.items()}
    return est, est.export_saved_model(root / "export"), rows


# ----------------------------------------------------------------------------- layout and signature
def test_export_layout_signature_and_dump(fp32_export):
    est, path, _ = fp32_export
    assert os.path.dirname(path).endswith("export") and os.path.basename(path) == str(est.global_step) == "8"
    assert sorted(os.listdir(path)) == ["dense.pt2", "model_dump.json", "signature.json", "tables"]
    assert sorted(os.listdir(os.path.join(path, "tables"))) == ["mov.npz", "uid.npz"]
    assert not [n for n in os.listdir(os.path.dirname(path)) if n.startswith(".")]  # no staging left

    with open(os.path.join(path, "signature.json")) as f:
        raw = json.load(f)
    assert raw["program"]["kind"] == "torch.export" and raw["program"]["fallback_reason"] is None
    assert raw["receiver"] == {"sparse_features": ["uid", "mov", "hist"], "dense_features": {"ctx": 3}}
    inputs = [(i["name"], i["kind"], i["shape"], i.get("table"), i.get("combiner"), i.get("max_seq_length"))
              for i in raw["inputs"]]
    assert inputs == [
        ("uid[0:4]", "embedding", [-1, 4], "uid", "reduce_sum", 0),
        ("mov[0:4]", "embedding", [-1, 4], "mov", "reduce_mean", 0),
        ("hist[0:4]", "embedding", [-1, 3, 4], "mov", "first_n", 3),  # hist shares mov's table
        ("uid[4:5]", "embedding", [-1, 1], "uid", "reduce_sum", 0),
        ("mov[4:5]", "embedding", [-1, 1], "mov", "reduce_mean", 0),
        ("ctx", "dense", [-1, 3], None, None, None),
    ]
    assert [i.get("slice") for i in raw["inputs"][:5]] == ["vec", "vec", "vec", "bias", "bias"]
    assert raw["outputs"] == ["ctr", "bid", "logits"] and raw["heads"] == ["ctr", "bid"]
    assert raw["extra_outputs"] == ["logits"]
    assert raw["tables"] == {"uid": "tables/uid.npz", "mov": "tables/mov.npz"}

    signature = ExportSignature.load(path)
    assert signature.global_step == 8 and [e.name for e in signature.embeddings] == [i[0] for i in inputs[:5]]
    dump = ModelDump.load(os.path.join(path, "model_dump.json"))
    assert set(dump.serving_input_receiver) == {"uid", "mov", "hist", "ctx"}
    assert dump.model_fn.head_names == ["ctr", "bid"] and dump.model_fn.extra_outputs == ["logits"]
    assert {s.name: s.compressor["type"] for s in dump.emb_slices["uid"]} == {
        "vec": "Fp32Compressor", "bias": "FixedR8Compressor"}


def test_export_restores_training_state_and_replaces_same_step(fp32_export, tmp_path):
    est, _, _ = fp32_export
    assert est.model.p.mode == ModeKeys.TRAIN and est.model.training
    first = est.export_saved_model(tmp_path)
    with open(os.path.join(first, "signature.json"), "a") as f:
        f.write(" ")  # marks this copy
    again = est.export_saved_model(tmp_path)
    assert again == first and json.load(open(os.path.join(again, "signature.json")))["global_step"] == 8


def test_exporter_takes_a_built_model_and_a_step(fp32_export, tmp_path):
    """The exporter needs no Estimator: a built model, the step to name the export and a directory."""
    est, path, _ = fp32_export
    direct = export_saved_model(est.model, 123, tmp_path)
    assert direct == os.path.join(tmp_path, "123") and ExportSignature.load(direct).global_step == 123
    assert est.model.p.mode == ModeKeys.TRAIN and est.model.training
    for batch in predict_batches():
        assert ServingModel.load(direct).predict(*request_of(batch)) == ServingModel.load(path).predict(
            *request_of(batch))


# ----------------------------------------------------------------------------- predictions
def test_served_without_model_code_equals_estimator_fp32_and_fixed_r8(fp32_export, tmp_path):
    est, path, _ = fp32_export
    requests = [request_of(b) for b in predict_batches()]
    script = textwrap.dedent(f"""
        import importlib.util, json, os, sys
        assert importlib.util.find_spec("test_export") is None
        assert not any(os.path.exists(os.path.join(p or ".", "tests", "test_export.py")) for p in sys.path)
        from monolith.serving import ServingModel
        model = ServingModel.load({os.path.dirname(path)!r})  # the newest export under the directory
        requests = json.load(open(sys.argv[1]))
        print(json.dumps([model.predict(sparse, dense) for sparse, dense in requests]))
    """)
    (tmp_path / "requests.json").write_text(json.dumps(requests))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path / "requests.json")], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    outputs = json.loads(result.stdout)
    served = {name: np.concatenate([o[name] for o in outputs]) for name in ("ctr", "bid", "logits")}

    raw = estimator_predictions(est)
    # Served bias rows are FixedR8-quantised, the estimator's are not: predictions differ ...
    assert np.abs(served["ctr"] - raw["ctr"]).max() > 1e-5
    # ... until the estimator's bias columns are quantised alike; vectors (Fp32) are exact.
    quantize_slice(est, slice(DIM, DIM + 1), FixedR8Compressor(BIAS_RANGE))
    want = estimator_predictions(est)
    np.testing.assert_allclose(served["ctr"], want["ctr"], atol=1e-6, rtol=0)
    np.testing.assert_allclose(served["bid"], want["bid"], atol=1e-6, rtol=0)
    np.testing.assert_allclose(1 / (1 + np.exp(-served["logits"])), want["ctr"], atol=1e-6, rtol=0)


def test_fixed_r8_slice_rows_are_quantised(fp32_export):
    _, path, exported_rows = fp32_export
    model = ServingModel.load(path)
    keys, rows = exported_rows["uid"]
    served = model.lookup("uid", keys)
    step = BIAS_RANGE / 128
    np.testing.assert_array_equal(served[:, :DIM], rows[:, :DIM])  # Fp32: unchanged
    bias = served[:, DIM]
    np.testing.assert_array_equal(bias / step, np.round(bias / step))  # multiples of the step ...
    assert bias.min() >= -BIAS_RANGE and bias.max() <= BIAS_RANGE * 127 / 128  # ... within the fixed range
    compressor = FixedR8Compressor(BIAS_RANGE)
    np.testing.assert_array_equal(bias, compressor.decode(compressor.encode(rows[:, DIM:]), 1)[:, 0])
    assert not np.array_equal(bias, rows[:, DIM])
    np.testing.assert_array_equal(model.lookup("uid", [make_fid(1, 10_000)]), np.zeros((1, DIM + 1)))


def test_fp16_default_compressor_within_half_precision(tmp_path):
    est = trained(tmp_path / "run")  # slices without a compressor get the slot's default, Fp16
    model = ServingModel.load(est.export_saved_model(tmp_path / "export"))
    keys, rows = est.model.ctx.tables["mov"].table.items()
    np.testing.assert_array_equal(model.lookup("mov", keys), rows.astype(np.float16).astype(np.float32))
    served, want = served_predictions(model, predict_batches()), estimator_predictions(est)
    np.testing.assert_allclose(served["ctr"], want["ctr"], atol=2e-3, rtol=0)
    np.testing.assert_allclose(served["bid"], want["bid"], atol=5e-3, rtol=2e-3)
    assert np.abs(served["bid"] - want["bid"]).max() > 0  # the rounding is there


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_torchscript_fallback_when_torch_export_fails(tmp_path):
    est = trained(tmp_path / "run", steps=3, vec_compressor=Fp32Compressor(), bias_compressor=Fp32Compressor(),
                  branchy=True)
    path = est.export_saved_model(tmp_path / "export")
    signature = ExportSignature.load(path)
    assert signature.program == "torchscript" and os.path.exists(os.path.join(path, "dense.ts"))
    assert signature.fallback_reason  # why torch.export failed
    served, want = served_predictions(ServingModel.load(path), predict_batches()), estimator_predictions(est)
    np.testing.assert_allclose(served["ctr"], want["ctr"], atol=1e-6, rtol=0)
    np.testing.assert_allclose(served["bid"], want["bid"], atol=1e-6, rtol=0)


def test_export_from_checkpoint_in_a_fresh_estimator(fp32_export, tmp_path):
    est, path, _ = fp32_export
    fresh = make_estimator(est.config.model_dir, vec_compressor=Fp32Compressor(),
                           bias_compressor=FixedR8Compressor(BIAS_RANGE))
    again = fresh.export_saved_model(tmp_path)  # builds on the receiver's features, restores the checkpoint
    assert os.path.basename(again) == "8"
    a, b = ServingModel.load(path), ServingModel.load(again)
    for batch in predict_batches():
        assert a.predict(*request_of(batch)) == b.predict(*request_of(batch))


# ----------------------------------------------------------------------------- errors
def test_receiver_validation():
    with pytest.raises(ValueError, match="named more than once"):
        ServingInputReceiver(["a", "b"], {"a": 2})
    with pytest.raises(ValueError, match="dense feature 'x' needs a positive int width"):
        ServingInputReceiver(["a"], {"x": 0})
    with pytest.raises(ValueError, match="list of names"):
        ServingInputReceiver("a")
    receiver = ServingInputReceiver(["a"], {"x": 2})
    assert ServingInputReceiver.from_dict(receiver.to_dict()) == receiver
    assert receiver.example_batch(3).dense["x"].shape == (3, 2)


def test_model_that_cannot_be_served(tmp_path):
    est = make_estimator(tmp_path / "a", receiver=ServingInputReceiver(["uid", "mov"], {"ctx": CTX}))
    est.train(max_steps=1)
    with pytest.raises(ValueError, match="looks up feature 'hist', which the serving receiver does not provide"):
        est.export_saved_model(tmp_path / "export")
    est = make_estimator(tmp_path / "b", receiver=ServingInputReceiver(list(SLOTS)))  # no ctx
    with pytest.raises(KeyError, match="ctx"):
        est.export_saved_model(tmp_path / "export")

    class NoReceiver(ServeModel):
        def serving_input_receiver_fn(self):
            return {"uid": 1}

    with pytest.raises(TypeError, match="must return a ServingInputReceiver, got dict"):
        Estimator(NoReceiver(), RunConfig(model_dir=str(tmp_path / "c"))).export_saved_model(tmp_path / "export")


def test_cli_export(tmp_path, capsys):
    from monolith.cli import main

    model_dir = str(tmp_path / "run")
    with pytest.raises(SystemExit) as exited:
        main(["export", "--model", "test_export:ServeModel", "--model-dir", model_dir])
    assert exited.value.code == 2 and "no checkpoint" in capsys.readouterr().err
    main(["train", "--model", "test_export:ServeModel", "--model-dir", model_dir, "--max-steps", "2"])
    capsys.readouterr()
    main(["export", "--model", "test_export:ServeModel", "--model-dir", model_dir])
    line = json.loads(capsys.readouterr().out)
    assert line["export"] == os.path.join(os.path.abspath(model_dir), "exported_models", "2")
    assert line["program"] == "torch.export" and line["outputs"] == ["ctr", "bid", "logits"]
    assert ServingModel.load(line["export"]).version == 2


# ----------------------------------------------------------------------------- the check at batch size 1
@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
@pytest.mark.parametrize("branchy,kind", [(False, "torch.export"), (True, "torchscript")])
def test_program_that_branches_on_batch_size_is_refused(tmp_path, branchy, kind):
    # Traced at batch size 7 (and checked at 3), the program never takes model_fn's batch-of-one branch:
    # served, a one-example request would get other predictions than model_fn's.
    est = trained(tmp_path / "run", steps=1, branchy=branchy, batch_branch=True)
    with pytest.raises(RuntimeError, match=f"saved {kind} program disagrees with model_fn on output 'ctr' at "
                                           f"batch size 1 .*values differ"):
        est.export_saved_model(tmp_path / "export")
    assert os.listdir(tmp_path / "export") == []  # refused: no export, no staging left


def test_no_register_buffer_warning_for_several_extra_outputs(tmp_path):
    class MoreOutputs(ServeModel):
        def model_fn(self, features, mode):
            spec = super().model_fn(features, mode)
            self.add_extra_output("bid2", spec.pred["bid"] * 2)  # torch says "were assigned" for several
            return spec

    est = make_estimator(tmp_path / "run", model_class=MoreOutputs)
    est.train(max_steps=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = est.export_saved_model(tmp_path / "export")
    assert not [str(w.message) for w in caught if "register_buffer" in str(w.message)]
    assert ExportSignature.load(path).outputs == ["ctr", "bid", "logits", "bid2"]


# ----------------------------------------------------------------------------- replacing an export
def _export_is_whole(path) -> bool:
    signature = ExportSignature.load(path)
    return all(os.path.isfile(os.path.join(path, f)) for f in [signature.program_file, *signature.tables.values()])


def test_crash_while_replacing_an_export_never_leaves_half_of_one(fp32_export, tmp_path, monkeypatch):
    est, _, _ = fp32_export
    export_dir = tmp_path / "export"
    first = est.export_saved_model(export_dir)
    real_rmtree, real_replace = exporter.shutil.rmtree, exporter.os.replace

    def killed_while_deleting(path, *args, **kwargs):
        # A kill in the middle of deleting a whole export: half of its files are gone.
        tables = os.path.join(path, "tables")
        if os.path.isdir(tables) and os.listdir(tables):
            os.unlink(os.path.join(tables, sorted(os.listdir(tables))[0]))
            raise KeyboardInterrupt("killed")
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(exporter.shutil, "rmtree", killed_while_deleting)
    with pytest.raises(KeyboardInterrupt):
        est.export_saved_model(export_dir)
    monkeypatch.setattr(exporter.shutil, "rmtree", real_rmtree)
    assert _export_is_whole(first)  # the new export is in place whole; only the old copy set aside is half
    assert ServingModel.load(export_dir).predict(*request_of(predict_batches()[0]))["ctr"]

    # A kill between setting the old export aside and renaming the new one in: no export of step 8 ...
    replaced = []

    def killed_after_setting_aside(src, dst):
        if os.path.dirname(dst) == str(export_dir):  # (not the files written inside the staging)
            replaced.append((os.path.basename(src), os.path.basename(dst)))
            if len(replaced) == 2:
                raise KeyboardInterrupt("killed")
        return real_replace(src, dst)

    monkeypatch.setattr(exporter.os, "replace", killed_after_setting_aside)
    with pytest.raises(KeyboardInterrupt):
        est.export_saved_model(export_dir)
    monkeypatch.setattr(exporter.os, "replace", real_replace)
    assert replaced == [("8", ".8.replaced"), (".8.staging", "8")]
    assert sorted(os.listdir(export_dir)) == [".8.replaced"]  # ... the staging is gone, the old copy aside
    with pytest.raises(FileNotFoundError, match="no export"):
        ServingModel.load(export_dir)  # serving ignores the hidden copy

    # ... which the next export restores (then replaces); a failed export leaves no staging behind.
    monkeypatch.setattr(exporter, "save_table", lambda *args: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        est.export_saved_model(export_dir)
    assert sorted(os.listdir(export_dir)) == ["8"] and _export_is_whole(first)
    monkeypatch.undo()
    assert est.export_saved_model(export_dir) == first and sorted(os.listdir(export_dir)) == ["8"]
    assert _export_is_whole(first)


# ----------------------------------------------------------------------------- export_when_saving
def test_export_when_saving_keeps_exports_in_step_with_checkpoints(tmp_path, caplog):
    est = make_estimator(tmp_path / "run", config_args={"save_checkpoints_steps": 1, "keep_checkpoint_max": 2})
    est.model.p.serving.export_when_saving = True
    export_dir = tmp_path / "run" / "exported_models"
    os.makedirs(export_dir / ".1.staging")  # a crashed export's staging of another step: not an export
    est.train(max_steps=4)
    kept = [os.path.basename(c) for c in est._checkpoints.checkpoints()]
    assert kept == ["ckpt-3", "ckpt-4"]
    assert sorted(n for n in os.listdir(export_dir) if not n.startswith(".")) == ["3", "4"]
    assert ServingModel.load(export_dir).version == 4

    # Under torch.distributed nothing is exported: rank 0 says so, the other ranks say nothing.
    for rank, says in ((1, False), (0, True)):
        est.dist = SimpleNamespace(rank=rank)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="monolith.estimator"):
            est._export_when_saving(kept[-1])
        assert ("not exported under torch.distributed" in caplog.text) is says
    est.dist = None
    assert sorted(n for n in os.listdir(export_dir) if not n.startswith(".")) == ["3", "4"]


# ----------------------------------------------------------------------------- FID transforms in model_fn
class SharesInModelFn(ServeModel):
    """Switches FIDs inside model_fn: trains, but cannot be served (requests carry the raw FIDs)."""

    def model_fn(self, features, mode):
        features = self.share_slot(features, {"uid": (False, 9)})  # a copy of uid's FIDs under slot 9
        return super().model_fn(features, mode)


class ReadsFidsInModelFn(ServeModel):
    def model_fn(self, features, mode):
        self.add_extra_output("n_mov", features["mov"].lengths().float())
        return super().model_fn(features, mode)


@pytest.mark.parametrize("model_class,how", [(SharesInModelFn, r"features\.sparse\.to_dict\(\), as share_slot"),
                                             (ReadsFidsInModelFn, r"features\['mov'\]")])
def test_fid_transform_inside_model_fn_gets_a_clear_error(tmp_path, model_class, how):
    est = make_estimator(tmp_path / "run", model_class=model_class)
    est.train(max_steps=1)  # trains fine
    with pytest.raises(ValueError, match=f"model_fn reads the FIDs of sparse features .*{how}") as raised:
        est.export_saved_model(tmp_path / "export")
    message = str(raised.value)
    assert "cannot be served" in message and "input_fn" in message and "share_slot(None, share_meta)" in message
    assert not os.path.exists(tmp_path / "export")
