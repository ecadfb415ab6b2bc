"""Params / InstantiableParams and the model params tree (Monolith's ``hyperparams`` and ``native_model.params``)."""

from __future__ import annotations

import copy

import pytest
import torch

from monolith.mode_keys import ModeKeys
from monolith.model import MonolithModel
from monolith.params import InstantiableParams, Params


def _tree() -> Params:
    p = Params()
    p.define("lr", 0.1, "learning rate")
    p.define("train", Params(), "training group")
    p.train.define("max_steps", 10, "steps")
    p.train.define("opt", Params(), "nested group")
    p.train.opt.define("beta", 0.9, "beta")
    return p


# ----------------------------------------------------------------------------- Params
def test_define_get_set_attribute_and_item_access():
    p = _tree()
    assert p.lr == 0.1 and p["lr"] == 0.1
    p.lr = 0.2
    assert p.lr == 0.2
    p["lr"] = 0.3
    assert p.get("lr") == 0.3
    assert "lr" in p and "nope" not in p
    assert p.contain("train") and not p.contain("max_steps")  # contain looks at this level only
    assert len(p) == 2
    assert dir(p) == ["lr", "train"]


def test_dotted_names_reach_into_groups():
    p = _tree()
    assert p.get("train.max_steps") == 10
    assert p.get("train.opt.beta") == 0.9
    assert p.set(**{"train.max_steps": 7, "train.opt.beta": 0.5, "lr": 1.0}) is p
    assert (p.train.max_steps, p.train.opt.beta, p.lr) == (7, 0.5, 1.0)
    p.delete("train.opt.beta")
    assert "beta" not in p.train.opt


def test_define_errors():
    p = _tree()
    with pytest.raises(AttributeError, match="lr"):
        p.define("lr", 1, "again")
    for bad in ("Lr", "1x", "a-b", "", "_x"):
        with pytest.raises(ValueError):
            p.define(bad, 1, "bad name")


@pytest.mark.parametrize("action", [
    lambda p: p.lrr,
    lambda p: setattr(p, "lrr", 1),
    lambda p: p.get("lrr"),
    lambda p: p.set(lrr=1),
    lambda p: p.delete("lrr"),
])
def test_unknown_name_error_names_it_and_suggests(action):
    p = _tree()
    with pytest.raises(AttributeError) as info:
        action(p)
    message = str(info.value)
    assert "lrr" in message and "lr" in message.replace("lrr", "")


def test_unknown_nested_names():
    p = _tree()
    with pytest.raises(AttributeError, match="max_stepz"):
        p.get("train.max_stepz")
    with pytest.raises(AttributeError, match="trian"):
        p.set(**{"trian.max_steps": 1})
    with pytest.raises(AttributeError, match="trian"):
        p.get("trian.max_steps")
    with pytest.raises(AttributeError, match="lr"):
        p.get("lr.x")  # lr is not a group


def test_copy_is_deep_and_equal():
    p = _tree()
    p.define("items", [1, 2], "a mutable value")
    q = p.copy()
    assert q == p and q is not p
    assert q.train is not p.train and q.train.opt is not p.train.opt
    q.train.opt.beta = 0.1
    q.items.append(3)
    assert p.train.opt.beta == 0.9 and p.items == [1, 2]
    assert q != p
    r = copy.deepcopy(p)
    assert r == p and r.train is not p.train


def test_freeze():
    p = _tree()
    p.freeze()
    assert p.is_immutable()
    assert p.lr == 0.1  # reading still works
    with pytest.raises(TypeError):
        p.lr = 0.5
    with pytest.raises(TypeError):
        p.define("other", 1, "")
    with pytest.raises(TypeError):
        p.set(lr=0.5)
    with pytest.raises(TypeError):
        p.set(**{"train.max_steps": 3})  # a frozen tree cannot be changed through set()
    with pytest.raises(TypeError):
        p.delete("train.max_steps")
    assert p.lr == 0.1 and p.train.max_steps == 10
    # As in Monolith, a copy keeps the immutability.
    assert p.copy().is_immutable()


class _Takes:
    def __init__(self, params):
        self.params = params


class _Kwargs:
    def __init__(self, units, activation="relu"):
        self.units, self.activation = units, activation


class _OneKwarg:
    def __init__(self, units):
        self.units = units


def test_instantiable_params_instantiate():
    p = InstantiableParams(_Takes)
    p.define("x", 3, "")
    obj = p.instantiate()
    assert isinstance(obj, _Takes) and obj.params is p

    # A class not taking params gets its arguments by name from the (flattened) tree.
    k = InstantiableParams(_Kwargs)
    k.define("units", 16, "")
    k.define("inner", Params(), "")
    k.inner.define("activation", "tanh", "")
    obj = k.instantiate()
    assert (obj.units, obj.activation) == (16, "tanh")

    one = InstantiableParams(_OneKwarg)
    one.define("units", 8, "")
    assert one.instantiate().units == 8  # not the Params object

    assert InstantiableParams(None).cls is None
    with pytest.raises(ValueError):
        InstantiableParams(None).instantiate()

    c = k.copy()
    assert isinstance(c, InstantiableParams) and c.cls is _Kwargs and c == k


# ----------------------------------------------------------------------------- model params
class _Model(MonolithModel):
    def input_fn(self, mode):
        return []

    def model_fn(self, features, mode):
        raise AssertionError("not called")

    def serving_input_receiver_fn(self):
        return None


def test_model_params_defaults_of_the_seed():
    p = _Model.params()
    assert isinstance(p, InstantiableParams) and p.cls is _Model
    assert p.output_path is None
    assert p.output_fields is None
    assert p.delimiter == "\t"
    assert p.file_name == ""
    assert p.enable_grads_and_vars_summary is False
    assert p.dense_weight_decay == 0.0
    assert p.clip_norm == 1000.0
    assert p.sparse_norm_warmup_steps is None
    assert p.default_occurrence_threshold == 0
    assert p.feature_list is None
    assert p.mode == ModeKeys.TRAIN
    assert p.name == "_Model"
    assert p.train.per_replica_batch_size is None and p.eval.per_replica_batch_size is None
    assert p.metrics.deep_insight_target == "ctr_head"
    assert p.metrics.enable_file_metrics is False

    model = p.instantiate()
    assert isinstance(model, _Model) and model.p is p
    assert model.clip_norm == 1000.0 and model.delimiter == "\t"


def test_model_params_as_attributes():
    model = _Model()
    model.clip_norm = 5.0
    assert model.p.clip_norm == 5.0 and model.clip_norm == 5.0
    model.p.dense_weight_decay = 0.25
    assert model.dense_weight_decay == 0.25
    with pytest.raises(AttributeError, match="not_a_param"):
        model.not_a_param
    # Modules still register as submodules, not params.
    model.layer = torch.nn.Linear(2, 3)
    assert dict(model.named_parameters()).keys() == {"layer.weight", "layer.bias"}
    # Plain attributes that are not params stay attributes.
    model.something = 3
    assert model.something == 3 and "something" not in model.p


def test_batch_size_read_per_mode_written_to_both():
    model = _Model()
    model.p.train.per_replica_batch_size = 32
    model.p.eval.per_replica_batch_size = 64
    assert model.batch_size == 32
    model.p.mode = ModeKeys.EVAL
    assert model.batch_size == 64
    model.p.mode = ModeKeys.PREDICT
    assert model.batch_size == 32
    model.batch_size = 128
    assert model.p.train.per_replica_batch_size == 128 and model.p.eval.per_replica_batch_size == 128
    model.p.mode = ModeKeys.EVAL
    assert model.batch_size == 128


def test_get_real_mode():
    model = _Model()
    assert model._get_real_mode(ModeKeys.PREDICT) == ModeKeys.PREDICT
    assert model._get_real_mode(ModeKeys.TRAIN) == ModeKeys.TRAIN
    model.p.mode = ModeKeys.EVAL
    assert model._get_real_mode(ModeKeys.TRAIN) == ModeKeys.EVAL  # TRAIN means the model's own mode
    assert model._get_real_mode(ModeKeys.PREDICT) == ModeKeys.PREDICT
    with pytest.raises(ValueError, match="model error"):
        model._get_real_mode(ModeKeys.EVAL)
    with pytest.raises(ValueError):
        model._get_real_mode("bogus")
