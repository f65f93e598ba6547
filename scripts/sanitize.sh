#!/usr/bin/env bash
# Builds the CPU kernels with a GCC sanitizer in a copy of the tracked tree and runs the test
# suite against that build: `address` (out-of-bounds and use-after-free accesses) or `undefined`
# (misaligned stores, overflows, bad shifts). Not part of CI: the build takes about 8 minutes on
# 2 cores. Extra arguments go to pytest (default: tests); LENETX_CPU_ISA=avx2|baseline checks the lower ISAs.
#   bash scripts/sanitize.sh address [pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
sanitizer="${1:?usage: scripts/sanitize.sh address|undefined [pytest arguments]}"
shift
case "$sanitizer" in
  address) flags="-fsanitize=address -fno-omit-frame-pointer" ;;
  undefined) flags="-fsanitize=undefined -fno-sanitize=vptr -fno-omit-frame-pointer" ;;
  *) echo "unknown sanitizer '$sanitizer': choose address or undefined" >&2; exit 2 ;;
esac
python="${PYTHON:-python3}"
tree="${LENETX_SANITIZE_DIR:-/tmp/lenetx-$sanitizer}"
mkdir -p "$tree"
git ls-files -z | xargs -0 cp --parents --preserve=timestamps -t "$tree"
(cd "$tree" && FORCE_CUDA=0 CFLAGS="$flags" LDFLAGS="${flags%% *}" "$python" setup.py build_ext --inplace > build.log)
logs="$tree/reports"
rm -rf "$logs" && mkdir -p "$logs"
if [ "$sanitizer" = address ]; then
  # The runtime must come first; libstdc++ after it, or exceptions thrown in the kernels' checks
  # abort in ASan's __cxa_throw interceptor. Python and torch are not instrumented: no leak report.
  export LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libstdc++.so.6)"
  export ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:log_path=$logs/asan"
else
  export UBSAN_OPTIONS="print_stacktrace=1:log_path=$logs/ubsan"
fi
[ $# -gt 0 ] || set -- tests
status=0
(cd "$tree" && PYTHONPATH="$tree" "$python" -m pytest -q -p no:cacheprovider "$@") || status=$?
if compgen -G "$logs/*" > /dev/null; then
  echo "sanitizer reports in $logs:" >&2
  grep -h "ERROR\|runtime error" "$logs"/* | sort | uniq -c >&2
  exit 1
fi
exit "$status"
