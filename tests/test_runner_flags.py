"""RunnerConfig's fields as absl command-line flags, as Monolith registers them: a ported ``main``
run by ``absl.app.run`` with ``--model_dir`` / ``--model_name`` / ... gets them in its RunnerConfig,
and values its code set win over the flags."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from absl import flags

from monolith.runner_config import RunnerConfig, ServiceDiscoveryType

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_flags_fill_the_fields_the_code_left_at_their_defaults(parsed_flags):
    parsed_flags("--model_dir=/tmp/run", "--model_name=movie", "--save_checkpoints_steps=7",
                 "--discovery_type=zk", "--use_native_multi_hash_table=false", "--index=3",
                 "--deep_insight_sample_ratio=0.5")
    config = RunnerConfig(index=1)
    assert config.model_dir == "/tmp/run" and config.model_name == "movie"
    assert config.save_checkpoints_steps == 7 and config.deep_insight_sample_ratio == 0.5
    assert config.discovery_type is ServiceDiscoveryType.ZK
    assert config.use_native_multi_hash_table is False
    assert config.index == 1  # set by the code: the flag does not override it
    assert config.num_workers == 1  # no flag given: the default


def test_without_parsed_flags_the_defaults_hold():
    assert not flags.FLAGS.is_parsed()
    assert RunnerConfig().model_dir == "" and RunnerConfig().save_checkpoints_steps is None


def test_a_bad_flag_value_is_an_error_naming_the_flag(parsed_flags):
    with pytest.raises(flags.IllegalFlagValueError, match="save_checkpoints_steps"):
        parsed_flags("--save_checkpoints_steps=often")


def test_a_ported_main_reads_the_flags(tmp_path):
    script = tmp_path / "main.py"
    script.write_text(textwrap.dedent("""
        import dataclasses, json
        from absl import app, flags
        from monolith.estimator import RunnerConfig

        flags.DEFINE_enum("training_type", "batch", ["batch", "stream"], "type of training to launch")
        FLAGS = flags.FLAGS

        def main(_):
            config = RunnerConfig(save_checkpoints_steps=10000)
            print(json.dumps({"training_type": FLAGS.training_type, "model_dir": config.model_dir,
                              "model_name": config.model_name, "steps": config.save_checkpoints_steps,
                              "is_local": config.is_local}))

        if __name__ == "__main__":
            app.run(main)
    """))
    out = subprocess.run([sys.executable, str(script), "--training_type=stream", "--model_dir=/tmp/movie_lens_tutorial",
                          "--model_name=movie_lens_tutorial", "--save_checkpoints_steps=5", "--is_local"],
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": REPO}, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {
        "training_type": "stream", "model_dir": "/tmp/movie_lens_tutorial", "model_name": "movie_lens_tutorial",
        "steps": 10000, "is_local": True}
