"""Monolith's ``entry`` module: the public names of embedding optimizers, initializers and compressors.

Model code written against ``monolith.native_training.entry`` imports these names unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import numbers
from typing import TYPE_CHECKING, Any, Callable, Sequence, Union

import numpy as np

from monolith.optim import (
    AdadeltaOptimizer,
    AdaGradWithGroupLassoOptimizer,
    AdagradOptimizer,
    AdamOptimizer,
    AmsgradOptimizer,
    BatchSoftmaxInitializer,
    BatchSoftmaxOptimizer,
    Compressor,
    ConstantsInitializer,
    DynamicWdAdagradOptimizer,
    FixedR8Compressor,
    Fp16Compressor,
    Fp32Compressor,
    FtrlOptimizer,
    FTRLWithGroupSparsityOptimizer,
    GroupAdaGradOptimizer,
    Initializer,
    MomentumOptimizer,
    MovingAverageOptimizer,
    OneBitCompressor,
    RandomUniformInitializer,
    RmspropOptimizer,
    RmspropV2Optimizer,
    SgdOptimizer,
    StochasticRoundingFloat16OptimizerWrapper,
    ZerosInitializer,
)
from monolith.optim.base import SliceOptimizer as Optimizer
from monolith.table.config import CuckooHashTableConfig, GpucucoHashTableConfig, HashTableConfig, SliceConfig

if TYPE_CHECKING:
    import torch

    from monolith.table.embedding_table import EmbeddingHashTable


__all__ = [
    "AdaGradWithGroupLassoOptimizer",
    "AdadeltaOptimizer",
    "AdagradOptimizer",
    "AdamOptimizer",
    "AmsgradOptimizer",
    "BatchSoftmaxInitializer",
    "BatchSoftmaxOptimizer",
    "Compressor",
    "ConstantsInitializer",
    "CuckooHashTableConfig",
    "DynamicWdAdagradOptimizer",
    "FTRLWithGroupSparsityOptimizer",
    "FixedR8Compressor",
    "Fp16Compressor",
    "Fp32Compressor",
    "FtrlOptimizer",
    "GpucucoHashTableConfig",
    "GroupAdaGradOptimizer",
    "HashTableConfig",
    "HashTableConfigInstance",
    "Initializer",
    "MomentumOptimizer",
    "MovingAverageOptimizer",
    "OneBitCompressor",
    "Optimizer",
    "RandomUniformInitializer",
    "RmspropOptimizer",
    "RmspropV2Optimizer",
    "SgdOptimizer",
    "StochasticRoundingFloat16OptimizerWrapper",
    "ZerosInitializer",
]

#: A slice's learning rate in a :class:`HashTableConfigInstance`: a constant, a function of the global
#: step, or None for the slice's own rate.
LearningRateFn = Union[float, Callable[[int], float], None]


class _ConstantRate:
    """The learning-rate function of a constant rate (Monolith accepts plain numbers there)."""

    def __init__(self, rate: float) -> None:
        self.rate = float(rate)

    def __call__(self, global_step: int) -> float:
        return self.rate

    def __repr__(self) -> str:
        return repr(self.rate)


class HashTableConfigInstance:
    """One embedding table's configuration and the learning-rate function of each of its slices
    (Monolith's record of an ``EmbeddingHashTableConfig`` proto with its ``learning_rate_fns``).

    Monolith's trainer builds one per table from the slices of the slots that share it, compares their
    ``str()`` to decide whether two slots share a configuration, and makes the table from it
    (``hash_table_from_config``), feeding the table the rates of ``call_learning_rate_fns()`` at every
    step. Here the table's configuration is its slices (:class:`~monolith.table.config.SliceConfig`, the
    proto's segments) and, optionally, its kind (:class:`HashTableConfig`, for ``initial_capacity``);
    :meth:`build_table` makes the :class:`~monolith.table.EmbeddingHashTable`, each slice learning at the
    rate of its function. The model API (``lookup_embedding_slice``) builds its tables without this
    record; it is for code that builds tables by hand, as Monolith's tests and custom trainers do.

    Differences from Monolith: the configuration is those Python objects, not a protobuf (so ``str()``
    holds their JSON description); Monolith's learning-rate functions take no argument (they read TF's
    global step), here they take the global step, and the ``call_learning_rate_fns*`` methods take it
    too; ``call_learning_rate_fns`` returns a float32 torch tensor where Monolith returns a TF tensor.

    Args:
        table_config: the table's slices, in column order.
        learning_rate_fns: one per slice: a number (a constant rate), a function of the global step
            (e.g. :class:`~monolith.learning_rate_functions.PolynomialDecay`), or None (the slice's own
            rate). Their count is checked against the slices by :meth:`build_table`, as Monolith checks it
            when it makes the table.
        extra_restore_names: kept (as a copy), as Monolith keeps them; nothing here reads them.
        hashtable_config: the table kind (Monolith keeps it inside the proto); its ``initial_capacity``
            sizes the table that :meth:`build_table` makes.
    """

    def __init__(
        self,
        table_config: Sequence[SliceConfig],
        learning_rate_fns: Sequence[LearningRateFn],
        extra_restore_names: Sequence[str] | None = None,
        *,
        hashtable_config: HashTableConfig | None = None,
    ) -> None:
        owner = type(self).__name__
        if isinstance(table_config, SliceConfig) or not isinstance(table_config, Sequence) or not all(
            isinstance(s, SliceConfig) for s in table_config
        ):
            raise ValueError(f"{owner}: table_config must be a sequence of SliceConfig, got {table_config!r}")
        if isinstance(learning_rate_fns, (str, bytes)) or not isinstance(learning_rate_fns, Sequence):
            raise ValueError(f"{owner}: learning_rate_fns must be a sequence, got {learning_rate_fns!r}")
        for fn in learning_rate_fns:
            if not (fn is None or callable(fn) or _is_rate(fn)):
                raise ValueError(
                    f"{owner}: each learning rate fn must be a finite number, a function of the global step "
                    f"or None, got {fn!r}"
                )
        if hashtable_config is not None and not isinstance(hashtable_config, HashTableConfig):
            raise ValueError(f"{owner}: hashtable_config must be a HashTableConfig, got {hashtable_config!r}")
        self._table_config = tuple(table_config)
        self._learning_rate_fns = list(learning_rate_fns)
        self.extra_restore_names = list(extra_restore_names or [])
        self._hashtable_config = hashtable_config
        self._learning_rate_tensor: Any = None

    # Monolith compares these strings to decide whether two slots share a configuration.
    def __str__(self) -> str:
        kind = self._hashtable_config
        table = {
            "slices": [s.describe() for s in self._table_config],
            "hashtable_config": None if kind is None else {"type": type(kind).__name__, **vars(kind)},
        }
        fns = ", ".join(str(fn) for fn in self._learning_rate_fns)
        return f"TableConfig: {json.dumps(table, sort_keys=True, default=str)}, LearningRateFns: [{fns}]"

    @property
    def table_config(self) -> tuple[SliceConfig, ...]:
        return self._table_config

    @property
    def hashtable_config(self) -> HashTableConfig | None:
        return self._hashtable_config

    @property
    def learning_rate_fns(self) -> list[LearningRateFn]:
        return self._learning_rate_fns

    @property
    def learning_rate_tensor(self) -> Any:
        return self._learning_rate_tensor

    def set_learning_rate_tensor(self, learning_rate_tensor: Any) -> None:
        self._learning_rate_tensor = learning_rate_tensor

    def call_learning_rate_fns(self, global_step: int) -> torch.Tensor:
        """The rate of every slice at ``global_step``, as a float32 tensor ``[len(learning_rate_fns)]``.

        Raises ``ValueError`` when there are no functions, or one is None (no rate of its own to report).
        """
        import torch

        rates = self.call_learning_rate_fns_fewer_ops(global_step)
        if any(rate is None for rate in rates):
            raise ValueError(f"{type(self).__name__}: a learning rate fn is None; give each slice a rate")
        return torch.tensor(np.asarray(rates, dtype=np.float32))

    def call_learning_rate_fns_fewer_ops(self, global_step: int) -> list[Any]:
        """The rate of every slice at ``global_step``: numbers as given, functions called with the step."""
        if not self._learning_rate_fns:
            raise ValueError("Learning_rate_fns must be not empty.")
        return [fn(global_step) if callable(fn) else fn for fn in self._learning_rate_fns]

    def build_table(self, **table_kwargs: Any) -> EmbeddingHashTable:
        """The :class:`~monolith.table.EmbeddingHashTable` of this configuration (Monolith's
        ``hash_table_from_config``): the slices with their learning-rate functions, and the
        ``initial_capacity`` of ``hashtable_config``. ``table_kwargs`` go to the table (``slots``,
        ``default_occurrence_threshold``, ``default_expire_time``, ``seed``, ``name``).
        """
        from monolith.table.embedding_table import EmbeddingHashTable

        if len(self._learning_rate_fns) != len(self._table_config):
            raise ValueError("Size of learning_rate_fns and size of segments must be equal.")
        slices = [
            s if fn is None else dataclasses.replace(s, learning_rate_fn=fn if callable(fn) else _ConstantRate(fn))
            for s, fn in zip(self._table_config, self._learning_rate_fns)
        ]
        if self._hashtable_config is not None:
            table_kwargs.setdefault("initial_capacity", self._hashtable_config.initial_capacity)
        return EmbeddingHashTable(slices, **table_kwargs)


def _is_rate(value: Any) -> bool:
    return (
        isinstance(value, numbers.Real)
        and not isinstance(value, (bool, np.bool_))
        and bool(np.isfinite(value))
    )
