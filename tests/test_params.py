"""Params / InstantiableParams and the model params tree (Monolith's ``hyperparams`` and ``native_model.params``)."""

from __future__ import annotations

import copy

import pytest
import torch

from monolith.mode_keys import ModeKeys
from monolith.model import MonolithModel
from monolith.params import InstantiableParams, Params, copy_params_to, update_params


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


def test_str_is_monolith_text_format():
    # Monolith's str(params), byte for byte: names sorted, strings double-quoted (unescaped), groups
    # as indented braces, other values as str() with dicts (and Params inside values) sorted by key.
    p = _tree()
    p.define("name", "abc", "")
    p.define("empty", Params(), "")
    p.define("layers", [Params(), (1, "x")], "")
    p.layers[0].define("units", 4, "")
    p.define("mapping", {"b": None, "a": [1.5, True]}, "")
    p.define("cls", int, "")
    assert str(p) == """{
  cls: <class 'int'>
  empty: {

  }
  layers: [{'units': 4}, (1, 'x')]
  lr: 0.1
  mapping: {'a': [1.5, True], 'b': None}
  name: "abc"
  train: {
    max_steps: 10
    opt: {
      beta: 0.9
    }
  }
}"""
    assert repr(p) == str(p)
    assert str(Params()) == "{\n\n}"


class _SubParams(Params):
    def __init__(self):
        super().__init__()
        self.define("base", 1, "")


class _SubInstantiable(InstantiableParams):
    pass


def test_copy_keeps_the_subclass():
    p = _SubParams()
    p.define("extra", 2, "")
    p.delete("base")
    q = p.copy()
    # As Monolith's ``_copy_to(type(self)())``: the class is kept, the params are the source's only.
    assert type(q) is _SubParams and dict(q.iter_params()) == {"extra": 2}
    i = _SubInstantiable(_Kwargs)
    i.define("units", 3, "")
    j = copy.deepcopy(i)
    assert type(j) is _SubInstantiable and j.cls is _Kwargs and j == i


def test_copy_keeps_autograd_tensors_by_reference():
    computed = torch.ones(2, requires_grad=True) * 2  # not a leaf: cannot be deep-copied
    leaf = torch.ones(2)
    p = Params()
    p.define("computed", computed, "")
    p.define("leaf", leaf, "")
    shared = [1]
    p.define("a", shared, "")
    p.define("b", shared, "")
    q = p.copy()
    assert q.computed is computed  # as Monolith keeps a tf.Tensor
    assert q.leaf is not leaf and torch.equal(q.leaf, leaf)
    assert q.a is q.b and q.a is not shared  # one deep copy of the whole level, as Monolith's


def test_dotted_names_index_into_lists_of_groups():
    p = Params()
    p.define("layers", [Params(), Params()], "")
    for i, layer in enumerate(p.layers):
        layer.define("d", i, "")
    assert p.get("layers[0].d") == 0 and p.get("layers[-1].d") == 1
    p.set(**{"layers[1].d": 7})
    assert p.layers[1].d == 7
    p.delete("layers[0].d")
    assert "d" not in p.layers[0]
    with pytest.raises(AttributeError, match=r"layers\[5\]"):
        p.get("layers[5].d")
    with pytest.raises(AttributeError, match="layerz"):
        p.get("layerz[0].d")


def test_dotted_name_through_a_value_says_it_is_not_a_group():
    p = _tree()
    p.define("layers", [1], "")
    for name in ("lr.x", "train.max_steps.y", "layers[0].x"):
        with pytest.raises(AttributeError) as info:
            p.set(**{name: 1})
        message = str(info.value)
        assert "not a Params group" in message and "not defined" not in message, message
    with pytest.raises(AttributeError, match="'train.max_steps' is a int"):
        p.get("train.max_steps.y")


def test_copy_params_to():
    src, dst = _tree(), _tree()
    src.lr, src.train.max_steps = 0.5, 99
    assert copy_params_to(src, dst, skip=["lr"]) is dst
    assert dst.lr == 0.1 and dst.train == src.train
    assert dst.train is not src.train  # a group is copied, as Monolith's
    src.define("only_in_src", 1, "")
    with pytest.raises(AttributeError, match="only_in_src"):
        copy_params_to(src, dst)  # names must be defined in the destination, as Monolith's


def test_update_params():
    p = _tree()
    args = {"beta": 0.1, "lr": 2.0, "unknown": 3}
    assert update_params(p, args) is None
    assert (p.lr, p.train.opt.beta, p.train.max_steps) == (2.0, 0.1, 10)
    assert args == {"unknown": 3}  # what is left matched no param


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


class _Layer:
    def __init__(self, units, *args, **kwargs):
        self.units, self.args, self.kwargs = units, args, kwargs


def test_instantiate_forwards_allowed_kwargs():
    p = InstantiableParams(_Layer)
    p.define("units", 4, "")
    p.define("name", "dense", "")
    p.define("input_shape", None, "")  # None: not passed
    p.define("inner", Params(), "")
    p.inner.define("input_dim", 8, "")
    p.inner.define("kwargs", 1, "")  # **kwargs is not filled by name
    p.inner.define("args", 2, "")  # nor *args
    layer = p.instantiate()
    # As Monolith: the names __init__ takes, plus every allowed kwarg the tree defines (not None).
    assert layer.units == 4 and layer.args == ()
    assert layer.kwargs == {"name": "dense", "input_dim": 8}


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
