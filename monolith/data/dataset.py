"""A chainable input pipeline with ``tf.data.Dataset``'s operations, as Monolith's inputs write them.

A :class:`Dataset` is a re-iterable: every ``iter()`` is a new pass, so ``repeat``, ``shuffle``
per epoch and a fresh ``for`` loop per evaluation work as in tf.data. Elements are whatever the
source yields: tensors, numpy arrays, dicts and tuples of them, serialized messages,
:class:`~monolith.sparse.Batch` es. The file readers of :mod:`monolith.data` are datasets too, so
they chain::

    ds = (Dataset.from_generator(read_stdin, output_signature={"mov": TensorSpec([1], torch.int64), ...})
          .shard(world_size, rank)
          .batch(512, drop_remainder=True)
          .map(lambda x: to_ragged(x, ["mov", "uid"]))
          .prefetch(2))

``batch`` stacks tensors (numbers become tensors) along a new first dimension and keeps other
values (bytes, protobuf messages, strings) as lists, structure by structure; ``to_ragged`` turns a
batched dict of padded id tensors into the project's :class:`~monolith.sparse.Batch` (Monolith's
tutorial ``to_ragged``).

``prefetch`` reads ahead on a background thread through a bounded queue, so reading and parsing
overlap training (``benchmarks/input_pipeline_benchmark.py``); an exception of the source is raised
in the consumer, and leaving the loop early stops the thread.
"""

from __future__ import annotations

import abc
import itertools
import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from monolith.data.feature_utils import reweight_replicas
from monolith.sparse import Batch, JaggedTensor, KeyedJaggedTensor

__all__ = ["AUTOTUNE", "Dataset", "TensorSpec", "to_ragged"]

#: ``prefetch(AUTOTUNE)`` / ``interleave(cycle_length=AUTOTUNE)``: a default chosen here (tf.data.AUTOTUNE).
AUTOTUNE = -1
# What AUTOTUNE means for prefetch: two elements ahead, one being made while one waits.
_AUTOTUNE_PREFETCH = 2


@dataclass(frozen=True)
class TensorSpec:
    """The shape and dtype of one element (``tf.TensorSpec``); ``None`` in ``shape`` is any size.

    Example::

        TensorSpec([None], torch.int64)   # a 1-D int64 tensor of any length
    """

    shape: Sequence[int | None]
    dtype: torch.dtype

    def convert(self, value: Any, where: str) -> torch.Tensor:
        """``value`` as a tensor of this spec.

        Raises:
            ValueError: its shape does not match, naming ``where`` and both shapes.
        """
        tensor = torch.as_tensor(np.asarray(value) if not isinstance(value, torch.Tensor) else value, dtype=self.dtype)
        shape = tuple(tensor.shape)
        if len(shape) != len(self.shape) or any(s is not None and s != d for s, d in zip(self.shape, shape)):
            raise ValueError(f"{where} has shape {shape}, expected {tuple(self.shape)} (output_signature)")
        return tensor


def _conform(value: Any, spec: Any, where: str) -> Any:
    """``value`` shaped as the structure ``spec`` of :class:`TensorSpec` s (dicts, tuples, lists)."""
    if isinstance(spec, TensorSpec):
        return spec.convert(value, where)
    if isinstance(spec, Mapping):
        if not isinstance(value, Mapping) or set(value) != set(spec):
            keys = sorted(value) if isinstance(value, Mapping) else type(value).__name__
            raise ValueError(f"{where} has keys {keys}, expected {sorted(spec)} (output_signature)")
        return {k: _conform(value[k], s, f"{where}[{k!r}]") for k, s in spec.items()}
    if isinstance(spec, (tuple, list)):
        if not isinstance(value, (tuple, list)) or len(value) != len(spec):
            raise ValueError(f"{where} is not a sequence of {len(spec)} values (output_signature)")
        return type(spec)(_conform(v, s, f"{where}[{i}]") for i, (v, s) in enumerate(zip(value, spec)))
    raise TypeError(f"output_signature holds {type(spec).__name__}; expected TensorSpec, dict, tuple or list")


def _stack(values: list[Any]) -> Any:
    """Elements combined into one batched element (``batch``), structure by structure."""
    first = values[0]
    if isinstance(first, Mapping):
        return {k: _stack([v[k] for v in values]) for k in first}
    if isinstance(first, tuple):
        return tuple(_stack(list(parts)) for parts in zip(*values))
    if isinstance(first, torch.Tensor):
        return torch.stack(values)
    if isinstance(first, np.ndarray):
        return np.stack(values)
    if isinstance(first, (bool, int, float, np.number)):
        return torch.as_tensor(np.asarray(values))
    return list(values)


def _stack_ragged(values: list[Any]) -> Any:
    """``_stack``, with 1-D tensors as one JaggedTensor (``ragged_batch``)."""
    first = values[0]
    if isinstance(first, Mapping):
        return {k: _stack_ragged([v[k] for v in values]) for k in first}
    if isinstance(first, tuple):
        return tuple(_stack_ragged(list(parts)) for parts in zip(*values))
    if isinstance(first, torch.Tensor) and first.dim() == 1:
        return JaggedTensor(torch.cat(values), torch.tensor([len(v) for v in values], dtype=torch.int64))
    return _stack(values)


def _columns(tensors: Any) -> tuple[Any, int]:
    """``tensors`` as a structure of tensors / arrays cut along their first dimension, and its length."""
    if isinstance(tensors, (Mapping, tuple)):
        parts = dict(tensors) if isinstance(tensors, Mapping) else dict(enumerate(tensors))
        columns = {k: _columns(v) for k, v in parts.items()}
        sizes = {k: n for k, (_, n) in columns.items()}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"from_tensor_slices needs one first dimension for all components, got {sizes}")
        structure = {k: column for k, (column, _) in columns.items()}
        return (structure if isinstance(tensors, Mapping) else tuple(structure.values())), next(iter(sizes.values()), 0)
    if isinstance(tensors, np.ndarray) and tensors.dtype.kind in "biuf":
        tensors = torch.from_numpy(tensors)  # numbers as tensors, as tf.data slices them; strings stay numpy
    if not isinstance(tensors, (torch.Tensor, np.ndarray)):
        tensors = torch.as_tensor(np.asarray(tensors))
    if tensors.ndim == 0:
        raise ValueError("from_tensor_slices needs tensors of at least one dimension, got a scalar")
    return tensors, len(tensors)


def _element(columns: Any, index: int | slice) -> Any:
    """Row ``index`` (or the rows of a slice) of a structure of columns."""
    if isinstance(columns, Mapping):
        return {k: _element(v, index) for k, v in columns.items()}
    if isinstance(columns, tuple):
        return tuple(_element(v, index) for v in columns)
    return columns[index]


def _slices(tensors: Any) -> list[Any]:
    """The elements of ``from_tensor_slices``: ``tensors`` cut along their first dimension."""
    columns, n = _columns(tensors)
    return [_element(columns, i) for i in range(n)]


def to_ragged(element: Mapping[str, Any], sparse_features: Sequence[str], padding: int | None = None) -> Batch:
    """A batched dict of padded id tensors as a :class:`Batch` (Monolith's tutorial ``to_ragged``).

    Args:
        element: name -> tensor ``[B]`` or ``[B, k]``; the ``sparse_features`` hold int64 FIDs, the
            others (``label`` ...) are dense.
        sparse_features: the names that become jagged features.
        padding: an id that marks padding and is left out (``tf.RaggedTensor.from_tensor(padding=...)``);
            ``None`` keeps every id.

    Example::

        to_ragged({"uid": torch.tensor([[3], [4]]), "label": torch.tensor([1.0, 0.0])}, ["uid"])
        # Batch: uid values [3, 4] lengths [1, 1]; dense label [2]

    Raises:
        KeyError: a sparse feature is missing from ``element``.
        ValueError: a sparse feature is not 1-D or 2-D, or the features disagree on ``B``.
    """
    values, lengths = [], []
    batch_size = None
    for name in sparse_features:
        if name not in element:
            raise KeyError(f"to_ragged: sparse feature {name!r} is not in the element (keys {sorted(element)})")
        ids = torch.as_tensor(element[name]).to(torch.int64)
        if ids.dim() == 1:
            ids = ids.unsqueeze(1)
        if ids.dim() != 2:
            raise ValueError(f"to_ragged: sparse feature {name!r} must be [B] or [B, k], got {tuple(ids.shape)}")
        if batch_size not in (None, ids.shape[0]):
            raise ValueError(f"to_ragged: sparse feature {name!r} has {ids.shape[0]} rows, others {batch_size}")
        batch_size = ids.shape[0]
        keep = ids != padding if padding is not None else torch.ones_like(ids, dtype=torch.bool)
        values.append(ids[keep])
        lengths.append(keep.sum(1))
    dense = {k: torch.as_tensor(v) for k, v in element.items() if k not in sparse_features}
    if batch_size is None:
        batch_size = next(iter(dense.values())).shape[0] if dense else 0
    sparse = KeyedJaggedTensor(
        list(sparse_features),
        torch.cat(values) if values else torch.empty(0, dtype=torch.int64),
        torch.cat(lengths) if lengths else torch.empty(0, dtype=torch.int64),
        stride=batch_size,
    )
    return Batch(sparse, dense)


def advanced_parse(features: Mapping[str, Any]) -> Batch:
    """A dict of features as a :class:`Batch` (Monolith's ``parser_utils.advanced_parse``, which
    finishes parsing a features dict): the :class:`~monolith.sparse.JaggedTensor` values (Monolith's
    ragged tensors, e.g. ``JaggedTensor.from_lists([[1, 2, 3, 4]])`` for
    ``tf.ragged.constant([[1, 2, 3, 4]])``) become the sparse features, every other value a dense
    tensor whose first dimension is the batch.

    Raises:
        ValueError: the features disagree on the batch size, or there is no feature at all.
    """
    jagged = {name: value for name, value in features.items() if isinstance(value, JaggedTensor)}
    dense = {name: torch.as_tensor(value) for name, value in features.items() if name not in jagged}
    sizes = {name: len(value) for name, value in jagged.items()}
    sizes.update({name: value.shape[0] if value.dim() else None for name, value in dense.items()})
    if not sizes or len(set(sizes.values())) != 1 or None in sizes.values():
        raise ValueError(f"advanced_parse: every feature needs the same batch (first) dimension, got {sizes}")
    stride = next(iter(sizes.values()))
    return Batch(KeyedJaggedTensor.from_jagged_dict(jagged, stride=stride), dense)


class Dataset(abc.ABC):
    """A re-iterable source of elements with tf.data's chaining operations.

    Subclasses implement :meth:`__iter__`, a new pass each call. Every operation returns a new
    dataset over this one; nothing is read until it is iterated.

    Example::

        Dataset.from_tensor_slices(torch.arange(10)).shuffle(4, seed=0).batch(3, drop_remainder=True)
        # yields 3 tensors of shape [3]
    """

    @abc.abstractmethod
    def __iter__(self) -> Iterator[Any]:
        """A new pass over the elements."""

    # -- sources

    @staticmethod
    def from_generator(generator: Callable[[], Iterable[Any]], output_signature: Any = None) -> Dataset:
        """The elements of ``generator()``, called anew each pass (``tf.data.Dataset.from_generator``).

        Args:
            generator: a callable returning an iterable (a generator function).
            output_signature: a structure (dict, tuple, list) of :class:`TensorSpec`; each element is
                converted to it and checked (``ValueError`` naming the element on a mismatch).
                ``None`` passes elements as they are.
        """
        if not callable(generator):
            raise TypeError(f"from_generator needs a callable returning an iterable, got {type(generator).__name__}")

        def elements() -> Iterator[Any]:
            for i, element in enumerate(generator()):
                yield element if output_signature is None else _conform(element, output_signature, f"element {i}")

        return _FromCallable(elements)

    @staticmethod
    def counter(start: int = 0, step: int = 1) -> Dataset:
        """The endless count ``start, start + step, ...`` as int64 scalars (``tf.data.Dataset.counter``)."""
        return _FromCallable(lambda: (torch.tensor(i) for i in itertools.count(start, step)))

    @staticmethod
    def from_tensors(tensors: Any) -> Dataset:
        """A dataset of one element, ``tensors`` (``tf.data.Dataset.from_tensors``)."""
        return _FromCallable(lambda: iter([tensors]))

    @staticmethod
    def from_tensor_slices(tensors: Any) -> Dataset:
        """One element per row of ``tensors`` (a tensor, array, list, or a dict / tuple of them)."""
        return _TensorSlices(*_columns(tensors))

    @staticmethod
    def from_iterable(iterable: Iterable[Any]) -> Dataset:
        """A dataset over a re-iterable ``iterable`` (a list, a reader); each pass iterates it anew."""
        if isinstance(iterable, Dataset):
            return iterable
        if iter(iterable) is iterable:
            raise TypeError("from_iterable needs a re-iterable (a list, a reader), not a one-pass iterator; "
                            "use from_generator(lambda: ...) to make a new iterator each pass")
        return _FromCallable(lambda: iter(iterable))

    def as_numpy_iterator(self) -> Iterator[Any]:
        """The elements with their tensors as numpy arrays (``tf.data.Dataset.as_numpy_iterator``)."""
        def numpy(value: Any) -> Any:
            if isinstance(value, torch.Tensor):
                return value.numpy()
            if isinstance(value, Mapping):
                return {k: numpy(v) for k, v in value.items()}
            if isinstance(value, (tuple, list)):
                return type(value)(numpy(v) for v in value)
            return value

        return map(numpy, self)

    # -- operations

    def map(self, fn: Callable[[Any], Any], num_parallel_calls: int | None = None,
            deterministic: bool | None = None) -> Dataset:
        """``fn(element)`` for each element (a tuple element is passed as one argument, unlike tf.data).

        ``num_parallel_calls`` and ``deterministic`` are accepted and ignored: ``fn`` runs in order
        on the reading thread (``prefetch`` moves the whole pipeline to a background thread).
        """
        return _FromCallable(lambda: map(fn, self))

    def filter(self, predicate: Callable[[Any], Any]) -> Dataset:
        """The elements for which ``predicate(element)`` is true (a bool or one-element tensor)."""
        return _FromCallable(lambda: (e for e in self if bool(predicate(e))))

    def batch(self, batch_size: int, drop_remainder: bool = False) -> Dataset:
        """Consecutive elements combined ``batch_size`` at a time (see the module doc for how)."""
        return self._batch(batch_size, drop_remainder, _stack)

    def ragged_batch(self, batch_size: int, drop_remainder: bool = False) -> Dataset:
        """As :meth:`batch`, but the 1-D tensors of a component (of any lengths) become one
        :class:`~monolith.sparse.JaggedTensor` (``tf.data``'s ``ragged_batch`` /
        ``experimental.dense_to_ragged_batch``); other components are combined as by :meth:`batch`."""
        return self._batch(batch_size, drop_remainder, _stack_ragged)

    def _batch(self, batch_size: int, drop_remainder: bool, combine: Callable[[list[Any]], Any]) -> Dataset:
        _check_positive("batch_size", batch_size)

        def batches() -> Iterator[Any]:
            it = iter(self)
            while chunk := list(itertools.islice(it, batch_size)):
                if len(chunk) < batch_size and drop_remainder:
                    return
                yield combine(chunk)

        return _FromCallable(batches)

    def unbatch(self) -> Dataset:
        """The rows of each element (the inverse of :meth:`batch`)."""
        return _FromCallable(lambda: (row for element in self for row in _slices(element)))

    def shard(self, num_shards: int, index: int) -> Dataset:
        """Every ``num_shards``-th element from element ``index`` on (worker ``index``'s share)."""
        _check_shard(num_shards, index)
        return _FromCallable(lambda: itertools.islice(self, index, None, num_shards))

    def take(self, count: int) -> Dataset:
        """The first ``count`` elements (all of them for ``count == -1``)."""
        return _FromCallable(lambda: iter(self) if count == -1 else itertools.islice(self, max(count, 0)))

    def skip(self, count: int) -> Dataset:
        """All but the first ``count`` elements (none for ``count == -1``)."""
        return _FromCallable(lambda: iter(()) if count == -1 else itertools.islice(self, max(count, 0), None))

    def repeat(self, count: int | None = None) -> Dataset:
        """``count`` passes in a row (forever for ``None`` or ``-1``), each a new pass of this dataset."""

        def passes() -> Iterator[Any]:
            n = itertools.count() if count is None or count == -1 else range(count)
            for _ in n:
                empty = True
                for element in self:
                    empty = False
                    yield element
                if empty:  # an empty source repeated forever would spin
                    return

        return _FromCallable(passes)

    def shuffle(self, buffer_size: int, seed: int | None = None, reshuffle_each_iteration: bool = True) -> Dataset:
        """The elements in random order through a buffer of ``buffer_size`` (tf.data's algorithm: fill
        the buffer, then emit a random one and put the next element in its place).

        With a ``seed`` the order is reproducible: pass ``k`` of this shuffle uses ``(seed, k)``
        (``reshuffle_each_iteration=False``: always ``(seed, 0)``), so each epoch of a
        ``shuffle(...).repeat()`` differs.
        """
        _check_positive("buffer_size", buffer_size)
        return _Shuffle(self, buffer_size, seed, reshuffle_each_iteration)

    def prefetch(self, buffer_size: int = AUTOTUNE) -> Dataset:
        """Read up to ``buffer_size`` elements ahead on a background thread (see the module doc)."""
        size = _AUTOTUNE_PREFETCH if buffer_size == AUTOTUNE else buffer_size
        _check_positive("buffer_size", size)
        return _FromCallable(lambda: _prefetched(self, size))

    def interleave(
        self, map_func: Callable[[Any], Iterable[Any]], cycle_length: int = AUTOTUNE, block_length: int = 1
    ) -> Dataset:
        """tf.data's ``interleave``: ``map_func`` makes a dataset of each element; ``cycle_length`` of
        them are read in turn, ``block_length`` elements at a time, and one that ends is replaced by
        the next element's. ``cycle_length=AUTOTUNE`` is the number of CPUs, as in tf.data.

        Example: files read two at a time, one record of each in turn::

            Dataset.from_tensor_slices(files).interleave(lambda f: PBDataset(...), cycle_length=2)
        """
        cycle = (os.cpu_count() or 1) if cycle_length == AUTOTUNE else cycle_length
        _check_positive("cycle_length", cycle)
        _check_positive("block_length", block_length)

        def interleaved() -> Iterator[Any]:
            # TF's InterleaveDatasetOp: a slot is opened (from the next input element) when the turn
            # reaches it empty, and an exhausted one is closed and the turn moves on.
            sources = iter(self)
            slots: list[Iterator[Any] | None] = [None] * cycle
            open_slots, end_of_input, at = 0, False, 0
            while not end_of_input or open_slots:
                if slots[at] is None:
                    if not end_of_input:
                        try:
                            slots[at] = iter(map_func(next(sources)))
                            open_slots += 1
                            continue
                        except StopIteration:
                            end_of_input = True
                    at = (at + 1) % cycle
                    continue
                got = list(itertools.islice(slots[at], block_length))
                yield from got
                if len(got) < block_length:
                    slots[at] = None
                    open_slots -= 1
                at = (at + 1) % cycle

        return _FromCallable(interleaved)

    def instance_reweight(self, action_priority: str, reweight: str, variant_type: str = "example") -> Dataset:
        """Each ``Example`` / ``Instance`` message repeated by its actions' weights and relabelled
        (Monolith's ``dataset.instance_reweight``; :func:`~monolith.data.feature_utils.reweight_replicas`).

        Args:
            action_priority: actions, most important first, e.g. ``"2,7,0,1"``.
            reweight: ``action:weight:label`` items, e.g. ``"0:0:1,2:3:-1"``.
            variant_type: ``"example"`` or ``"instance"`` (checked against each message).
        """
        def replicas() -> Iterator[Any]:
            for message in self:
                count, out = reweight_replicas(message, action_priority, reweight, variant_type)
                for _ in range(count):
                    yield out

        return _FromCallable(replicas)

    def to_ragged(self, sparse_features: Sequence[str], padding: int | None = None) -> Dataset:
        """Each batched dict element as a :class:`Batch` (:func:`to_ragged`)."""
        return self.map(lambda element: to_ragged(element, sparse_features, padding))


def _check_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")


def _check_shard(num_shards: int, index: int) -> None:
    _check_positive("num_shards", num_shards)
    if not 0 <= index < num_shards:
        raise ValueError(f"shard index must be in [0, {num_shards}), got {index}")


class _TensorSlices(Dataset):
    """``from_tensor_slices``: elements made as they are read; ``shard`` cuts the columns first, so a
    worker's shard of a large table costs only its own rows."""

    def __init__(self, columns: Any, n: int) -> None:
        self._columns, self._n = columns, n

    def __iter__(self) -> Iterator[Any]:
        return (_element(self._columns, i) for i in range(self._n))

    def shard(self, num_shards: int, index: int) -> Dataset:
        _check_shard(num_shards, index)
        rows = slice(index, None, num_shards)
        return _TensorSlices(_element(self._columns, rows), len(range(self._n)[rows]))


class _FromCallable(Dataset):
    """A dataset whose passes are ``make()``."""

    def __init__(self, make: Callable[[], Iterable[Any]]) -> None:
        self._make = make

    def __iter__(self) -> Iterator[Any]:
        return iter(self._make())


class _Shuffle(Dataset):
    def __init__(self, source: Dataset, buffer_size: int, seed: int | None, reshuffle: bool) -> None:
        self._source = source
        self._buffer_size = buffer_size
        self._seed = seed
        self._reshuffle = reshuffle
        self._passes = itertools.count()  # the pass number that seeds each pass

    def __iter__(self) -> Iterator[Any]:
        k = next(self._passes) if self._reshuffle else 0
        rng = np.random.default_rng(None if self._seed is None else (self._seed, k))
        buffer: list[Any] = []
        for element in self._source:
            if len(buffer) < self._buffer_size:
                buffer.append(element)
                continue
            i = int(rng.integers(len(buffer)))
            yield buffer[i]
            buffer[i] = element
        while buffer:
            i = int(rng.integers(len(buffer)))
            buffer[i], buffer[-1] = buffer[-1], buffer[i]
            yield buffer.pop()


class _End:
    """The producer's last word: the source ended, or failed with ``error``."""

    def __init__(self, error: BaseException | None) -> None:
        self.error = error


def _prefetched(source: Iterable[Any], buffer_size: int) -> Iterator[Any]:
    """``source``'s elements, made ``buffer_size`` ahead on a daemon thread.

    The thread stops when the source ends or fails (the error is raised here, in the consumer) or
    when the consumer stops early (this generator is closed or collected): it then checks ``stop``
    between elements and at most 0.1 s after it was set.
    """
    ready: queue.Queue[Any] = queue.Queue(buffer_size)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for element in source:
                if not put(element):
                    return
        except BaseException as e:  # handed to the consumer, which raises it
            put(_End(e))
            return
        put(_End(None))

    thread = threading.Thread(target=produce, name="monolith-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = ready.get()
            if isinstance(item, _End):
                if item.error is not None:
                    raise item.error
                return
            yield item
    finally:
        stop.set()
        thread.join()
