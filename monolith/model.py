"""``MonolithBaseModel`` and ``MonolithModel``: Monolith's model API on PyTorch.

A model is an ``nn.Module`` (dense layers assigned to it are its parameters) with Monolith's
hooks: ``input_fn(mode)``, ``model_fn(features, mode)`` and ``serving_input_receiver_fn()``.
Inside ``model_fn`` it declares embedding features with :meth:`MonolithModel.create_embedding_feature_column`
and reads them with :meth:`MonolithModel.lookup_embedding_slice`; the estimator does the rest.

Example::

    class CtrModel(MonolithModel):
        def __init__(self, params=None):
            super().__init__(params)
            self.mlp = torch.nn.Sequential(torch.nn.Linear(32, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))

        def input_fn(self, mode):
            return my_reader(batch_size=self.batch_size)

        def model_fn(self, features, mode):
            for name in ("uid", "mov"):
                self.create_embedding_feature_column(name)
            emb = self.lookup_embedding_slice(["uid", "mov"], "vec", 16, out_type="concat")  # [B, 32]
            logits = self.mlp(emb).reshape(-1)
            loss, pred = get_sigmoid_loss_and_pred("ctr", logits, features["label"], self.batch_size, mode=mode)
            return EstimatorSpec(label=features["label"], pred=pred, head_name="ctr", loss=loss,
                                 optimizer=functools.partial(torch.optim.Adam, lr=1e-3))

        def serving_input_receiver_fn(self):
            return ServingInputReceiver(sparse_features=["uid", "mov"])
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import hashlib
import logging
import numbers
import os
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

import torch

from monolith.device import DeviceCtxType, MonolithDeviceCtx
from monolith.feature import FeatureColumn, FeatureSlice, FeatureSlotConfig
from monolith.fid import MAX_SLOT_V2, SIGNATURE_BITS_V2, slot_from_name
from monolith.layout import OutConfig
from monolith.mode_keys import ModeKeys
from monolith.modules.embedding_step import current_step
from monolith.modules.feature_slot_collection import FeatureSlotCollection, LookupStrategy
from monolith.optim.base import Compressor, Initializer, SliceOptimizer
from monolith.params import InstantiableParams, Params
from monolith.sparse import Batch, JaggedTensor, KeyedJaggedTensor
from monolith.spec import EstimatorSpec

if TYPE_CHECKING:
    from monolith.data.feature_list import FeatureList

logger = logging.getLogger(__name__)

_COMBINERS = {"reduce_sum", "reduce_mean", "first_n"}
_SIGNATURE_MASK = (1 << SIGNATURE_BITS_V2) - 1


class TrainingHook:
    """Called by the estimator around training; subclasses override what they need."""

    def begin(self, estimator: Any) -> None:
        """Before the first step."""

    def after_step(self, step: int, batch: Batch, output: "ModelOutput") -> None:
        """After each step, with its batch and the model's output."""

    def end(self) -> None:
        """After the last step (also on failure)."""


def has_metric_sink(hooks: Sequence[TrainingHook], sink: str | None) -> bool:
    """Whether one of ``hooks`` writes metrics to ``sink`` ("file", "kafka"; None: never)."""
    return sink is not None and any(getattr(h, "metric_sink", None) == sink for h in hooks)


@dataclasses.dataclass
class ModelOutput:
    """``model_fn``'s result, normalised: one entry per head in ``head_names``, ``labels``, ``preds``."""

    mode: str
    head_names: list[str]
    labels: list[torch.Tensor | None] | None
    preds: list[torch.Tensor]
    classification: list[bool]
    loss: torch.Tensor | None
    predictions: torch.Tensor | list[torch.Tensor] | dict[str, torch.Tensor]  # as model_fn returned them
    optimizer: Any
    training_hooks: list[TrainingHook]
    extra_outputs: dict[str, Any]


class MonolithBaseModel(torch.nn.Module, abc.ABC):
    """Params, run state and the ``create_*_fn`` wrappers shared by every Monolith model."""

    @classmethod
    def params(cls) -> InstantiableParams:
        """Monolith's params tree, every name of ``BaseLayer``, ``BaseTask``, ``NativeTask`` and
        ``MonolithBaseModel``: ``name``, ``mode``, ``accelerator``, ``input.*``, ``train.*``,
        ``eval.*``, ``serving.*``, ``metrics.*`` and the model-level names.

        Names whose Monolith feature does not exist here are accepted and ignored; their
        description starts with "Ignored" and says why. A name that is not defined raises
        ``AttributeError`` naming it.
        """
        p = InstantiableParams(cls)
        p.define("name", cls.__name__, "Name of this model.")
        p.define("mode", ModeKeys.TRAIN, "Run mode, set by the Estimator.")
        p.define("accelerator", None, "Ignored: the device comes from MonolithDeviceCtx (CUDA when available).")
        p.define("input", Params(), "Input params.")
        p.input.define("eval_examples", None, "Number of total examples for evaluation (for input_fn).")
        p.input.define("train_examples", None, "Number of total examples for training (for input_fn).")
        p.define("train", Params(), "Training params.")
        p.train.define("steps", None, "Number of steps to train in one call.")
        p.train.define("max_steps", None, "Number of total steps to train (Estimator.train's default).")
        p.train.define("per_replica_batch_size", None, "Batch size of one replica.")
        p.train.define("file_pattern", None, "Training input files (for input_fn).")
        p.train.define("repeat", False, "Whether to repeat the training input (for input_fn).")
        p.train.define("label_key", "label", "Key of the label in the features.")
        p.train.define("save_checkpoints_steps", None, "Checkpoint every this many steps when the run config sets "
                                                       "neither steps nor seconds.")
        p.train.define("save_checkpoints_secs", None, "Checkpoint every this many seconds when the run config sets "
                                                      "neither steps nor seconds.")
        p.train.define("dense_only_save_checkpoints_secs", None, "Ignored: every checkpoint holds dense and sparse parts.")
        p.train.define("dense_only_save_checkpoints_steps", None, "Ignored: every checkpoint holds dense and sparse parts.")
        p.train.define("max_pending_seconds_for_barrier", 30, "Ignored: no PS barrier (ranks run in lock-step).")
        p.train.define("slow_start_steps", 0, "Ignored: workers start together (torch.distributed).")
        p.train.define("sample_bias", 0.0, "Sample bias for logit correction.")
        p.train.define("use_gpu_emb_table", False, "Ignored: tables live in host memory.")
        p.train.define("use_fountain", False, "Ignored: no fountain data service (input_fn reads the data).")
        p.train.define("fountain_zk_host", "", "Ignored: no fountain data service.")
        p.train.define("fountain_model_name", "", "Ignored: no fountain data service.")
        p.train.define("fountain_parse_on_server", False, "Ignored: no fountain data service.")
        p.train.define("fountain_precompute_value_rowids", False, "Ignored: no fountain data service.")
        p.define("eval", Params(), "Evaluation params.")
        p.eval.define("per_replica_batch_size", None, "Batch size of one replica.")
        p.eval.define("steps_per_eval", 10000, "Ignored: Estimator.train does not evaluate in between.")
        p.eval.define("steps", None, "Number of steps to evaluate (Estimator.evaluate's default).")
        p.define("serving", Params(), "Serving params.")
        p.serving.define("export_with_gpu_allowed", False, "Ignored: exports are device-independent programs.")
        p.serving.define("export_with_cleared_entry_devices", False, "Ignored: exports carry no device placement.")
        p.serving.define("export_when_saving", False, "Export a serving model with each checkpoint (models whose "
                                                      "serving_input_receiver_fn returns a receiver) to "
                                                      "export_dir_base/<step>, deleting the exports whose step is no "
                                                      "longer a kept checkpoint (keep_checkpoint_max). Not under "
                                                      "torchrun (an export runs in one process; rank 0 logs a "
                                                      "warning): `monolith export` the checkpoint instead.")
        p.serving.define("export_dir_base", "exported_models", "Export base dir (relative to model_dir, or absolute).")
        p.serving.define("export_mode", "standalone", "Ignored: every export is standalone (tables in the export).")
        p.serving.define("shared_embedding", True, "Ignored: exports always copy the tables.")
        p.serving.define("with_remote_gpu", False, "Ignored: no remote-GPU serving.")
        p.define("metrics", Params(), "Metric params.")
        p.metrics.define("enable_deep_insight", False, "Set from RunnerConfig.is_local; sampling itself is "
                                                       "enable_file_metrics.")
        p.metrics.define("deep_insight_target", "ctr_head", "Head name(s) when model_fn gives none.")
        p.metrics.define("deep_insight_name", None, "Model name written with sampled examples.")
        p.metrics.define("deep_insight_sample_ratio", 0.01, "Fraction of examples sampled.")
        p.metrics.define("extra_fields_keys", [], "Extra features written with sampled examples.")
        p.metrics.define("enable_throughput_hook", True, "Ignored: examples/s are always logged.")
        p.metrics.define("enable_kafka_metrics", False, "Ignored: no Kafka metric sink (use enable_file_metrics).")
        p.metrics.define("enable_tf2_profiler_hook", True, "Ignored: no TensorFlow profiler (use torch.profiler).")
        p.metrics.define("enable_file_metrics", False, "Write sampled examples to files.")
        p.metrics.define("file_base_name", "deep_insight",
                         "Directory of the file metrics; a relative one is inside the run's model_dir.")
        p.metrics.define("file_ext", "txt", "Extension of the file metrics.")
        p.metrics.define("parse_fn", None, "Ignored: the file metrics write a fixed JSON line per example.")
        p.metrics.define("key_fn", None, "Ignored: the file metrics write a fixed JSON line per example.")
        p.metrics.define("layout_fn", None, "Ignored: the file metrics write a fixed JSON line per example.")
        p.metrics.define("dump_filename", "", "File name of the file metrics.")
        p.metrics.define("use_data_service", False, "Ignored: no data service.")
        p.define("output_path", None, "Where prediction/eval output files go (None: not written).")
        p.define("output_fields", None, "Comma-separated features written before the predictions.")
        p.define("delimiter", "\t", "Field delimiter of output files.")
        p.define("file_name", "", "The test input file name (for input_fn).")
        p.define("enable_grads_and_vars_summary", False, "Ignored: the global gradient norm is always summarised.")
        p.define("dense_weight_decay", 0.0, "L2 decay added to dense gradients.")
        p.define("clip_norm", 1000.0, "Clip gradients by this global norm.")
        p.define("sparse_norm_warmup_steps", None, "Warm the sparse clip norm up over these steps.")
        p.define("default_occurrence_threshold", 0, "Occurrence threshold of features that set none.")
        return p

    def __init__(self, params: InstantiableParams | None = None) -> None:
        torch.nn.Module.__init__(self)
        object.__setattr__(self, "p", params if params is not None else type(self).params())
        self.fs_dict: dict[str, Any] = {}
        self.fc_dict: dict[str, FeatureColumn] = {}
        self.slice_dict: dict[str, dict[str, FeatureSlice]] = {}
        self._layout_dict: dict[str, OutConfig] = {}
        self._occurrence_threshold: dict[str, int] = {}
        self._share_slot_mapping: dict[str, str] = {}
        self._feature_slots: dict[str, int] = {}
        self._auto_slots: dict[int, str] = {}  # slot -> the feature that named none and was given it
        self._losses: list[torch.Tensor] = []
        self._hooks: list[TrainingHook] = []
        self._extra_outputs: dict[str, Any] = {}
        self._default_dense_optimizer: Any = None
        self.embedding_collection = FeatureSlotCollection()

    # ------------------------------------------------------------------ params as attributes
    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            pass
        p = self.__dict__.get("p")
        if p is not None:
            if name == "batch_size":
                group = p.eval if p.mode == ModeKeys.EVAL else p.train
                return group.per_replica_batch_size
            if p.contain(name):
                return getattr(p, name)
        raise AttributeError(f"'{type(self).__name__}' has no attribute or param '{name}'")

    def __setattr__(self, name: str, value: Any) -> None:
        p = self.__dict__.get("p")
        if p is not None and not isinstance(value, torch.nn.Module):
            if name == "batch_size":
                p.train.per_replica_batch_size = value
                p.eval.per_replica_batch_size = value
                return
            if p.contain(name) and name != "p":
                setattr(p, name, value)
                return
        super().__setattr__(name, value)

    @property
    def ctx(self) -> FeatureSlotCollection:
        """The model's :class:`~monolith.modules.feature_slot_collection.FeatureSlotCollection`
        (``create_feature_slot``, ``tables``), under the name Monolith's ``NativeContext`` has on a model."""
        return self.embedding_collection

    # ------------------------------------------------------------------ run state
    def set_mode(self, mode: str) -> None:
        """Puts the model in ``mode`` (a :class:`~monolith.mode_keys.ModeKeys`), which ``p.mode`` holds:
        the ``mode`` param that ``model_fn`` reads; torch's training flag (dropout, batch norm) and
        the tables' training state (whether lookups record gradients) follow it, on in TRAIN only."""
        if mode not in (ModeKeys.TRAIN, ModeKeys.EVAL, ModeKeys.PREDICT):
            raise ValueError(f"mode must be one of {ModeKeys.TRAIN!r}, {ModeKeys.EVAL!r}, {ModeKeys.PREDICT!r}, "
                             f"got {mode!r}")
        self.p.mode = mode
        super().train(mode == ModeKeys.TRAIN)  # reaches the embedding collection's tables

    def train(self, mode: bool = True) -> "MonolithBaseModel":
        """torch's ``train()``/``eval()``, which also set the run mode: TRAIN, or from TRAIN to EVAL
        (PREDICT and EVAL stay as they are)."""
        if mode:
            self.set_mode(ModeKeys.TRAIN)
        else:
            self.set_mode(ModeKeys.EVAL if self.p.mode == ModeKeys.TRAIN else self.p.mode)
        return self

    def forward(self, features: Batch) -> ModelOutput:
        """Runs ``model_fn`` on ``features`` in the run mode and returns its output, normalised.

        A model whose tables are not built yet is first built on ``features`` (:meth:`build`). In
        TRAIN mode with autograd on, the lookups record their gradients in the tables; they are
        applied by ``embedding_collection.apply_gradients`` (the Estimator does it each step).
        """
        if not self.embedding_collection.built:
            self.build(features)
        return self.run_model_fn(features, ModeKeys.PREDICT if self.p.mode == ModeKeys.PREDICT else ModeKeys.TRAIN)

    def build(self, features: Batch) -> ModelOutput:
        """The build pass: runs ``model_fn`` once on ``features`` without gradients, its lookups giving
        zeros, so that every feature slot and slice is declared; then creates the tables. Returns
        that pass's output (its optimizer and hooks are the model's)."""
        with torch.no_grad():
            output = self.run_model_fn(features, ModeKeys.PREDICT if self.p.mode == ModeKeys.PREDICT
                                       else ModeKeys.TRAIN)
        self.embedding_collection.build()
        return output

    def dense_state_dict(self) -> dict[str, torch.Tensor]:
        """``state_dict()`` without the embedding tables (a checkpoint writes them apart, one file per
        table and rank)."""
        state: dict[str, torch.Tensor] = {}
        self._save_to_state_dict(state, "", keep_vars=False)
        for name, child in self.named_children():
            if child is not self.embedding_collection:
                child.state_dict(destination=state, prefix=f"{name}.")
        return state

    def load_dense_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Loads a :meth:`dense_state_dict`; the tables stay as they are."""
        missing, unexpected = super().load_state_dict(state, strict=False)
        missing = [key for key in missing if not key.startswith("embedding_collection.")]
        if missing or unexpected:
            raise RuntimeError(f"{type(self).__name__}: dense state does not match the model: missing {missing}, "
                               f"unexpected {unexpected}")

    def _get_real_mode(self, mode: str) -> str:
        """PREDICT stays PREDICT; TRAIN means the model's own ``p.mode`` (TRAIN or EVAL)."""
        if mode == ModeKeys.PREDICT:
            return mode
        if mode == ModeKeys.TRAIN:
            return self.p.mode
        raise ValueError(f"model error! mode {mode!r}: model_fn is called with TRAIN or PREDICT")

    def is_fused_layout(self) -> bool:
        """Fused layouts are a TF graph optimisation; eager models never use them."""
        return False

    def instantiate(self) -> "MonolithBaseModel":
        return self

    def add_loss(self, losses: torch.Tensor | Sequence[torch.Tensor]) -> None:
        """Adds auxiliary scalar loss(es) to the training loss of this step (None or empty: nothing)."""
        for loss in losses if isinstance(losses, (list, tuple)) else [losses]:
            if loss is None:
                continue
            loss = torch.as_tensor(loss)
            if loss.numel() != 1:
                raise ValueError(f"add_loss: an auxiliary loss must be a scalar, got shape {list(loss.shape)}")
            self._losses.append(loss.reshape(()))

    @property
    def losses(self) -> list[torch.Tensor]:
        return self._losses

    @property
    def _training_hooks(self) -> list[TrainingHook]:
        return self._hooks

    def add_training_hook(self, hook: TrainingHook) -> None:
        """Adds a hook; at most one file-metric and one Kafka-metric hook (a second is ignored, as in Monolith)."""
        if not has_metric_sink(self._hooks, getattr(hook, "metric_sink", None)):
            self._hooks.append(hook)
        else:
            logger.warning("add_training_hook: a %s metric hook is already added; %r is ignored",
                           hook.metric_sink, hook)

    def add_extra_output(self, name: str, outputs: Any, head_name: str | None = None,
                         head_type: str | None = None) -> None:
        """Adds a named serving signature output; a repeated name raises ``KeyError``."""
        if name in self._extra_outputs:
            raise KeyError(f"extra output '{name}' already exists")
        self._extra_outputs[name] = outputs

    @property
    def _export_outputs(self) -> dict[str, Any]:
        return self._extra_outputs

    def add_layout(self, name: str, slice_list: Sequence[tuple[str, FeatureSlice]], out_type: str | None,
                   shape_list: Sequence[Sequence[int]]) -> None:
        """Records the layout of embedding output ``name``."""
        self._layout_dict[name] = OutConfig.build(slice_list, out_type, shape_list)

    @property
    def layout_dict(self) -> dict[str, OutConfig]:
        return self._layout_dict

    @layout_dict.setter
    def layout_dict(self, value: dict[str, OutConfig]) -> None:
        self._layout_dict = value

    def clean(self) -> None:
        """Forgets the feature-slot caches (``fs_dict``, ``fc_dict``, ``slice_dict``, thresholds)."""
        self.fs_dict = {}
        self.fc_dict = {}
        self.slice_dict = {}
        self._occurrence_threshold = {}

    # ------------------------------------------------------------------ the three user functions
    @abc.abstractmethod
    def input_fn(self, mode: str) -> Iterable[Batch]:
        """An iterable of :class:`~monolith.sparse.Batch` for ``mode``."""

    @abc.abstractmethod
    def model_fn(self, features: Batch, mode: str) -> EstimatorSpec | tuple:
        """The model: an :class:`EstimatorSpec` or ``(label, loss, pred)``."""

    @abc.abstractmethod
    def serving_input_receiver_fn(self) -> Any:
        """What the serving endpoint accepts (a :class:`~monolith.export.ServingInputReceiver`)."""

    def create_input_fn(self, mode: str | None = None) -> Callable[..., Iterable[Batch]]:
        """``input_fn`` run in the input device context."""

        def input_fn(run_mode: str | None = None) -> Iterable[Batch]:
            with MonolithDeviceCtx(DeviceCtxType.INPUT_FN):
                return self.input_fn(run_mode if run_mode is not None else mode)

        return input_fn

    def create_serving_input_receiver_fn(self) -> Callable[[], Any]:
        """``serving_input_receiver_fn`` run in the receiver device context."""

        def receiver_fn() -> Any:
            with MonolithDeviceCtx(DeviceCtxType.INPUT_RECEIVER_FN):
                return self.serving_input_receiver_fn()

        return receiver_fn

    def create_model_fn(self) -> Callable[..., ModelOutput]:
        """``model_fn`` wrapped (:meth:`run_model_fn`), the feature-slot caches cleared first."""
        self.clean()
        return self.run_model_fn

    def run_model_fn(self, features: Batch, mode: str, lookup: LookupStrategy | None = None) -> ModelOutput:
        """Runs ``model_fn`` for one batch as one embedding step (its lookups read ``features``, or
        ``lookup`` where given) and normalises what it returns."""
        real_mode = self._get_real_mode(mode)
        self._losses, self._hooks, self._extra_outputs = [], [], {}
        with self.embedding_collection.step(features, lookup), MonolithDeviceCtx(DeviceCtxType.MODEL_FN):
            spec = self.model_fn(features, real_mode)
        return self._normalize_spec(spec, real_mode)

    def _normalize_spec(self, spec: Any, mode: str) -> ModelOutput:
        if isinstance(spec, EstimatorSpec):
            label, loss, pred = spec.label, spec.loss, spec.pred
            optimizer, classification = spec.optimizer, spec.classification
            if isinstance(pred, dict):
                head_name = list(pred)
            else:
                head_name = spec.head_name or self.p.metrics.deep_insight_target.split(",")
        elif isinstance(spec, (tuple, list)) and len(spec) == 3:
            label, loss, pred = spec
            optimizer, classification = None, True
            head_name = list(pred) if isinstance(pred, dict) else self.p.metrics.deep_insight_target
            logger.warning("if this is not a classification task, pls. return EstimatorSpec in model_fn and specify it")
        else:
            raise Exception("EstimatorSpec Error!")

        if isinstance(pred, dict):
            if label is not None and not isinstance(label, dict):
                raise ValueError("model_fn: pred is a dict of heads, so label must be a dict (or None) too")
            if label is not None and set(label) != set(pred):
                raise ValueError(f"model_fn: label heads {list(label)} do not match pred heads {list(pred)}")
            preds = list(pred.values())
            labels = None if label is None else [label.get(h) for h in head_name]
            predictions: Any = dict(pred)
        elif isinstance(pred, (list, tuple)):
            heads = head_name if isinstance(head_name, (list, tuple)) else [head_name]
            if len(heads) != len(pred):
                raise ValueError(f"model_fn: {len(pred)} preds but {len(heads)} head names {list(heads)}")
            head_name, preds = list(heads), list(pred)
            if isinstance(label, dict):  # labels by head name, as Monolith reads label[name]
                missing = [h for h in head_name if h not in label]
                if missing:
                    raise ValueError(f"model_fn: label has no head(s) {missing}; its heads: {list(label)}")
                labels = [label[h] for h in head_name]
            else:
                if label is not None and len(label) != len(pred):
                    raise ValueError(f"model_fn: {len(pred)} preds but {len(label)} labels")
                labels = None if label is None else list(label)
            predictions = preds  # a list keeps its order in prediction files
        else:
            if isinstance(head_name, (list, tuple)):
                if len(head_name) != 1:
                    raise ValueError(f"model_fn: one pred tensor but head names {list(head_name)}")
                head_name = head_name[0]
            if not isinstance(head_name, str):
                raise ValueError(f"model_fn: head_name must be a str, got {head_name!r}")
            if not isinstance(pred, torch.Tensor):
                raise ValueError(f"model_fn: pred must be a tensor, list or dict, got {type(pred).__name__}")
            if label is not None and not isinstance(label, torch.Tensor):
                raise ValueError(f"model_fn: label must be a tensor, got {type(label).__name__}")
            head_name, preds, labels, predictions = [head_name], [pred], None if label is None else [label], pred

        for name, p in zip(head_name, preds):
            if p.dim() > 1 and not (p.dim() == 2 and p.shape[1] == 1):
                raise ValueError(f"model_fn: pred of head '{name}' must be [batch] or [batch, 1], got {list(p.shape)}")
        if isinstance(classification, dict):
            missing = [h for h in head_name if h not in classification]
            if missing:
                raise ValueError(f"model_fn: classification has no flag for head(s) {missing}")
            classification = [bool(classification[h]) for h in head_name]
        elif isinstance(classification, (list, tuple)):
            if len(classification) != len(head_name):
                raise ValueError(f"model_fn: {len(classification)} classification flags for heads {head_name}")
            classification = list(classification)
        else:
            classification = [bool(classification)] * len(head_name)
        if loss is not None and self._losses:
            loss = loss + torch.stack(self._losses).sum()
        return ModelOutput(mode, list(head_name), labels, preds, classification, loss, predictions,
                           optimizer, list(self._hooks), dict(self._extra_outputs))


class MonolithModel(MonolithBaseModel):
    """A Monolith model with embedding features: feature columns, slices, shared slots and layouts."""

    @classmethod
    def params(cls) -> InstantiableParams:
        p = super().params()
        p.define("feature_list", None, "Path of the feature_list.conf file.")
        return p

    def __init__(self, params: InstantiableParams | None = None) -> None:
        super().__init__(params)

    # ------------------------------------------------------------------ feature names and slots
    def register_slots(self, sparse_features: Sequence[int] | Mapping[str, int]) -> None:
        """Declares feature name -> slot (a list of slots registers ``slot_{n}`` names)."""
        if isinstance(sparse_features, (list, tuple)):
            sparse_features = {f"slot_{slot}": slot for slot in sparse_features}
        for name, slot in sparse_features.items():
            if not 0 <= int(slot) <= MAX_SLOT_V2:
                raise ValueError(f"slot {slot} of feature '{name}' out of range 0..{MAX_SLOT_V2}")
            self._feature_slots[name] = int(slot)

    def get_feature_name_and_slot(self, item: str | int | FeatureColumn) -> tuple[str, int]:
        """Feature name and slot of a name, a slot number or a column.

        A slot number is named ``slot_{n}`` (or after its feature in the ``feature_list`` param's
        file); a name registered with :meth:`register_slots` or in the feature list has its slot;
        ``slot_{n}`` names parse; other names get the next free slot (a later feature that names
        that slot raises ``ValueError`` rather than sharing its table by accident).
        """
        if isinstance(item, FeatureColumn):
            return item.feature_name, item.feature_slot.slot
        if isinstance(item, bool) or not isinstance(item, (int, str)):
            raise ValueError(f"a feature is a name, a slot number or a FeatureColumn, got {item!r}")
        if isinstance(item, int):
            for name, slot in self._feature_slots.items():
                if slot == item and self._auto_slots.get(slot) != name:
                    return name, item
            listed = self._feature_list().get(item) if self.p.feature_list else None
            name = listed.feature_name if listed is not None else f"slot_{item}"
            self._check_slot_free(name, item)
            self._feature_slots[name] = item
            return name, item
        if item not in self._feature_slots:
            slot = self._known_slot(item)
            if slot is None:
                used = set(self._feature_slots.values()) | {fs.slot for fs in self.ctx.feature_slots}
                slot = next(s for s in range(1, MAX_SLOT_V2 + 1) if s not in used)
                self._auto_slots[slot] = item
            else:
                self._check_slot_free(item, slot)
            self._feature_slots[item] = slot
        return item, self._feature_slots[item]

    def _check_slot_free(self, name: str, slot: int) -> None:
        """Raises when ``slot`` went to another feature that named no slot: two features would share
        one table by accident."""
        other = self._auto_slots.get(slot)
        if other is not None and other != name:
            raise ValueError(f"feature '{name}' names slot {slot}, which feature '{other}' was given because it "
                             f"named no slot; register both slots with register_slots before creating columns")

    def _known_slot(self, name: str) -> int | None:
        """The slot a name has without being assigned one: registered, in the feature list, or
        named ``slot_{n}`` / ``fc_slot_{n}``."""
        if name in self._feature_slots:
            return self._feature_slots[name]
        listed = self._feature_list().get(name) if self.p.feature_list else None
        if listed is not None and listed.slot is not None:
            return listed.slot
        return slot_from_name(name)

    def _feature_list(self) -> "FeatureList":
        return _parse_feature_list(os.fspath(self.p.feature_list))

    def _get_fs_conf(self, shared_name: str, slot: int, occurrence_threshold: int | None,
                     expire_time: int) -> FeatureSlotConfig:
        if occurrence_threshold is None:
            occurrence_threshold = self.p.default_occurrence_threshold
        return FeatureSlotConfig(name=shared_name, has_bias=False, slot_id=slot,
                                 occurrence_threshold=occurrence_threshold, expire_time=expire_time)

    # ------------------------------------------------------------------ feature columns
    def create_embedding_feature_column(
        self,
        feature_name: str | int,
        occurrence_threshold: int | None = None,
        expire_time: int = 36500,
        max_seq_length: int = 0,
        shared_name: str | None = None,
        combiner: str | None = None,
    ) -> FeatureColumn:
        """Declares an embedding feature (once; later calls return the same column).

        Args:
            feature_name: feature name (or slot number) as the input batch names it.
            occurrence_threshold: admit a FID on its (T+1)-th occurrence (None: ``default_occurrence_threshold``).
            expire_time: days without update after which a FID's row is evicted.
            max_seq_length: > 0 makes a sequence feature pooled by ``first_n(max_seq_length)``.
            shared_name: share the embedding table of this (already created) feature.
            combiner: ``reduce_sum`` (default), ``reduce_mean`` or ``first_n``.
        """
        if combiner is not None:
            if combiner not in _COMBINERS:
                raise ValueError(f"combiner {combiner!r} is not one of {sorted(_COMBINERS)}")
            combiner = (FeatureColumn.reduce_sum() if combiner == "reduce_sum" else
                        FeatureColumn.reduce_mean() if combiner == "reduce_mean" else
                        FeatureColumn.first_n(max_seq_length))
        feature_name, slot = self.get_feature_name_and_slot(feature_name)
        if feature_name in self.fc_dict:
            return self.fc_dict[feature_name]
        if shared_name:
            if shared_name in self.fs_dict:
                fs = self.fs_dict[shared_name]
            elif shared_name in self.fc_dict:
                fs = self.fc_dict[shared_name].feature_slot
            elif (shared_slot := self._known_slot(shared_name)) is not None:
                # A feature with a known slot (registered, in the feature list, slot_{n}) gets its
                # slot now, as Monolith does when get_feature_name_and_slot resolves the shared name.
                self._feature_slots[shared_name] = shared_slot
                fs = self._feature_slot(shared_name, shared_slot, occurrence_threshold, expire_time)
                self.fs_dict[shared_name] = fs
            else:
                raise Exception(f"{feature_name} shared embedding with {shared_name}, "
                                f"so {shared_name} should create first!")
            self._share_slot_mapping[feature_name] = shared_name
        else:
            fs = self._feature_slot(feature_name, slot, occurrence_threshold, expire_time)
        if combiner is None:
            combiner = FeatureColumn.first_n(max_seq_length) if max_seq_length > 0 else FeatureColumn.reduce_sum()
        fc = FeatureColumn(fs, feature_name, combiner=combiner)
        self.fc_dict[feature_name] = fc
        self._occurrence_threshold[feature_name] = fs.config.occurrence_threshold
        return fc

    def _feature_slot(self, name: str, slot: int, occurrence_threshold: int | None, expire_time: int):
        # Feature slots outlive clean(): model_fn runs every step and must find the same tables.
        for fs in self.ctx.feature_slots:
            if fs.slot == slot:
                return fs
        return self.ctx.create_feature_slot(self._get_fs_conf(name, slot, occurrence_threshold, expire_time))

    def _embedding_slice_lookup(self, fc: str | FeatureColumn, slice_name: str, slice_dim: int,
                                initializer: Initializer | None, optimizer: SliceOptimizer | None,
                                compressor: Compressor | None, learning_rate_fn: Callable[[int], float] | None,
                                slice_list: list) -> torch.Tensor:
        if isinstance(fc, str):
            if fc not in self.fc_dict:
                raise KeyError(f"feature '{fc}' has no feature column: call create_embedding_feature_column first")
            fc = self.fc_dict[fc]
        owner = self._share_slot_mapping.get(fc.feature_name, fc.feature_name)
        fc_slice = fc.feature_slot.named_slice(slice_name, slice_dim, initializer, optimizer, compressor,
                                               learning_rate_fn)
        self.slice_dict.setdefault(owner, {})[slice_name] = fc_slice
        slice_list.append((fc.feature_name, fc_slice))
        return fc.embedding_lookup(fc_slice)

    def lookup_embedding_slice(
        self,
        features: Sequence[Any] | Mapping[Any, int],
        slice_name: str,
        slice_dim: int | None = None,
        initializer: Initializer | None = None,
        optimizer: SliceOptimizer | None = None,
        compressor: Compressor | None = None,
        learning_rate_fn: Callable[[int], float] | None = None,
        group_out_type: str = "add_n",
        out_type: str | None = None,
    ) -> torch.Tensor | list[torch.Tensor]:
        """Looks up slice ``slice_name`` of several features.

        ``features`` is a list of names with one ``slice_dim``; a list of name groups with
        ``slice_dim`` (each group's embeddings summed, ``group_out_type='add_n'``, or concatenated,
        ``'concat'``); a list of ``(name, dim)`` pairs; or a dict name -> dim. With ``out_type``
        None a list of ``[batch, dim]`` tensors comes back; ``concat`` gives ``[batch, sum dims]``,
        ``stack`` ``[batch, n, dim]``, ``add_n``/``addn`` ``[batch, dim]``.
        """
        expected = ("ValueError for features: expected a dict name -> dim, a list of features (or of feature "
                    "groups) with an int slice_dim, or a list of (feature, dim) pairs; got ")
        if not isinstance(features, (dict, list, tuple)):
            raise ValueError(expected + repr(features))
        if isinstance(slice_dim, numbers.Integral) and not isinstance(slice_dim, bool):
            slice_dim = int(slice_dim)
        concat = ",".join(sorted(map(str, features)))
        layout_name = f"{slice_name}_{hashlib.md5(concat.encode()).hexdigest()}"
        lookup_args = (initializer, optimizer, compressor, learning_rate_fn)
        embeddings: list[torch.Tensor] = []
        slice_list: list[tuple[str, FeatureSlice]] = []

        def one(feature: Any, dim: int) -> torch.Tensor:
            name, _ = self.get_feature_name_and_slot(feature)
            return self._embedding_slice_lookup(name, slice_name, dim, *lookup_args, slice_list)

        if isinstance(features, dict):
            embeddings = [one(name, dim) for name, dim in features.items()]
        elif isinstance(features, (list, tuple)) and isinstance(slice_dim, int):
            if all(isinstance(f, (str, int, FeatureColumn)) for f in features):
                embeddings = [one(name, slice_dim) for name in features]
            elif all(isinstance(f, (list, tuple)) for f in features):
                if group_out_type not in ("concat", "add_n"):
                    raise ValueError(f"group_out_type must be 'concat' or 'add_n', got {group_out_type!r}")
                for group in features:
                    local = [one(name, slice_dim) for name in group]
                    embeddings.append(torch.stack(local).sum(0) if group_out_type == "add_n" else torch.cat(local, 1))
            else:
                raise ValueError(expected + f"{features!r} with slice_dim {slice_dim}")
        else:
            if not all(isinstance(f, (list, tuple)) and len(f) == 2 for f in features):
                raise ValueError(expected + f"{features!r} with slice_dim {slice_dim!r}")
            embeddings = [one(name, dim) for name, dim in features]

        if out_type is None:
            self.add_layout(layout_name, slice_list, out_type, [e.shape for e in embeddings])
            return embeddings
        if out_type not in ("concat", "stack", "add_n", "addn"):
            raise ValueError(f"out_type must be None, 'concat', 'stack', 'add_n' or 'addn', got {out_type!r}")
        if out_type == "concat":
            out = torch.cat(embeddings, dim=1)
        elif out_type == "stack":
            out = torch.stack(embeddings, dim=1)
        else:
            out = torch.stack(embeddings).sum(0)
        self.add_layout(layout_name, slice_list, out_type, [out.shape])
        return out

    # ------------------------------------------------------------------ shared slots
    def share_slot(self, features: Batch | None = None, share_meta: Mapping[str, tuple[bool, int]] | None = None,
                   variant_type: str = "example", suffix: str = "share") -> Batch | Callable[[Batch], Batch]:
        """Reads features under other slots: ``share_meta`` maps name -> ``(inplace, slot)``.

        In place, the feature's FIDs get the new slot; otherwise a copy named ``{name}_{suffix}``
        does. With ``features`` None, returns the function that does it to a batch (for
        ``input_fn``); called on ``model_fn``'s features, the step's later lookups read the result.
        """
        share_meta = dict(share_meta or {})
        for name, (inplace, slot) in share_meta.items():
            self.register_slots({name if inplace else f"{name}_{suffix}": slot})

        def switch(batch: Batch) -> Batch:
            switched = switch_slot_batch(batch, share_meta, suffix=suffix)
            step = current_step()
            if step is not None and step.batch is batch:  # inside model_fn: the step's later lookups read the switch
                step.switch_batch(switched)
            return switched

        return switch if features is None else switch(features)


@functools.lru_cache(maxsize=None)
def _parse_feature_list(path: str) -> "FeatureList":
    """The feature list at ``path``, parsed once per process (as Monolith caches it)."""
    from monolith.data.feature_list import FeatureList  # late: monolith.data pulls in pyarrow

    return FeatureList.parse(path)


def switch_slot_batch(batch: Batch, features: Mapping[str, tuple[bool, int]], variant_type: str = "example_batch",
                      suffix: str = "share") -> Batch:
    """Monolith's ``switch_slot_batch``: ``features`` maps name -> ``(inplace, slot)``; in place the
    feature's FIDs get ``slot``, otherwise a copy named ``{name}_{suffix}`` does.

    ``variant_type`` (the TF variant's message type) is accepted for Monolith's signature; a
    :class:`Batch` is already parsed.
    """
    if not isinstance(batch, Batch):
        raise TypeError(f"switch_slot_batch: features must be a Batch, got {type(batch).__name__}")
    jagged = batch.sparse.to_dict()
    for name, (inplace, slot) in features.items():
        if name not in jagged:
            raise KeyError(f"switch_slot_batch: feature '{name}' is not in the batch; sparse features: {list(jagged)}")
        jagged[name if inplace else f"{name}_{suffix}"] = switch_slot(jagged[name], slot)
    return Batch(KeyedJaggedTensor.from_jagged_dict(jagged, stride=batch.sparse.stride()), dict(batch.dense))


def switch_slot(jagged: JaggedTensor, slot: int) -> JaggedTensor:
    """The same FIDs with their slot bits replaced by ``slot`` (v2 layout)."""
    if not 0 <= slot <= MAX_SLOT_V2:
        raise ValueError(f"slot {slot} out of range 0..{MAX_SLOT_V2}")
    values = (jagged.values() & _SIGNATURE_MASK) | (slot << SIGNATURE_BITS_V2)
    return JaggedTensor(values, jagged.lengths())
