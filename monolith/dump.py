"""Model dump: a plain, JSON-serialisable record of a built model (Monolith's ``model_dump``).

Monolith's ``DumpUtils`` is a process-wide singleton that fills protobufs hung on the TF graph
while the graph is built: feature columns, embedding slices, params, input/output tensor names,
signatures, table configs and the graph defs. Eager PyTorch has no graph to hang state on, so here
the record is an explicit :class:`ModelDump`, built from a model after its build pass with
:meth:`ModelDump.from_model`, written with :meth:`ModelDump.dump` and read back with
:meth:`ModelDump.load`. Tensor names and graph defs have no eager counterpart: shapes and dtypes
stand in for the tensors, and the model's class (recorded in its params) stands in for the graph.

Example::

    estimator = Estimator(model, RunConfig(model_dir=tmp))
    estimator.train(max_steps=1)
    estimator.model_dump(first_batch).dump(f"{tmp}/model_dump.json")
    dump = ModelDump.load(f"{tmp}/model_dump.json")
    dump.get_slot_to_occurrence_threshold()        # {1: 0, 2: 5}
    params, layouts = dump.restore_params()
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import types
import typing
from typing import Any, Mapping, NamedTuple

import torch

from monolith import tagged_json
from monolith.atomic import atomic_write
from monolith.feature import FeatureSlot
from monolith.layout import OutConfig
from monolith.model import ModelOutput, MonolithModel
from monolith.modules.combiners import Combiner, make_combiner
from monolith.optim.base import Compressor, Initializer, SliceOptimizer
from monolith.optim.registry import from_config
from monolith.params import InstantiableParams
from monolith.sparse import Batch, JaggedTensor
from monolith.table import SliceConfig, SlotConfig

__all__ = [
    "DenseOptimizerDump",
    "FeatureDump",
    "InputFeatureDump",
    "ModelDump",
    "ModelFnDump",
    "ModelParams",
    "ParamGroupDump",
    "SignatureDump",
    "SliceDump",
    "TableDump",
]

_FORMAT = "monolith.model_dump"
_VERSION = 2
#: TF's default serving signature key, which Monolith's exports use.
SERVING_SIGNATURE = "serving_default"


# --------------------------------------------------------------------------------------- records
@dataclasses.dataclass
class FeatureDump:
    """One embedding feature column, as ``create_embedding_feature_column`` declared it.

    ``slot`` is the slot its FIDs carry; ``slot_name`` names the feature slot whose rows (and
    slices) it reads, the owner's for a feature created with ``shared_name``. The occurrence
    threshold and expire time are that feature slot's.
    """

    name: str
    slot: int
    slot_name: str
    occurrence_threshold: int
    expire_time: int
    combiner: str
    max_seq_length: int
    shared_name: str | None


@dataclasses.dataclass
class SliceDump:
    """One embedding slice of a feature slot: its name, width and update rule (``config()`` dicts)."""

    name: str
    dim: int
    initializer: dict[str, Any]
    optimizer: dict[str, Any]
    compressor: dict[str, Any]

    def restore(self) -> SliceConfig:
        """The table slice this records."""
        return SliceConfig(self.name, self.dim, from_config(self.initializer, Initializer),
                           from_config(self.optimizer, SliceOptimizer), from_config(self.compressor, Compressor))


@dataclasses.dataclass
class TableDump:
    """One embedding table: its row width and the admission/expiry settings in force per slot."""

    dim: int
    slots: list[SlotConfig]


@dataclasses.dataclass
class ModelFnDump:
    """What ``model_fn`` returned: one entry per head; shapes have ``-1`` for the batch dimension."""

    head_names: list[str]
    classification: list[bool]
    label_shapes: list[list[int] | None]
    pred_shapes: list[list[int]]
    extra_outputs: list[str]
    has_loss: bool
    extra_losses: int  # auxiliary losses added with add_loss (already in the loss)


@dataclasses.dataclass
class InputFeatureDump:
    """One input tensor: sparse (jagged FIDs) or dense with its dtype and last dimension.

    ``last_dim`` is 0 for a per-example scalar (``[batch]``); both are None for sparse features.
    """

    is_sparse: bool
    dtype: str | None
    last_dim: int | None


@dataclasses.dataclass
class SignatureDump:
    """A serving signature: the receiver features it takes and the outputs it returns."""

    inputs: list[str]
    outputs: list[str]


@dataclasses.dataclass
class ParamGroupDump:
    """One ``param_groups`` entry: the model parameters' names and the (encoded) hyper-parameters."""

    params: list[str]
    hyper_parameters: dict[str, Any]


@dataclasses.dataclass
class DenseOptimizerDump:
    """The dense ``torch.optim`` optimizer: class, defaults and param groups, without tensors or state.

    Monolith pickles the optimizer; tensors are the checkpoint's business, so only the
    configuration is kept here.
    """

    cls: str
    defaults: dict[str, Any]
    param_groups: list[ParamGroupDump]

    @classmethod
    def from_optimizer(cls, optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> "DenseOptimizerDump":
        """Records ``optimizer``, naming its tensors by ``model.named_parameters()``.

        Raises:
            ValueError: a tensor of the optimizer is not a parameter of ``model``.
        """
        names = {id(p): name for name, p in model.named_parameters()}
        groups = []
        for i, group in enumerate(optimizer.param_groups):
            unknown = sum(id(p) not in names for p in group["params"])
            if unknown:
                raise ValueError(f"dense optimizer param group {i} has {unknown} tensors that are not "
                                 f"parameters of the model")
            hyper = {k: v for k, v in group.items() if k != "params"}
            groups.append(ParamGroupDump([names[id(p)] for p in group["params"]],
                                         tagged_json.encode_mapping(hyper, f"optimizer.param_groups[{i}]")))
        return cls(tagged_json.reference(type(optimizer)), tagged_json.encode_mapping(optimizer.defaults, "optimizer.defaults"), groups)

    def restore(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        """A new optimizer of the recorded class and hyper-parameters over ``model``'s parameters."""
        optimizer_cls = tagged_json.resolve(self.cls)
        parameters = dict(model.named_parameters())
        missing = sorted({n for g in self.param_groups for n in g.params} - set(parameters))
        if missing:
            raise ValueError(f"model has no parameters {missing} named by the dumped dense optimizer")
        groups = [{"params": [parameters[n] for n in g.params], **tagged_json.decode_mapping(g.hyper_parameters)}
                  for g in self.param_groups]
        # ``defaults`` may hold keys the constructor does not take (set by subclasses or schedulers).
        accepted = inspect.signature(optimizer_cls).parameters
        defaults = {k: v for k, v in tagged_json.decode_mapping(self.defaults).items() if k in accepted}
        return optimizer_cls(groups, **defaults)


class ModelParams(NamedTuple):
    """What :meth:`ModelDump.restore_params` gives back: the model's params and its layouts."""

    p: InstantiableParams
    layout_dict: dict[str, OutConfig]


@dataclasses.dataclass
class ModelDump:
    """A model's configuration after its build pass (Monolith's ``ModelDump`` proto, as plain data).

    Attributes:
        params: the model's ``p``, encoded (see :meth:`restore_params`).
        user_params: the model's other public plain-data attributes (``self.batch_size = 256``),
            as Monolith's ``record_params`` records them.
        run_config: the ``RunConfig`` fields (None when none was given).
        input_source: the class of what ``input_fn`` returned, and its ``variant_type`` for
            Monolith's data sets (Monolith records the parser type).
        layouts: embedding output name -> ``OutConfig.to_dict()``.
        features: the embedding feature columns.
        emb_slices: feature slot name -> its slices, in column order.
        table_configs: embedding table name -> its width and per-slot settings.
        model_fn: the heads ``model_fn`` returned (None when no output was given).
        input_features: the input batch's features (sparse, then dense).
        serving_input_receiver: the serving receiver's features (None when none was given).
        signatures: serving signatures (with a receiver and an output only).
        dense_optimizer: the dense optimizer (None when none was given).
    """

    params: Any = None
    user_params: dict[str, Any] = dataclasses.field(default_factory=dict)
    run_config: dict[str, Any] | None = None
    input_source: dict[str, Any] | None = None
    layouts: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    features: list[FeatureDump] = dataclasses.field(default_factory=list)
    emb_slices: dict[str, list[SliceDump]] = dataclasses.field(default_factory=dict)
    table_configs: dict[str, TableDump] = dataclasses.field(default_factory=dict)
    model_fn: ModelFnDump | None = None
    input_features: dict[str, InputFeatureDump] = dataclasses.field(default_factory=dict)
    serving_input_receiver: dict[str, InputFeatureDump] | None = None
    signatures: dict[str, SignatureDump] = dataclasses.field(default_factory=dict)
    dense_optimizer: DenseOptimizerDump | None = None

    # ------------------------------------------------------------------------------ building
    @classmethod
    def from_model(cls, model: MonolithModel, output: ModelOutput | None = None,
                   optimizer: torch.optim.Optimizer | None = None, input_batch: Batch | None = None,
                   receiver: Any = None, run_config: Any = None, input_source: Any = None) -> "ModelDump":
        """Records ``model`` after its build pass (its feature slots, slices and tables exist).

        Args:
            model: the model.
            output: a ``ModelOutput`` of its ``model_fn`` (heads, shapes, extra outputs).
            optimizer: its dense optimizer.
            input_batch: a batch of its ``input_fn``.
            receiver: what its ``serving_input_receiver_fn`` gave: an object with a ``features``
                mapping (Monolith's ``ServingInputReceiver``) or that mapping, name -> JaggedTensor
                (sparse) or tensor (dense).
            run_config: the ``RunConfig`` it runs with (a dataclass).
            input_source: what its ``input_fn`` returned.

        Raises:
            ValueError: a slice has a ``learning_rate_fn`` (code, which a dump cannot hold), or
                ``output`` carries training hooks (Monolith refuses both for safety), or the
                optimizer's class cannot be imported back or it holds tensors the model does not.
        """
        if output is not None and output.training_hooks:
            raise ValueError("For safety purpose, customer hooks is not allowed! "
                             f"(model_fn added {[type(h).__name__ for h in output.training_hooks]})")
        receiver_features = None if receiver is None else _describe_inputs(getattr(receiver, "features", receiver))
        dump = cls(
            params=tagged_json.encode(model.p, "p"),
            user_params=_user_params(model),
            run_config=None if run_config is None else tagged_json.encode_mapping(dataclasses.asdict(run_config), "run_config"),
            input_source=None if input_source is None else _source(input_source),
            layouts={name: config.to_dict() for name, config in model.layout_dict.items()},
            features=[_feature(model, name) for name in model.fc_dict],
            emb_slices={fc.feature_slot.name: _slices(fc.feature_slot) for fc in model.fc_dict.values()},
            table_configs=_tables(model),
            model_fn=None if output is None else _model_fn(output, len(model.losses)),
            input_features={} if input_batch is None else _describe_inputs(
                {**input_batch.sparse.to_dict(), **input_batch.dense}),
            serving_input_receiver=receiver_features,
            signatures={} if receiver_features is None or output is None else _signatures(
                list(receiver_features), output),
            dense_optimizer=None if optimizer is None else DenseOptimizerDump.from_optimizer(optimizer, model),
        )
        # Through JSON and back, so the record equals what load() returns and fails here if it could not.
        return _from_plain(cls, json.loads(json.dumps(dataclasses.asdict(dump))))

    # ------------------------------------------------------------------------------ files
    def dump(self, path: str | os.PathLike) -> None:
        """Writes the record to ``path`` as JSON (atomically: readers never see half a file)."""
        text = json.dumps({"format": _FORMAT, "version": _VERSION, "model_dump": dataclasses.asdict(self)}, indent=1)
        with atomic_write(path, "w") as f:
            f.write(text)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ModelDump":
        """Reads a record written by :meth:`dump`.

        Raises:
            ValueError: ``path`` is not a whole model dump of this version (the message names it).
        """
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            if not isinstance(data, dict) or data.get("format") != _FORMAT:
                raise ValueError(f"no {_FORMAT!r} format marker")
            if data.get("version") != _VERSION:
                raise ValueError(f"version {data.get('version')!r}, expected {_VERSION}")
            return _from_plain(cls, data["model_dump"])
        except (ValueError, TypeError, KeyError) as e:  # JSON and UTF-8 decode errors are ValueErrors
            raise ValueError(f"{os.fspath(path)}: not a readable model dump: {e}") from e

    # ------------------------------------------------------------------------------ reading
    def restore_params(self) -> ModelParams:
        """The model's params and its layouts, rebuilt.

        Raises:
            ValueError: no params were recorded, or the layout dict is empty (as Monolith raises).
        """
        if self.params is None:
            raise ValueError("model dump has no params")
        if not self.layouts:
            raise ValueError("layout_dict is empty")
        return ModelParams(tagged_json.decode(self.params), {n: OutConfig.from_dict(d) for n, d in self.layouts.items()})

    @property
    def feature_slice_dims(self) -> dict[str, list[int]]:
        """Feature name -> the dims of the slices of the rows it reads."""
        return {f.name: [s.dim for s in self.emb_slices[f.slot_name]] for f in self.features}

    @property
    def feature_combiners(self) -> dict[str, Combiner]:
        """Feature name -> its combiner."""
        return {f.name: make_combiner(f.combiner, f.max_seq_length) for f in self.features}

    def get_slot_to_occurrence_threshold(self) -> dict[int, int]:
        """Slot -> occurrence threshold of the features read under it."""
        return {f.slot: f.occurrence_threshold for f in self.features}

    def get_slot_to_expire_time(self) -> dict[int, int]:
        """Slot -> expire time (days) of the features read under it."""
        return {f.slot: f.expire_time for f in self.features}

    def has_collected(self) -> bool:
        """Whether table configs, slice dims and combiners were all collected (a built model).

        Raises:
            ValueError: only some were, which no dump of a model should be.
        """
        collected = {"table_configs": bool(self.table_configs), "feature_slice_dims": bool(self.feature_slice_dims),
                     "feature_combiners": bool(self.feature_combiners)}
        if all(collected.values()):
            return True
        if any(collected.values()):
            raise ValueError(f"model dump is partly collected: {collected}")
        return False


# --------------------------------------------------------------------------------------- collecting
def _feature(model: MonolithModel, name: str) -> FeatureDump:
    fc = model.fc_dict[name]
    config = fc.feature_slot.config
    return FeatureDump(name, model.get_feature_name_and_slot(name)[1], fc.feature_slot.name,
                       config.occurrence_threshold, config.expire_time, fc.combiner.name,
                       fc.combiner.max_seq_length, model._share_slot_mapping.get(name))


def _slices(feature_slot: FeatureSlot) -> list[SliceDump]:
    """A feature slot's slices in column order, under the names ``lookup_embedding_slice`` gave them."""
    names = {s.start: name for name, s in feature_slot.named_slices.items()}
    out, start = [], 0
    for config in feature_slot.slices:
        if config.learning_rate_fn is not None:
            raise ValueError(f"for safety purpose learning_rate_fn is not allowed "
                             f"(slice '{names.get(start, config.name)}' of feature slot '{feature_slot.name}')")
        out.append(SliceDump(names.get(start, config.name), config.dim, config.initializer.config(),
                             config.optimizer.config(), config.compressor.config()))
        start += config.dim
    return out


def _tables(model: MonolithModel) -> dict[str, TableDump]:
    """Each built table with the settings it applies to the slots of the FIDs fed to it."""
    table_of_slot = model.ctx.slot_tables()
    slots: dict[str, set[int]] = {}
    for slot, module in table_of_slot.items():
        slots.setdefault(module.table.name, set()).add(slot)
    for name, fc in model.fc_dict.items():
        # A shared feature's FIDs keep their own slot but go to the owner's table.
        module = table_of_slot.get(fc.feature_slot.slot)
        if module is not None:
            slots[module.table.name].add(model.get_feature_name_and_slot(name)[1])
    return {name: TableDump(module.table.dim, [module.table.slot_config(s) for s in sorted(slots[name])])
            for name, module in model.ctx.tables.items()}


def _shape(tensor: torch.Tensor) -> list[int]:
    return [-1, *tensor.shape[1:]]


def _model_fn(output: ModelOutput, extra_losses: int) -> ModelFnDump:
    labels = output.labels if output.labels is not None else [None] * len(output.head_names)
    return ModelFnDump(list(output.head_names), list(output.classification),
                       [None if t is None else _shape(t) for t in labels], [_shape(t) for t in output.preds],
                       list(output.extra_outputs), output.loss is not None, extra_losses)


#: Attributes every model has: recorded elsewhere in the dump (p, features, slices) or run state.
_NOT_USER_PARAMS = {"p", "fs_dict", "fc_dict", "slice_dict", "ctx", "training"}


def _user_params(model: MonolithModel) -> dict[str, Any]:
    """The model's public attributes that are plain data (numbers, strings, lists and dicts of them)."""
    return {name: value for name, value in sorted(vars(model).items())
            if not name.startswith("_") and name not in _NOT_USER_PARAMS and _is_plain(value)}


def _is_plain(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_plain(v) for k, v in value.items())
    return False


def _source(source: Any) -> dict[str, Any]:
    kind = type(source)
    variant = getattr(source, "variant_type", None) or getattr(getattr(source, "parser", None), "variant_type", None)
    return {"type": f"{kind.__module__}.{kind.__qualname__}",
            "variant_type": None if variant is None else str(getattr(variant, "name", variant))}


def _describe_inputs(tensors: Mapping[str, JaggedTensor | torch.Tensor]) -> dict[str, InputFeatureDump]:
    out = {}
    for name, t in tensors.items():
        if isinstance(t, JaggedTensor):
            out[name] = InputFeatureDump(True, None, None)
        elif isinstance(t, torch.Tensor):
            out[name] = InputFeatureDump(False, str(t.dtype).removeprefix("torch."),
                                         int(t.shape[-1]) if t.dim() > 1 else 0)
        else:
            raise TypeError(f"input feature '{name}' must be a JaggedTensor or a tensor, got {type(t).__name__}")
    return out


def _signatures(inputs: list[str], output: ModelOutput) -> dict[str, SignatureDump]:
    signatures = {SERVING_SIGNATURE: SignatureDump(inputs, list(output.head_names))}
    for name, value in output.extra_outputs.items():
        signatures[name] = SignatureDump(inputs, list(value) if isinstance(value, Mapping) else [name])
    return signatures


# --------------------------------------------------------------------------------------- JSON -> records
def _from_plain(tp: Any, data: Any) -> Any:
    """``data`` (parsed JSON) as type ``tp``: dataclasses, lists, str-keyed dicts, optionals, scalars."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (types.UnionType, typing.Union):
        if data is None:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _from_plain(inner, data)
    if origin is list:
        if not isinstance(data, list):
            raise TypeError(f"expected a list, got {type(data).__name__}")
        return [_from_plain(args[0], v) for v in data]
    if origin is dict:
        if not isinstance(data, dict):
            raise TypeError(f"expected an object, got {type(data).__name__}")
        return {k: _from_plain(args[1], v) for k, v in data.items()}
    if dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        names = [f.name for f in dataclasses.fields(tp)]
        if not isinstance(data, dict) or set(data) != set(names):
            got = sorted(data) if isinstance(data, dict) else type(data).__name__
            raise TypeError(f"{tp.__name__} needs fields {names}, got {got}")
        return tp(**{n: _from_plain(hints[n], data[n]) for n in names})
    if tp is Any:
        return data
    if not isinstance(data, tp) or (tp is int and isinstance(data, bool)):
        raise TypeError(f"expected {tp.__name__}, got {data!r}")
    return data
