#!/usr/bin/env bash
# The main job from a fresh machine: set up, then train LeNet-5 on MNIST and print the per-class
# report. Without the dataset (offline, nothing local), show the bundled network reading the
# bundled digit images instead, and say how to get the data.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
PYTHON=${PYTHON:-python3}

if [ -z "${LENETX_DATA:-}" ] && [ -d ../shared/data/MNIST ]; then
  export LENETX_DATA="$(cd ../shared/data && pwd)"
fi
"$PYTHON" -m lenetx train --model lenet5 --dataset mnist "$@"
status=$?
if [ $status -eq 2 ]; then
  echo
  echo "MNIST is not reachable here, so here is the bundled LeNet-5 (trained by 'lenetx train')"
  echo "reading the bundled sample digits. To train, go online once or put torchvision's MNIST"
  echo "files in DIR/MNIST/raw and run: LENETX_DATA=DIR bash scripts/quickstart.sh"
  echo
  "$PYTHON" -m lenetx predict --top-k 2
  exit $?
fi
exit $status
