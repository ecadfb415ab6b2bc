"""Serving an export: FID lookups, pooling and the dense program, with hot parameter updates.

:class:`ServingModel` holds each table of an export (:mod:`monolith.export`) as a FID map with
decompressed float32 rows, and its dense program. A prediction looks each feature's FIDs up once
(absent FIDs read zeros), pools every (feature, slice) the program takes with the feature's
combiner, as training does, and runs the program on the pooled embeddings and dense features.

A trainer pushes updates (:meth:`ServingModel.apply_update`) while requests are served: table reads
and writes take one lock (a read only while it gathers rows), and new dense weights go into a new
module that is swapped in, so every request sees one version of all parameters. Update format,
``torch.save``-able and loadable with ``weights_only=True`` (dicts, ints, tensors)::

    {"version": int,                 # the model's new version, not older than the one served
     "tables": {name: {"ids": int64[n], "rows": float32[n, dim], "deleted": int64[m]}},
     "dense": model.state_dict() or None}

Rows arrive uncompressed and are stored as an export stores them (through the slices'
compressors), so serving precision does not depend on how a row got there.
"""

from __future__ import annotations

import io
import itertools
import os
import re
import reprlib
import threading
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from monolith.export.exporter import (DENSE_STATE_PREFIX, ExportSignature, LoadedTable, SIGNATURE_FILE,
                                      compress_rows, decompress_rows, load_table, program_factory)
from monolith.export.receiver import ServingInputReceiver
from monolith.modules.combiners import make_combiner
from monolith.table.hash_map import FidMap

__all__ = ["RequestError", "ServingModel", "StaleUpdateError", "decode_update", "encode_update"]

_UPDATE_FIELDS = ("version", "tables", "dense")
_TABLE_UPDATE_FIELDS = ("ids", "rows", "deleted")
_INT64_MIN, _UINT64_END = -(1 << 63), 1 << 64


class RequestError(ValueError):
    """A malformed prediction request or update; the message names the offending field."""


class StaleUpdateError(RequestError):
    """An update whose version is older than the version being served."""


class _Table:
    """One served table: FID -> float32 row as serving stores it; absent FIDs read zeros.

    Rows sit densely in insertion order beside a :class:`FidMap`, as in the training table; removing
    FIDs compacts the rows and rebuilds the map. Not thread-safe: :class:`ServingModel` locks.
    """

    def __init__(self, loaded: LoadedTable) -> None:
        self.name = loaded.name
        self.slices = loaded.slices
        self.dim = sum(s.dim for s in loaded.slices)
        self._map = FidMap()
        self._map.rebuild(loaded.keys)
        self._size = loaded.keys.size
        # At least one row of storage, so a gather of absent ids always has a row to index.
        self._keys = np.zeros(max(1, self._size), dtype=np.int64)
        self._rows = np.zeros((max(1, self._size), self.dim), dtype=np.float32)
        self._keys[: self._size] = loaded.keys
        self._rows[: self._size] = loaded.rows

    def __len__(self) -> int:
        return self._size

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """Rows of ``ids`` ``[n, dim]`` (a new array)."""
        found = self._map.find(ids)
        rows = self._rows[np.maximum(found, 0)]
        rows[found < 0] = 0.0
        return rows

    def as_served(self, rows: np.ndarray) -> np.ndarray:
        """Float32 ``rows`` after the round trip through the slices' compressors that an export makes."""
        return decompress_rows(compress_rows(rows, self.slices), self.slices)

    def upsert(self, ids: np.ndarray, rows: np.ndarray) -> None:
        """Sets the rows of ``ids`` (served precision already), inserting absent ids; a repeated id
        gets its last row."""
        found = self._map.find_or_insert(ids)
        self._size = len(self._map)
        if self._size > self._keys.size:
            capacity = max(self._size, 2 * self._keys.size)
            self._keys, self._rows = _grown(self._keys, capacity), _grown(self._rows, capacity)
        self._keys[found] = ids
        self._rows[found] = rows

    def delete(self, ids: np.ndarray) -> None:
        """Removes ``ids`` (absent ones are ignored)."""
        found = self._map.find(ids)
        found = found[found >= 0]
        if not found.size:
            return
        keep = np.ones(self._size, dtype=bool)
        keep[found] = False
        kept = np.flatnonzero(keep)
        self._keys[: kept.size] = self._keys[kept]
        self._rows[: kept.size] = self._rows[kept]
        self._size = kept.size
        self._map.rebuild(self._keys[: self._size])


class ServingModel:
    """An export loaded for serving; thread-safe, updatable while it serves.

    Use :meth:`load`. ``predict`` takes FID lists and dense rows per feature and returns every
    output per example; ``apply_update`` changes parameters in place (see the module docstring).

    Example::

        model = ServingModel.load("exports/")             # the newest export under the directory
        model.predict({"uid": [[11], [12]], "mov": [[5, 6], []]}, {"ctx": [[0.1, 0.2], [0.3, 0.4]]})
        # -> {"ctr": [0.52, 0.47]}
    """

    def __init__(self, path: str, signature: ExportSignature, tables: dict[str, _Table],
                 new_program: Callable[[], torch.nn.Module]) -> None:
        self.path = path
        self.signature = signature
        self._tables = tables
        self._new_program = new_program
        self._program = new_program()
        self._dense_spec = {name.removeprefix(DENSE_STATE_PREFIX): (tuple(t.shape), t.dtype)
                            for name, t in self._program.state_dict().items()}
        for e in signature.embeddings:
            if e.table not in tables or e.end > tables[e.table].dim:
                raise ValueError(f"{path}: input {e.name} reads columns [{e.start}, {e.end}) of table '{e.table}', "
                                 f"which the export does not hold")
        self._combiners = [make_combiner(e.combiner, e.max_seq_length) for e in signature.embeddings]
        self._feature_tables = {e.feature: e.table for e in signature.embeddings}
        self._lock = threading.Lock()
        self._version = signature.global_step
        self._updated_at: float | None = None

    @classmethod
    def load(cls, export_dir: str | os.PathLike) -> "ServingModel":
        """Loads the export in ``export_dir``, or the newest (highest step) export under it.

        Raises:
            FileNotFoundError: no export there.
            ValueError: a file of the export is unreadable (the message names it).
        """
        path = _export_path(os.fspath(export_dir))
        signature = ExportSignature.load(path)
        tables = {name: _Table(load_table(os.path.join(path, file))) for name, file in signature.tables.items()}
        new_program = program_factory(os.path.join(path, signature.program_file), signature.program)
        return cls(path, signature, tables, new_program)

    # ------------------------------------------------------------------ state
    @property
    def receiver(self) -> ServingInputReceiver:
        return self.signature.receiver

    @property
    def outputs(self) -> list[str]:
        """Output names: the heads, then the extra outputs."""
        return list(self.signature.outputs)

    @property
    def version(self) -> int:
        """The export's global step, then the version of the last update."""
        return self._version

    @property
    def last_update_time(self) -> float | None:
        """Unix time of the last applied update (None before the first)."""
        return self._updated_at

    def table_sizes(self) -> dict[str, int]:
        """Number of FIDs in each table."""
        return {name: len(table) for name, table in self._tables.items()}

    def lookup(self, table: str, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """The float32 rows serving holds for ``ids`` in ``table`` (zeros for absent FIDs)."""
        if table not in self._tables:
            raise KeyError(f"no table '{table}'; tables: {sorted(self._tables)}")
        with self._lock:
            return self._tables[table].lookup(np.asarray(ids, dtype=np.int64).reshape(-1))

    # ------------------------------------------------------------------ prediction
    def predict(self, sparse: Mapping[str, list[list[int]]],
                dense: Mapping[str, list[list[float]]] | None = None) -> dict[str, list]:
        """Every output for every example: ``{output: [value per example]}``.

        Args:
            sparse: per receiver sparse feature, one list of FIDs per example (uint64 FIDs may
                come as their int64 two's complement).
            dense: per receiver dense feature, one row of its width per example.

        Raises:
            RequestError: an unknown or missing feature, a FID that is no integer (booleans
                included), a dense value that is no finite float32 number, a row of the wrong
                width, or features with different numbers of examples (the message names it).
        """
        return self.predict_versioned(sparse, dense)[0]

    def predict_versioned(self, sparse: Mapping[str, list[list[int]]],
                          dense: Mapping[str, list[list[float]]] | None = None) -> tuple[dict[str, list], int]:
        """:meth:`predict`, and the version of the parameters that made the prediction."""
        ids, lengths, dense_inputs, batch_size = self._parse(sparse, dense)
        with self._lock:
            rows = {feature: self._tables[table].lookup(ids[feature])
                    for feature, table in self._feature_tables.items()}
            program, version = self._program, self._version
        if batch_size == 0:
            return {name: [] for name in self.signature.outputs}, version
        inputs = [combiner(torch.from_numpy(rows[e.feature])[:, e.start : e.end], lengths[e.feature])
                  for e, combiner in zip(self.signature.embeddings, self._combiners)]
        with torch.inference_mode():
            outputs = program(*inputs, *dense_inputs)
        return {name: _per_example(t) for name, t in zip(self.signature.outputs, outputs)}, version

    def _parse(self, sparse: Any, dense: Any) -> tuple[dict[str, np.ndarray], dict[str, torch.Tensor],
                                                     list[torch.Tensor], int]:
        receiver = self.receiver
        sparse = _features(sparse, "sparse", receiver.sparse_features)
        dense = _features({} if dense is None else dense, "dense", list(receiver.dense_features))
        sizes = {f"{kind}['{name}']": len(rows) for kind, given in (("sparse", sparse), ("dense", dense))
                 for name, rows in given.items()}
        if len(set(sizes.values())) > 1:
            raise RequestError(f"features have different numbers of examples: {sizes}")
        ids, lengths = {}, {}
        for name, rows in sparse.items():
            ids[name], lengths[name] = _fids(rows, f"sparse['{name}']")
        dense_inputs = [_dense_rows(dense[name], f"dense['{name}']", width)
                        for name, width in receiver.dense_features.items()]
        return ids, lengths, dense_inputs, next(iter(sizes.values()), 0)

    # ------------------------------------------------------------------ updates
    def apply_update(self, update: Mapping[str, Any]) -> int:
        """Applies a trainer's update (format in the module docstring) and returns the new version.

        In each table the ``deleted`` FIDs are removed first, then the rows of ``ids`` inserted or
        overwritten; ``dense`` (every weight of the model) replaces the dense weights. Requests
        served meanwhile see the parameters before or after the update, never a mix. Nothing is
        applied unless all of the update is valid.

        Raises:
            StaleUpdateError: ``version`` is older than :attr:`version`.
            RequestError: a malformed update (the message names the field).
        """
        version, changes, dense = self._check_update(update)
        program = None
        if dense is not None:
            program = self._new_program()
            program.load_state_dict({DENSE_STATE_PREFIX + name: t for name, t in dense.items()}, strict=True,
                                    assign=True)
        with self._lock:
            self._check_version(version)
            for name, (ids, rows, deleted) in changes.items():
                self._tables[name].delete(deleted)
                self._tables[name].upsert(ids, rows)
            if program is not None:
                self._program = program
            self._version = version
            self._updated_at = time.time()
        return version

    def _check_version(self, version: int) -> None:
        if version < self._version:
            raise StaleUpdateError(f"update version {version} is older than the served version {self._version}")

    def _check_update(self, update: Any) -> tuple[int, dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
                                                  dict[str, torch.Tensor] | None]:
        if not isinstance(update, Mapping):
            raise RequestError(f"an update is a dict with {list(_UPDATE_FIELDS)}, got {type(update).__name__}")
        _no_unknown(update, _UPDATE_FIELDS, "update")
        version = update.get("version")
        if isinstance(version, bool) or not isinstance(version, int):
            raise RequestError(f"update 'version' must be an int, got {version!r}")
        self._check_version(version)
        # Only a missing 'tables' means no change: a falsy non-dict ([] or 0) is a malformed update.
        tables = update.get("tables")
        tables = {} if tables is None else tables
        if not isinstance(tables, Mapping):
            raise RequestError(f"update 'tables' must be a dict of table name -> changes, got {type(tables).__name__}")
        changes = {}
        for name, change in tables.items():
            field = f"update tables['{name}']"
            if name not in self._tables:
                raise RequestError(f"{field}: no such table; tables: {sorted(self._tables)}")
            if not isinstance(change, Mapping):
                raise RequestError(f"{field} must be a dict with {list(_TABLE_UPDATE_FIELDS)}, "
                                   f"got {type(change).__name__}")
            _no_unknown(change, _TABLE_UPDATE_FIELDS, field)
            table = self._tables[name]
            ids = _id_array(change.get("ids"), f"{field}['ids']")
            rows = _row_array(change.get("rows"), f"{field}['rows']", ids.size, table.dim)
            deleted = _id_array(change.get("deleted"), f"{field}['deleted']")
            changes[name] = (ids, table.as_served(rows), deleted)
        return version, changes, self._check_dense(update.get("dense"))

    def _check_dense(self, dense: Any) -> dict[str, torch.Tensor] | None:
        if dense is None:
            return None
        if not isinstance(dense, Mapping):
            raise RequestError(f"update 'dense' must be the model's state dict or None, got {type(dense).__name__}")
        missing = sorted(set(self._dense_spec) - set(dense))
        unexpected = sorted(set(dense) - set(self._dense_spec))
        if missing or unexpected:
            raise RequestError(f"update 'dense' must hold every dense weight of the model: missing {missing}, "
                               f"unexpected {unexpected}")
        checked = {}
        for name, (shape, dtype) in self._dense_spec.items():
            value = dense[name]
            field = f"update dense['{name}']"
            if not isinstance(value, torch.Tensor) or tuple(value.shape) != shape or value.dtype != dtype:
                got = f"{value.dtype} {list(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
                raise RequestError(f"{field} must be a {dtype} tensor of shape {list(shape)}, got {got}")
            # A sparse weight would load, then fail every prediction.
            if value.layout != torch.strided:
                raise RequestError(f"{field} must be a dense (strided) tensor, got layout {value.layout}")
            try:
                # A copy: the trainer goes on changing its tensors in place.
                checked[name] = value.detach().to("cpu", copy=True)
            except RuntimeError as error:  # tensors without data, e.g. on the meta device
                raise RequestError(f"{field} cannot be read: {_first_line(error)}") from None
        return checked


# --------------------------------------------------------------------------------------- helpers
def _grown(array: np.ndarray, capacity: int) -> np.ndarray:
    """``array`` with zero rows appended up to ``capacity`` rows."""
    out = np.zeros((capacity, *array.shape[1:]), dtype=array.dtype)
    out[: array.shape[0]] = array
    return out


def _export_path(directory: str) -> str:
    """``directory`` if it holds an export, else its newest export (highest numeric subdirectory)."""
    if os.path.isfile(os.path.join(directory, SIGNATURE_FILE)):
        return directory
    steps = sorted((int(n) for n in _listdir(directory) if re.fullmatch(r"\d+", n)
                    and os.path.isfile(os.path.join(directory, n, SIGNATURE_FILE))), reverse=True)
    if not steps:
        raise FileNotFoundError(f"{directory}: no export ({SIGNATURE_FILE}) in it or in a <global_step> "
                                f"subdirectory")
    return os.path.join(directory, str(steps[0]))


def _listdir(directory: str) -> list[str]:
    try:
        return os.listdir(directory)
    except FileNotFoundError:
        raise FileNotFoundError(f"{directory}: no such export directory") from None


def _no_unknown(given: Mapping, known: Sequence[str], field: str) -> None:
    unknown = sorted(map(str, set(given) - set(known)))
    if unknown:
        raise RequestError(f"{field}: unknown field(s) {unknown}; the fields are {list(known)}")


def _features(given: Any, kind: str, names: list[str]) -> dict[str, Any]:
    """``given`` checked to map exactly the receiver's ``names`` to lists."""
    if not isinstance(given, Mapping):
        raise RequestError(f"'{kind}' must be an object of feature name -> rows, got {type(given).__name__}")
    unknown = [str(n) for n in given if n not in names]
    if unknown:
        raise RequestError(f"unknown {kind} feature(s) {unknown}; the model's {kind} features are {names}")
    for name in names:
        if name not in given:
            raise RequestError(f"{kind} feature '{name}' is missing; the model's {kind} features are {names}")
        if not isinstance(given[name], list):
            raise RequestError(f"{kind}['{name}'] must be a list with one entry per example, "
                               f"got {type(given[name]).__name__}")
    return dict(given)


def _fids(rows: list, field: str) -> tuple[np.ndarray, torch.Tensor]:
    """Flat int64 FIDs and per-example lengths of ``[[fid, ...] per example]``."""
    for i, row in enumerate(rows):
        if not isinstance(row, list):
            raise RequestError(f"{field}[{i}] must be a list of FIDs, got {type(row).__name__}")
    lengths = torch.tensor([len(row) for row in rows], dtype=torch.int64)
    flat = list(itertools.chain.from_iterable(rows))
    ids = None
    # Exact types, so that true/false (bools are ints to Python and numpy) are never read as FIDs 1/0.
    if set(map(type, flat)) <= {int}:
        # uint64 FIDs travel as their int64 two's complement; mixed spellings and ints out of range
        # fit neither dtype and are checked one by one below.
        for dtype in (np.int64, np.uint64):
            try:
                ids = np.array(flat, dtype=dtype).view(np.int64)
                break
            except OverflowError:
                pass
    if ids is None:
        for i, row in enumerate(rows):
            for j, fid in enumerate(row):
                if type(fid) is not int or not _INT64_MIN <= fid < _UINT64_END:
                    raise RequestError(f"{field}[{i}][{j}] must be an integer FID in [-2**63, 2**64), "
                                       f"got {reprlib.repr(fid)}")
        ids = np.array([fid - _UINT64_END if fid >= 1 << 63 else fid for fid in flat], dtype=np.int64)
    return ids, lengths


def _dense_rows(rows: list, field: str, width: int) -> torch.Tensor:
    """Float32 ``[batch, width]`` from ``[[value] * width per example]``; each value a finite float32."""
    for i, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != width:
            got = f"{len(row)} values" if isinstance(row, list) else type(row).__name__
            raise RequestError(f"{field}[{i}] must be a list of {width} numbers, got {got}")
    values = None
    # Exact types, so that true/false (bools are ints to Python and numpy) are never read as 1/0.
    if set(map(type, itertools.chain.from_iterable(rows))) <= {int, float}:
        try:
            with np.errstate(over="ignore"):  # values beyond float32 become inf, refused below
                values = np.array(rows, dtype=np.float32).reshape(len(rows), width)
        except OverflowError:  # an int beyond float64
            pass
    if values is None or not np.isfinite(values).all():
        # NaN and Infinity parse as JSON in Python, and would make outputs JSON cannot carry.
        i, j, problem = next((i, j, problem) for i, row in enumerate(rows) for j, value in enumerate(row)
                             if (problem := _dense_value_problem(value)))
        raise RequestError(f"{field}[{i}][{j}] {problem}, got {reprlib.repr(rows[i][j])}")
    return torch.from_numpy(values)


def _dense_value_problem(value: Any) -> str | None:
    """Why ``value`` is no dense feature value, or None if it is one."""
    if type(value) not in (int, float):
        return "must be a number"
    try:
        with np.errstate(over="ignore"):
            finite = bool(np.isfinite(np.float32(value)))
    except OverflowError:
        finite = False
    return None if finite else "must be a finite number within float32 range"


def _id_array(value: Any, field: str) -> np.ndarray:
    """1-D int64 FIDs from a tensor or array (None: none)."""
    if value is None:
        return np.zeros(0, dtype=np.int64)
    array = _numpy(value, field)
    if array.ndim != 1 or array.dtype.kind not in "iu":
        # The given dtype, not the array's: a bfloat16 tensor reads as float32.
        raise RequestError(f"{field} must be a 1-D integer tensor of FIDs, got {value.dtype} {list(value.shape)}")
    return np.ascontiguousarray(array.view(np.int64) if array.dtype == np.uint64 else array.astype(np.int64))


def _row_array(value: Any, field: str, n: int, dim: int) -> np.ndarray:
    """Float32 ``[n, dim]`` rows from a tensor or array (None only when ``n == 0``)."""
    if value is None:
        if n:
            raise RequestError(f"{field} is missing; it must hold one row per id")
        return np.zeros((0, dim), dtype=np.float32)
    array = _numpy(value, field)
    if array.shape != (n, dim) or array.dtype.kind != "f":
        raise RequestError(f"{field} must be a float tensor of shape [{n}, {dim}] (one row per id), "
                           f"got {array.dtype} {list(array.shape)}")
    return np.ascontiguousarray(array, dtype=np.float32)


def _numpy(value: Any, field: str) -> np.ndarray:
    """``value``, a tensor or an array, as an array; floats numpy lacks (bfloat16, float8) widen to float32."""
    if isinstance(value, np.ndarray):
        return value
    if not isinstance(value, torch.Tensor):
        raise RequestError(f"{field} must be a tensor, got {type(value).__name__}")
    if value.layout != torch.strided:
        raise RequestError(f"{field} must be a dense (strided) tensor, got layout {value.layout}")
    try:
        value = value.detach().cpu()
        if value.is_floating_point() and value.dtype not in (torch.float16, torch.float32, torch.float64):
            value = value.float()  # exact
        return value.numpy()
    except (TypeError, RuntimeError) as error:  # dtypes numpy lacks (complex32, qint8), meta tensors
        raise RequestError(f"{field}: a {value.dtype} tensor cannot be read: {_first_line(error)}") from None


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [""])[0]


def _per_example(output: torch.Tensor) -> list:
    """One entry per example; a ``[batch, 1]`` output gives plain values, as ``Estimator.predict`` does."""
    if output.dim() == 2 and output.shape[1] == 1:
        output = output[:, 0]
    return output.tolist()


def encode_update(update: Mapping[str, Any]) -> bytes:
    """``update`` as ``torch.save`` bytes that load with ``weights_only=True``.

    Numpy arrays become tensors and numpy scalars Python numbers; tensors are copied so that a view
    does not carry its whole storage.
    """

    def plain(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {key: plain(v) for key, v in value.items()}
        if isinstance(value, np.ndarray):
            return torch.from_numpy(np.array(value))
        if isinstance(value, torch.Tensor):
            return value.detach().to("cpu", copy=True)
        if isinstance(value, np.generic):
            return value.item()
        return value

    buffer = io.BytesIO()
    torch.save(plain(update), buffer)
    return buffer.getvalue()


def decode_update(data: bytes) -> Any:
    """The update in :func:`encode_update`'s bytes, loaded with ``weights_only=True``.

    Raises:
        RequestError: ``data`` is not such bytes.
    """
    try:
        return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception as error:  # torch.load raises many kinds (unpickling, zip, EOF) for foreign bytes
        raise RequestError(f"update body must be torch.save bytes loadable with weights_only=True: "
                           f"{type(error).__name__}: {_first_line(error)}") from error
