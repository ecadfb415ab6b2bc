"""Programs the distributed tests run under torchrun (and, for references, in one process).

    python -m torch.distributed.run --nproc_per_node=2 tests/distributed_worker.py SCENARIO OUT_DIR [ARGS]

Each scenario writes what it computed under OUT_DIR for the test to compare.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))

from monolith.distributed import ShardedHashEmbedding, get_rank, get_world_size, init_from_env, shard_of  # noqa: E402
from monolith.estimator import Estimator, EstimatorSpec, RunConfig  # noqa: E402
from monolith.fid import make_fid  # noqa: E402
from monolith.model import MonolithModel, TrainingHook  # noqa: E402
from monolith.optim import RandomUniformInitializer, SgdOptimizer, ZerosInitializer  # noqa: E402
from monolith.sparse import Batch, KeyedJaggedTensor  # noqa: E402
from monolith.table import EmbeddingHashTable, SliceConfig  # noqa: E402

NUM_FEATURES, BATCH, DIM, FID_MAX = 17, 455, 15, 100_000
LR = 0.01
LOSS_SCALE = 1.0 / (2 * BATCH)  # a fixed mean over the global batch: the sum over ranks stays exact


def reference_vector(out_dir: str) -> None:
    """REFERENCE.md's distributed vector: 2 shards, SGD lr 1, loss = 2 x embedding, ids [0, 3, 0, 1]."""
    ctx = init_from_env()
    table = EmbeddingHashTable([SliceConfig("v", 1, initializer=ZerosInitializer(),
                                            optimizer=SgdOptimizer(learning_rate=1.0))])
    module = ShardedHashEmbedding(table)
    ids = torch.tensor([0, 3, 0, 1]) if ctx.rank == 0 else torch.tensor([], dtype=torch.int64)
    (2 * module(ids)).sum().backward()
    module.apply_gradients(global_step=0)
    module.eval()
    result = {"lookup": module(torch.tensor([0, 3, 0, 1])).reshape(-1).tolist(),
              "owned": sorted(table.items()[0].tolist())}
    with open(os.path.join(out_dir, f"vector-{ctx.rank}.json"), "w") as f:
        json.dump(result, f)


def reference_vector_single_process() -> None:
    """The vector's table work in one process (SGD slices, zero init), e.g. to compile its kernels."""
    table = EmbeddingHashTable([SliceConfig("v", 1, initializer=ZerosInitializer(),
                                            optimizer=SgdOptimizer(learning_rate=1.0))])
    table.apply_gradients(np.array([0, 3, 0, 1]), np.full((4, 1), 2.0, np.float32), dedup="sum")
    table.lookup(np.array([0, 3]))


def comp_batches(step: int, rank: int, world_size: int) -> Batch:
    """Rank ``rank``'s part of the global batch of ``step``: 1..24 FIDs per feature and row."""
    rng = np.random.default_rng(1000 + step)
    keys, values, lengths = [], [], []
    rows = BATCH * 2  # the global batch of the two-rank run
    part = slice(rank * rows // world_size, (rank + 1) * rows // world_size)
    for i in range(NUM_FEATURES):
        n = rng.integers(1, 25, rows)
        raw = rng.integers(0, FID_MAX, int(n.sum()))
        offsets = np.concatenate([[0], np.cumsum(n)])
        keys.append(f"feature{i}")
        values.append(make_fid(i + 1, raw[offsets[part.start]: offsets[part.stop]]))
        lengths.append(n[part])
    label = rng.normal(size=rows).astype(np.float32)[part]
    sparse = KeyedJaggedTensor(keys, torch.from_numpy(np.concatenate(values)),
                               torch.from_numpy(np.concatenate(lengths)))
    return Batch(sparse, {"label": torch.from_numpy(label)})


class EmbeddingUpdateModel(MonolithModel):
    """Monolith's model_comp_test model: framework embeddings and a plain reference, two MLP towers.

    The reference is one plain tensor over every (feature, raw id), looked up and segment-summed
    in torch; it starts from the same rows as the tables, and :class:`ReferenceSgd` applies plain
    SGD to it with the gradients of every rank summed, which is what sync training promises.
    """

    def __init__(self, params=None, world_size: int = 1, rank: int = 0, initializer=None):
        super().__init__(params)
        self.p.train.max_steps = 50
        self.initializer = initializer or ZerosInitializer()
        self.batch_size = BATCH * 2 // world_size
        self.world_size, self.rank = world_size, rank
        torch.manual_seed(42)
        self.reference = torch.empty(NUM_FEATURES * FID_MAX, DIM).uniform_(-0.05, 0.05)
        self.reference_lookups: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.tower = self._mlp()
        self.reference_tower = copy.deepcopy(self.tower)  # equal towers keep equal embeddings equal
        self.max_embedding_gap = 0.0
        self.reference_sgd = ReferenceSgd(self)

    @staticmethod
    def _mlp() -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Linear(NUM_FEATURES * DIM, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))

    def input_fn(self, mode):
        return (comp_batches(step, self.rank, self.world_size) for step in range(self.p.train.max_steps))

    def model_fn(self, features, mode):
        names = [f"feature{i}" for i in range(NUM_FEATURES)]
        for name in names:
            self.create_embedding_feature_column(name)
        ours = self.lookup_embedding_slice(names, "vec", DIM, initializer=self.initializer,
                                           optimizer=SgdOptimizer(learning_rate=LR), out_type="concat")
        theirs = []
        self.reference_lookups = []
        for i, name in enumerate(names):
            jagged = features[name]
            index = i * FID_MAX + (jagged.values() & ((1 << 48) - 1))
            looked_up = self.reference[index].requires_grad_(mode == "train")
            self.reference_lookups.append((index, looked_up))
            rows = torch.repeat_interleave(torch.arange(jagged.lengths().numel()), jagged.lengths())
            theirs.append(torch.zeros(jagged.lengths().numel(), DIM).index_add(0, rows, looked_up))
        theirs = torch.cat(theirs, dim=1)
        if self.ctx.built:
            self.max_embedding_gap = max(self.max_embedding_gap, float((ours - theirs).detach().abs().max()))
        label = features["label"]
        loss = ((self.tower(ours).reshape(-1) - label) ** 2).sum()
        loss = (loss + ((self.reference_tower(theirs).reshape(-1) - label) ** 2).sum()) * LOSS_SCALE
        self.add_training_hook(self.reference_sgd)
        return EstimatorSpec(label=label, pred=self.tower(ours).reshape(-1), head_name="mse", loss=loss,
                             optimizer=functools.partial(torch.optim.SGD, lr=LR), classification=False)

    def serving_input_receiver_fn(self):
        return None


class ReferenceSgd(TrainingHook):
    """Plain SGD on the reference rows, with every rank's gradients summed (all_gather)."""

    def __init__(self, model: EmbeddingUpdateModel):
        self.model = model

    def after_step(self, step, batch, output) -> None:
        index = torch.cat([i for i, _ in self.model.reference_lookups])
        grad = torch.cat([rows.grad for _, rows in self.model.reference_lookups])
        if torch.distributed.is_initialized():
            gathered = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, (index, grad))
            index, grad = torch.cat([i for i, _ in gathered]), torch.cat([g for _, g in gathered])
        self.model.reference.index_add_(0, index, grad, alpha=-LR)


class SeedTables:
    """Gives the tables the reference's initial rows (non-zero, so gradients are not all zero)."""

    def __init__(self, model: EmbeddingUpdateModel):
        self.model = model

    def seed(self) -> None:
        weight = self.model.reference
        for i in range(NUM_FEATURES):
            slot = i + 1
            module = self.model.ctx.table_of_slot(slot)
            fids = torch.from_numpy(make_fid(slot, np.arange(FID_MAX)))
            mine = torch.ones(FID_MAX, dtype=torch.bool)
            if isinstance(module, ShardedHashEmbedding):
                mine = shard_of(fids, module.world_size) == module.rank
            module.table.assign(fids[mine], weight[i * FID_MAX:(i + 1) * FID_MAX][mine])


def run_comp(model_dir: str, multi_hash_table: bool, world_size: int, rank: int,
             clip_norm: float = 1e9) -> EmbeddingUpdateModel:
    """Trains the comp model 50 steps; returns it."""
    model = EmbeddingUpdateModel(world_size=world_size, rank=rank)
    model.p.clip_norm = clip_norm
    estimator = Estimator(model, RunConfig(model_dir=model_dir, use_native_multi_hash_table=multi_hash_table,
                                           dedup="sum", log_step_count_steps=1000, enable_summaries=False))
    estimator.build()
    SeedTables(model).seed()
    estimator.train()
    return model


def run_comp_initialised(model_dir: str, world_size: int, rank: int) -> EmbeddingUpdateModel:
    """Trains the comp model 3 steps from the tables' own initial rows (Monolith's default uniform
    initializer), without :class:`SeedTables`: a row starts from its FID, on any rank."""
    model = EmbeddingUpdateModel(world_size=world_size, rank=rank, initializer=RandomUniformInitializer())
    model.p.train.max_steps = 3
    Estimator(model, RunConfig(model_dir=model_dir, dedup="sum", log_step_count_steps=1000,
                               enable_summaries=False)).train()
    return model


def comp_initialised(out_dir: str) -> None:
    init_from_env()
    rank = get_rank()
    model = run_comp_initialised(os.path.join(out_dir, "model"), get_world_size(), rank)
    torch.save({"dense": model.dense_state_dict(),
                "tables": {n: tuple(map(torch.from_numpy, m.table.items())) for n, m in model.ctx.tables.items()}},
               os.path.join(out_dir, f"comp_initialised-{rank}.pt"))


def comp(out_dir: str, multi_hash_table: str, clip_norm: str = "1e9") -> None:
    init_from_env()
    rank, world = get_rank(), get_world_size()
    model = run_comp(os.path.join(out_dir, "model"), multi_hash_table == "on", world, rank, float(clip_norm))
    tables = {name: module.table.items() for name, module in model.ctx.tables.items()}
    torch.save({"gap": model.max_embedding_gap, "dense": model.dense_state_dict(),
                "tables": {name: (torch.from_numpy(k), torch.from_numpy(r)) for name, (k, r) in tables.items()}},
               os.path.join(out_dir, f"comp-{rank}.pt"))


class SmallModel(MonolithModel):
    """Two features and a linear head: enough to exercise checkpoints across world sizes."""

    def __init__(self, params=None, extra_feature: bool = False, die_at_step: int | None = None):
        super().__init__(params)
        self.batch_size = 64
        self.extra_feature = extra_feature
        self.die_at_step = die_at_step
        torch.manual_seed(7)
        self.head = torch.nn.Linear(8, 1)

    def input_fn(self, mode):
        rank, world = get_rank(), get_world_size()
        for step in range(20):
            rng = np.random.default_rng(step * world + rank)
            ids = make_fid(1, rng.integers(0, 500, self.batch_size)), make_fid(2, rng.integers(0, 500, self.batch_size))
            sparse = KeyedJaggedTensor(["uid", "mov"], torch.from_numpy(np.concatenate(ids)),
                                       torch.ones(2 * self.batch_size, dtype=torch.int64))
            yield Batch(sparse, {"label": torch.from_numpy((rng.random(self.batch_size) < 0.3).astype(np.float32))})

    def model_fn(self, features, mode):
        names = ["uid", "mov"] + (["extra"] if self.extra_feature and get_rank() == 1 else [])
        for name in names:
            self.create_embedding_feature_column(name)
        emb = self.lookup_embedding_slice(["uid", "mov"], "vec", 4, out_type="concat")
        logits = self.head(emb).reshape(-1)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, features["label"], reduction="sum")
        if self.die_at_step is not None:
            self.add_training_hook(ExitAtStep(self.die_at_step))
        return EstimatorSpec(label=features["label"], pred=torch.sigmoid(logits), head_name="ctr", loss=loss,
                             optimizer=functools.partial(torch.optim.Adam, lr=1e-2))

    def serving_input_receiver_fn(self):
        return None


class FilteredModel(MonolithModel):
    """One feature with occurrence threshold 3, sync training: an owner admits an id by its
    occurrences in every rank's batch, as one process would over the global batch."""

    STEPS, GLOBAL_ROWS = 6, 64

    def __init__(self, params=None, world_size: int = 1, rank: int = 0):
        super().__init__(params)
        self.p.default_occurrence_threshold = 3
        self.batch_size = self.GLOBAL_ROWS // world_size
        self.world_size, self.rank = world_size, rank
        torch.manual_seed(11)
        self.head = torch.nn.Linear(4, 1)

    def input_fn(self, mode):
        part = slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
        for step in range(self.STEPS):
            rng = np.random.default_rng(500 + step)
            ids = make_fid(1, rng.integers(0, 400, (self.GLOBAL_ROWS, 3))[part].reshape(-1))  # repeats within and across ranks
            sparse = KeyedJaggedTensor(["uid"], torch.from_numpy(ids), torch.full((self.batch_size,), 3))
            yield Batch(sparse, {"label": torch.from_numpy(rng.normal(size=self.GLOBAL_ROWS).astype(np.float32)[part])})

    def model_fn(self, features, mode):
        self.create_embedding_feature_column("uid")
        emb = self.lookup_embedding_slice(["uid"], "vec", 4, initializer=ZerosInitializer(),
                                          optimizer=SgdOptimizer(learning_rate=0.1), out_type="concat")
        pred = (self.head(emb) + emb.sum(1, keepdim=True)).reshape(-1)
        loss = ((pred - features["label"]) ** 2).sum()
        return EstimatorSpec(label=features["label"], pred=pred, head_name="mse", loss=loss,
                             optimizer=functools.partial(torch.optim.SGD, lr=0.01), classification=False)

    def serving_input_receiver_fn(self):
        return None


def run_filtered(model_dir: str, world_size: int, rank: int) -> FilteredModel:
    model = FilteredModel(world_size=world_size, rank=rank)
    Estimator(model, RunConfig(model_dir=model_dir, dedup="sum", log_step_count_steps=1000,
                               enable_summaries=False)).train(max_steps=FilteredModel.STEPS)
    return model


def filtered(out_dir: str) -> None:
    init_from_env()
    rank = get_rank()
    model = run_filtered(os.path.join(out_dir, "model"), get_world_size(), rank)
    torch.save({"dense": model.dense_state_dict(),
                "tables": {n: tuple(map(torch.from_numpy, m.table.items())) for n, m in model.ctx.tables.items()}},
               os.path.join(out_dir, f"filtered-{rank}.pt"))


class ExitAtStep(TrainingHook):
    """Ends the process abruptly after global step ``step``, as a crashed worker would."""

    def __init__(self, step: int):
        self.step = step

    def after_step(self, step, batch, output) -> None:
        if step == self.step:
            os._exit(3)


def small(out_dir: str, steps: str, mode: str = "train") -> None:
    """Trains SmallModel to ``steps`` (restoring the latest checkpoint), then writes its state.

    ``mode`` ``die`` makes rank 1 exit abruptly after 2 steps; ``disagree`` makes rank 1 declare a
    feature the others do not.
    """
    init_from_env()
    rank = get_rank()
    model = SmallModel(extra_feature=mode == "disagree", die_at_step=3 if mode == "die" and rank == 1 else None)
    estimator = Estimator(model, RunConfig(model_dir=os.path.join(out_dir, "model"), save_checkpoints_steps=2,
                                           log_step_count_steps=1000, enable_summaries=False))
    estimator.train(max_steps=int(steps))
    keys, rows = next(iter(model.ctx.tables.values())).table.items()
    metrics = estimator.evaluate(steps=3)
    torch.save({"keys": torch.from_numpy(keys), "rows": torch.from_numpy(rows), "dense": model.dense_state_dict(),
                "tables": {n: m.table.items() for n, m in model.ctx.tables.items()}, "metrics": metrics},
               os.path.join(out_dir, f"small-{rank}.pt"))


class DropoutModel(SmallModel):
    """SmallModel with dropout on the embeddings and a batch size that differs by rank, so every
    rank's random stream is its own."""

    def __init__(self, params=None):
        super().__init__(params)
        self.batch_size = 48 + 16 * get_rank()
        self.dropout = torch.nn.Dropout(0.3)

    def model_fn(self, features, mode):
        for name in ("uid", "mov"):
            self.create_embedding_feature_column(name)
        emb = self.dropout(self.lookup_embedding_slice(["uid", "mov"], "vec", 4, out_type="concat"))
        logits = self.head(emb).reshape(-1)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, features["label"], reduction="sum")
        return EstimatorSpec(label=features["label"], pred=torch.sigmoid(logits), head_name="ctr", loss=loss,
                             optimizer=functools.partial(torch.optim.Adam, lr=1e-2))


def resume(out_dir: str) -> None:
    """DropoutModel trained 6 steps at once, and 3 steps then resumed to 6 by a new estimator (as a
    restarted job): writes both states of this rank."""
    init_from_env()
    states = {}
    for run, stops in (("uninterrupted", [6]), ("resumed", [3, 6])):
        for steps in stops:
            model = DropoutModel()
            config = RunConfig(model_dir=os.path.join(out_dir, run), log_step_count_steps=1000, enable_summaries=False)
            Estimator(model, config).train(max_steps=steps)
        states[run] = {"dense": model.dense_state_dict(),
                       "tables": {n: tuple(map(torch.from_numpy, m.table.items())) for n, m in model.ctx.tables.items()}}
    torch.save(states, os.path.join(out_dir, f"resume-{get_rank()}.pt"))


PARTIAL_SLOTS = {"uid": 1, "mov": 2, "extra": 3}
PARTIAL_T0 = 1_000_000
DAY = 86_400


def _part_batch(step: int, rank: int, rows: int, names: list[str], req_time: int, vocab: int) -> Batch:
    """Rank ``rank``'s batch of ``step``: one FID per feature of ``names`` and row, all at ``req_time``."""
    rng = np.random.default_rng(7919 * step + rank)
    values = [make_fid(PARTIAL_SLOTS[name], rng.integers(0, vocab, rows)) for name in names]
    sparse = KeyedJaggedTensor(names, torch.from_numpy(np.concatenate(values)),
                               torch.ones(rows * len(names), dtype=torch.int64))
    return Batch(sparse, {"label": torch.from_numpy((rng.random(rows) < 0.4).astype(np.float32)),
                          "req_time": torch.full((rows,), req_time, dtype=torch.int64)})


def _union_batch(parts: list[Batch]) -> Batch:
    """The ranks' batches of a step as one process's: a feature a part lacks has no FIDs in its rows."""
    names = [n for n in PARTIAL_SLOTS if any(n in p.sparse.keys() for p in parts)]
    values, lengths = [], []
    for name in names:
        for part in parts:
            rows = part.dense["label"].numel()
            if name in part.sparse.keys():
                values.append(part.sparse[name].values())
                lengths.append(part.sparse[name].lengths())
            else:
                lengths.append(torch.zeros(rows, dtype=torch.int64))
    return Batch(KeyedJaggedTensor(names, torch.cat(values), torch.cat(lengths)),
                 {key: torch.cat([p.dense[key] for p in parts]) for key in parts[0].dense})


def partial_batches(kind: str, rank: int) -> list[Batch]:
    """``missing``: after step 0, only some ranks' batches carry 'extra' (rank 0's, rank 1's, none, both,
    in turn); ``expiry``: every id at day 0, then one id per table at day 2 (expire time: 1 day)."""
    if kind == "missing":
        present = {1: (True, False), 2: (False, True), 3: (False, False), 0: (True, True)}
        return [_part_batch(step, rank, 16, ["uid", "mov"] + (["extra"] if step == 0 or present[step % 4][rank]
                                                              else []), PARTIAL_T0 + 3600 * step, 50)
                for step in range(8)]
    return [_part_batch(0, rank, 16, list(PARTIAL_SLOTS), PARTIAL_T0, 50),
            _part_batch(1, rank, 1, list(PARTIAL_SLOTS), PARTIAL_T0 + 2 * DAY, 1)]


class PartialFeatureModel(MonolithModel):
    """uid and mov always, 'extra' where the batch carries it (no dense parameter of its own, so a
    batch without it equals one whose rows have no 'extra' FIDs): trains alike whichever ranks'
    batches carry it. ``world_size`` 1 trains the union of both ranks' batches."""

    def __init__(self, params=None, kind: str = "missing", world_size: int = 1, rank: int = 0):
        super().__init__(params)
        self.kind = kind
        if world_size == 1:
            self.batches = [_union_batch(list(parts)) for parts in zip(*(partial_batches(kind, r) for r in (0, 1)))]
        else:
            self.batches = partial_batches(kind, rank)
        self.batch_size = self.batches[0].dense["label"].numel()
        torch.manual_seed(5)
        self.head = torch.nn.Linear(8, 1)

    def input_fn(self, mode):
        return iter(self.batches)

    def model_fn(self, features, mode):
        for name in PARTIAL_SLOTS:
            self.create_embedding_feature_column(name, expire_time=1 if self.kind == "expiry" else 36500)
        kw = dict(initializer=ZerosInitializer(), optimizer=SgdOptimizer(learning_rate=0.1))
        logits = self.head(self.lookup_embedding_slice(["uid", "mov"], "vec", 4, out_type="concat", **kw)).reshape(-1)
        if "extra" in features.sparse.keys():
            logits = logits + self.lookup_embedding_slice(["extra"], "vec", 4, out_type="concat", **kw).sum(1)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, features["label"], reduction="sum")
        return EstimatorSpec(label=features["label"], pred=torch.sigmoid(logits), head_name="ctr", loss=loss,
                             optimizer=functools.partial(torch.optim.SGD, lr=0.05))

    def serving_input_receiver_fn(self):
        return None


def partial_config(model_dir: str) -> RunConfig:
    return RunConfig(model_dir=model_dir, dedup="sum", log_step_count_steps=1000, enable_summaries=False)


def run_partial(model_dir: str, kind: str, world_size: int, rank: int) -> PartialFeatureModel:
    model = PartialFeatureModel(kind=kind, world_size=world_size, rank=rank)
    Estimator(model, partial_config(model_dir)).train()
    return model


def partial_tables(model: PartialFeatureModel) -> dict:
    """Per table: live (keys, rows), the keys a checkpoint keeps, the expiry clock, and the keys left
    after an expiry sweep (which this call runs)."""
    out = {}
    for name, module in model.ctx.tables.items():
        table = module.table
        keys, rows = table.items()
        out[name] = {"items": (torch.from_numpy(keys), torch.from_numpy(rows)),
                     "saved": np.sort(table.state_dict()["keys"]), "clock": table.max_update_time}
        table.evict()
        out[name]["after_evict"] = np.sort(table.items()[0])
    return out


def partial(out_dir: str, kind: str) -> None:
    init_from_env()
    rank = get_rank()
    model = run_partial(os.path.join(out_dir, "model"), kind, get_world_size(), rank)
    torch.save({"dense": model.dense_state_dict(), "tables": partial_tables(model)},
               os.path.join(out_dir, f"partial-{rank}.pt"))


def unread(out_dir: str) -> None:
    """Two lookups of one table routed together; rank 1 never reads its second: the owners apply
    nothing for its ids, and its (newest) request time moves no shard's expiry clock."""
    ctx = init_from_env()
    table = EmbeddingHashTable([SliceConfig("v", 1, initializer=ZerosInitializer(),
                                            optimizer=SgdOptimizer(learning_rate=1.0))])
    module = ShardedHashEmbedding(table)
    if ctx.rank == 0:
        first, first_time, second, second_time = [10, 11, 12, 13], 100, [20, 21, 22, 23], 200
    else:
        first, first_time, second, second_time = [10, 30, 31, 32], 150, [40, 41, 42, 43], 900
    first, second = torch.tensor(first), torch.tensor(second)
    routed = ShardedHashEmbedding.lookup_together([(module, first, first_time), (module, second, second_time)])
    loss = module(first, routed=routed[0]).sum()
    if ctx.rank == 0:
        loss = loss + module(second, routed=routed[1]).sum()
    loss.backward()
    module.apply_gradients(global_step=0)
    keys, rows = table.items()
    with open(os.path.join(out_dir, f"unread-{ctx.rank}.json"), "w") as f:
        json.dump({"rows": dict(zip(keys.tolist(), rows.reshape(-1).tolist())), "clock": table.max_update_time}, f)


def metrics_batches(rank: int) -> list[Batch]:
    """Rank ``rank``'s batches for :class:`KnownPredictionsModel`: ranks differ in batch size and
    positive rate (so a mean of the ranks' AUCs is not the AUC of their examples), scores tie."""
    rng = np.random.default_rng(70 + rank)
    batches = []
    for _ in range(2):
        rows = 40 if rank == 0 else 24
        score = np.round(rng.normal(0.5 * rank, 1.0, rows), 1).astype(np.float32)
        label = (rng.random(rows) < 1 / (1 + np.exp(-score))).astype(np.float32)
        sparse = KeyedJaggedTensor(["uid"], torch.from_numpy(make_fid(1, rng.integers(0, 50, rows))),
                                   torch.ones(rows, dtype=torch.int64))
        batches.append(Batch(sparse, {"label": torch.from_numpy(label), "score": torch.from_numpy(score),
                                      "bid": torch.from_numpy(rng.normal(size=rows).astype(np.float32)),
                                      "target": torch.from_numpy(rng.normal(size=rows).astype(np.float32))}))
    return batches


class KnownPredictionsModel(MonolithModel):
    """Two heads whose predictions are input features (``ctr`` = sigmoid(score), ``bid``), whatever
    training does: the AUC and MSE of the examples are known without the model."""

    def __init__(self, params=None):
        super().__init__(params)
        self.scale = torch.nn.Parameter(torch.ones(1))

    def input_fn(self, mode):
        return metrics_batches(get_rank())

    def model_fn(self, features, mode):
        self.create_embedding_feature_column("uid")
        emb = self.lookup_embedding_slice(["uid"], "vec", 2, out_type="concat")
        loss = (emb.sum() - self.scale).pow(2)
        return EstimatorSpec(label={"ctr": features["label"], "bid": features["target"]},
                             pred={"ctr": torch.sigmoid(features["score"]), "bid": features["bid"]}, loss=loss,
                             classification=[True, False], optimizer=functools.partial(torch.optim.SGD, lr=0.1))

    def serving_input_receiver_fn(self):
        return None


def known_metrics(out_dir: str) -> None:
    """Trains KnownPredictionsModel over its input and evaluates it: both logs' metrics per rank."""
    init_from_env()
    estimator = Estimator(KnownPredictionsModel(), RunConfig(model_dir=os.path.join(out_dir, "model"),
                                                             log_step_count_steps=1000, enable_summaries=False))
    trained = estimator.train()
    with open(os.path.join(out_dir, f"metrics-{get_rank()}.json"), "w") as f:
        json.dump({"train": trained, "eval": estimator.evaluate()}, f)


if __name__ == "__main__":
    scenario, out = sys.argv[1], sys.argv[2]
    {"vector": reference_vector, "comp": comp, "comp_initialised": comp_initialised, "small": small, "resume": resume,
     "filtered": filtered, "partial": partial, "unread": unread, "metrics": known_metrics}[scenario](out, *sys.argv[3:])
