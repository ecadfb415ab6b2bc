"""Monolith's ``RunnerConfig``: every field of Monolith's runner config, mapped onto this stack.

Monolith configures a run with ``RunnerConfig`` (``runner_utils.py``, a subclass of
``cpu_training.DistributedCpuTrainingConfig`` and ``CpuTrainingConfig``) or with the
``estimator.RunConfig`` subset of it. Here one dataclass carries all of those field names, so
Monolith code that builds either runs after the package rename (and ``RunConfig`` -> ``RunnerConfig``);
:class:`~monolith.estimator.Estimator` takes it wherever it takes a :class:`~monolith.run_config.RunConfig`.
A misspelt field is a ``TypeError`` naming it, as for any dataclass.

**Fields that act here** (:meth:`RunnerConfig.to_run_config` / :meth:`RunnerConfig.configure`):

* ``model_dir`` -> ``RunConfig.model_dir``; empty means ``/tmp/<user>/<model name>``, as Monolith's
  local mode.
* ``save_checkpoints_steps``, ``save_checkpoints_secs`` -> the same ``RunConfig`` fields (either,
  not both; when neither is set, the model's ``train.save_checkpoints_*`` params apply).
* ``checkpoints_max_to_keep`` -> ``RunConfig.keep_checkpoint_max``.
* ``log_step_count_steps`` -> ``RunConfig.log_step_count_steps``; ``save_summary_steps`` -> the same
  ``RunConfig`` field (how often the global gradient norm is written; loss and metrics are written at
  the log steps); 0 or None turns TensorBoard summaries off.
* ``use_native_multi_hash_table`` -> the same field (None, Monolith's default, means True).
* ``hashtable_init_capacity`` -> the same ``RunConfig`` field: ids every table holds before it
  first grows, allocated when the tables are built.
* ``index`` -> ``RunConfig.index`` (under torch.distributed the rank replaces it).
* ``enable_fid_dedup`` -> ``RunConfig.dedup="sum"``: one update per distinct FID with the summed
  gradient, which is what deduplicating FIDs before the push does in Monolith.
* ``enable_sync_training`` -> ``RunConfig.dense_reduce="mean"`` (Horovod's average, as Monolith's
  sync training); otherwise ``"sum"``, the nearest to Monolith's asynchronous PS training, where
  every worker's gradient is applied in full. It also sets ``dedup="sum"`` in one process, as
  Monolith's sync training updates each distinct FID once with its summed gradient.
* ``server_type``: ``"worker"`` or ``"chief"``; ``"ps"`` is an error, there are no parameter
  servers (the tables are sharded over the training ranks).
* ``restore_dir`` / ``restore_ckpt`` (training jobs only, ``mode="train"``, as in Monolith): a
  ``model_dir`` without checkpoints starts from ``restore_dir``'s latest checkpoint (or its
  ``restore_ckpt``), copied into ``model_dir``; with ``restore_ckpt`` alone, training restarts once
  from that older checkpoint of ``model_dir`` (a ``restore_ckpt`` marker file in ``model_dir``
  records that it was done, as in Monolith). ``model.ckpt-N`` names checkpoint ``ckpt-N``; a name
  that is not there is logged and the latest is used; a ``restore_dir`` without checkpoints is
  logged and skipped.
* ``is_local``, ``deep_insight_name``, ``deep_insight_target``, ``deep_insight_sample_ratio``: as
  Monolith's ``Estimator``, a non-local run sets ``metrics.enable_deep_insight`` and these params.
* ``params_override``: a JSON object of (dotted) param names set on the model.
* ``feature_list``: sets the model's ``feature_list`` param (the slots of its features).
* ``kafka_topics`` (a comma-separated string becomes a list), ``kafka_group_id``, ``kafka_servers``:
  kept for the model's ``input_fn`` to hand to
  :func:`~monolith.streaming.create_plain_kafka_dataset`; they do not switch a file input to Kafka.

**Fields accepted and ignored**, because what they configure does not exist on this stack:
service discovery and cluster wiring (``discovery_type``, ``tf_config``, ``zk_server``,
``zk_watch_address_family``, ``uuid``, ``num_ps``, ``num_workers``, ``num_extra_ps``,
``num_redundant_ps``, ``dc_aware``, ``cluster_type``, ``*_timeout_*``, ``max_retry_times``,
``retry_wait_in_secs``, ``chief_timeout_secs``: torchrun's environment defines the world);
TensorFlow session and gRPC tuning (``intra_op_parallelism_threads``, ``inter_op_parallelism_threads``,
``tf_grpc_worker_cache_threads``, ``monolith_grpc_worker_service_handler_multiplier``,
``max_rpc_deadline_millis``, ``device_fn``, ``tensorboard_log_path``); the PS pipeline
(``embedding_prefetch_capacity``, ``enable_embedding_postpush``, ``enable_variable_prefetch``,
``enable_variable_postpush``, ``enable_async_optimize``, ``enable_pipelined_*``,
``reorder_fids_in_data_pipeline``, ``enable_variable_partition``, ``enable_fused_layout``);
the probabilistic occurrence filter (``filter_*``: the filter here
counts exactly unless ``RunConfig.occurrence_filter`` asks for Monolith's sliding hash filter, per
table, whose 300M-id default per parameter server would not fit each table); GPU and partial-sync placement (``enable_gpu_training``,
``enable_partial_sync_training``, ``processes_per_gpu``, ``merge_sync_training_ckpt``,
``num_extra_dsworker_on_gpu_worker``: placement follows :class:`~monolith.device.MonolithDeviceCtx`);
online-PS parameter sync (``enable_realtime_training``, ``enable_parameter_sync``, ``bzid``,
``base_name``, ``ps_replica_num``, ``unified_serving``: pass
:class:`~monolith.streaming.ParameterSync` to ``Estimator.train(hooks=)``); dense-only and tide
checkpoints (``dense_only_*``, ``tide_*``, ``partial_recovery``: every checkpoint holds the dense and
sparse parts); data-service and file-listing options (``data_type``, ``lagrangex_header``, ``sort_id``,
``kafka_dump``, ``kafka_dump_prefix``, ``input_path``, ``wildcard``, ``start_*``, ``end_*``,
``is_hourly``, ``enable_dynamic_sharding``, ``max_task_num_per_worker``, ``use_dataservice``,
``fountain_*``, ``items_input_*``, ``roughsort_*``, ``enable_resource_constrained_roughsort``:
``input_fn`` reads its own data, e.g. with :class:`~monolith.data.pb_dataset.PBDataset`, which takes
the framing flags); profiling, dumps and reload tweaks (``profile_*``, ``enable_local_profiling``,
``enable_model_dump``, ``enable_model_ckpt_info``, ``feature_eviction_on_save``, ``clear_nn``,
``continue_training``, ``reload_alias_map``, ``enable_alias_map_auto_gen``,
``only_feature_engineering``, ``force_shutdown_ps``, ``warmup_file``,
``skip_zero_embedding_when_serving``, ``disable_native_metrics``, ``submit_time_secs``,
``containers_ready_time_secs``, ``max_slow_start_wait_minute``, ``use_estimator``, ``task``,
``model_name``, ``mode``: ``Estimator.train`` / ``evaluate`` / ``predict`` pick the mode).
"""

from __future__ import annotations

import dataclasses
import enum
import getpass
import json
import logging
import os
import time
from typing import TYPE_CHECKING, Callable

from monolith import gflags_utils
from monolith.atomic import atomic_write
from monolith.checkpoint import CheckpointManager
from monolith.run_config import RunConfig

if TYPE_CHECKING:
    from monolith.model import MonolithBaseModel

__all__ = ["RunnerConfig", "ServiceDiscoveryType"]

logger = logging.getLogger(__name__)

# Written into model_dir once restore_ckpt has been applied, so a restarted job resumes from its
# own newer checkpoints instead of rolling back again (Monolith's marker file of the same name).
RESTORE_MARKER = "restore_ckpt"


class ServiceDiscoveryType(enum.Enum):
    """Monolith's service discovery kinds; accepted and ignored (torchrun's environment defines the world)."""

    PRIMUS = 1
    CONSUL = 2
    ZK = 3
    MLP = 4


@dataclasses.dataclass
class RunnerConfig:
    """Monolith's ``RunnerConfig`` field names and defaults (see the module doc for what each does here)."""

    # ---- CpuTrainingConfig
    server_type: str = "worker"
    index: int = 0
    num_ps: int = 0
    num_workers: int = 1
    model_name: str = ""
    filter_capacity: int = 300000000
    filter_split_num: int = 7
    filter_type: str = "sliding_hash_filter"
    filter_equal_probability: bool = True
    hashtable_init_capacity: int = 0
    use_native_multi_hash_table: bool | None = None
    embedding_prefetch_capacity: int = 0
    enable_embedding_postpush: bool = False
    enable_variable_prefetch: bool = False
    enable_variable_postpush: bool = False
    enable_sync_training: bool = False
    enable_partial_sync_training: bool = False
    enable_gpu_training: bool = False
    processes_per_gpu: int = 1
    merge_sync_training_ckpt: bool = True
    mode: str = "train"
    partial_recovery: bool | None = None
    tide_start_hour: int | None = None
    tide_start_minute: int | None = None
    tide_end_hour: int | None = None
    tide_end_minute: int | None = None
    tide_save_secs: int | None = None
    enable_realtime_training: bool = False
    enable_async_optimize: bool = False
    enable_pipelined_fwda2a: bool = False
    enable_pipelined_bwda2a: bool = False
    profile_some_steps_from: int | None = None
    profile_save_steps_interval: int = 5000
    profile_with_nvprof_from_to: str | None = None
    reorder_fids_in_data_pipeline: bool = False
    chief_timeout_secs: int = 1800
    save_checkpoints_secs: int | None = None
    save_checkpoints_steps: int | None = None
    dense_only_save_checkpoints_secs: int | None = None
    dense_only_save_checkpoints_steps: int | None = None
    dense_only_stop_training_when_save: bool = False
    warmup_file: str = "./warmup_file"
    skip_zero_embedding_when_serving: bool = False
    max_rpc_deadline_millis: int = 30000
    checkpoints_max_to_keep: int = 10
    submit_time_secs: int | None = None
    containers_ready_time_secs: int | None = None
    cluster_type: str = "stable"
    max_slow_start_wait_minute: int = 10
    enable_model_ckpt_info: bool = False
    feature_eviction_on_save: bool = False
    only_feature_engineering: bool = False
    enable_variable_partition: bool = True
    enable_fused_layout: bool = False
    force_shutdown_ps: bool = False
    clear_nn: bool = False
    continue_training: bool = False
    reload_alias_map: dict[str, int] | None = None
    enable_alias_map_auto_gen: bool | None = None
    enable_model_dump: bool = False
    enable_resource_constrained_roughsort: bool = False
    roughsort_candidate_items_path: str | None = None
    roughsort_items_use_parquet: bool = False
    items_input_lagrangex_header: bool = False
    items_input_has_sort_id: bool = False
    items_input_kafka_dump: bool = False
    items_input_kafka_dump_prefix: bool = False
    device_fn: Callable[..., str] | None = None
    use_dataservice: bool | None = None
    num_extra_dsworker_on_gpu_worker: int = 0
    save_summary_steps: int | None = 100
    log_step_count_steps: int = 100
    # ---- DistributedCpuTrainingConfig
    model_dir: str = ""
    tensorboard_log_path: str = ""
    intra_op_parallelism_threads: int = 8
    inter_op_parallelism_threads: int = 16
    num_extra_ps: int = 0
    num_redundant_ps: int = 0
    uuid: str = ""
    operation_timeout_in_ms: int = -1
    session_creation_timeout_secs: int = 7200
    max_retry_times: int = 0
    retry_wait_in_secs: int = 30
    fountain_zk_host: str = ""
    fountain_model_name: str = ""
    dc_aware: bool = False
    # ---- RunnerConfig
    task: str | None = None
    tf_config: str | None = None
    deep_insight_name: str | None = None
    discovery_type: ServiceDiscoveryType = ServiceDiscoveryType.CONSUL
    zk_server: str | None = None
    zk_watch_address_family: str = "ipv4"
    is_local: bool = False
    enable_fid_dedup: bool = False
    bzid: str | None = None
    ps_replica_num: int | None = None
    tf_grpc_worker_cache_threads: int = 16
    monolith_grpc_worker_service_handler_multiplier: float = 1.0
    params_override: str | None = None
    base_name: str | None = None
    data_type: str | None = None
    feature_list: str | None = None
    lagrangex_header: bool = False
    sort_id: bool = True
    kafka_dump: bool = False
    kafka_dump_prefix: bool = False
    restore_dir: str | None = None
    restore_ckpt: str | None = None
    deep_insight_target: str | None = None
    deep_insight_sample_ratio: float | None = None
    unified_serving: bool = False
    use_estimator: bool = False
    kafka_topics: list[str] | str | None = None
    kafka_group_id: str | None = None
    kafka_servers: str | None = None
    input_path: str | None = None
    is_hourly: bool = False
    wildcard: str | None = None
    start_date: str | None = None
    end_date: str | None = None
    start_hour: int | None = None
    end_hour: int | None = None
    enable_dynamic_sharding: bool = False
    max_task_num_per_worker: int = 1
    disable_native_metrics: bool = True
    # ---- estimator.RunConfig's own fields, so that code building one runs with this class
    enable_parameter_sync: bool = False
    enable_local_profiling: bool = False

    def __post_init__(self) -> None:
        gflags_utils.update(self)  # --model_dir, ... as Monolith: a field the code set wins over its flag
        if isinstance(self.kafka_topics, str):
            self.kafka_topics = self.kafka_topics.split(",")
        if self.server_type not in ("worker", "chief"):
            raise ValueError(f"RunnerConfig.server_type {self.server_type!r}: only 'worker' (or 'chief') runs here; "
                             f"there are no parameter servers, the tables are sharded over the training ranks")

    def to_run_config(self, model_name: str = "model") -> RunConfig:
        """The :class:`~monolith.run_config.RunConfig` of these fields (``model_name`` names the
        default ``model_dir``)."""
        return RunConfig(
            model_dir=self.model_dir or os.path.join("/tmp", getpass.getuser(), model_name),
            save_checkpoints_steps=self.save_checkpoints_steps,
            save_checkpoints_secs=self.save_checkpoints_secs,
            keep_checkpoint_max=self.checkpoints_max_to_keep,
            log_step_count_steps=self.log_step_count_steps,
            use_native_multi_hash_table=self.use_native_multi_hash_table is not False,
            hashtable_init_capacity=self.hashtable_init_capacity,
            index=self.index,
            dedup="sum" if self.enable_fid_dedup or self.enable_sync_training else None,
            dense_reduce="mean" if self.enable_sync_training else "sum",
            enable_summaries=bool(self.save_summary_steps),
            save_summary_steps=self.save_summary_steps or 100,
        )

    def configure(self, model: "MonolithBaseModel") -> RunConfig:
        """What Monolith's ``Estimator`` does with a runner config before it runs ``model``: sets the
        model's params from ``params_override``, ``feature_list`` and the deep-insight fields,
        prepares ``model_dir`` from ``restore_dir`` / ``restore_ckpt``, and returns the
        :meth:`to_run_config` for it."""
        p = model.p
        if self.params_override:
            p.set(**json.loads(self.params_override))
        if self.feature_list is not None and p.contain("feature_list"):
            p.feature_list = self.feature_list
        p.metrics.enable_deep_insight = not self.is_local
        if not self.is_local:
            if self.deep_insight_name:
                p.metrics.deep_insight_name = self.deep_insight_name
            if self.deep_insight_target:
                p.metrics.deep_insight_target = self.deep_insight_target
            if self.deep_insight_sample_ratio:
                p.metrics.deep_insight_sample_ratio = self.deep_insight_sample_ratio
        run_config = self.to_run_config(p.name)
        if self.mode != "train":
            if self.restore_dir or self.restore_ckpt:  # as Monolith: only a training job restores
                logger.info("mode is %s: restore_dir / restore_ckpt are ignored", self.mode)
        # Rank 0 (Monolith's chief) prepares the shared model_dir; the other ranks wait for it.
        elif int(os.environ.get("RANK", "0")) == 0:
            self._prepare_model_dir(run_config.model_dir)
        else:
            self._wait_for_model_dir(run_config.model_dir)
        return run_config

    def _restores_once(self) -> bool:
        return bool(self.restore_ckpt) and not self.restore_dir

    def _restores_from_dir(self) -> bool:
        """A ``restore_dir`` holding a checkpoint (Monolith skips one without, and so does this)."""
        return bool(self.restore_dir) and CheckpointManager(self.restore_dir).latest() is not None

    def _wait_for_model_dir(self, model_dir: str, timeout_s: float = 600.0) -> None:
        deadline = time.monotonic() + timeout_s
        while ((self._restores_from_dir() and CheckpointManager(model_dir).latest() is None)
               or (self._restores_once() and not os.path.exists(os.path.join(model_dir, RESTORE_MARKER)))):
            if time.monotonic() > deadline:
                raise TimeoutError(f"rank 0 did not prepare {model_dir} from restore_dir={self.restore_dir!r} / "
                                   f"restore_ckpt={self.restore_ckpt!r} within {timeout_s:.0f} s")
            time.sleep(0.1)

    def _prepare_model_dir(self, model_dir: str) -> None:
        own = CheckpointManager(model_dir)
        if self.restore_dir and not self._restores_from_dir():
            logger.warning("restore_dir %s has no checkpoint: training starts from %s as it is", self.restore_dir,
                           model_dir)
        elif self.restore_dir and own.latest() is None:
            own.copy_from(CheckpointManager(self.restore_dir).find(self.restore_ckpt))
        elif self._restores_once() and not os.path.exists(os.path.join(model_dir, RESTORE_MARKER)):
            chosen = own.find(self.restore_ckpt)
            own.make_latest(chosen)
            with atomic_write(os.path.join(model_dir, RESTORE_MARKER), "w") as f:
                f.write(os.path.basename(chosen))


# Every field is a command-line flag once this module is imported, as Monolith's runner_utils does.
gflags_utils.extract_flags(RunnerConfig, skip_flags={"device_fn"})
