"""The train / evaluate / predict loop for Monolith models (Monolith's ``Estimator``).

One training step, as DLRM's reference reads top to bottom::

    batch -> model_fn (embedding lookups + dense layers) -> loss -> backward
          -> clip every gradient by the global norm -> dense optimizer step
          -> sparse updates of the embedding tables -> global step + 1

The first batch runs ``model_fn`` once as a *build pass* (lookups give zeros) so that every
feature slot and slice is declared before the tables are created, as Monolith builds its graph
before running it.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import operator
import os
import random
import sys
import threading
import time
from typing import Any, Callable, Iterable, Iterator, NoReturn, Sequence

import numpy as np
import torch
from tqdm import tqdm

from monolith.checkpoint import CheckpointManager
from monolith.dump import ModelDump
from monolith.distributed.context import LIVENESS_WINDOW_S, DistributedContext, SingleProcessContext, init_from_env
from monolith.distributed.shared_dir import check_shared_dir
from monolith.distributed.sharded_embedding import ShardedHashEmbedding, table_state_for_rank
from monolith.export.exporter import export_saved_model, exporting_note, serving_receiver, trace_batch
from monolith.graceful_stop import GracefulStop
from monolith.metrics import AUC, MeanSquaredError
from monolith.metrics.deep_insight import FileMetricHook
from monolith.mode_keys import ModeKeys
from monolith.model import MonolithBaseModel, ModelOutput, TrainingHook, has_metric_sink
from monolith.optim.clipping import clip_scales, squared_norm
from monolith.outputs import PredictionWriter
from monolith.params import InstantiableParams
from monolith.progress import Progress
from monolith.run_config import RunConfig
from monolith.runner_config import RunnerConfig, ServiceDiscoveryType
from monolith.sparse import Batch
from monolith.spec import EstimatorSpec

logger = logging.getLogger(__name__)

# RunConfig, RunnerConfig and ServiceDiscoveryType are importable from here, as from Monolith's estimator module.
__all__ = ["Estimator", "EstimatorSpec", "RunConfig", "RunnerConfig", "ServiceDiscoveryType", "seed_everything"]


def seed_everything(seed: int) -> None:
    """Seeds Python's ``random``, numpy's global generator and torch: call it before the model is
    built, so that layers made in its ``__init__`` start the same in every run of the same seed."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class _HeadMetrics:
    """AUC (classification heads) or MSE (regression heads), one accumulator per head."""

    def __init__(self) -> None:
        self._metrics: dict[str, AUC | MeanSquaredError] = {}

    def update(self, output: ModelOutput) -> None:
        if output.labels is None:
            return
        for head, label, pred, classification in zip(output.head_names, output.labels, output.preds,
                                                      output.classification):
            if label is None:
                continue
            metric = self._metrics.setdefault(head, AUC() if classification else MeanSquaredError())
            label = label.detach().reshape(-1)
            if classification:  # TF's auc casts labels to bool: soft labels count as positives when non-zero
                label = (label != 0).to(torch.float32)
            metric.update(label, pred.detach().reshape(-1))

    def compute(self, dist_ctx: DistributedContext) -> dict[str, float]:
        """Per-head values over every rank's examples (merged, not a mean of ranks)."""
        metrics = self._metrics
        if dist_ctx.world_size > 1:
            # Only across ranks is a state copied (an AUC's is every pair seen since the last log).
            metrics = {}
            for states in dist_ctx.all_gather_object({h: (type(m), m.state()) for h, m in self._metrics.items()}):
                for head, (kind, state) in states.items():
                    metrics.setdefault(head, kind()).merge(state)
        return {f"{head}/{'auc' if isinstance(m, AUC) else 'mse'}": m.compute() for head, m in metrics.items()}


class Estimator:
    """Trains, evaluates and predicts a :class:`~monolith.model.MonolithBaseModel`.

    Args:
        model: the model, or its ``InstantiableParams`` (instantiated here).
        config: a :class:`RunConfig` (or just ``model_dir``), or Monolith's
            :class:`~monolith.runner_config.RunnerConfig`, which also sets some model params.

    Example::

        estimator = Estimator(MyModel(), RunConfig(model_dir="/tmp/run"))
        estimator.train(max_steps=1000)
        metrics = estimator.evaluate()            # {"ctr/auc": 0.78, "loss": 0.45, "batch_loss": ..., "global_step": 1000}
        for prediction in estimator.predict(): ...
    """

    def __init__(self, model: MonolithBaseModel | InstantiableParams,
                 config: RunConfig | RunnerConfig | str | None = None) -> None:
        if isinstance(model, InstantiableParams):
            seed_everything(config.seed if isinstance(config, RunConfig) else RunConfig.seed)
            model = model.instantiate()
        if not isinstance(model, MonolithBaseModel):
            raise TypeError(f"Estimator needs a MonolithBaseModel or its params, got {type(model).__name__}")
        if isinstance(config, str) or config is None:
            config = RunConfig(model_dir=config or "model_dir")
        elif isinstance(config, RunnerConfig):
            config = config.configure(model)
        if model.ctx.built:
            # A model another Estimator trained: its tables belong to that run (model_dir, table
            # layout); this one starts from fresh tables, as Monolith builds a new graph per Estimator.
            logger.warning("Estimator: %s was built by another Estimator; its embedding tables start afresh "
                           "(dense layers keep their weights)", type(model).__name__)
            model.fresh_tables()
        self.model = model
        self.config = config
        self.global_step = 0
        self.model.ctx.use_native_multi_hash_table = config.use_native_multi_hash_table
        self.model.ctx.hashtable_init_capacity = config.hashtable_init_capacity
        self.model.ctx.occurrence_filter = config.occurrence_filter
        self.model.ctx.seed = config.seed
        self._model_fn = model.create_model_fn()
        self._dense_optimizer: torch.optim.Optimizer | None = None
        self._checkpoints = CheckpointManager(config.model_dir, config.keep_checkpoint_max)
        self._restored: str | None = None
        self._pending_optimizer_state: dict | None = None
        self._batches_consumed = 0
        self._summary_writer = None
        self._source = None
        #: Held during each training step; other threads (ParameterSync) read parameters between steps.
        self.step_lock = threading.Lock()
        self.dist = init_from_env(config.collective_timeout_s) or SingleProcessContext()
        self.dedup = config.dedup or "sum"
        if self.dist.world_size > 1 and self.dedup == "local":
            raise ValueError("RunConfig.dedup 'local' is for a single process; sharded tables sum per id ('sum')")
        if self.dist.world_size > 1:
            # Sync training: sharded tables (whose owners always sum per id), one output file per rank.
            config.index = self.dist.rank
            self.model.ctx.module_factory = ShardedHashEmbedding

    # ------------------------------------------------------------------ set-up
    def build(self, batch: Batch | None = None) -> None:
        """Build pass: runs ``model_fn`` once on ``batch`` (default: the first training batch) to
        declare features, then creates the tables and the dense optimizer and restores the latest
        checkpoint. ``train``/``evaluate``/``predict`` do it themselves; call it to inspect or seed
        tables before training."""
        if self.model.ctx.built:
            return
        if batch is None:
            batch = next(self._input(ModeKeys.TRAIN), None)
            if batch is None:
                raise ValueError("input_fn(TRAIN) produced no batch")
        torch.manual_seed(self.config.seed)
        output = self.model.build(batch)
        self._check_ranks_agree()
        if self.model.p.mode == ModeKeys.TRAIN:
            check_shared_dir(self.config.model_dir, self.dist)
        self.dist.broadcast_tensors(list(self.model.dense_state_dict().values()))
        if self.model.p.mode == ModeKeys.TRAIN:
            self._dense_optimizer = self._make_dense_optimizer(output.optimizer)
        self._restore_latest()

    def _check_ranks_agree(self) -> None:
        """Every rank must declare the same tables and dense parameters."""
        p = self.model.p
        layout = {
            "model_dir": os.path.abspath(self.config.model_dir),
            # Everything that decides when collectives run or what gets applied: the same on every rank.
            "run_config": {k: v for k, v in dataclasses.asdict(self.config).items()
                           if k not in ("model_dir", "index", "progress_bar")},
            "params": {"clip_norm": p.clip_norm, "sparse_norm_warmup_steps": p.sparse_norm_warmup_steps,
                       "dense_weight_decay": p.dense_weight_decay, "checkpoint_every": self._checkpoint_every()},
            "feature_slots": [(fs.name, fs.slot, fs.dim, fs.config.occurrence_threshold, fs.config.expire_time)
                              for fs in self.model.ctx.feature_slots],
            "tables": {name: [s.describe() for s in m.table.slices] for name, m in self.model.ctx.tables.items()},
            "dense": {name: list(t.shape) for name, t in self.model.dense_state_dict().items()},
        }
        for rank, theirs in enumerate(self.dist.all_gather_object(layout)):
            if theirs != layout:
                differs = sorted(k for k in layout if theirs[k] != layout[k])
                details = [f"{k}: {_difference(layout[k], theirs[k])}" for k in differs]
                raise RuntimeError(f"rank {self.dist.rank}: rank {rank} built a different model ({'; '.join(details)}); "
                                   f"every rank must run the same model_fn with the same model_dir and config")

    def _make_dense_optimizer(self, optimizer: Any) -> torch.optim.Optimizer | None:
        optimizer = optimizer if optimizer is not None else self.model._default_dense_optimizer
        params = [p for p in self.model.parameters() if p.requires_grad]
        if optimizer is None:
            if params and self.model.p.mode == ModeKeys.TRAIN:
                raise Exception("dense_optimizer not found!")
            return None
        if isinstance(optimizer, torch.optim.Optimizer):
            return optimizer
        if callable(optimizer):
            return optimizer(params) if params else None
        raise TypeError(f"EstimatorSpec.optimizer must be a torch optimizer or a callable taking the params, "
                        f"got {type(optimizer).__name__}")

    @property
    def checkpoint_path(self) -> str | None:
        """The checkpoint this estimator last wrote or restored (None before either)."""
        return self._restored

    @property
    def stream_position(self) -> dict[str, Any] | None:
        """How far training has read its stream: ``{"topic": str, "offsets": {partition: next
        offset}}`` after the last batch taken (None when the input is no stream). An endless stream
        writes no checkpoint by default, so this is what tells how far a running trainer has got."""
        state = self._source.state_dict() if self._source is not None else None
        if not isinstance(state, dict) or "offsets" not in state:
            return None
        return {"topic": str(state.get("topic")), "offsets": {str(p): int(o) for p, o in state["offsets"].items()}}

    def _restore_latest(self) -> None:
        latest = self._checkpoints.latest()
        if latest is None or latest == self._restored:
            return
        self._restore(latest)

    def _restore(self, latest: str) -> None:
        """Loads checkpoint ``latest`` into the model, its tables and the dense optimizer."""
        dense, tables, manifest = CheckpointManager.read(latest)
        self.model.load_dense_state_dict(dense["model"])
        self._pending_optimizer_state = dense.get("optimizer")
        self._load_optimizer_state()
        rank, world = self.dist.rank, self.dist.world_size
        self.model.ctx.load_table_states({name: table_state_for_rank(shards, rank, world)
                                          for name, shards in tables.items()}, source=latest)
        self.global_step = int(manifest["global_step"])
        self._batches_consumed = int(dense.get("batches_consumed", self.global_step))
        # Each rank resumes its own random stream (dropout draws differ by rank); a checkpoint of
        # another number of ranks (or of before they were kept per rank) gives every rank rank 0's.
        streams = dense.get("torch_rng_by_rank") or [dense["torch_rng"]]
        torch.set_rng_state(streams[rank] if len(streams) == world else streams[0])
        self._restored = latest
        logger.info("restored %s (global step %d)", latest, self.global_step)

    def _load_optimizer_state(self) -> None:
        if self._dense_optimizer is not None and self._pending_optimizer_state is not None:
            self._dense_optimizer.load_state_dict(self._pending_optimizer_state)
            self._pending_optimizer_state = None

    def save_checkpoint(self) -> str:
        """Writes a checkpoint of the current state to ``model_dir``; returns its path.

        With the ``serving.export_when_saving`` param, the checkpointed model is also exported
        (:meth:`export_saved_model`) when it has a serving receiver, as Monolith's exporting saver,
        and exports are kept in step with checkpoints: those whose step is no longer a kept
        checkpoint (``keep_checkpoint_max``) are deleted, as Monolith's export saver listener does.
        Not under torch.distributed (an export runs in one process): there rank 0 logs a warning and
        the checkpoint is exported with ``monolith export``.
        """
        return self._save_checkpoint(input_ended=None)

    def _save_checkpoint(self, input_ended: dict[str, Any] | None) -> str:
        """:meth:`save_checkpoint`, recording ``input_ended`` (``{"max_steps": ...}`` of a run that read
        all of its input: a finished run) in the manifest."""
        dense = {
            "model": self.model.dense_state_dict(),
            "optimizer": self._dense_optimizer.state_dict() if self._dense_optimizer is not None else None,
            "global_step": self.global_step,
            "batches_consumed": self._batches_consumed,
            "torch_rng_by_rank": self.dist.all_gather_object(torch.get_rng_state()),
        }
        input_state = self._source.state_dict() if self._source is not None else None
        path = self._checkpoints.save(self.global_step, dense if self.dist.rank == 0 else None,
                                      self.model.ctx.table_states(),
                                      extra={"input_states": self.dist.all_gather_object(input_state),
                                             "input_ended": input_ended},
                                      rank=self.dist.rank, world_size=self.dist.world_size, barrier=self.dist.barrier)
        self._restored = path
        if self._source is not None and hasattr(self._source, "commit"):
            self._source.commit()  # the stream's consumed offsets go with the checkpoint
        if self.model.p.serving.export_when_saving:
            self._export_when_saving(path)
        return path

    def _export_when_saving(self, checkpoint: str) -> None:
        """Exports the checkpointed model and deletes the exports of checkpoints no longer kept."""
        if self.dist.world_size > 1:
            if self.dist.rank == 0:
                logger.warning("serving.export_when_saving: not exported under torch.distributed (an export runs "
                               "in one process: `monolith export` the checkpoint %s)", checkpoint)
            return
        if self.model.create_serving_input_receiver_fn()() is None:
            logger.warning("serving.export_when_saving: not exported, serving_input_receiver_fn returned None")
            return
        from monolith.export import prune_exports

        export_dir = os.path.dirname(self.export_saved_model())
        kept = [os.path.basename(c).removeprefix("ckpt-") for c in self._checkpoints.checkpoints()]
        prune_exports(export_dir, {int(step) for step in kept if step.isdigit()})

    def _restore_input_state(self) -> None:
        """Positions a stateful input where the latest checkpoint left it (before it is read): by
        all ranks' states merged where the input has ``merge_state_dicts``, else by this rank's."""
        latest = self._checkpoints.latest()
        if latest is None:
            return
        states = CheckpointManager.read_manifest(latest).get("input_states") or []
        rank = self.dist.rank
        merge = getattr(self._source, "merge_state_dicts", None)
        if merge is not None and any(state is not None for state in states):
            # One state of every rank's: the checkpoint may come from another number of ranks.
            self._source.load_state_dict(merge([state for state in states if state is not None]))
        elif rank < len(states) and states[rank] is not None:
            self._source.load_state_dict(states[rank])

    def model_dump(self, batch: Batch, receiver: Any = None, input_source: Any = None) -> ModelDump:
        """Monolith's model dump of this estimator's model (:class:`~monolith.dump.ModelDump`): its
        params, features, slices, tables, dense optimizer and ``model_fn``'s TRAIN output on ``batch``
        (a batch of its ``input_fn``; the model is built on it first if it is not built yet).
        ``receiver`` and ``input_source`` (what ``input_fn`` returned) are recorded when given.
        The tables are read, not changed: ``model_fn`` runs without gradients or new rows.

        Raises:
            ValueError: what :meth:`ModelDump.from_model` refuses (training hooks, code in a slice).
        """
        self.build(batch)
        with self.model.in_mode(ModeKeys.TRAIN), torch.no_grad():
            self.model.ctx.train(False)  # no row is created for ids of ``batch`` that the tables lack
            output = self._model_fn(batch, ModeKeys.TRAIN)
        return ModelDump.from_model(self.model, output, self._dense_optimizer, batch, receiver,
                                    run_config=self.config, input_source=input_source)

    def export_saved_model(self, export_dir: str | os.PathLike | None = None) -> str:
        """Exports the model for serving to ``export_dir/<global_step>/`` and returns that path
        (see :func:`monolith.export.exporter.export_saved_model`); ``export_dir`` defaults to
        ``model_dir`` joined with the ``serving.export_dir_base`` param, as in Monolith. An estimator
        that has not built its model builds it on the serving receiver's features and restores the
        latest checkpoint, whose shards from any number of ranks merge into this process.

        Raises:
            RuntimeError: under torch.distributed (export from one process).
        """
        if self.dist.world_size > 1:
            raise RuntimeError("export_saved_model runs in one process: restore the checkpoint with an Estimator "
                               "outside torch.distributed (it merges the shards of every rank) and export there")
        if export_dir is None:
            export_dir = os.path.join(self.config.model_dir, self.model.p.serving.export_dir_base)
        receiver = serving_receiver(self.model)
        try:  # an estimator that has not built its model builds it here and restores the latest checkpoint
            with self.model.in_mode(ModeKeys.PREDICT):
                self.build(trace_batch(receiver))
        except Exception as error:
            error.add_note(exporting_note(receiver))
            raise
        return export_saved_model(self.model, self.global_step, export_dir, run_config=self.config)

    def _summary(self, tag: str, value: float) -> None:
        """Writes a TensorBoard scalar; under torch.distributed rank 0 alone writes (one value a step)."""
        if not self.config.enable_summaries or not math.isfinite(value):
            return
        if self.dist.rank != 0:
            return
        if self._summary_writer is None:
            from torch.utils.tensorboard import SummaryWriter  # imported late: it is slow to import

            self._summary_writer = SummaryWriter(self.config.model_dir)
        self._summary_writer.add_scalar(tag, value, self.global_step)

    def _hooks(self, training_hooks: list[TrainingHook]) -> list[TrainingHook]:
        hooks = list(training_hooks)
        metrics = self.model.p.metrics
        if (metrics.enable_file_metrics and metrics.deep_insight_sample_ratio > 0
                and not has_metric_sink(hooks, FileMetricHook.metric_sink)):
            # A relative file_base_name (default "deep_insight") is a folder of the run's model_dir.
            hooks.append(FileMetricHook(
                os.path.join(self.config.model_dir, metrics.file_base_name), metrics.deep_insight_name,
                metrics.deep_insight_sample_ratio, metrics.dump_filename, metrics.file_ext,
                metrics.extra_fields_keys, self.config.index, self.config.seed))
        return hooks

    # ------------------------------------------------------------------ training
    def train(self, max_steps: int | None = None, steps: int | None = None,
              input_fn: Callable[[str], Iterable[Batch]] | None = None,
              hooks: Sequence[TrainingHook] | None = None, epochs: int | None = None) -> dict[str, float]:
        """Trains until the global step reaches ``max_steps`` (or for ``steps`` more steps, or until
        the input ends, or for ``epochs`` passes over it); returns the last logged metrics.

        ``input_fn`` replaces the model's (e.g. a :class:`~monolith.streaming.KafkaSource`);
        ``hooks`` run besides the model's own (e.g. :class:`~monolith.streaming.ParameterSync`).
        An input with ``state_dict``/``load_state_dict`` (a stream) is checkpointed and resumed by
        its own state; any other input is resumed by skipping the batches already trained.

        A finished run stays finished: when the latest checkpoint was written because ``input_fn``
        ended (every batch trained), training again trains nothing and says so in one line, unless
        more is asked for: ``max_steps`` above both that step and the ``max_steps`` the run ended
        before, ``steps``, or ``epochs``; then ``input_fn`` is read again from its start.
        ``epochs`` reads it this many times, the first pass continuing where the checkpoint left it.

        SIGTERM or SIGINT (in the main thread) stops training after the current step: the
        checkpoint is written, the stream's offsets committed, the hooks ended (ParameterSync pushes
        its last changes) and ``train`` returns; a second signal ends the process at once. An input
        with a ``stop()`` method (a KafkaSource) is told to stop waiting for data. The loss and
        metrics logged every ``log_step_count_steps`` cover the steps since the previous log.
        """
        if steps is not None and max_steps is not None:
            raise ValueError("Can not provide both steps and max_steps.")
        if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1):
            raise ValueError(f"train: epochs must be an int >= 1, got {epochs!r}")
        extra_hooks = list(hooks or [])
        for hook in extra_hooks:
            if not isinstance(hook, TrainingHook):
                raise TypeError(f"train: hooks must be TrainingHooks, got {type(hook).__name__}")
        self.model.set_mode(ModeKeys.TRAIN)
        max_steps = max_steps if max_steps is not None else self.model.p.train.max_steps
        make_input = input_fn or self.model.create_input_fn(ModeKeys.TRAIN)
        source = make_input(ModeKeys.TRAIN)
        self._source = source if _is_stateful(source) else None
        if self._source is not None and epochs is not None:
            raise ValueError("train: epochs is for an input_fn read from its start, not a stream")
        stop_source = getattr(source, "stop", None)
        with GracefulStop(stop_source if callable(stop_source) else lambda: None) as stop:
            return self._train(max_steps, steps, epochs, make_input, source, extra_hooks, stop)

    def _finished(self, max_steps: int | None) -> bool:
        """Whether the latest checkpoint ended its run by reading all of ``input_fn`` and ``max_steps``
        asks for no more than it had (then one line says so)."""
        latest = self._checkpoints.latest()
        manifest = {} if latest is None else CheckpointManager.read_manifest(latest)
        ended = manifest.get("input_ended")
        if ended is None:
            return False
        step = int(manifest["global_step"])
        if max_steps is not None and max_steps > max(step, ended.get("max_steps") or 0):
            return False
        if self.dist.rank == 0:
            logger.warning("train: %s finished at global step %d (its input was read to the end): nothing to train; "
                           "a higher max_steps, steps or epochs trains more", latest, step)
        return True

    def _train(self, max_steps: int | None, steps: int | None, epochs: int | None,
               make_input: Callable[[str], Iterable[Batch]], source: Iterable[Batch],
               extra_hooks: list[TrainingHook], stop: GracefulStop) -> dict[str, float]:
        every_steps, every_secs = self._checkpoint_every()
        if self._source is not None:
            self._restore_input_state()
        batches = iter(source)
        first = self._first_of_every_rank(next(batches, None), {"max_steps": max_steps, "steps": steps,
                                                                "epochs": epochs})
        if first is None:
            if self._source is not None:
                # A stream with nothing new (a restarted trainer that had consumed it all) is quiet,
                # not broken: there is nothing to train and the checkpoint stays as it is.
                logger.warning("train: the stream produced no batch%s; nothing trained (latest checkpoint: %s)",
                               f" before {stop.requested}" if stop.requested else " before its idle timeout",
                               self._checkpoints.latest())
                return {}
            raise ValueError("input_fn(TRAIN) produced no batch")
        built_now = not self.model.ctx.built
        self.build(first)
        if self._source is None and steps is None and epochs is None and self._finished(max_steps):
            return {}
        if steps is not None:
            max_steps = self.global_step + steps
        if self._source is not None:
            batches = itertools.chain([first], batches)
        else:
            batches = self._passes(first, batches, make_input, epochs)
        metrics = _HeadMetrics()
        # Hooks begin before the first step: the given ones, and the model's from the build pass when
        # it ran now (tables exist, checkpoint restored), else from the first step's model_fn.
        model_hooks: list[TrainingHook] | None = self._hooks(self.model._training_hooks) if built_now else None
        for hook in (model_hooks or []) + extra_hooks:
            hook.begin(self)
        saved_step, saved_at = None, time.monotonic()
        progress = self._progress(max_steps)
        last: dict[str, float] = {}
        # Steps taken by this call: the same on every rank (examples are not: a rank may join with
        # empty batches), so the collectives after the loop depend on them.
        started, examples, steps = time.perf_counter(), 0, 0
        # Every rank stops at the same step when any was signalled.
        stopped = lambda: self.dist.count(stop.requested is not None) > 0  # noqa: E731
        try:
            # Ranks whose input ended join with empty batches until every rank's has: shares of a
            # data set differ in size, and a batch another rank already took from its stream is
            # trained, not lost. All ranks stop together; max_steps stops before taking a batch.
            done = lambda: stopped() or (max_steps is not None and self.global_step >= max_steps)  # noqa: E731
            for batch in self._in_step(batches, pad_exhausted=True, stop=done):
                with self.step_lock:
                    output = self.train_step(batch)
                self._batches_consumed += 1
                metrics.update(output)
                examples += batch.batch_size
                steps += 1
                if model_hooks is None:
                    model_hooks = self._hooks(output.training_hooks)
                    for hook in model_hooks:
                        hook.begin(self)
                for hook in model_hooks + extra_hooks:
                    hook.after_step(self.global_step, batch, output)
                if progress is not None:
                    progress.update(1)
                    progress.set_postfix(loss=f"{output.loss.item():.4g}",
                                         examples_per_sec=f"{examples / (time.perf_counter() - started):.0f}")
                if self.global_step % self.config.log_step_count_steps == 0:
                    last = self._log(output, metrics, examples / (time.perf_counter() - started))
                    metrics = _HeadMetrics()  # the next log's metrics: constant memory on endless streams
                due = bool(every_steps) and self.global_step % every_steps == 0
                if every_secs:
                    due = time.monotonic() - saved_at >= every_secs
                    due = self.dist.count(due) > 0  # saving is collective: every rank saves when one is due
                if due:
                    self.save_checkpoint()
                    saved_step, saved_at = self.global_step, time.monotonic()
        except BaseException as error:
            self._raise_failure(error, "training")
        else:
            signalled = stopped()  # under torch.distributed a collective, which every rank reaches here
            input_ended = (self._source is None and not signalled
                           and (max_steps is None or self.global_step < max_steps))
            if input_ended and max_steps is not None:
                logger.warning("train: the input ended at global step %d, before max_steps %d", self.global_step,
                               max_steps)
            if signalled:
                logger.warning("train: stopped by a signal at global step %d", self.global_step)
            if steps:
                if self.global_step % self.config.log_step_count_steps:  # steps since the last log
                    last = self._log(output, metrics, examples / (time.perf_counter() - started))
            ended = {"max_steps": max_steps} if input_ended else None
            if steps and saved_step != self.global_step:  # re-saving a step would replace the latest checkpoint
                self._save_checkpoint(input_ended=ended)
            elif ended is not None and self._restored is not None:
                self._checkpoints.annotate(self._restored, {"input_ended": ended},
                                           rank=self.dist.rank)
        finally:
            for hook in (model_hooks or []) + extra_hooks:
                hook.end()
            if progress is not None:
                progress.close()
            if self._summary_writer is not None:
                self._summary_writer.flush()
        return last

    def _passes(self, first: Batch, rest: Iterator[Batch], make_input: Callable[[str], Iterable[Batch]],
                epochs: int | None) -> Iterator[Batch]:
        """The batches of ``epochs`` passes over the input (None: one), the first continuing from where
        the restored checkpoint left it, or a new pass when every batch of it was trained."""
        batches = self._resume(first, rest)
        # Under torch.distributed a new pass starts only when every rank's was all trained; a rank
        # whose share was joins the others with empty batches (see _in_step).
        all_trained = self.dist.count(batches is not None) == 0
        if batches is None and not all_trained:
            batches = iter(())
        elif all_trained:
            logger.info("train: input_fn's %d batches were all trained; reading it again from the start",
                        self._batches_consumed)
            self._batches_consumed = 0
            batches = iter(make_input(ModeKeys.TRAIN))
        yield from batches
        for _ in range((epochs or 1) - 1):
            self._batches_consumed = 0  # counts the batches of the pass being trained (what a resume skips)
            yield from make_input(ModeKeys.TRAIN)

    def _first_of_every_rank(self, first: Batch | None, plan: dict[str, Any]) -> Batch | None:
        """This rank's first training batch, once every rank knows that every rank has one (the build
        pass and the steps are collectives) and that all train to the same ``plan``. A stream's rank
        without a batch joins with an empty one; other inputs need data on every rank."""
        gathered = self.dist.all_gather_object((None if first is None else first.empty_like(), plan))
        for rank, (_, theirs) in enumerate(gathered):
            if theirs != plan:
                raise ValueError(f"rank {self.dist.rank}: rank {rank} calls train with {_difference(plan, theirs)}; "
                                 f"every rank must train to the same step")
        shapes = [shape for shape, _ in gathered]
        empty = [rank for rank, shape in enumerate(shapes) if shape is None]
        if not empty or len(empty) == len(shapes) or first is not None and self._source is not None:
            return first
        if self._source is None:
            raise ValueError(f"rank {self.dist.rank}: input_fn(TRAIN) produced no batch on rank(s) {empty}; "
                             f"every rank needs training data")
        return next(shape for shape in shapes if shape is not None)

    def _checkpoint_every(self) -> tuple[int | None, float | None]:
        """(steps, seconds) between checkpoints: the RunConfig's, else the model's ``train.*`` params."""
        train = self.model.p.train
        steps = self.config.save_checkpoints_steps or train.save_checkpoints_steps
        secs = self.config.save_checkpoints_secs or train.save_checkpoints_secs
        if steps and secs:
            raise ValueError("Can not provide both save_checkpoints_secs and save_checkpoints_steps.")
        return steps, secs

    def _raise_failure(self, error: BaseException, doing: str) -> NoReturn:
        """Raises ``error`` (being handled) as it must be under torch.distributed: a collective that
        another rank broke, as an error naming that rank; this rank's own failure as it is, recorded
        for the others (whose collectives break as soon as this process exits: nobody waits for a
        timeout)."""
        if isinstance(error, GeneratorExit):
            raise error
        if isinstance(error, RuntimeError):  # gloo's transport errors are plain RuntimeErrors
            failed = {r: why for r, why in self.dist.failed_ranks().items() if r != self.dist.rank}
            lost = self.dist.lost_ranks() if not failed else []
            if failed or lost or isinstance(error, torch.distributed.DistError):
                self.dist.abandon()
                raise self._rank_failure(error, doing, failed, lost) from error
        self.dist.mark_failed(error)
        raise error

    def _rank_failure(self, error: BaseException, doing: str, failed: dict[int, str],
                      lost: list[int]) -> RuntimeError:
        """A failed collective as an error that names the rank(s) that failed or were lost."""
        if failed:
            who = "; ".join(f"rank {r} failed: {why}" for r, why in sorted(failed.items()))
        elif lost:
            who = f"rank(s) {lost} stopped (no sign of life for {LIVENESS_WINDOW_S:g} s: killed, exited or hung)"
        else:
            who = "another rank stopped or hung"
        return RuntimeError(f"rank {self.dist.rank}: {doing} stopped at global step {self.global_step}: {who}; "
                            f"the latest complete checkpoint is {self._checkpoints.latest()} ({error})")

    def train_step(self, batch: Batch) -> ModelOutput:
        """One step: forward, backward, global-norm clipping, dense and sparse updates."""
        output = self._model_fn(batch, ModeKeys.TRAIN)
        if self._dense_optimizer is None:
            # Built by an evaluate/predict call: the dense optimizer comes with the first training step.
            self._dense_optimizer = self._make_dense_optimizer(output.optimizer)
            self._load_optimizer_state()
        if output.loss is None:
            raise ValueError("model_fn returned no loss in TRAIN mode")
        # An empty batch (a rank whose input ended) has no gradient, though a mean loss over it is NaN.
        finite = bool(torch.isfinite(output.loss)) or batch.batch_size == 0
        if self._dense_optimizer is not None:
            self._dense_optimizer.zero_grad(set_to_none=True)
        output.loss.backward()
        summary_due = self.config.enable_summaries and (self.global_step + 1) % self.config.save_summary_steps == 0
        # Without clipping or a summary nobody reads the global norm: its pass over every gradient is skipped.
        needs_norm = self.model.p.clip_norm is not None or summary_due
        sparse_squared = self.model.ctx.grad_squared_norm() if needs_norm else None
        # The sparse gradients travel to their owners while the dense ones are being summed.
        summed = self.dist.start_gradient_reduce(self.model.parameters(), sparse_squared, finite,
                                                 mean=self.config.dense_reduce == "mean")
        self.model.ctx.exchange_gradients()
        sparse_squared, failing = summed()
        if failing:  # every rank stops here together: no update is applied anywhere
            self.model.ctx.discard_gradients()
            raise FloatingPointError(f"rank {self.dist.rank}: the loss is not finite on rank(s) {failing} at "
                                     f"global step {self.global_step}; the last checkpoint is kept")
        dense_scale, sparse_scale, norm = self._clip_scales(sparse_squared)
        if self._dense_optimizer is not None:
            decay = self.model.p.dense_weight_decay
            with torch.no_grad():
                for param in self.model.parameters():
                    if param.grad is None:
                        continue
                    if dense_scale != 1.0:
                        param.grad.mul_(dense_scale)
                    if decay:
                        param.grad.add_(param, alpha=decay)
            self._dense_optimizer.step()
        self.model.ctx.apply_gradients(self.global_step, sparse_scale, self.dedup)
        self.global_step += 1
        if summary_due:
            self._summary("global_gradient_norm", norm)
        return output

    def _clip_scales(self, sparse_squared: float | None) -> tuple[float, float, float]:
        """Scales of the dense and sparse gradients under clipping by the global norm, and the norm.

        The norm covers dense and sparse gradients together (``sparse_squared``: the sparse part,
        over all ranks; None when the norm is not needed, giving no clipping and a NaN norm); the
        sparse clip norm ramps up from 0 over ``sparse_norm_warmup_steps`` (Monolith's
        ``_gen_norm_warmup``).
        """
        clip_norm = self.model.p.clip_norm
        if sparse_squared is None:
            return 1.0, 1.0, math.nan
        squared = sparse_squared + squared_norm(p.grad for p in self.model.parameters() if p.grad is not None)
        norm = math.sqrt(squared)
        sparse_clip = clip_norm
        warmup = self.model.p.sparse_norm_warmup_steps
        if warmup and clip_norm is not None:
            sparse_clip = clip_norm * min(self.global_step / warmup, 1.0)
        return (*clip_scales(norm, clip_norm, sparse_clip), norm)

    def _log(self, output: ModelOutput, metrics: _HeadMetrics, examples_per_sec: float) -> dict[str, float]:
        values = {"loss": float(output.loss.item()), **metrics.compute(self.dist),
                  "examples_per_sec": examples_per_sec}
        for tag, value in values.items():
            self._summary(tag, value)
        line = f"step {self.global_step}: " + ", ".join(f"{k} = {v:.6g}" for k, v in values.items())
        position = self.stream_position
        if position is not None:
            line += f"; stream {position['topic']} at offsets {position['offsets']}"
        print(line, file=sys.stderr)
        return {**values, "global_step": self.global_step}

    def _shows_progress(self) -> bool:
        """Whether this process shows progress: with RunConfig.progress_bar, on rank 0 only."""
        return self.config.progress_bar and self.dist.rank == 0

    def _progress(self, max_steps: int | None):
        if not self.config.progress_bar or max_steps is None or max_steps - self.global_step < 50:
            return None
        # disable=None: no bar when stderr is not a terminal (CI logs, pipes).
        return tqdm(total=max_steps, initial=self.global_step, desc="train", unit="step", file=sys.stderr,
                    dynamic_ncols=True, disable=None)

    # ------------------------------------------------------------------ input
    def _input(self, mode: str) -> Iterator[Batch]:
        batches = self.model.create_input_fn(mode)(mode)
        if not isinstance(batches, Iterable):
            raise TypeError(f"input_fn({mode!r}) must return an iterable of Batch, got {type(batches).__name__}")
        return iter(batches)

    def _resume(self, first: Batch, rest: Iterator[Batch]) -> Iterator[Batch] | None:
        """The input from where the restored checkpoint left it (the same data order as an
        uninterrupted run when ``input_fn`` is deterministic); None when nothing is left."""
        batches = itertools.chain([first], rest)
        for _ in range(self._batches_consumed):
            if next(batches, None) is None:
                return None
        following = next(batches, None)
        return None if following is None else itertools.chain([following], batches)

    # ------------------------------------------------------------------ evaluation and prediction
    def _inference(self, mode: str, steps: int | None,
                   checkpoint: str | None = None) -> Iterator[tuple[Batch, ModelOutput]]:
        self.model.set_mode(ModeKeys.EVAL if mode == ModeKeys.EVAL else ModeKeys.PREDICT)
        try:
            yield from self._inference_steps(mode, steps, checkpoint)
        except BaseException as error:
            self._raise_failure(error, "evaluation" if mode == ModeKeys.EVAL else "prediction")

    def _inference_steps(self, mode: str, steps: int | None,
                         checkpoint: str | None) -> Iterator[tuple[Batch, ModelOutput]]:
        batches = self._input(mode)
        # Batches to come, when input_fn's iterable knows (a list does): the progress's ETA.
        known = operator.length_hint(batches) or None
        total_batches = steps if known is None else min(known, steps) if steps is not None else known
        progress = Progress("evaluate" if mode == ModeKeys.EVAL else "predict", enabled=self._shows_progress())
        count = 0
        with torch.no_grad(), progress:
            for batch in self._in_step(batches, pad_exhausted=True):
                if steps is not None and count >= steps:
                    break
                if count == 0:
                    self.build(batch)
                    if checkpoint is not None:
                        self._restore(checkpoint)
                    else:
                        self._restore_latest()  # a checkpoint written since the model was built
                    if self._restored is None:  # as TensorFlow's Estimator: no guessing with random weights
                        raise ValueError(f"Could not find trained model in model_dir: {self.config.model_dir} "
                                         f"(no checkpoint; train first)")
                output = self._model_fn(batch, ModeKeys.TRAIN if mode == ModeKeys.EVAL else ModeKeys.PREDICT)
                count += 1
                if count == 1 and total_batches is not None:
                    progress.total = total_batches * batch.batch_size  # examples, if batches are alike
                progress.update(batch.batch_size)
                if batch.batch_size:
                    yield batch, output

    def _in_step(self, batches: Iterator[Batch], pad_exhausted: bool = False,
                 stop: Callable[[], bool] | None = None) -> Iterator[Batch]:
        """The batches, kept in lock-step across ranks (lookups are collectives).

        Without ``pad_exhausted`` the steps end when any rank runs out of data; with it they go on
        while any rank has data, the exhausted ranks joining with empty batches. ``stop`` is asked
        before each batch is taken (a batch taken from a stream is never left untrained).
        """
        last: Batch | None = None
        while stop is None or not stop():
            batch = next(batches, None)
            have = self.dist.count(batch is not None)
            if have < self.dist.world_size and not (pad_exhausted and have > 0):
                return
            if have < self.dist.world_size:
                # A rank that had no batch at all learns the features of an empty one from the others.
                shapes = self.dist.all_gather_object(None if batch is None else batch.empty_like())
                if batch is None:
                    batch = last.empty_like() if last is not None else next(b for b in shapes if b is not None)
            last = batch
            yield batch

    def _writer(self) -> PredictionWriter | None:
        p = self.model.p
        if p.output_path is None:
            return None
        return PredictionWriter(p.output_path, p.output_fields, p.delimiter, self.config.index)

    def evaluate(self, steps: int | None = None, checkpoint_path: str | os.PathLike | None = None) -> dict[str, float]:
        """Evaluates on ``input_fn(EVAL)``; returns per-head AUC/MSE, the losses and the global step.

        ``loss`` is per example: the batches' losses summed, over the examples evaluated (with
        Monolith's summed losses, e.g. ``get_sigmoid_loss_and_pred``, the mean log loss of an
        example). ``batch_loss`` is Monolith's (TF Estimator's) ``loss``: the mean over batches of
        each batch's loss, which grows with the batch size. With ``output_path`` set, predictions
        are written as in :meth:`predict`.

        ``checkpoint_path`` (a checkpoint of ``model_dir``: its path, ``ckpt-N`` or TensorFlow's
        ``model.ckpt-N``) evaluates that checkpoint instead of the latest, as TensorFlow's
        ``evaluate(checkpoint_path=)``: training not yet checkpointed is saved first, and the
        estimator returns to its latest checkpoint afterwards, so training goes on where it was.
        """
        chosen = None if checkpoint_path is None else self._checkpoint_named(checkpoint_path)
        if chosen is not None and self.model.ctx.built and self.global_step != self._latest_step():
            self.save_checkpoint()  # the live state is newer than every checkpoint: keep it
        try:
            return self._evaluate(steps if steps is not None else self.model.p.eval.steps, chosen)
        finally:
            latest = self._checkpoints.latest()
            if chosen is not None and latest is not None and self._restored != latest:
                self._restore(latest)

    def _latest_step(self) -> int | None:
        latest = self._checkpoints.latest()
        return None if latest is None else int(CheckpointManager.read_manifest(latest)["global_step"])

    def _checkpoint_named(self, name: str | os.PathLike) -> str:
        """The checkpoint of ``model_dir`` that ``name`` (a path, ``ckpt-N``, ``model.ckpt-N``) names."""
        path = self._checkpoints.named(name)
        if path is None:
            kept = [os.path.basename(p) for p in self._checkpoints.checkpoints()]
            raise ValueError(f"checkpoint_path {os.fspath(name)!r} is not a checkpoint of {self.config.model_dir} "
                             f"(it has {kept})")
        return path

    def _evaluate(self, steps: int | None, checkpoint: str | None) -> dict[str, float]:
        metrics = _HeadMetrics()
        losses: list[tuple[float, int]] = []  # (a batch's loss, its examples)
        writer = self._writer()
        try:
            for batch, output in self._inference(ModeKeys.EVAL, steps, checkpoint):
                metrics.update(output)
                if output.loss is not None:
                    losses.append((float(output.loss), batch.batch_size))
                if writer is not None:
                    writer.write(batch, output.predictions)
        finally:
            if writer is not None:
                writer.close()
        losses = [loss for rank_losses in self.dist.all_gather_object(losses) for loss in rank_losses]
        summed, examples = sum(loss for loss, _ in losses), sum(n for _, n in losses)
        result = {**metrics.compute(self.dist), "loss": summed / examples if examples else float("nan"),
                  "batch_loss": summed / len(losses) if losses else float("nan"), "global_step": self.global_step}
        for tag, value in result.items():
            self._summary(f"eval/{tag}", float(value))
        if self._summary_writer is not None:  # the events must be on disk when evaluate returns
            self._summary_writer.flush()
        print("eval: " + ", ".join(f"{k} = {v:.6g}" for k, v in result.items()), file=sys.stderr)
        return result

    def predict(self, steps: int | None = None) -> Iterator[dict[str, float] | float]:
        """Yields one prediction per example of ``input_fn(PREDICT)`` (a dict by head name for a dict
        or list of heads).

        With ``output_path`` set, each batch is also written to ``{output_path}/part-{index:05d}``.
        """
        writer = self._writer()
        try:
            for batch, output in self._inference(ModeKeys.PREDICT, steps):
                if writer is not None:
                    writer.write(batch, output.predictions)
                if isinstance(output.predictions, torch.Tensor):
                    yield from output.predictions.detach().reshape(batch.batch_size, -1).squeeze(-1).tolist()
                else:
                    columns = {name: pred.detach().reshape(batch.batch_size, -1).squeeze(-1).tolist()
                               for name, pred in zip(output.head_names, output.preds)}
                    for i in range(batch.batch_size):
                        yield {name: column[i] for name, column in columns.items()}
        finally:
            if writer is not None:
                writer.close()


def _difference(ours: Any, theirs: Any) -> str:
    """Where two layouts differ, briefly: the differing keys of dicts, else both values."""
    if isinstance(ours, dict) and isinstance(theirs, dict):
        keys = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
        return ", ".join(f"{k} {ours.get(k)!r} here vs {theirs.get(k)!r}" for k in keys)
    return f"{ours!r} here vs {theirs!r}"


def _is_stateful(source: object) -> bool:
    """Whether an input can save and restore its position (a stream, e.g. KafkaSource)."""
    return callable(getattr(source, "state_dict", None)) and callable(getattr(source, "load_state_dict", None))
