#!/usr/bin/env bash
# The GPU check, for a fresh CUDA machine with torch installed (no network needed): build lenetx
# with its CUDA kernels, run the GPU tests, run compute-sanitizer (memcheck, racecheck) on a
# small test, and print the cuDNN comparison with TF32 off and on. Meant to finish inside
# 8 minutes; logs go to $OUT when it is set (else runs/gpu-check).
set -uo pipefail
cd "$(dirname "$0")/.."
LOG=${OUT:-runs/gpu-check}
mkdir -p "$LOG"
export PYTHONUNBUFFERED=1 CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16} FORCE_CUDA=1

step() { echo; echo "=== $1 ($(date +%T))"; }

step build
python3 -m pip install -q --no-build-isolation --no-deps -e . > "$LOG/build.log" 2>&1 \
  || { tail -30 "$LOG/build.log"; exit 1; }
python3 -c "import torch, lenetx; print(torch.__version__, torch.cuda.get_device_name(), lenetx.__version__)"

step "GPU tests"
timeout 300 python3 -m pytest -q -x -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$LOG/tests.log" | tail -5

for tool in memcheck racecheck; do
  step "compute-sanitizer $tool"
  timeout 120 compute-sanitizer --tool "$tool" --error-exitcode 9 \
    python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py -k "cpu_and_cuda_agree or deterministic" \
    > "$LOG/$tool.log" 2>&1
  echo "exit $? ($LOG/$tool.log)"; grep -E "ERROR SUMMARY|passed|failed" "$LOG/$tool.log" | tail -3
done

step "cuDNN comparison, TF32 off"
timeout 150 python3 -m lenetx bench --device cuda --output "$LOG" > "$LOG/bench.log" 2>&1
step "cuDNN comparison, TF32 on"
timeout 150 python3 -m lenetx bench --device cuda --allow-tf32 --output "$LOG" > "$LOG/bench-tf32.log" 2>&1
cat "$LOG"/RESULTS-cuda.md "$LOG"/RESULTS-cuda-tf32.md 2>/dev/null
