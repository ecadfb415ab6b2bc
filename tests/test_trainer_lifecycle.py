"""A trainer's life as jobs live it: seeded runs, restarts of a finished run, damaged or unindexed
checkpoints, TensorBoard files on every path, and SIGTERM / SIGINT from a supervisor."""

import http.server
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from monolith import cli
from monolith.checkpoint import INDEX_FILE, CheckpointManager
from monolith.estimator import Estimator, RunConfig

MODEL_SOURCE = textwrap.dedent('''
    import functools
    import random
    import time
    import numpy as np
    import torch
    from monolith.estimator import EstimatorSpec
    from monolith.fid import make_fid
    from monolith.losses import get_sigmoid_loss_and_pred
    from monolith.model import MonolithModel, TrainingHook
    from monolith.sparse import Batch, KeyedJaggedTensor


    def make_batches(n, batch_size, seed, delay=0.0):
        rng = np.random.default_rng(seed)
        for _ in range(n):
            uid, mov = rng.integers(0, 20, batch_size), rng.integers(0, 20, batch_size)
            label = ((uid + mov) % 3 == 0).astype(np.float32)
            ids = torch.from_numpy(np.concatenate([make_fid(1, uid), make_fid(2, mov)]))
            sparse = KeyedJaggedTensor(["uid", "mov"], ids, torch.ones(2 * batch_size, dtype=torch.int64))
            if delay:
                time.sleep(delay)
            yield Batch(sparse, {"label": torch.from_numpy(label)})


    class SlowEnd(TrainingHook):
        """Stands for a slow final push: what a second signal must not wait for."""

        def __init__(self, seconds):
            self.seconds = seconds

        def end(self):
            print("ENDING", flush=True)
            time.sleep(self.seconds)


    class Tiny(MonolithModel):
        @classmethod
        def params(cls):
            p = super().params()
            p.define("batches", 6, "Training batches of input_fn.")
            p.define("delay", 0.0, "Seconds before each training batch.")
            p.define("slow_end", 0.0, "Seconds a training hook's end() takes.")
            p.train.per_replica_batch_size = 16
            p.eval.per_replica_batch_size = 16
            return p

        def __init__(self, params=None):
            super().__init__(params)
            # Layers of __init__, drawn from torch's, numpy's and Python's generators.
            self.mlp = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
            self.scale = torch.nn.Parameter(torch.from_numpy(np.random.rand(8).astype(np.float32)))
            self.shift = torch.nn.Parameter(torch.tensor([random.random()]))

        def input_fn(self, mode):
            if mode == "train":
                return make_batches(self.p.batches, 16, 0, self.p.delay)
            return make_batches(3, 16, 1)

        def model_fn(self, features, mode):
            for name in ("uid", "mov"):
                self.create_embedding_feature_column(name)
            emb = self.lookup_embedding_slice(["uid", "mov"], "vec", 4, out_type="concat")
            logits = self.mlp(emb * self.scale).reshape(-1) + self.shift
            loss, pred = get_sigmoid_loss_and_pred("ctr", logits, features["label"], self.batch_size, mode=mode)
            if self.p.slow_end:
                self.add_training_hook(SlowEnd(self.p.slow_end))
            return EstimatorSpec(label=features["label"], pred=pred, head_name="ctr", loss=loss,
                                 optimizer=functools.partial(torch.optim.Adam, lr=0.01))

        def serving_input_receiver_fn(self):
            return None
''')
QUIET = ["--config", '{"run_config": {"enable_summaries": false, "log_step_count_steps": 1, "progress_bar": false}}']


@pytest.fixture()
def workdir(tmp_path, monkeypatch):
    (tmp_path / "lifecycle_model.py").write_text(MODEL_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    sys.modules.pop("lifecycle_model", None)


def run_cli(capsys, *args: str) -> dict:
    """``monolith ARGS`` in this process: its result line (its log lines go to caplog)."""
    assert cli.main(list(args)) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def env_for(workdir: Path) -> dict[str, str]:
    """The environment of a ``monolith`` subprocess: this checkout's package and the model module."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).resolve().parents[1]), str(workdir), os.environ.get("PYTHONPATH", "")])}
    env.pop("WORLD_SIZE", None)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train(capsys, model_dir: str, *args: str) -> dict:
    return run_cli(capsys, "train", "--model", "lifecycle_model:Tiny", "--model-dir", model_dir, *QUIET, *args)


def parameters(checkpoint: Path) -> dict[str, np.ndarray]:
    dense, tables, _ = CheckpointManager.read(checkpoint)
    out = {f"dense/{k}": v.numpy() for k, v in dense["model"].items()}
    for name, shards in tables.items():
        order = np.argsort(shards[0]["keys"])
        # Every array of a row but its wall-clock timestamp.
        out.update({f"{name}/{k}": v[order] for k, v in shards[0].items()
                    if k not in ("meta", "timestamps") and len(v) == len(order)})
    return out


# ----------------------------------------------------------------------------- 5: --seed
def test_runs_of_one_seed_are_bit_identical_including_layers_built_in_init(workdir, capsys):
    random.seed(11), np.random.seed(11), torch.manual_seed(11)  # whatever ran before must not matter
    train(capsys, "a", "--max-steps", "5", "--seed", "0")
    train(capsys, "b", "--max-steps", "5", "--seed", "0")
    train(capsys, "c", "--max-steps", "5", "--seed", "1")
    a, b, c = (parameters(workdir / run / "ckpt-5") for run in "abc")
    assert a.keys() == b.keys() and "dense/scale" in a and "dense/shift" in a
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert not np.array_equal(a["dense/scale"], c["dense/scale"])  # the seed is what decides


# ----------------------------------------------------------------------------- 6: a finished run
def test_a_finished_run_stays_finished_unless_more_is_asked_for(workdir, capsys, caplog):
    first = train(capsys, "run")
    assert first["global_step"] == 6
    caplog.clear()
    again = train(capsys, "run")  # a supervisor restarting the finished job
    assert again["global_step"] == 6 and again["metrics"] == {}
    assert [r.getMessage() for r in caplog.records] == [
        f"train: {os.path.join('run', 'ckpt-6')} finished at global step 6 (its input was read to the end): nothing "
        f"to train; a higher max_steps, steps or epochs trains more"]
    assert sorted(p.name for p in (workdir / "run").glob("ckpt-*")) == ["ckpt-6"]
    assert train(capsys, "run", "--max-steps", "6")["global_step"] == 6  # not more than it had
    assert train(capsys, "run", "--epochs", "1")["global_step"] == 12  # one more pass, from the start
    assert train(capsys, "run")["global_step"] == 12
    assert train(capsys, "run", "--steps", "2")["global_step"] == 14
    assert train(capsys, "run", "--max-steps", "15")["global_step"] == 15


def test_a_run_whose_input_ended_before_max_steps_is_finished_for_the_same_max_steps(workdir, capsys):
    assert train(capsys, "run", "--max-steps", "100")["global_step"] == 6
    assert train(capsys, "run", "--max-steps", "100")["global_step"] == 6
    assert train(capsys, "run", "--max-steps", "101")["global_step"] == 12  # higher: another pass


# ----------------------------------------------------------------------------- 7: checksums
def flip_bit(file: Path, rng: np.random.Generator) -> None:
    data = bytearray(file.read_bytes())
    bit = int(rng.integers(0, len(data) * 8))
    data[bit // 8] ^= 1 << (bit % 8)
    file.write_bytes(bytes(data))


def test_every_single_bit_flip_of_a_checkpoint_file_is_detected(workdir, capsys, caplog):
    train(capsys, "run", "--config", '{"run_config": {"save_checkpoints_steps": 3, "enable_summaries": false}}')
    run = workdir / "run"
    assert sorted(p.name for p in run.glob("ckpt-*")) == ["ckpt-3", "ckpt-6"]
    manifest = CheckpointManager.read_manifest(run / "ckpt-6")
    assert set(manifest["sha256"]) == {"dense.pt", "tables/uid.shard-00000-of-00001.npz",
                                       "tables/mov.shard-00000-of-00001.npz"}
    rng = np.random.default_rng(0)
    files = ["dense.pt"] * 40 + ["tables/uid.shard-00000-of-00001.npz"] * 10
    for i, name in enumerate(files):
        copy = workdir / f"copy-{i}"  # a fresh copy: new files, as a restarted process sees them
        shutil.copytree(run, copy)
        flip_bit(copy / "ckpt-6" / name, rng)
        caplog.clear()
        assert CheckpointManager(copy).latest() == str(copy / "ckpt-3")
        assert f"ckpt-6/{name}" in caplog.text and "damaged" in caplog.text
        with pytest.raises(ValueError, match=f"ckpt-6/{name} does not match its checksum"):
            CheckpointManager.read(copy / "ckpt-6")
        shutil.rmtree(copy)
    # With no sound checkpoint left, training stops with an error naming the files.
    flip_bit(run / "ckpt-6" / "dense.pt", rng)
    flip_bit(run / "ckpt-3" / "dense.pt", rng)
    with pytest.raises(ValueError, match="every checkpoint is damaged: .*ckpt-6/dense.pt.*ckpt-3/dense.pt"):
        cli.main(["train", "--model", "lifecycle_model:Tiny", "--model-dir", "run", *QUIET])


def test_training_resumes_from_the_checkpoint_before_a_damaged_one(workdir, capsys, caplog):
    train(capsys, "run", "--config", '{"run_config": {"save_checkpoints_steps": 3, "enable_summaries": false}}',
          "--max-steps", "6")
    flip_bit(workdir / "run" / "ckpt-6" / "dense.pt", np.random.default_rng(1))
    shutil.copytree(workdir / "run", workdir / "restarted")  # a new process would see new files
    resumed = train(capsys, "restarted", "--config",
                    '{"run_config": {"save_checkpoints_steps": 3, "enable_summaries": false}}', "--max-steps", "6")
    assert "ckpt-6/dense.pt does not match its checksum" in caplog.text
    assert resumed["global_step"] == 6  # retrained from step 3; the damaged one was moved aside
    assert (workdir / "restarted" / "ckpt-6.damaged" / "dense.pt").exists()
    assert CheckpointManager.read(workdir / "restarted" / "ckpt-6")[2]["global_step"] == 6


# ----------------------------------------------------------------------------- 8: the index
def test_a_lost_index_is_rebuilt_and_no_checkpoint_is_overwritten(workdir, capsys, caplog):
    config = ["--config", '{"run_config": {"save_checkpoints_steps": 2, "enable_summaries": false}}']
    train(capsys, "run", *config, "--max-steps", "6")
    run = workdir / "run"
    before = {p.name: (p / "dense.pt").read_bytes() for p in run.glob("ckpt-*")}
    assert sorted(before) == ["ckpt-2", "ckpt-4", "ckpt-6"]
    (run / INDEX_FILE).unlink()
    resumed = train(capsys, "run", *config, "--max-steps", "8")
    assert "rebuilt it from the checkpoints present: ckpt-2, ckpt-4, ckpt-6" in caplog.text
    assert resumed["global_step"] == 8
    for name, data in before.items():
        assert (run / name / "dense.pt").read_bytes() == data, name
    assert json.loads((run / INDEX_FILE).read_text())["latest"] == "ckpt-8"
    # Saving a step whose sound checkpoint exists is refused, the checkpoint left as it is.
    dense, tables, _ = CheckpointManager.read(run / "ckpt-4")
    with pytest.raises(FileExistsError, match="ckpt-4: a checkpoint of step 4 exists already"):
        CheckpointManager(run).save(4, {"other": 1}, {})
    assert (run / "ckpt-4" / "dense.pt").read_bytes() == before["ckpt-4"]



def test_a_checkpoint_renamed_in_before_its_index_entry_is_the_latest(workdir, capsys, caplog):
    """A kill between a checkpoint's rename into place and the index write: the restart resumes
    from that checkpoint (it is complete) instead of refusing to save its step again."""
    config = ["--config", '{"run_config": {"save_checkpoints_steps": 2, "enable_summaries": false}}']
    train(capsys, "run", *config, "--max-steps", "6")
    run = workdir / "run"
    (run / INDEX_FILE).write_text(json.dumps({"latest": "ckpt-4", "all": ["ckpt-2", "ckpt-4"]}))
    assert CheckpointManager(run).latest() == str(run / "ckpt-6")
    assert "ckpt-6 complete but not in the index" in caplog.text
    resumed = train(capsys, "run", *config, "--max-steps", "8")
    assert resumed["global_step"] == 8
    assert json.loads((run / INDEX_FILE).read_text()) == {"latest": "ckpt-8", "all": ["ckpt-2", "ckpt-4", "ckpt-6",
                                                                                      "ckpt-8"]}

# ----------------------------------------------------------------------------- 12: TensorBoard
def test_evaluate_writes_its_scalars_before_it_returns(workdir):
    from lifecycle_model import Tiny

    config = RunConfig(model_dir=str(workdir / "run"), log_step_count_steps=3, progress_bar=False)
    Estimator(Tiny.params(), config).train()
    estimator = Estimator(Tiny.params(), config)  # still open: nothing is flushed by closing it
    result = estimator.evaluate()
    events = EventAccumulator(str(workdir / "run")).Reload()
    assert [e.step for e in events.Scalars("loss")] == [3, 6]
    (auc,) = events.Scalars("eval/ctr/auc")
    assert auc.step == 6 and auc.value == pytest.approx(result["ctr/auc"])


def test_under_torchrun_rank_0_alone_writes_tensorboard_scalars(workdir):
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
               f"--master_port={free_port()}", "-m", "monolith", "train", "--model", "lifecycle_model:Tiny",
               "--model-dir", "run", "--max-steps", "4",
               "--config", '{"run_config": {"log_step_count_steps": 2, "progress_bar": false}}']
    result = subprocess.run(command, cwd=workdir, env=env_for(workdir), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    files = list((workdir / "run").glob("events.out.tfevents.*"))
    assert len(files) == 1, files
    events = EventAccumulator(str(workdir / "run")).Reload()
    assert [e.step for e in events.Scalars("loss")] == [2, 4]


# ----------------------------------------------------------------------------- 13: SIGTERM / SIGINT
def start(workdir: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "monolith", "train", *args, *QUIET], cwd=workdir,
                            env=env_for(workdir), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_step(proc: subprocess.Popen, step: int, timeout: float = 60) -> str:
    """Reads the trainer's stderr until it logged ``step`` (log_step_count_steps is 1)."""
    seen, deadline = "", time.monotonic() + timeout
    while f"step {step}:" not in seen:
        line = proc.stderr.readline()
        assert line or proc.poll() is None, seen
        assert time.monotonic() < deadline, seen
        seen += line
    return seen


def signal_after_step(proc: subprocess.Popen, step: int, signum: int) -> tuple[dict, str]:
    """Sends ``signum`` once the trainer logged ``step``; the trainer must then exit 0: its result
    and the rest of its stderr."""
    try:
        wait_for_step(proc, step)
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1]), err


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_checkpoints_the_finished_step_and_exits_0(workdir, capsys, signum):
    # No checkpoint interval: before this, everything since the start was lost to the next run.
    proc = start(workdir, "--model", "lifecycle_model:Tiny", "--model-dir", "run", "--param", "batches=40",
                 "--param", "delay=0.3")
    result, err = signal_after_step(proc, 2, signum)
    stopped_at = result["global_step"]
    assert 2 <= stopped_at < 40 and result["checkpoint"] == str(workdir / "run" / f"ckpt-{stopped_at}")
    assert f"{signal.Signals(signum).name} received" in err and f"stopped by a signal at global step {stopped_at}" in err
    # The next run continues from there and ends like an uninterrupted run of the same seed.
    resumed = train(capsys, "run", "--param", "batches=40")
    reference = train(capsys, "reference", "--param", "batches=40")
    assert resumed["global_step"] == reference["global_step"] == 40
    a, b = parameters(workdir / "run" / "ckpt-40"), parameters(workdir / "reference" / "ckpt-40")
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_a_second_signal_stops_at_once(workdir):
    proc = start(workdir, "--model", "lifecycle_model:Tiny", "--model-dir", "run", "--param", "batches=40",
                 "--param", "delay=0.3", "--param", "slow_end=60")
    try:
        wait_for_step(proc, 1)
        proc.send_signal(signal.SIGTERM)
        assert proc.stdout.readline() == "ENDING\n"  # checkpointed, now in the slow hook
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGTERM
    assert CheckpointManager(workdir / "run").latest() is not None  # the first signal's checkpoint


class _Serving(http.server.ThreadingHTTPServer):
    """Records the versions pushed to /v1/update."""

    def __init__(self):
        self.versions: list[int] = []
        super().__init__(("127.0.0.1", 0), _UpdateHandler)


class _UpdateHandler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        from monolith.serving.model import decode_update

        update = decode_update(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.versions.append(update["version"])
        body = json.dumps({"model_version": update["version"]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_sigterm_on_an_endless_stream_checkpoints_commits_and_pushes(workdir):
    pytest.importorskip("confluent_kafka")
    from confluent_kafka import Consumer, Producer, TopicPartition

    from monolith.streaming import LocalKafkaBroker, encode_example
    from monolith.fid import make_fid

    serving = _Serving()
    threading.Thread(target=serving.serve_forever, daemon=True).start()
    events = [encode_example({"uid": [int(make_fid(1, i % 20))], "mov": [int(make_fid(2, i % 7))]}, label=i % 2)
              for i in range(16 * 3)]
    try:
        with LocalKafkaBroker() as broker:
            broker.create_topic("clicks")
            producer = Producer({"bootstrap.servers": broker.bootstrap_servers, "linger.ms": 0})
            for event in events:
                producer.produce("clicks", value=event)
            assert producer.flush(15) == 0
            # The default settings: no idle timeout, no checkpoint interval; pushes only at the end.
            proc = start(workdir, "--model", "lifecycle_model:Tiny", "--model-dir", "run",
                         "--stream", f"kafka://{broker.bootstrap_servers}/clicks", "--stream-group", "g",
                         "--serving-url", f"http://127.0.0.1:{serving.server_address[1]}", "--sync-interval", "1000")
            # Step 3 is all of the stream; the trainer then waits for more.
            assert signal_after_step(proc, 3, signal.SIGTERM)[0]["global_step"] == 3
            manifest = CheckpointManager.read_manifest(workdir / "run" / "ckpt-3")
            assert manifest["input_states"][0]["offsets"] == {"0": 48}
            consumer = Consumer({"bootstrap.servers": broker.bootstrap_servers, "group.id": "g"})
            assert consumer.committed([TopicPartition("clicks", 0)], timeout=10)[0].offset == 48
            consumer.close()
    finally:
        serving.shutdown()
        serving.server_close()
    assert serving.versions[-1] == 3  # the last changes reached serving
