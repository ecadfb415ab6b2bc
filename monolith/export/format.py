"""The on-disk format of an export, which the exporter writes and serving reads.

One export is a directory ``export_dir/<global_step>/``::

    dense.pt2           the dense part, a torch.export program (dense.ts: TorchScript, the fallback)
    tables/NAME.npz     each embedding table: its FIDs and its rows, compressed slice by slice
    signature.json      the receiver, the program's inputs and outputs, the table files
    model_dump.json     the model's :class:`~monolith.dump.ModelDump`

The dense program takes the pooled embedding of each (feature, slice) that ``model_fn`` looks up,
then the receiver's dense features, and returns the heads' predictions and the extra outputs
(:class:`ExportSignature`). Exports are written under hidden names (``.<step>.staging``) and renamed
into place; a replaced one is first renamed aside (``.<step>.replaced``) and one being pruned to
``.<step>.deleted``, so serving, which reads only ``<step>`` directories, never sees half of one.
This module needs neither the model's code nor the trainer: serving imports it alone.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import re
import shutil
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Sequence

import numpy as np
import torch

from monolith.export.receiver import ServingInputReceiver
from monolith.modules.combiners import FirstN
from monolith.optim.base import Compressor
from monolith.optim.registry import from_config

if TYPE_CHECKING:
    from monolith.table import EmbeddingHashTable

logger = logging.getLogger(__name__)

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


# --------------------------------------------------------------------------------------- replacing and pruning
def recover_replaced(export_dir: str) -> None:
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
