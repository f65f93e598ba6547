#!/usr/bin/env bash
# Prepares this Python for lenetx: installs PyTorch if it is missing, the tools the tests and the
# training command use, then builds lenetx in place (editable). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

if ! "$PYTHON" -c "import torch, torchvision" 2>/dev/null; then
  "$PYTHON" -m pip install -q torch==2.14.1 torchvision==0.29.1
fi
"$PYTHON" -m pip install -q numpy pillow matplotlib pytest hypothesis expecttest setuptools wheel

# setup.py finds the CUDA toolkit (CUDA_HOME, or from the nvcc on PATH, or /usr/local/cuda).
"$PYTHON" -m pip install -q --no-build-isolation --no-deps -e .
