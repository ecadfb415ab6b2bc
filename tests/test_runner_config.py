"""Monolith's run configuration and params names: RunnerConfig's fields and their mapping onto
RunConfig, its effect on the model (params_override, deep insight, feature_list, restore_dir /
restore_ckpt), checkpoints by seconds, export with each checkpoint, ``cpu_training.local_train``
end to end, the params tree against Monolith's names, and Monolith's import paths.
"""

from __future__ import annotations

import dataclasses
import functools
import getpass
import logging
import os

import numpy as np
import pytest
import torch

from monolith.checkpoint import CheckpointManager
from monolith.estimator import Estimator, EstimatorSpec, RunConfig
from monolith.fid import make_fid
from monolith.losses import get_sigmoid_loss_and_pred
from monolith.model import MonolithModel
from monolith.runner_config import RunnerConfig
from monolith.sparse import Batch, KeyedJaggedTensor
from monolith.streaming import KafkaSource, create_plain_kafka_dataset

# Every field of Monolith's CpuTrainingConfig, DistributedCpuTrainingConfig, RunnerConfig and
# estimator.RunConfig (cpu_training.py, runner_utils.py, estimator.py).
MONOLITH_RUNNER_FIELDS = """
server_type index num_ps num_workers model_name filter_capacity filter_split_num filter_type
filter_equal_probability hashtable_init_capacity use_native_multi_hash_table embedding_prefetch_capacity
enable_embedding_postpush enable_variable_prefetch enable_variable_postpush enable_sync_training
enable_partial_sync_training enable_gpu_training processes_per_gpu merge_sync_training_ckpt mode
partial_recovery tide_start_hour tide_start_minute tide_end_hour tide_end_minute tide_save_secs
enable_realtime_training enable_async_optimize enable_pipelined_fwda2a enable_pipelined_bwda2a
profile_some_steps_from profile_save_steps_interval profile_with_nvprof_from_to reorder_fids_in_data_pipeline
chief_timeout_secs save_checkpoints_secs save_checkpoints_steps dense_only_save_checkpoints_secs
dense_only_save_checkpoints_steps dense_only_stop_training_when_save warmup_file skip_zero_embedding_when_serving
max_rpc_deadline_millis checkpoints_max_to_keep submit_time_secs containers_ready_time_secs cluster_type
max_slow_start_wait_minute enable_model_ckpt_info feature_eviction_on_save only_feature_engineering
enable_variable_partition enable_fused_layout force_shutdown_ps clear_nn continue_training reload_alias_map
enable_alias_map_auto_gen enable_model_dump enable_resource_constrained_roughsort roughsort_candidate_items_path
roughsort_items_use_parquet items_input_lagrangex_header items_input_has_sort_id items_input_kafka_dump
items_input_kafka_dump_prefix device_fn use_dataservice num_extra_dsworker_on_gpu_worker save_summary_steps
log_step_count_steps model_dir tensorboard_log_path intra_op_parallelism_threads inter_op_parallelism_threads
num_extra_ps num_redundant_ps uuid operation_timeout_in_ms session_creation_timeout_secs max_retry_times
retry_wait_in_secs fountain_zk_host fountain_model_name dc_aware task tf_config deep_insight_name discovery_type
zk_server zk_watch_address_family is_local enable_fid_dedup bzid ps_replica_num tf_grpc_worker_cache_threads
monolith_grpc_worker_service_handler_multiplier params_override base_name data_type feature_list lagrangex_header
sort_id kafka_dump kafka_dump_prefix restore_dir restore_ckpt deep_insight_target deep_insight_sample_ratio
unified_serving use_estimator kafka_topics kafka_group_id kafka_servers input_path is_hourly wildcard start_date
end_date start_hour end_hour enable_dynamic_sharding max_task_num_per_worker disable_native_metrics
enable_parameter_sync enable_local_profiling
""".split()

# Every param Monolith's MonolithModel defines (base_layer.py, base_task.py, native_task.py, native_model.py).
MONOLITH_PARAMS = """
name accelerator mode input.eval_examples input.train_examples
eval.per_replica_batch_size eval.steps_per_eval eval.steps
train.steps train.max_steps train.per_replica_batch_size train.file_pattern train.repeat train.label_key
train.save_checkpoints_steps train.save_checkpoints_secs train.dense_only_save_checkpoints_secs
train.dense_only_save_checkpoints_steps train.max_pending_seconds_for_barrier train.slow_start_steps
train.sample_bias train.use_gpu_emb_table train.use_fountain train.fountain_zk_host train.fountain_model_name
train.fountain_parse_on_server train.fountain_precompute_value_rowids
metrics.enable_deep_insight metrics.deep_insight_target metrics.deep_insight_name metrics.deep_insight_sample_ratio
metrics.extra_fields_keys metrics.enable_throughput_hook metrics.enable_kafka_metrics
metrics.enable_tf2_profiler_hook metrics.enable_file_metrics metrics.file_base_name metrics.file_ext
metrics.parse_fn metrics.key_fn metrics.layout_fn metrics.dump_filename metrics.use_data_service
serving.export_with_gpu_allowed serving.export_with_cleared_entry_devices serving.export_when_saving
serving.export_dir_base serving.export_mode serving.shared_embedding serving.with_remote_gpu
output_path output_fields delimiter file_name enable_grads_and_vars_summary dense_weight_decay clip_norm
sparse_norm_warmup_steps default_occurrence_threshold feature_list
""".split()

STEPS = 6


def make_batches(n: int = STEPS, batch_size: int = 8, seed: int = 0) -> list[Batch]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        rows = {name: [[make_fid(slot, int(rng.integers(20)))] for _ in range(batch_size)]
                for name, slot in (("user", 1), ("item", 2))}
        label = torch.from_numpy((rng.random(batch_size) < 0.5).astype(np.float32))
        out.append(Batch(KeyedJaggedTensor.from_lists(rows), {"label": label}))
    return out


class TinyModel(MonolithModel):
    """Two features and a linear head; no serving receiver."""

    def __init__(self, params=None):
        super().__init__(params)
        self.batch_size = 8
        self.head = torch.nn.Linear(8, 1)

    def input_fn(self, mode):
        return make_batches()

    def model_fn(self, features, mode):
        for name in ("user", "item"):
            self.create_embedding_feature_column(name)
        emb = self.lookup_embedding_slice(["user", "item"], "vec", 4, out_type="concat")
        loss, pred = get_sigmoid_loss_and_pred("ctr", self.head(emb).reshape(-1), features["label"], self.batch_size,
                                               mode=mode)
        return EstimatorSpec(label=features["label"], pred=pred, head_name="ctr", loss=loss,
                             optimizer=functools.partial(torch.optim.SGD, lr=0.1))

    def serving_input_receiver_fn(self):
        return None


def quiet(**fields) -> RunnerConfig:
    return RunnerConfig(log_step_count_steps=10**9, save_summary_steps=0, **fields)


def table_rows(estimator: Estimator) -> dict[str, np.ndarray]:
    """Each table's rows in FID order."""
    rows = {}
    for name, module in estimator.model.ctx.tables.items():
        fids, values = module.table.items()
        rows[name] = values[np.argsort(fids)]
    return rows


# ---------------------------------------------------------------------------------------- RunnerConfig
def test_every_monolith_runner_field_is_accepted():
    names = {f.name for f in dataclasses.fields(RunnerConfig)}
    assert sorted(set(MONOLITH_RUNNER_FIELDS) - names) == []
    RunnerConfig(**{f.name: f.default for f in dataclasses.fields(RunnerConfig)})


def test_unknown_field_is_a_type_error_naming_it():
    with pytest.raises(TypeError, match="model_dri"):
        RunnerConfig(model_dri="/tmp/x")


def test_field_mapping_onto_run_config():
    config = RunnerConfig(model_dir="/tmp/m", save_checkpoints_steps=7, checkpoints_max_to_keep=3,
                          log_step_count_steps=9, use_native_multi_hash_table=False, index=2, enable_fid_dedup=True,
                          enable_sync_training=True, save_summary_steps=0, num_ps=4, num_workers=8,
                          discovery_type="zk", kafka_topics="a,b", hashtable_init_capacity=4096)
    assert config.to_run_config() == RunConfig(
        model_dir="/tmp/m", save_checkpoints_steps=7, keep_checkpoint_max=3, log_step_count_steps=9,
        use_native_multi_hash_table=False, hashtable_init_capacity=4096, index=2, dedup="sum",
        dense_reduce="mean", enable_summaries=False)
    assert config.kafka_topics == ["a", "b"]
    defaults = RunnerConfig(save_checkpoints_secs=30).to_run_config("movie")
    assert defaults == RunConfig(model_dir=os.path.join("/tmp", getpass.getuser(), "movie"), save_checkpoints_secs=30,
                                 keep_checkpoint_max=10, use_native_multi_hash_table=True, dedup=None,
                                 dense_reduce="sum", enable_summaries=True)


def test_hashtable_init_capacity_sizes_every_table_and_training_is_unchanged(tmp_path):
    runs = {}
    for capacity in (0, 5000):
        torch.manual_seed(0)  # the same dense head in both runs
        estimator = Estimator(TinyModel(), quiet(model_dir=str(tmp_path / str(capacity)),
                                                 hashtable_init_capacity=capacity))
        estimator.train()
        runs[capacity] = estimator
    tables = runs[5000].model.ctx.tables
    assert sorted(tables) == ["item", "user"] and all(m.table.initial_capacity == 5000 for m in tables.values())
    assert all(m.table.capacity >= 5000 for m in tables.values())
    assert all(m.table.capacity < 5000 for m in runs[0].model.ctx.tables.values())
    for name, rows in table_rows(runs[0]).items():
        np.testing.assert_array_equal(table_rows(runs[5000])[name], rows)


def test_ps_server_type_is_refused():
    with pytest.raises(ValueError, match="parameter servers"):
        RunnerConfig(server_type="ps")


def test_runner_config_sets_model_params(tmp_path):
    conf = tmp_path / "feature_list.conf"
    conf.write_text("feature_name=f_user; slot=7\nfeature_name=f_item; slot=9\n")
    model = TinyModel()
    estimator = Estimator(model, quiet(
        model_dir=str(tmp_path / "run"), params_override='{"train.max_steps": 3, "clip_norm": 5.0}',
        deep_insight_name="movies", deep_insight_target="ctr", deep_insight_sample_ratio=0.5,
        feature_list=str(conf)))
    p = model.p
    assert (p.train.max_steps, p.clip_norm, p.feature_list) == (3, 5.0, str(conf))
    assert (p.metrics.enable_deep_insight, p.metrics.deep_insight_name, p.metrics.deep_insight_target,
            p.metrics.deep_insight_sample_ratio) == (True, "movies", "ctr", 0.5)
    assert estimator.config.model_dir == str(tmp_path / "run")
    estimator.train()
    assert estimator.global_step == 3
    # The feature list gives the slots (Monolith's get_feature_name_and_slot).
    assert sorted(fs.slot for fs in model.ctx.feature_slots) == [7, 9]
    assert model.get_feature_name_and_slot(9) == ("item", 9)

    local = TinyModel()
    Estimator(local, quiet(model_dir=str(tmp_path / "local"), is_local=True, deep_insight_name="x"))
    assert (local.p.metrics.enable_deep_insight, local.p.metrics.deep_insight_name) == (False, None)


def test_restore_dir_and_restore_ckpt(tmp_path, monkeypatch):
    source = Estimator(TinyModel(), quiet(model_dir=str(tmp_path / "a"), save_checkpoints_steps=2))
    source.train()
    latest_rows = table_rows(source)

    warm = Estimator(TinyModel(), quiet(model_dir=str(tmp_path / "b"), restore_dir=str(tmp_path / "a")))
    warm.build(make_batches(1)[0])
    assert warm.global_step == STEPS
    for name, rows in table_rows(warm).items():
        np.testing.assert_array_equal(rows, latest_rows[name])

    # Another rank of the run finds model_dir prepared by rank 0 and waits for nothing.
    monkeypatch.setenv("RANK", "1")
    assert quiet(model_dir=str(tmp_path / "b"), restore_dir=str(tmp_path / "a")).configure(TinyModel()).model_dir == \
        str(tmp_path / "b")
    monkeypatch.delenv("RANK")

    older = Estimator(TinyModel(), quiet(model_dir=str(tmp_path / "c"), restore_dir=str(tmp_path / "a"),
                                         restore_ckpt="ckpt-4"))
    older.build(make_batches(1)[0])
    assert older.global_step == 4

    # restore_ckpt alone rolls model_dir back once; a restart after that resumes from the newest.
    rolled = Estimator(TinyModel(), quiet(model_dir=str(tmp_path / "a"), restore_ckpt="ckpt-2"))
    rolled.train(steps=1)
    assert rolled.global_step == 3
    again = Estimator(TinyModel(), quiet(model_dir=str(tmp_path / "a"), restore_ckpt="ckpt-2"))
    again.build(make_batches(1)[0])
    assert again.global_step == 3

    # As Monolith: a restore_ckpt that is not there is logged and the latest used; TF's model.ckpt-N is ckpt-N.
    missing = Estimator(TinyModel(), quiet(model_dir=str(tmp_path / "d"), restore_dir=str(tmp_path / "a"),
                                           restore_ckpt="ckpt-5"))
    missing.build(make_batches(1)[0])
    assert missing.global_step == 3
    tf_named = Estimator(TinyModel(), quiet(model_dir=str(tmp_path / "e"), restore_dir=str(tmp_path / "a"),
                                            restore_ckpt="model.ckpt-4"))
    tf_named.build(make_batches(1)[0])
    assert tf_named.global_step == 4
    # A restore_dir without checkpoints is skipped; only a training job restores.
    fresh = Estimator(TinyModel(), quiet(model_dir=str(tmp_path / "f"), restore_dir=str(tmp_path / "nothing")))
    fresh.build(make_batches(1)[0])
    assert fresh.global_step == 0
    Estimator(TinyModel(), quiet(model_dir=str(tmp_path / "a"), restore_ckpt="ckpt-4", mode="eval")).evaluate()
    assert CheckpointManager(tmp_path / "a").latest() == str(tmp_path / "a" / "ckpt-3")


def test_checkpoints_by_seconds_and_from_params(tmp_path):
    by_secs = Estimator(TinyModel(), quiet(model_dir=str(tmp_path / "secs"), save_checkpoints_secs=1e-9,
                                           checkpoints_max_to_keep=STEPS))
    by_secs.train()
    assert [os.path.basename(c) for c in CheckpointManager(tmp_path / "secs").checkpoints()] == \
        [f"ckpt-{s}" for s in range(1, STEPS + 1)]

    model = TinyModel()
    model.p.train.save_checkpoints_steps = 3
    Estimator(model, quiet(model_dir=str(tmp_path / "steps"))).train()
    assert [os.path.basename(c) for c in CheckpointManager(tmp_path / "steps").checkpoints()] == ["ckpt-3", "ckpt-6"]

    with pytest.raises(ValueError, match="both save_checkpoints_secs and save_checkpoints_steps"):
        Estimator(model, quiet(model_dir=str(tmp_path / "both"), save_checkpoints_secs=5)).train()


def test_export_when_saving_needs_a_receiver(tmp_path, caplog):
    model = TinyModel()
    model.p.serving.export_when_saving = True
    with caplog.at_level(logging.WARNING, logger="monolith.estimator"):
        Estimator(model, quiet(model_dir=str(tmp_path))).train()
    assert "serving_input_receiver_fn returned None" in caplog.text
    assert not os.path.exists(tmp_path / "exported_models")


# ---------------------------------------------------------------------------------------- local_train
def test_local_train_end_to_end(tmp_path):
    from monolith.cpu_training import local_train

    model_dir = str(tmp_path / "local")
    estimator = local_train(TinyModel.params(), num_ps=2, model_dir=model_dir, steps=4, save_checkpoints_steps=2)
    assert estimator.global_step == 4
    assert [os.path.basename(c) for c in CheckpointManager(model_dir).checkpoints()] == ["ckpt-2", "ckpt-4"]
    assert estimator.evaluate()["global_step"] == 4

    resumed = local_train(TinyModel.params(), model_dir=model_dir, steps=2, remove_model_dir_if_exists=False)
    assert resumed.global_step == 6
    fresh = local_train(TinyModel.params(), model_dir=model_dir, steps=2)  # Monolith's default: start over
    assert fresh.global_step == 2

    with pytest.raises(NotImplementedError, match="feature-engineering"):
        local_train(TinyModel.params(), model_dir=model_dir, only_feature_engineering=True)


# ---------------------------------------------------------------------------------------- params
def test_params_have_every_monolith_name_and_instantiate():
    p = TinyModel.params()
    missing = []
    for name in MONOLITH_PARAMS:
        try:
            p.get(name)
        except AttributeError:
            missing.append(name)
    assert missing == []
    p.train.max_steps = 10
    model = p.instantiate()
    assert isinstance(model, TinyModel) and model.p.train.max_steps == 10
    assert model.train() is model  # nn.Module.train: the params group is model.p.train


def test_unknown_param_names_raise_naming_them():
    p = TinyModel.params()
    with pytest.raises(AttributeError, match="max_step'.*max_steps"):
        p.train.max_step = 1
    with pytest.raises(AttributeError, match="bogus"):
        p.set(**{"metrics.bogus": 1})
    with pytest.raises(AttributeError, match="enable_file_metric"):
        TinyModel().p.metrics.enable_file_metric  # noqa: B018


# ---------------------------------------------------------------------------------------- import paths
def test_monolith_import_paths():
    from monolith import cpu_training, estimator, native_model, runner_utils

    for name in ("MonolithBaseModel", "MonolithModel", "get_sigmoid_loss_and_pred", "get_softmax_loss_and_pred",
                 "DeviceCtxType", "MonolithDeviceCtx", "EstimatorSpec", "FeatureColumn", "AdagradOptimizer",
                 "ZerosInitializer", "Fp16Compressor", "CuckooHashTableConfig", "ServingInputReceiver"):
        assert getattr(native_model, name) is not None
    assert native_model.MonolithModel is MonolithModel
    assert runner_utils.RunnerConfig is estimator.RunnerConfig is cpu_training.CpuTrainingConfig is RunnerConfig
    assert estimator.ServiceDiscoveryType.PRIMUS.name == "PRIMUS"


def test_create_plain_kafka_dataset_maps_monolith_arguments():
    source = create_plain_kafka_dataset(topics=["movie-train"], group_id="cgonline", servers="127.0.0.1:9092",
                                        stream_timeout=10000, poll_batch_size=16,
                                        configuration=["session.timeout.ms=7000", "max.poll.interval.ms=8000"],
                                        kafka_other_metadata="fetch.min.bytes=1")
    assert isinstance(source, KafkaSource)
    assert (source.topic, source.group_id, source.bootstrap_servers, source.batch_size) == \
        ("movie-train", "cgonline", "127.0.0.1:9092", 16)
    assert (source.idle_timeout_s, source.max_batch_wait_s) == (10.0, 10.0)
    assert source.consumer_config == {"session.timeout.ms": "7000", "max.poll.interval.ms": "8000",
                                      "fetch.min.bytes": "1"}
    assert create_plain_kafka_dataset("t", "g", "s").idle_timeout_s is None
    with pytest.raises(ValueError, match="one topic"):
        create_plain_kafka_dataset(["a", "b"], "g", "s")
    with pytest.raises(ValueError, match="key=value"):
        create_plain_kafka_dataset(["a"], "g", "s", configuration=["oops"])
