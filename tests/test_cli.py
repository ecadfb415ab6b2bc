"""The ``monolith`` command on a tiny model module: train, evaluate, predict, dump, and its errors."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import termios
import textwrap
from pathlib import Path

import pytest

from monolith.cli import CliError, build_params, load_model_class, main, parse_value
from monolith.dump import ModelDump

BATCH = 16
MODEL_SOURCE = textwrap.dedent(f'''
    import functools
    import numpy as np
    import torch
    from monolith.estimator import EstimatorSpec
    from monolith.fid import make_fid
    from monolith.losses import get_sigmoid_loss_and_pred
    from monolith.model import MonolithModel
    from monolith.sparse import Batch, KeyedJaggedTensor


    def make_batches(n, batch_size, seed):
        rng = np.random.default_rng(seed)
        batches = []
        for _ in range(n):
            uid, mov = rng.integers(0, 20, batch_size), rng.integers(0, 20, batch_size)
            label = ((uid + mov) % 3 == 0).astype(np.float32)
            ids = torch.from_numpy(np.concatenate([make_fid(1, uid), make_fid(2, mov)]))
            sparse = KeyedJaggedTensor(["uid", "mov"], ids, torch.ones(2 * batch_size, dtype=torch.int64))
            batches.append(Batch(sparse, {{"label": torch.from_numpy(label)}}))
        return batches


    class TinyModel(MonolithModel):
        @classmethod
        def params(cls):
            p = super().params()
            p.define("hidden", 4, "Hidden units.")
            p.define("learning_rate", 0.01, "Adam's learning rate.")
            p.train.per_replica_batch_size = {BATCH}
            p.eval.per_replica_batch_size = {BATCH}
            return p

        def __init__(self, params=None):
            super().__init__(params)
            self.mlp = torch.nn.Sequential(torch.nn.Linear(8, self.p.hidden), torch.nn.ReLU(),
                                           torch.nn.Linear(self.p.hidden, 1))

        def input_fn(self, mode):
            if mode == "train":
                return make_batches(20, self.p.train.per_replica_batch_size, 0)
            return make_batches(3, self.p.eval.per_replica_batch_size, 1)

        def model_fn(self, features, mode):
            for name in ("uid", "mov"):
                self.create_embedding_feature_column(name)
            emb = self.lookup_embedding_slice(["uid", "mov"], "vec", 4, out_type="concat")
            logits = self.mlp(emb).reshape(-1)
            loss, pred = get_sigmoid_loss_and_pred("ctr", logits, features["label"], self.batch_size, mode=mode)
            return EstimatorSpec(label=features["label"], pred=pred, head_name="ctr", loss=loss,
                                 optimizer=functools.partial(torch.optim.Adam, lr=self.p.learning_rate))

        def serving_input_receiver_fn(self):
            return None


    NOT_A_MODEL = 3


    class Plain:
        pass
''')


@pytest.fixture()
def workdir(tmp_path, monkeypatch):
    (tmp_path / "tiny_cli_model.py").write_text(MODEL_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    sys.modules.pop("tiny_cli_model", None)


def start_cli(cwd: Path, *args: str, command: list[str] | None = None) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    base = command or [sys.executable, "-m", "monolith"]
    return subprocess.Popen([*base, *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def finish(proc: subprocess.Popen) -> subprocess.CompletedProcess:
    try:
        stdout, stderr = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def result_line(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, proc.stdout
    return json.loads(lines[0])


def test_train_evaluate_predict_dump(workdir):
    """Each command in its own process; evaluate, predict, dump and a bad call run side by side after train."""
    model = ["--model", "tiny_cli_model:TinyModel", "--model-dir", "run", "--threads", "1", "--param", "hidden=6"]
    quiet = ["--config", '{"run_config": {"enable_summaries": false, "log_step_count_steps": 1}}']
    trained = result_line(finish(start_cli(workdir, "train", *model, *quiet, "--max-steps", "5",
                                           "--param", "learning_rate=0.02")))
    assert trained["command"] == "train" and trained["global_step"] == 5
    assert trained["checkpoint"] == str(workdir / "run" / "ckpt-5")
    assert (workdir / "run" / "ckpt-5").is_dir()
    assert 0.0 <= trained["metrics"]["ctr/auc"] <= 1.0

    # The console script is the same command as python -m monolith.
    script = Path(sys.executable).parent / "monolith"
    running = {
        "evaluate": start_cli(workdir, "evaluate", *model, *quiet, command=[str(script)] if script.exists() else None),
        "predict": start_cli(workdir, "predict", *model, *quiet, "--param", "output_fields=label", "--steps", "2"),
        "dump": start_cli(workdir, "dump", *model, *quiet, "--dump-path", "dump.json"),
        "bad": start_cli(workdir, "train", "--model", "no_such_module_xyz:Model"),
    }
    done = {name: finish(proc) for name, proc in running.items()}

    evaluated = result_line(done["evaluate"])
    assert evaluated["global_step"] == 5  # restored from the checkpoint
    assert set(evaluated["metrics"]) == {"ctr/auc", "loss", "batch_loss", "global_step"}
    assert 0.0 <= evaluated["metrics"]["ctr/auc"] <= 1.0

    predicted = result_line(done["predict"])
    assert predicted["predictions"] == 2 * BATCH
    part = workdir / "run" / "predictions" / "part-00000"
    assert predicted["file"] == str(part)
    lines = part.read_text().splitlines()
    assert len(lines) == 2 * BATCH
    label, pred = lines[0].split("\t")
    assert float(label) in (0.0, 1.0) and 0.0 < float(pred) < 1.0

    dumped = result_line(done["dump"])
    assert dumped["dump"] == str(workdir / "dump.json") and dumped["features"] == ["uid", "mov"]
    dump = ModelDump.load(workdir / "dump.json")
    assert dump.has_collected()
    assert dump.feature_slice_dims == {"uid": [4], "mov": [4]}
    params, _ = dump.restore_params()
    assert (params.hidden, params.learning_rate) == (6, 0.01)
    assert dump.dense_optimizer is not None

    bad = done["bad"]
    assert bad.returncode == 2
    assert "monolith: error:" in bad.stderr and "cannot import module 'no_such_module_xyz'" in bad.stderr
    assert "Traceback" not in bad.stderr


@pytest.mark.parametrize("spec, message", [
    ("no_such_module_xyz:Model", "cannot import module 'no_such_module_xyz'"),
    ("tiny_cli_model:Missing", "module 'tiny_cli_model' has no attribute 'Missing'"),
    ("tiny_cli_model:Plain", "not a MonolithBaseModel subclass"),
    ("tiny_cli_model:NOT_A_MODEL", "not a MonolithBaseModel subclass"),
    ("tiny_cli_model", "--model must be module:Class"),
    ("missing_file.py:TinyModel", "no such file"),
])
def test_bad_model(workdir, spec, message):
    with pytest.raises(CliError, match=message):
        load_model_class(spec)


def test_model_from_a_file(workdir):
    cls = load_model_class(str(workdir / "tiny_cli_model.py") + ":TinyModel")
    assert cls.__name__ == "TinyModel"


def test_params(workdir):
    cls = load_model_class("tiny_cli_model:TinyModel")
    p = build_params(cls, {"train": {"per_replica_batch_size": 8}, "eval.per_replica_batch_size": 4},
                     ["hidden=7", "name=tiny", "metrics.extra_fields_keys=['uid']", "learning_rate=1e-3"])
    assert (p.train.per_replica_batch_size, p.eval.per_replica_batch_size) == (8, 4)
    assert (p.hidden, p.name, p.metrics.extra_fields_keys, p.learning_rate) == (7, "tiny", ["uid"], 1e-3)
    # Values take the type of the param's default: a string param keeps the text, a float takes an int.
    p = build_params(cls, {"hidden": 5.0}, ["name=123", "learning_rate=1", "output_path=/tmp/out"])
    assert (p.hidden, p.name, p.learning_rate, p.output_path) == (5, "123", 1.0, "/tmp/out")
    assert type(p.hidden) is int and type(p.learning_rate) is float
    assert parse_value("None") is None and parse_value("/tmp/x") == "/tmp/x" and parse_value("[64, 32]") == [64, 32]
    with pytest.raises(CliError, match=r"--param hiden: parameter 'hiden' is not defined; did you mean hidden"):
        build_params(cls, {}, ["hiden=3"])
    with pytest.raises(CliError, match=r"--param trian.max_steps: in 'trian.max_steps': parameter 'trian' is not defined; did you mean train"):
        build_params(cls, {}, ["trian.max_steps=3"])
    with pytest.raises(CliError, match="--param must be name=value"):
        build_params(cls, {}, ["hidden"])
    with pytest.raises(CliError, match="'train' is a group of params"):
        build_params(cls, {}, ["train=3"])
    with pytest.raises(CliError, match="--config nope: parameter 'nope' is not defined"):
        build_params(cls, {"nope": 1}, [])


def test_main_reports_errors(workdir, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--model", "tiny_cli_model:TinyModel", "--param", "hiden=3"])
    assert exit_info.value.code == 2
    assert "monolith: error: --param hiden: parameter 'hiden' is not defined" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--model", "tiny_cli_model:TinyModel", "--config", '{"run_config": {"sed": 1}}'])
    assert "unknown field 'sed'; did you mean seed? RunConfig has ['dedup'," in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--model", "tiny_cli_model:TinyModel", "--config", "[1]"])
    assert "--config" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--config", '{"run_config": {"keep_checkpoint_max": 0}}'], "RunConfig.keep_checkpoint_max must be an int >= 1"),
    (["--config", '{"run_config": {"dedup": "bogus"}}'], "RunConfig.dedup must be 'local', 'sum' or None"),
    (["--config", '{"run_config": {"save_checkpoints_steps": "x"}}'], "save_checkpoints_steps must be an int"),
    (["--param", "hidden='abc'"], "monolith: error: --param hidden: expected an int, got 'abc' (str)\n"),
    (["--param", "hidden=2.5"], "--param hidden: expected an int, got 2.5 (float)"),
    (["--param", "learning_rate=fast"], "--param learning_rate: expected a number, got 'fast' (str)"),
    (["--param", "metrics.extra_fields_keys=3"], "--param metrics.extra_fields_keys: expected a list, got 3 (int)"),
    (["--config", '{"train": {"per_replica_batch_size": "16"}}'],
     "--config train.per_replica_batch_size: expected an int, got '16' (str)"),
    (["--config", '{"run_config": {"save_checkpoint_steps": 3}}'],
     "unknown field 'save_checkpoint_steps'; did you mean save_checkpoints_steps,"),
    (["--model-dir", "a_file"], "--model-dir a_file: exists and is not a directory"),
])
def test_wrong_values_are_one_line_errors(workdir, capsys, args, message):
    (workdir / "a_file").write_text("")
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--model", "tiny_cli_model:TinyModel", *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


@pytest.mark.parametrize("command", ["evaluate", "predict", "export"])
def test_commands_that_need_a_trained_model_say_so(workdir, capsys, command):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--model", "tiny_cli_model:TinyModel", "--model-dir", str(workdir / "empty")])
    assert exit_info.value.code == 2
    assert f"monolith: error: {command}: no checkpoint in {workdir / 'empty'}; train first" in capsys.readouterr().err


def test_export_of_a_model_without_a_serving_receiver_is_a_one_line_error(workdir, capsys):
    main(["train", "--model", "tiny_cli_model:TinyModel", "--model-dir", "run", "--max-steps", "2"])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--model", "tiny_cli_model:TinyModel", "--model-dir", "run"])
    assert exit_info.value.code == 2
    assert "monolith: error: export:" in capsys.readouterr().err


def test_each_command_has_its_own_help(capsys):
    for command, has, lacks in (("train", "--stream", "--export-dir"), ("evaluate", "--output-path", "--stream"),
                                ("export", "--export-dir", "--max-steps")):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        out = capsys.readouterr().out
        assert f"usage: monolith {command}" in out and has in out and lacks not in out


# Runs the real entry point (monolith/__main__.py) and reports its exit status and which heavy modules it imported.
_IMPORTS_OF = textwrap.dedent("""
    import json, runpy, sys
    sys.argv = ["monolith", *json.loads(sys.argv[1])]
    try:
        runpy.run_module("monolith", run_name="__main__")
        code = 0
    except SystemExit as e:
        code = e.code
    heavy = ("torch", "numpy", "fastapi", "uvicorn", "monolith.estimator", "monolith.model")
    print(json.dumps({"code": code, "imported": [m for m in heavy if m in sys.modules]}), file=sys.stderr)
""")


@pytest.mark.parametrize("argv, code", [
    (["--help"], 0), (["train", "--help"], 0), (["export", "--help"], 0), (["serve", "--help"], 0),
    ([], 2), (["train"], 2), (["evaluate", "--model", "m:C", "--bogus"], 2), (["serve"], 2),
    (["serve", "--export-dir", "x", "--threads", "0"], 2),
])
def test_help_and_argument_errors_import_neither_torch_nor_the_package(tmp_path, argv, code):
    """--help and argument errors answer before torch (seconds to import on a busy machine) is loaded."""
    proc = subprocess.run([sys.executable, "-c", _IMPORTS_OF, json.dumps(argv)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    report = json.loads(proc.stderr.strip().splitlines()[-1])
    assert report == {"code": code, "imported": []}, proc.stderr
    if code == 0:
        assert proc.stdout.startswith(f"usage: monolith {argv[0] if argv[0] != '--help' else ''}".rstrip())


def test_a_value_of_the_wrong_type_is_one_line(workdir):
    """The real command: no traceback, one line naming the param, the expected type and the value."""
    proc = finish(start_cli(workdir, "train", "--model", "monolith.demo:DeepFM", "--model-dir", "run",
                            "--param", "train.per_replica_batch_size=abc"))
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == ("monolith: error: --param train.per_replica_batch_size: expected an int, "
                           "got 'abc' (str)\n")
    assert not (workdir / "run").exists()


def test_serve_options_are_the_other_commands_ones(tmp_path, capsys):
    """serve: --export-dir (the old --model still works, with a deprecation line), --threads, plain-text help."""
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: monolith serve") and "--export-dir DIR" in out and "--threads" in out
    for raw in ("``", ":mod:", ":func:", "--torch-threads", "--model"):
        assert raw not in out
    missing = tmp_path / "no_export"
    for args in (["--export-dir", str(missing), "--threads", "2"], ["--model", str(missing), "--torch-threads", "2"]):
        with pytest.raises(SystemExit) as exit_info:
            main(["serve", *args])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.splitlines()
        assert err[-1].startswith(f"monolith serve: error: --export-dir {missing}: ")
        deprecated = [line for line in err if "deprecated" in line]
        assert deprecated == ([] if args[0] == "--export-dir" else [
            "monolith serve: warning: --model is deprecated; use --export-dir",
            "monolith serve: warning: --torch-threads is deprecated; use --threads"])


def test_predict_shows_a_bar_on_a_terminal(workdir):
    """The real command with stderr on a pseudo-terminal: a tqdm bar of the examples predicted."""
    model = ["--model", "tiny_cli_model:TinyModel", "--model-dir", "run", "--threads", "1"]
    assert main(["train", *model, "--max-steps", "2"]) == 0
    controller, terminal = pty.openpty()
    termios.tcsetwinsize(terminal, (24, 100))  # a new pseudo-terminal has 0 columns: no room for a bar
    try:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        proc = subprocess.run([sys.executable, "-m", "monolith", "predict", *model], cwd=workdir, env=env,
                              stdout=subprocess.PIPE, stderr=terminal, text=True, timeout=120)
        os.close(terminal)
        shown = b""
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # the terminal's other end is closed: all is read
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(controller)
    assert result_line(proc)["predictions"] == 3 * BATCH
    final = shown.decode().replace("\r", "\n").strip().splitlines()[-1]
    assert final.startswith("predict: 100%") and f"{3 * BATCH}/{3 * BATCH}" in final
