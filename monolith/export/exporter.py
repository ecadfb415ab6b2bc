"""Export of a trained model for serving (Monolith's standalone ``saved_model_exporters``).

One export is a directory ``export_dir/<global_step>/``::

    dense.pt2           the dense part, a torch.export program (dense.ts: TorchScript, the fallback)
    tables/NAME.npz     each embedding table: its FIDs and its rows, compressed slice by slice
    signature.json      the receiver, the program's inputs and outputs, the table files
    model_dump.json     the model's :class:`~monolith.dump.ModelDump`

The dense part is ``model_fn`` in PREDICT mode with every embedding lookup turned into an input:
the program takes the pooled embedding of each (feature, slice) that ``model_fn`` looks up, then
the receiver's dense features, and returns the heads' predictions and the extra outputs. Serving
(:mod:`monolith.serving`) looks the FIDs up and pools them with the features' combiners itself,
so an export loads without the model's Python code.

The export is assembled in a hidden staging directory (``.<step>.staging``: deleted if the export
fails, or by the next export of the step after a kill) and renamed into place, so a reader never
sees half of one. An existing export of the
same step is first renamed aside (``.<step>.replaced``), the new one renamed in, then the old copy
deleted: at every moment ``<step>/`` is the old export whole, the new one whole, or (between the
two renames) absent. Serving reads only ``<step>`` directories, never the hidden ones. A crash
between the two renames leaves only the aside copy; the next export into the directory renames it
back (or deletes it, where its step is in place again).
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import re
import shutil
import warnings
from typing import TYPE_CHECKING, Any, Callable, Mapping, NamedTuple, Sequence

import numpy as np
import torch

from monolith.checkpoint import table_file_stem
from monolith.dump import ModelDump
from monolith.export.receiver import ServingInputReceiver
from monolith.feature import FeatureColumn, FeatureSlice
from monolith.mode_keys import ModeKeys
from monolith.model import ModelOutput, MonolithBaseModel
from monolith.modules.combiners import FirstN
from monolith.optim.base import Compressor
from monolith.optim.registry import from_config
from monolith.sparse import Batch, KeyedJaggedTensor
from monolith.table import EmbeddingHashTable

if TYPE_CHECKING:
    from monolith.estimator import Estimator

logger = logging.getLogger(__name__)

__all__ = [
    "DENSE_STATE_PREFIX",
    "EmbeddingInput",
    "ExportSignature",
    "LoadedTable",
    "TableSlice",
    "compress_rows",
    "decompress_rows",
    "export_saved_model",
    "load_table",
    "program_factory",
    "prune_exports",
    "save_table",
]

FORMAT = "monolith.export"
FORMAT_VERSION = 1
SIGNATURE_FILE = "signature.json"
MODEL_DUMP_FILE = "model_dump.json"
TABLES_DIR = "tables"
#: The file of each kind of dense program.
PROGRAM_FILES = {"torch.export": "dense.pt2", "torchscript": "dense.ts"}
#: The program holds the model as its submodule ``model``: its state dict is the model's, keys prefixed.
DENSE_STATE_PREFIX = "model."
_TABLE_FORMAT = "monolith.serving-table"
#: Batch size of the example inputs the program is traced with (a dynamic dimension for torch.export).
_TRACE_BATCH = 7
#: Batch sizes at which the saved program is checked against eager ``model_fn``: not the traced one,
#: so a program with the batch size baked in is caught, and 1 (a request of one example), where a
#: ``model_fn`` branching on the batch size (``x.shape[0] == 1``) parts from its trace.
_CHECK_BATCHES = (1, 3)
#: A step's export directory, and the hidden copies of one being written or replaced.
_STEP_DIR = re.compile(r"\d+")
_REPLACED_DIR = re.compile(r"\.(\d+)\.replaced")
_DELETED_DIR = re.compile(r"\.\d+\.deleted")


# --------------------------------------------------------------------------------------- signature
@dataclasses.dataclass(frozen=True)
class EmbeddingInput:
    """One input of the dense program: ``feature``'s rows (from ``table``), columns ``[start, end)``,
    pooled per example by the feature's combiner (``max_seq_length`` > 0 for ``first_n``)."""

    feature: str
    table: str
    slice: str | None
    start: int
    end: int
    combiner: str
    max_seq_length: int

    @property
    def name(self) -> str:
        return f"{self.feature}[{self.start}:{self.end}]"

    @property
    def shape(self) -> list[int]:
        """``[-1, dim]``, or ``[-1, max_seq_length, dim]`` for ``first_n``; -1 is the batch."""
        dim = self.end - self.start
        return [-1, self.max_seq_length, dim] if self.combiner == FirstN.name else [-1, dim]


@dataclasses.dataclass
class ExportSignature:
    """``signature.json``: what the dense program takes and returns, and where the tables are.

    The program's inputs are ``embeddings`` (in order), then the receiver's dense features (in the
    receiver's order); its outputs are ``outputs``: the heads, then the extra outputs (a dict-valued
    extra output ``x`` gives ``x/key`` per entry).
    """

    global_step: int
    program: str
    receiver: ServingInputReceiver
    embeddings: list[EmbeddingInput]
    outputs: list[str]
    heads: list[str]
    tables: dict[str, str]
    fallback_reason: str | None = None

    @property
    def program_file(self) -> str:
        return PROGRAM_FILES[self.program]

    def inputs(self) -> list[dict[str, Any]]:
        """The program's inputs in order: name, kind, shape (and the lookup of embedding inputs)."""
        embedded = [{"name": e.name, "kind": "embedding", "shape": e.shape, **dataclasses.asdict(e)}
                    for e in self.embeddings]
        dense = [{"name": name, "kind": "dense", "shape": [-1, width]}
                 for name, width in self.receiver.dense_features.items()]
        return embedded + dense

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "global_step": self.global_step,
            "program": {"kind": self.program, "file": self.program_file, "fallback_reason": self.fallback_reason,
                        "dense_state_prefix": DENSE_STATE_PREFIX},
            "receiver": self.receiver.to_dict(),
            "inputs": self.inputs(),
            "outputs": list(self.outputs),
            "heads": list(self.heads),
            "extra_outputs": [o for o in self.outputs if o not in self.heads],
            "tables": dict(self.tables),
        }

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "ExportSignature":
        """Reads ``signature.json`` of the export in ``directory``.

        Raises:
            ValueError: the file is not a signature of this format version (the message names it).
        """
        path = os.path.join(os.fspath(directory), SIGNATURE_FILE)
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            if data.get("format") != FORMAT or data.get("version") != FORMAT_VERSION:
                raise ValueError(f"format {data.get('format')!r} version {data.get('version')!r}, "
                                 f"expected {FORMAT!r} version {FORMAT_VERSION}")
            fields = {f.name for f in dataclasses.fields(EmbeddingInput)}
            return cls(
                global_step=int(data["global_step"]),
                program=data["program"]["kind"],
                receiver=ServingInputReceiver.from_dict(data["receiver"]),
                embeddings=[EmbeddingInput(**{k: v for k, v in i.items() if k in fields})
                            for i in data["inputs"] if i["kind"] == "embedding"],
                outputs=list(data["outputs"]),
                heads=list(data["heads"]),
                tables=dict(data["tables"]),
                fallback_reason=data["program"]["fallback_reason"],
            )
        except FileNotFoundError:
            raise FileNotFoundError(f"{directory}: not an export (no {SIGNATURE_FILE})") from None
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"{path}: not a readable export signature: {error}") from error

    def save(self, directory: str) -> None:
        with open(os.path.join(directory, SIGNATURE_FILE), "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=1)


# --------------------------------------------------------------------------------------- tables
@dataclasses.dataclass(frozen=True)
class TableSlice:
    """One slice of a served table's rows: its name, width and serving compressor."""

    name: str
    dim: int
    compressor: Compressor


class LoadedTable(NamedTuple):
    """A table file read back: FIDs ``[n]``, decompressed float32 rows ``[n, dim]`` and the slices."""

    name: str
    keys: np.ndarray
    rows: np.ndarray
    slices: list[TableSlice]


def compress_rows(rows: np.ndarray, slices: Sequence[TableSlice]) -> list[np.ndarray]:
    """Each slice's columns of float32 ``rows`` ``[n, dim]``, encoded by the slice's compressor."""
    encoded, column = [], 0
    for s in slices:
        encoded.append(s.compressor.encode(rows[:, column : column + s.dim]))
        column += s.dim
    return encoded


def decompress_rows(encoded: Sequence[np.ndarray], slices: Sequence[TableSlice]) -> np.ndarray:
    """Float32 rows ``[n, dim]`` from :func:`compress_rows`' output."""
    return np.ascontiguousarray(np.hstack([s.compressor.decode(e, s.dim) for e, s in zip(encoded, slices)]),
                                dtype=np.float32)


def save_table(path: str, table: EmbeddingHashTable) -> None:
    """Writes ``table``'s FIDs and rows, each slice encoded by its compressor, to ``path`` (npz)."""
    slices = [TableSlice(c.name, c.dim, c.compressor) for c in table.slices]
    keys, rows = table.items()
    meta = {"format": _TABLE_FORMAT, "name": table.name, "dim": table.dim,
            "slices": [{"name": s.name, "dim": s.dim, "compressor": s.compressor.config()} for s in slices]}
    arrays = {f"slice_{i}": encoded for i, encoded in enumerate(compress_rows(rows, slices))}
    with open(path, "wb") as f:
        np.savez(f, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), keys=keys, **arrays)


def load_table(path: str) -> LoadedTable:
    """Reads a table file written by :func:`save_table`, rows decompressed to float32.

    Raises:
        ValueError: the file is unreadable or not a table file (the message names it).
    """
    try:
        with np.load(path, allow_pickle=False) as npz:
            meta = json.loads(bytes(npz["meta"]).decode())
            if meta.get("format") != _TABLE_FORMAT:
                raise ValueError(f"format {meta.get('format')!r}, expected {_TABLE_FORMAT!r}")
            slices = [TableSlice(s["name"], int(s["dim"]), from_config(s["compressor"], Compressor)) for s in meta["slices"]]
            keys = np.ascontiguousarray(npz["keys"], dtype=np.int64)
            rows = decompress_rows([npz[f"slice_{i}"] for i in range(len(slices))], slices)
    except FileNotFoundError:
        raise
    except (OSError, ValueError, KeyError, EOFError) as error:
        raise ValueError(f"{path}: not a readable serving table ({error})") from error
    if rows.shape != (keys.size, sum(s.dim for s in slices)):
        raise ValueError(f"{path}: {keys.size} FIDs but rows of shape {list(rows.shape)}")
    return LoadedTable(meta["name"], keys, rows, slices)


# --------------------------------------------------------------------------------------- dense program
def program_factory(path: str, kind: str) -> Callable[[], torch.nn.Module]:
    """A function that makes a new module of the dense program saved at ``path``.

    Modules of a torch.export program share its weight tensors: give a module new weights with
    ``load_state_dict(state, assign=True)``, which replaces its tensors instead of writing into them.
    """
    if kind == "torch.export":
        return torch.export.load(path).module
    if kind == "torchscript":
        with open(path, "rb") as f:
            data = f.read()
        return lambda: torch.jit.load(io.BytesIO(data))
    raise ValueError(f"{path}: unknown dense program kind {kind!r}; expected one of {sorted(PROGRAM_FILES)}")


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
        # (ctx.lookup_override), and reading FIDs is an error that says so.
        features = _ServingFeatures(_NoFids.of(self.receiver.sparse_features, batch_size), dense)
        ctx = self.model.ctx
        ctx.lookup_override = lookup
        try:
            return self._model_fn(features, ModeKeys.PREDICT)
        finally:
            ctx.lookup_override = None
            ctx.begin_step(None)  # drop the (possibly symbolic) features

    def _entry(self, column: FeatureColumn, s: FeatureSlice) -> EmbeddingInput:
        if column.feature_name not in self.receiver.sparse_features:
            raise ValueError(f"model_fn looks up feature '{column.feature_name}', which the serving receiver does "
                             f"not provide (sparse_features={self.receiver.sparse_features})")
        table = self.model.ctx.table_of_slot(column.feature_slot.slot).table
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
def export_saved_model(estimator: "Estimator", export_dir: str | os.PathLike) -> str:
    """Exports ``estimator``'s model for serving to ``export_dir/<global_step>/``; returns that path.

    Tables and dense weights are the estimator's current ones (an estimator that has not built its
    model yet builds it on the receiver's features and restores the latest checkpoint, whose shards
    from any number of ranks merge into this process). An existing export of the same step is replaced
    (renamed aside, the new one renamed in, the old one deleted: never half of one in place); a failed
    export leaves no trace.

    Raises:
        TypeError: ``serving_input_receiver_fn`` returned no :class:`ServingInputReceiver`.
        ValueError: ``model_fn`` in PREDICT mode fails on the receiver's features, looks up a feature
            the receiver lacks, reads FIDs itself (``share_slot`` / ``switch_slot_batch`` inside
            ``model_fn``: do them in ``input_fn``), or has outputs without one row per example.
        RuntimeError: under torch.distributed (export from one process), or the saved program fails
            or disagrees with ``model_fn`` at batch size 1 or 3 (the message names the output and
            the batch size).
    """
    if estimator.dist is not None:
        raise RuntimeError("export_saved_model runs in one process: restore the checkpoint with an Estimator "
                           "outside torch.distributed (it merges the shards of every rank) and export there")
    model = estimator.model
    receiver = model.create_serving_input_receiver_fn()()
    if not isinstance(receiver, ServingInputReceiver):
        raise TypeError(f"{type(model).__name__}.serving_input_receiver_fn must return a ServingInputReceiver, "
                        f"got {type(receiver).__name__}")
    mode, training = model.p.mode, model.training
    model.p.mode = ModeKeys.PREDICT
    model.eval()
    model.ctx.train(False)
    try:
        try:
            estimator.build(receiver.example_batch(_TRACE_BATCH))
            program = _DenseProgram(model, receiver)
            output = program.discover(_TRACE_BATCH)
        except Exception as error:
            error.add_note(f"while exporting: model_fn in PREDICT mode on the serving receiver's features "
                           f"{receiver.to_dict()}")
            raise
        return _write_export(estimator, program, output, export_dir)
    finally:
        model.p.mode = mode
        model.train(training)
        model.ctx.train(training)


def _write_export(estimator: "Estimator", program: _DenseProgram, output: ModelOutput,
                  export_dir: str | os.PathLike) -> str:
    model = estimator.model
    step = estimator.global_step
    export_dir = os.fspath(export_dir)
    final = os.path.join(export_dir, str(step))
    staging = os.path.join(export_dir, f".{step}.staging")
    aside = os.path.join(export_dir, f".{step}.replaced")
    _recover_replaced(export_dir)
    shutil.rmtree(staging, ignore_errors=True)
    try:
        os.makedirs(os.path.join(staging, TABLES_DIR))
        kind, reason = _save_program(program, staging)
        tables = {}
        for name, module in model.ctx.tables.items():
            tables[name] = f"{TABLES_DIR}/{table_file_stem(name)}.npz"
            save_table(os.path.join(staging, tables[name]), module.table)
        # Training hooks never run in serving, so the dump (which refuses them) is made without them.
        ModelDump.from_model(model, dataclasses.replace(output, training_hooks=[]), receiver=program.receiver,
                             run_config=estimator.config).dump(os.path.join(staging, MODEL_DUMP_FILE))
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


def _recover_replaced(export_dir: str) -> None:
    """Finishes replacements a crash interrupted: an aside copy ``.<step>.replaced`` is deleted where
    ``<step>/`` is in place, else renamed back to ``<step>/`` (the step's only complete export);
    leftovers of an interrupted :func:`prune_exports` are deleted."""
    for name in _listdir(export_dir):
        if _DELETED_DIR.fullmatch(name):  # prune_exports was interrupted
            shutil.rmtree(os.path.join(export_dir, name), ignore_errors=True)
        match = _REPLACED_DIR.fullmatch(name)
        if match is None:
            continue
        aside, final = os.path.join(export_dir, name), os.path.join(export_dir, match.group(1))
        if os.path.isdir(final):
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(aside, final)
            logger.warning("%s: restored the export of step %s that an interrupted export had set aside",
                           final, match.group(1))


def _listdir(directory: str) -> list[str]:
    try:
        return os.listdir(directory)
    except FileNotFoundError:
        return []


def prune_exports(export_dir: str | os.PathLike, keep_steps: set[int] | Sequence[int]) -> list[str]:
    """Deletes the exports ``export_dir/<step>/`` whose step is not in ``keep_steps``, as Monolith's
    export saver listener deletes exports whose checkpoint is gone; returns the deleted paths.

    Only ``<step>`` directories are touched (hidden staging and aside copies are not); an export is
    renamed to a hidden name before it is deleted, so serving never loads half of one.
    """
    export_dir, keep = os.fspath(export_dir), {int(step) for step in keep_steps}
    deleted = []
    for name in sorted(_listdir(export_dir)):
        path = os.path.join(export_dir, name)
        if _STEP_DIR.fullmatch(name) is None or int(name) in keep or not os.path.isdir(path):
            continue
        doomed = os.path.join(export_dir, f".{name}.deleted")
        shutil.rmtree(doomed, ignore_errors=True)
        os.replace(path, doomed)
        shutil.rmtree(doomed, ignore_errors=True)
        deleted.append(path)
        logger.info("deleted export %s: its checkpoint is no longer kept", path)
    return deleted
