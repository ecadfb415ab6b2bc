"""Two torchrun "nodes" on 127.0.0.1 (two launches with --nnodes=2), run with the README's
multi-node commands: static and c10d rendezvous train; a model_dir that is not shared is refused
before training; a killed rank is named within seconds, a hung one at the collective timeout."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODELS = str(Path(__file__).resolve().parent / "multi_node_models.py")


def guide_commands() -> dict[str, list[list[str]]]:
    """The README's multi-node commands, by rendezvous: static (one per node) and c10d (one for all)."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"### Multi-node training.*?```\n(.*?)```", text, re.S).group(1)
    lines = [shlex.split(line) for line in block.replace("\\\n", " ").splitlines() if line.startswith("torchrun")]
    return {"static": [c for c in lines if "--node_rank=0" in c or "--node_rank=1" in c],
            "c10d": [c for c in lines if "--rdzv-backend=c10d" in c]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def localised(command: list[str], port: int, model_dir: Path, **replace: str) -> list[str]:
    """``command`` on this host: torchrun as this Python's module, node 0 at 127.0.0.1:``port``,
    the model_dir under the test's tmp_path, and ``replace``'s options (e.g. another --model)."""
    out = [sys.executable, "-m", "torch.distributed.run"]
    for arg in command[1:]:
        arg = arg.replace("10.0.0.1", "127.0.0.1").replace("29500", str(port)).replace("/shared/deepfm", str(model_dir))
        out.append(arg)
    for option, value in replace.items():
        out[out.index(option) + 1] = value
    return out


def launch(command: list[str], tmp_path: Path, name: str, prefix: list[str] = ()) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "MULTI_NODE_PID_DIR": str(tmp_path)}
    return subprocess.Popen([*prefix, *command], stdout=open(tmp_path / f"{name}.out", "w"),
                            stderr=open(tmp_path / f"{name}.err", "w"), env=env, start_new_session=True)


def finish(nodes: list[subprocess.Popen], timeout: float) -> list[int]:
    try:
        return [node.wait(timeout=timeout) for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                os.killpg(node.pid, signal.SIGKILL)
                node.wait()


@pytest.mark.parametrize("rendezvous", ["static", "c10d"])
def test_the_guides_two_node_commands_train_and_checkpoint(tmp_path, rendezvous):
    commands, port = guide_commands()[rendezvous], free_port()
    per_node = commands if rendezvous == "static" else commands * 2
    nodes = [launch(localised(c, port, tmp_path / "deepfm"), tmp_path, f"node{i}") for i, c in enumerate(per_node)]
    codes = finish(nodes, timeout=240)
    assert codes == [0, 0], (tmp_path / "node0.err").read_text()[-3000:] + (tmp_path / "node1.err").read_text()[-3000:]
    index = (tmp_path / "deepfm" / "checkpoint").read_text()
    assert '"latest": "ckpt-4"' in index and "ckpt-2" in index
    assert len(list((tmp_path / "deepfm" / "ckpt-4" / "tables").glob("*.shard-00001-of-00002.npz"))) > 0


def test_a_model_dir_that_is_not_shared_is_refused_before_training(tmp_path):
    """Node 1 sees its own directory at the model_dir's path (a bind mount in a mount namespace of
    its own, as a node's local disk would be)."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-m", "true"]).returncode != 0:
        pytest.skip("needs `unshare -m` (mount namespaces) to give node 1 a directory of its own")
    model_dir, local = tmp_path / "deepfm", tmp_path / "node1-disk"
    model_dir.mkdir()
    local.mkdir()
    static, port = guide_commands()["static"], free_port()
    node1 = shlex.join(localised(static[1], port, model_dir))
    started = time.monotonic()
    nodes = [launch(localised(static[0], port, model_dir), tmp_path, "node0"),
             launch(["sh", "-c", f"mount --bind {shlex.quote(str(local))} {shlex.quote(str(model_dir))} && exec {node1}"],
                    tmp_path, "node1", prefix=["unshare", "-m"])]
    codes = finish(nodes, timeout=120)
    assert codes[0] != 0 and codes[1] != 0
    assert time.monotonic() - started < 60
    for rank in (0, 1):
        err = (tmp_path / f"node{rank}.err").read_text()
        assert (f"rank {rank}: model_dir {model_dir} is not shared: rank 1 (host {socket.gethostname()}) did not "
                f"find the marker rank 0") in err, err[-3000:]
    assert not (model_dir / "checkpoint").exists() and not list(local.iterdir())  # nothing trained


def run_signalled(tmp_path: Path, model: str, *extra: str) -> tuple[str, float]:
    """Both nodes with ``model`` (whose rank 1 signals itself mid-step); node 0's stderr and the
    seconds from the signal to node 0's exit."""
    static, port = guide_commands()["static"], free_port()
    options = {"--model": f"{MODELS}:{model}", "--max-steps": "100"}
    nodes = [launch(localised(c, port, tmp_path / "model", **options) + list(extra), tmp_path, f"node{i}")
             for i, c in enumerate(static)]
    pid_file = tmp_path / "signalled.pid"
    try:
        nodes[0].wait(timeout=120)
        exited = time.time()
    finally:
        if pid_file.exists():  # a stopped worker never exits by itself
            try:
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass
        finish(nodes, timeout=30)
    return (tmp_path / "node0.err").read_text(), exited - pid_file.stat().st_mtime


def test_a_killed_rank_is_named_on_the_surviving_node_within_seconds(tmp_path):
    err, seconds = run_signalled(tmp_path, "KilledMidStep")
    assert re.search(r"rank 0: training stopped at global step 2: rank\(s\) \[1\] stopped \(no sign of life", err), \
        err[-3000:]
    assert seconds < 15


def test_a_hung_rank_is_named_when_the_collective_timeout_ends(tmp_path):
    err, seconds = run_signalled(tmp_path, "HungMidStep", "--collective-timeout", "5")
    assert re.search(r"rank 0: training stopped at global step 2: rank\(s\) \[1\] stopped \(no sign of life", err), \
        err[-3000:]
    assert 5 <= seconds < 20
