#!/usr/bin/env bash
# Creates benchmarks/.venv-peers for `make bench-peers`: this project plus TorchRec on CPU, which stays
# out of the project's own dependencies.
#
# torchrec and fbgemm-gpu-cpu 1.8.0 are built against torch 2.13, the project's pinned CPU wheel (the
# 1.9.x pair needs a newer torch: its libraries fail to load with undefined torch symbols). They, and
# tensordict and torchmetrics, are installed with --no-deps so that pip never swaps that torch for
# another build; their pure-Python dependencies are pinned below instead.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
VENV=benchmarks/.venv-peers

"$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --quiet)
"${PIP[@]}" --upgrade pip
"${PIP[@]}" -e .
"${PIP[@]}" --no-deps torchrec==1.8.0 fbgemm-gpu-cpu==1.8.0 tensordict==0.15.3 torchmetrics==1.0.3 \
    pyre-extensions==0.0.32
"${PIP[@]}" cloudpickle==3.1.2 pyvers==0.2.3 lightning-utilities==0.15.3 typing-inspect==0.9.0
"$VENV/bin/python" -c "import torchrec, fbgemm_gpu"  # fails here, not mid-benchmark
touch "$VENV/.installed"
