"""The exporter: a trained model written for serving (Monolith's standalone ``saved_model_exporters``).

The dense part is ``model_fn`` in PREDICT mode with every embedding lookup turned into an input
(:mod:`monolith.export.format` describes the files). Serving (:mod:`monolith.serving`) looks the
FIDs up and pools them with the features' combiners itself, so an export loads without the model's
Python code. The export is assembled in a hidden staging directory (deleted if the export fails, or
by the next export of the step after a kill) and renamed into place; an existing export of the same
step is renamed aside first, the new one renamed in, then the old copy deleted: at every moment
``<step>/`` is the old export whole, the new one whole, or (between the two renames) absent. A crash
between the two renames leaves only the aside copy; the next export into the directory renames it
back (or deletes it, where its step is in place again).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import warnings
from typing import Any, Callable, Mapping, Sequence

import torch

from monolith.checkpoint import table_file_stem
from monolith.dump import ModelDump
from monolith.export.format import (MODEL_DUMP_FILE, PROGRAM_FILES, TABLES_DIR, EmbeddingInput, ExportSignature,
                                    program_factory, recover_replaced, save_table)
from monolith.export.receiver import ServingInputReceiver
from monolith.feature import FeatureColumn, FeatureSlice
from monolith.mode_keys import ModeKeys
from monolith.model import ModelOutput, MonolithBaseModel
from monolith.progress import Progress
from monolith.sparse import Batch, KeyedJaggedTensor


logger = logging.getLogger(__name__)

#: Batch size of the example inputs the program is traced with (a dynamic dimension for torch.export).
_TRACE_BATCH = 7
#: Batch sizes at which the saved program is checked against eager ``model_fn``: not the traced one,
#: so a program with the batch size baked in is caught, and 1 (a request of one example), where a
#: ``model_fn`` branching on the batch size (``x.shape[0] == 1``) parts from its trace.
_CHECK_BATCHES = (1, 3)

__all__ = ["export_saved_model"]

# --------------------------------------------------------------------------------------- dense program
class _DenseProgram(torch.nn.Module):
    """The model's PREDICT-mode ``model_fn`` as a function of pooled embeddings and dense features.

    :meth:`discover` runs ``model_fn`` once to list its lookups and outputs; :meth:`forward` then
    takes one tensor per lookup and per dense feature and returns the outputs as a tuple.
    """

    def __init__(self, model: MonolithBaseModel, receiver: ServingInputReceiver) -> None:
        super().__init__()
        self.model = model
        self.receiver = receiver
        self._model_fn = model.create_model_fn()
        self.embeddings: list[EmbeddingInput] = []
        self.outputs: list[str] = []
        self.heads: list[str] = []

    def _call(self, lookup: Callable[[FeatureColumn, FeatureSlice], torch.Tensor],
              dense: dict[str, torch.Tensor], batch_size: Any) -> ModelOutput:
        # The features carry no FIDs: the model reaches sparse features only through its lookups
        # (served by ``lookup``), and reading FIDs is an error that says so.
        features = _ServingFeatures(_NoFids.of(self.receiver.sparse_features, batch_size), dense)
        return self._model_fn(features, ModeKeys.PREDICT, lookup)

    def _entry(self, column: FeatureColumn, s: FeatureSlice) -> EmbeddingInput:
        if column.feature_name not in self.receiver.sparse_features:
            raise ValueError(f"model_fn looks up feature '{column.feature_name}', which the serving receiver does "
                             f"not provide (sparse_features={self.receiver.sparse_features})")
        module = self.model.ctx.table_for(column.feature_slot)  # with the slices model_fn added just now
        if module is None:
            raise ValueError(f"feature '{column.feature_name}' (slot {column.feature_slot.slot}) has no embedding "
                             f"table of its slot's width: its slot was first declared in PREDICT mode, after the build")
        table = module.table
        names = {(named.start, named.end): name for name, named in column.feature_slot.named_slices.items()}
        return EmbeddingInput(column.feature_name, table.name, names.get((s.start, s.end)), s.start, s.end,
                              column.combiner.name, column.combiner.max_seq_length)

    def discover(self, batch_size: int) -> ModelOutput:
        """Runs ``model_fn`` with zeros for every lookup; records the lookups and the outputs."""

        def record(column: FeatureColumn, s: FeatureSlice) -> torch.Tensor:
            entry = self._entry(column, s)
            if entry not in self.embeddings:
                self.embeddings.append(entry)
            return torch.zeros(batch_size, *entry.shape[1:])

        dense = {name: torch.zeros(batch_size, width) for name, width in self.receiver.dense_features.items()}
        with torch.no_grad():
            output = self._call(record, dense, batch_size)
        outputs = _named_outputs(output)
        for name, tensor in outputs.items():
            if tensor.dim() == 0 or tensor.shape[0] != batch_size:
                raise ValueError(f"output '{name}' has shape {list(tensor.shape)}; serving needs one row per "
                                 f"example (leading dimension {batch_size})")
        if not self.embeddings and not self.receiver.dense_features:
            raise ValueError("nothing to serve: model_fn makes no embedding lookup and the receiver has no "
                             "dense feature")
        self.outputs, self.heads = list(outputs), list(output.head_names)
        return output

    def example_inputs(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        shapes = [[batch_size, *e.shape[1:]] for e in self.embeddings]
        shapes += [[batch_size, width] for width in self.receiver.dense_features.values()]
        return tuple(torch.randn(*shape, generator=generator) for shape in shapes)

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        provided = {(e.feature, e.start, e.end): t for e, t in zip(self.embeddings, inputs)}

        def lookup(column: FeatureColumn, s: FeatureSlice) -> torch.Tensor:
            key = (column.feature_name, s.start, s.end)
            if key not in provided:
                raise RuntimeError(f"model_fn looked up columns [{s.start}, {s.end}) of feature "
                                   f"'{column.feature_name}', which its first PREDICT call did not; model_fn must "
                                   f"make the same lookups on every call")
            return provided[key]

        dense = dict(zip(self.receiver.dense_features, inputs[len(self.embeddings):]))
        return tuple(_named_outputs(self._call(lookup, dense, inputs[0].shape[0])).values())


def _fids_read(names: Sequence[str], how: str) -> ValueError:
    return ValueError(
        f"model_fn reads the FIDs of sparse features {list(names)} ({how}); an exported model is given no FIDs, "
        f"only the pooled embeddings of its lookups, so FID transforms inside model_fn (share_slot, "
        f"switch_slot_batch, reading features[name]) cannot be served. Do them in input_fn instead "
        f"(share_slot(None, share_meta) returns the function that does it to a batch), and send serving "
        f"requests the transformed FIDs")


class _NoFids(KeyedJaggedTensor):
    """The sparse part of the features the exported ``model_fn`` gets: no keys, so no FIDs; reading
    the FIDs of a receiver's sparse feature (``[name]``, ``to_dict``) raises :func:`_fids_read`'s error."""

    served: tuple[str, ...]

    @classmethod
    def of(cls, served: Sequence[str], stride: Any) -> "_NoFids":
        kjt = cls._trusted([], torch.empty(0, dtype=torch.int64), torch.empty(0, dtype=torch.int64), stride)
        kjt.served = tuple(served)
        return kjt

    def __getitem__(self, key: str) -> Any:
        if key in self.served:
            raise _fids_read([key], f"features.sparse[{key!r}]")
        return super().__getitem__(key)

    def to_dict(self) -> dict[str, Any]:
        if self.served:  # share_slot / switch_slot_batch start here
            raise _fids_read(self.served, "features.sparse.to_dict(), as share_slot and switch_slot_batch do")
        return {}


class _ServingFeatures(Batch):
    """The features the exported ``model_fn`` gets: the dense ones, and :class:`_NoFids`."""

    def __getitem__(self, name: str) -> Any:
        if isinstance(self.sparse, _NoFids) and name in self.sparse.served:
            raise _fids_read([name], f"features[{name!r}]")
        return super().__getitem__(name)


def _named_outputs(output: ModelOutput) -> dict[str, torch.Tensor]:
    """The heads' predictions, then the extra outputs (``name/key`` for each entry of a dict)."""
    named = dict(zip(output.head_names, output.preds))
    for name, value in output.extra_outputs.items():
        entries = {f"{name}/{k}": v for k, v in value.items()} if isinstance(value, Mapping) else {name: value}
        for key, tensor in entries.items():
            if not isinstance(tensor, torch.Tensor):
                raise TypeError(f"extra output '{key}' must be a tensor (or a dict of tensors) to be served, "
                                f"got {type(tensor).__name__}")
            if key in named:
                raise ValueError(f"extra output '{key}' has the name of a head or of another output")
            named[key] = tensor
    return named


def _save_program(program: _DenseProgram, directory: str) -> tuple[str, str | None]:
    """Saves the program with torch.export (TorchScript tracing if that fails) and checks it against
    eager ``model_fn``; returns the kind used and why torch.export failed, if it did."""
    inputs = program.example_inputs(_TRACE_BATCH, torch.Generator().manual_seed(0))
    try:
        batch = torch.export.Dim("batch", min=1)
        with warnings.catch_warnings():
            # model_fn keeps its extra outputs on the model between calls; they are outputs, not state.
            # torch says "was assigned" for one such attribute, "were assigned" for several.
            warnings.filterwarnings("ignore", message=".*(was|were) assigned during export", category=UserWarning)
            exported = torch.export.export(program, inputs, dynamic_shapes=(tuple({0: batch} for _ in inputs),))
        kind, reason = "torch.export", None
        torch.export.save(exported, os.path.join(directory, PROGRAM_FILES[kind]))
    except Exception as error:  # torch.export fails in many ways: data-dependent branches, untraceable Python
        kind, reason = "torchscript", f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0]}"
        logger.warning("torch.export could not export the dense part (%s); tracing it with TorchScript", reason)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            traced = torch.jit.trace(program, inputs, check_trace=False)
        torch.jit.save(traced, os.path.join(directory, PROGRAM_FILES[kind]))
    _check_program(program, program_factory(os.path.join(directory, PROGRAM_FILES[kind]), kind)(), kind)
    return kind, reason


def _check_program(program: _DenseProgram, saved: torch.nn.Module, kind: str) -> None:
    """Raises RuntimeError (naming the output and the batch size) where ``saved`` fails or disagrees
    with eager ``model_fn`` at one of :data:`_CHECK_BATCHES`: the export is refused."""
    for seed, batch in enumerate(_CHECK_BATCHES, start=1):
        inputs = program.example_inputs(batch, torch.Generator().manual_seed(seed))
        with torch.no_grad():
            try:
                expected = program(*inputs)
            except Exception as error:
                raise RuntimeError(f"not exported: model_fn in PREDICT mode fails at batch size {batch}, which "
                                   f"serving must handle: {type(error).__name__}: {error}") from error
            try:
                got = saved(*inputs)
            except Exception as error:
                raise RuntimeError(f"not exported: the saved {kind} program fails at batch size {batch}, where "
                                   f"model_fn does not: {type(error).__name__}: {error}") from error
        for name, e, g in zip(program.outputs, expected, got):
            if e.shape != g.shape:
                how = f"shape {list(g.shape)}, model_fn's {list(e.shape)}"
            elif not torch.allclose(e.double(), g.double(), rtol=1e-4, atol=1e-5, equal_nan=True):
                gap = (e.double() - g.double()).abs().nan_to_num(float("inf")).max()
                how = f"values differ by up to {float(gap):.3g}"
            else:
                continue
            raise RuntimeError(
                f"not exported: the saved {kind} program disagrees with model_fn on output '{name}' at batch size "
                f"{batch} ({how}); it was traced at batch size {_TRACE_BATCH}: does model_fn bake in or branch on "
                f"the batch size, or branch on values?")


# --------------------------------------------------------------------------------------- export
def serving_receiver(model: MonolithBaseModel) -> ServingInputReceiver:
    """``model``'s serving receiver (its ``serving_input_receiver_fn``'s).

    Raises:
        TypeError: ``serving_input_receiver_fn`` returned no :class:`ServingInputReceiver`.
    """
    receiver = model.create_serving_input_receiver_fn()()
    if not isinstance(receiver, ServingInputReceiver):
        raise TypeError(f"{type(model).__name__}.serving_input_receiver_fn must return a ServingInputReceiver, "
                        f"got {type(receiver).__name__}")
    return receiver


def trace_batch(receiver: ServingInputReceiver) -> Batch:
    """The batch of the receiver's features that the exporter traces ``model_fn`` on: building a
    model on it first gives it every layer the export needs."""
    return receiver.example_batch(_TRACE_BATCH)


def exporting_note(receiver: ServingInputReceiver) -> str:
    """The note an export adds to a failure of ``model_fn`` on the receiver's features."""
    return f"while exporting: model_fn in PREDICT mode on the serving receiver's features {receiver.to_dict()}"


def export_saved_model(model: MonolithBaseModel, step: int, export_dir: str | os.PathLike,
                       run_config: Any = None) -> str:
    """Exports ``model`` (built: its layers and tables exist, e.g. on :func:`trace_batch`) for serving
    to ``export_dir/<step>/``; returns that path. ``run_config`` is recorded in the export's model dump.

    An existing export of the same step is replaced (renamed aside, the new one renamed in, the old
    one deleted: never half of one in place); a failed export leaves no trace.

    Raises:
        TypeError: ``serving_input_receiver_fn`` returned no :class:`ServingInputReceiver`.
        ValueError: ``model_fn`` in PREDICT mode fails on the receiver's features, looks up a feature
            the receiver lacks, reads FIDs itself (``share_slot`` / ``switch_slot_batch`` inside
            ``model_fn``: do them in ``input_fn``), or has outputs without one row per example.
        RuntimeError: the saved program fails or disagrees with ``model_fn`` at batch size 1 or 3 (the
            message names the output and the batch size).
    """
    receiver = serving_receiver(model)
    previous = model.p.mode
    model.set_mode(ModeKeys.PREDICT)
    try:
        try:
            program = _DenseProgram(model, receiver)
            output = program.discover(_TRACE_BATCH)
        except Exception as error:
            error.add_note(exporting_note(receiver))
            raise
        return _write_export(model, step, run_config, program, output, export_dir)
    finally:
        model.set_mode(previous)


def _write_export(model: MonolithBaseModel, step: int, run_config: Any, program: _DenseProgram,
                  output: ModelOutput, export_dir: str | os.PathLike) -> str:
    export_dir = os.fspath(export_dir)
    final = os.path.join(export_dir, str(step))
    staging = os.path.join(export_dir, f".{step}.staging")
    aside = os.path.join(export_dir, f".{step}.replaced")
    recover_replaced(export_dir)
    shutil.rmtree(staging, ignore_errors=True)
    try:
        os.makedirs(os.path.join(staging, TABLES_DIR))
        kind, reason = _save_program(program, staging)
        tables = {}
        rows = sum(len(module.table) for module in model.ctx.tables.values())
        shown = run_config is None or run_config.progress_bar
        with Progress("export", unit="rows", total=rows, enabled=shown) as progress:
            for name, module in model.ctx.tables.items():
                tables[name] = f"{TABLES_DIR}/{table_file_stem(name)}.npz"
                save_table(os.path.join(staging, tables[name]), module.table)
                progress.update(len(module.table))
        # Training hooks never run in serving, so the dump (which refuses them) is made without them.
        ModelDump.from_model(model, dataclasses.replace(output, training_hooks=[]), receiver=program.receiver,
                             run_config=run_config).dump(os.path.join(staging, MODEL_DUMP_FILE))
        ExportSignature(step, kind, program.receiver, program.embeddings, program.outputs, program.heads, tables,
                        reason).save(staging)
        # Old export aside, new one in, old one deleted: <step>/ is never half of either.
        replacing = os.path.isdir(final)
        if replacing:
            os.replace(final, aside)
        os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if replacing:
        shutil.rmtree(aside, ignore_errors=True)
    logger.info("exported step %d to %s (%s program)", step, final, kind)
    return final


