"""``EmbeddingBagCollection``: pooled embeddings of hash tables, with TorchRec's interface.

It takes a ``KeyedJaggedTensor`` (this project's :class:`~monolith.sparse.KeyedJaggedTensor`, or
TorchRec's own: only ``keys()``, ``values()``, ``lengths()``, ``length_per_key()`` and
``stride()`` are read) and returns a :class:`~monolith.sparse.KeyedTensor` with one pooled
``[batch, dim]`` block per feature, in table order, as TorchRec's ``EmbeddingBagCollection`` does.
The tables are :class:`~monolith.table.EmbeddingHashTable` s: any int64 id, rows created on first
update past the occurrence filter, a sparse optimizer per table.

As TorchRec's fused collection, the sparse update is part of the backward pass: when
``loss.backward()`` returns, every table that got gradients has applied them (one update per
distinct id, its gradients summed, as ``torch.nn.EmbeddingBag`` sums them). With
``update_in_backward=False`` they wait instead for :meth:`EmbeddingBagCollection.apply_gradients`
(e.g. after clipping them by a global norm with :meth:`EmbeddingBagCollection.grad_squared_norm`).

Example::

    ebc = EmbeddingBagCollection([
        EmbeddingBagConfig(name="t_user", embedding_dim=8, feature_names=["uid"]),
        EmbeddingBagConfig(name="t_item", embedding_dim=8, feature_names=["iid", "clicked"], pooling="MEAN"),
    ])
    pooled = ebc(kjt)                           # KeyedTensor: keys ["uid", "iid", "clicked"], values [B, 24]
    loss = head(pooled.values()).mean()
    loss.backward()                             # the tables are updated here
    dense_optimizer.step()
"""

from __future__ import annotations

import zlib
from typing import Any, Sequence

import torch

from monolith.modules.combiners import Combiner, ReduceMean, ReduceSum
from monolith.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from monolith.modules.embedding_lookup import HashEmbedding, cat_or_only
from monolith.sparse import KeyedTensor
from monolith.table.config import SliceConfig
from monolith.table.embedding_table import EmbeddingHashTable

__all__ = ["EmbeddingBagCollection"]


class _UpdateAfterBackward(torch.autograd.Function):
    """Identity whose backward has the collection apply its gradients once the backward pass ends
    (when every lookup's gradient has arrived)."""

    @staticmethod
    def forward(ctx, values, collection):  # noqa: D401 - autograd signature
        ctx.collection = collection
        return values.view_as(values)

    @staticmethod
    def backward(ctx, grad):
        torch.autograd.Variable._execution_engine.queue_callback(ctx.collection.apply_gradients)
        return grad, None


def embedding_names_by_table(tables: Sequence[EmbeddingBagConfig]) -> list[list[str]]:
    """Output key of each feature of each table: the feature's name, or ``feature@table`` where
    several tables read the feature (TorchRec's naming)."""
    tables_of: dict[str, int] = {}
    for config in tables:
        for name in config.feature_names:
            tables_of[name] = tables_of.get(name, 0) + 1
    return [[name if tables_of[name] == 1 else f"{name}@{config.name}" for name in config.feature_names]
            for config in tables]


class EmbeddingBagCollection(torch.nn.Module):
    """Pooled embeddings of several hash tables, each read by one or more features.

    Args:
        tables: one config per table (:class:`~monolith.modules.EmbeddingBagConfig`, or TorchRec's
            ``EmbeddingBagConfig``, read by :meth:`EmbeddingBagConfig.from_torchrec` with its defaults).
        update_in_backward: apply the sparse updates at the end of each backward pass (TorchRec's
            fused collection); False: at :meth:`apply_gradients`.
        seed: seeds the tables' initializers (each table also by its name).

    ``state_dict()`` holds every table (``embedding_bags.<table>.keys``, ``weights_0``,
    ``state_0`` (the optimizer's slots), ``timestamps``, the occurrence counters ...) and the
    update count, all tensors: ``torch.save`` and ``torch.load(weights_only=True)`` carry them.
    """

    def __init__(self, tables: Sequence[EmbeddingBagConfig | Any], *, update_in_backward: bool = True,
                 seed: int = 0) -> None:
        super().__init__()
        configs = [c if isinstance(c, EmbeddingBagConfig) else EmbeddingBagConfig.from_torchrec(c) for c in tables]
        if not configs:
            raise ValueError("EmbeddingBagCollection needs at least one table config")
        names = [c.name for c in configs]
        if len(set(names)) != len(names):
            raise ValueError(f"EmbeddingBagCollection: table names repeat: {names}")
        self._configs = configs
        self._embedding_names = embedding_names_by_table(configs)
        self._combiners: list[Combiner] = [ReduceSum() if c.pooling == PoolingType.SUM else ReduceMean()
                                           for c in configs]
        self.update_in_backward = update_in_backward
        self.embedding_bags = torch.nn.ModuleDict({c.name: HashEmbedding(_table(c, seed)) for c in configs})
        #: Updates applied so far: the global step the tables' learning rates are read at.
        self.register_buffer("update_count", torch.zeros((), dtype=torch.int64))

    def embedding_bag_configs(self) -> list[EmbeddingBagConfig]:
        return list(self._configs)

    def is_weighted(self) -> bool:
        return False

    def forward(self, features: Any) -> KeyedTensor:
        """Pooled embeddings ``[batch, sum of dims]`` of every feature of every table, keyed by feature.

        Raises:
            KeyError: a table's feature is not among ``features.keys()``.
            ValueError: ``features`` carries per-id weights (not supported).
        """
        weights = getattr(features, "weights_or_none", None)
        if weights is not None and weights() is not None:
            raise ValueError("EmbeddingBagCollection: weighted KeyedJaggedTensors are not supported")
        keys, stride = list(features.keys()), features.stride()
        index = {key: i for i, key in enumerate(keys)}
        values, lengths = features.values(), features.lengths()
        starts = [0]
        for n in features.length_per_key():
            starts.append(starts[-1] + int(n))
        pooled, dims = [], []
        for config, combiner in zip(self._configs, self._combiners):
            ids, bag_lengths = [], []
            for name in config.feature_names:
                if name not in index:
                    raise KeyError(f"EmbeddingBagCollection: table '{config.name}' reads feature '{name}', which "
                                   f"the KeyedJaggedTensor lacks (keys: {keys})")
                i = index[name]
                ids.append(values[starts[i]:starts[i + 1]])
                bag_lengths.append(lengths[i * stride:(i + 1) * stride])
            # One lookup per table, whatever the number of its features.
            rows = self.embedding_bags[config.name](cat_or_only(ids))
            for feature_rows, feature_lengths in zip(torch.split(rows, [t.numel() for t in ids]), bag_lengths):
                pooled.append(combiner(feature_rows, feature_lengths))
                dims.append(config.embedding_dim)
        out = torch.cat(pooled, 1)
        if self.update_in_backward and out.requires_grad:
            out = _UpdateAfterBackward.apply(out, self)
        return KeyedTensor([n for names in self._embedding_names for n in names], dims, out)

    def grad_squared_norm(self) -> float:
        """Sum of squares of the gradients waiting in the tables (their share of a global norm)."""
        return sum(module.grad_squared_norm() for module in self.embedding_bags.values())

    def apply_gradients(self, scale: float = 1.0) -> None:
        """Applies the gradients waiting in the tables (times ``scale``): one update per distinct id
        with its gradients summed, at learning rates of step :attr:`update_count`, which then grows by
        one. Nothing happens, and the count stays, when no table has gradients."""
        modules = [m for m in self.embedding_bags.values() if m.pending]
        if not modules:
            return
        step = int(self.update_count)
        for module in modules:
            module.apply_gradients(step, scale, dedup="sum")
        self.update_count += 1

    def discard_gradients(self) -> None:
        """Drops the gradients waiting in the tables."""
        for module in self.embedding_bags.values():
            module.discard_gradients()


def _table(config: EmbeddingBagConfig, seed: int) -> EmbeddingHashTable:
    """The hash table of one config: one slice of ``embedding_dim`` columns; every id has the
    table's occurrence threshold and expire time, whatever its high bits (Monolith's slot)."""
    vector = SliceConfig("embedding", config.embedding_dim, initializer=config.initializer,
                         optimizer=config.optimizer, learning_rate_fn=config.learning_rate_fn)
    return EmbeddingHashTable([vector], default_occurrence_threshold=config.occurrence_threshold,
                              default_expire_time=config.expire_time, seed=seed + zlib.crc32(config.name.encode()),
                              name=config.name, initial_capacity=config.num_embeddings)
