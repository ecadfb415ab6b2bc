"""How a model is run: :class:`RunConfig`, plain data that the Estimator, the command line and
Monolith's ``RunnerConfig`` (:mod:`monolith.runner_config`) all produce."""

from __future__ import annotations

import dataclasses
import os

__all__ = ["RunConfig"]


@dataclasses.dataclass
class RunConfig:
    """How a model is run (Monolith's ``RunnerConfig``, the fields that mean something here).

    Args:
        model_dir: checkpoints, summaries and exports go here.
        save_checkpoints_steps: checkpoint every this many steps (None: the model's
            ``train.save_checkpoints_steps`` param; neither: only at the end of ``train``).
        save_checkpoints_secs: checkpoint when this many seconds passed since the last one (None:
            the model's ``train.save_checkpoints_secs`` param); not together with steps.
        keep_checkpoint_max: how many checkpoints to keep.
        log_step_count_steps: log loss, metrics and examples/s every this many steps.
        use_native_multi_hash_table: one table per slot (True) or merged tables for alike slots.
        hashtable_init_capacity: when above 0, ids every table holds before it first grows, its
            memory allocated when the tables are built (Monolith's field of the same name; under
            torch.distributed each rank's shard of a table reserves that many, as each Monolith PS does).
        seed: seeds Python's ``random``, numpy and torch before a model given as params is built
            (:func:`seed_everything`; the ``monolith`` command does it before building its model),
            and again the embedding initializers when the tables are built.
        index: this worker's index (output file suffix); set from torch.distributed when it runs.
        dedup: how repeated ids of a step update the tables: "local" (one update per occurrence,
            in order), "sum" (one update per distinct id with the summed gradient, as Monolith's
            sync training); None picks "sum" under torch.distributed and "local" otherwise.
        dense_reduce: how dense gradients combine over ranks: "sum" (N ranks train like one process
            on the N batches together, with Monolith's summed losses) or "mean" (Horovod's average,
            as Monolith's sync training does).
        enable_summaries: write TensorBoard scalars to ``model_dir``: the loss, metrics and
            examples/s at every log step, the global gradient norm every ``save_summary_steps``.
        progress_bar: show progress on stderr (rank 0): a tqdm bar while training (on a terminal,
            with ``max_steps``), evaluating, predicting and exporting; where stderr is no
            terminal, the last three write a periodic line instead (:mod:`monolith.progress`).
    """

    model_dir: str = "model_dir"
    save_checkpoints_steps: int | None = None
    save_checkpoints_secs: float | None = None
    keep_checkpoint_max: int = 5
    log_step_count_steps: int = 100
    use_native_multi_hash_table: bool = True
    hashtable_init_capacity: int = 0
    seed: int = 0
    index: int = 0
    dedup: str | None = None
    dense_reduce: str = "sum"
    enable_summaries: bool = True
    save_summary_steps: int = 100
    progress_bar: bool = True

    def __post_init__(self) -> None:
        """Wrong types and values fail here, naming the field, not at some later step."""
        if not isinstance(self.model_dir, (str, os.PathLike)):
            raise ValueError(f"RunConfig.model_dir must be a path, got {self.model_dir!r}")
        self.model_dir = os.fspath(self.model_dir)
        minimum = {"keep_checkpoint_max": 1, "log_step_count_steps": 1, "hashtable_init_capacity": 0, "index": 0,
                   "save_summary_steps": 1}
        for name, low in {**minimum, "seed": None, "save_checkpoints_steps": 1}.items():
            value = getattr(self, name)
            if value is None and name == "save_checkpoints_steps":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or (low is not None and value < low):
                bound = "" if low is None else f" >= {low}"
                raise ValueError(f"RunConfig.{name} must be an int{bound}, got {value!r}")
        secs = self.save_checkpoints_secs
        if secs is not None and (isinstance(secs, bool) or not isinstance(secs, (int, float)) or secs <= 0):
            raise ValueError(f"RunConfig.save_checkpoints_secs must be a number > 0, got {secs!r}")
        for name in ("use_native_multi_hash_table", "enable_summaries", "progress_bar"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"RunConfig.{name} must be true or false, got {getattr(self, name)!r}")
        if self.dedup not in (None, "local", "sum"):
            raise ValueError(f"RunConfig.dedup must be 'local', 'sum' or None, got {self.dedup!r}")
        if self.dense_reduce not in ("sum", "mean"):
            raise ValueError(f"RunConfig.dense_reduce must be 'sum' or 'mean', got {self.dense_reduce!r}")
