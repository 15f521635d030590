#!/usr/bin/env bash
# The GPU check: an editable build with the machine's torch (no network), run the CUDA tests and the
# benchmarks, and leave logs and JSON under $OUT (default: ./gpu_out).
#
#   bash scripts/gpu_check.sh
#
# Python packages the machine lacks (hypothesis for the tests) can travel as wheels in .whl/;
# they are installed into a private folder first. Each step runs even if an earlier one failed;
# the exit status is the first failure's.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
status=0
step() {  # step NAME LOG COMMAND...: run, tee to LOG, remember the first failure
  local name=$1 log=$2
  shift 2
  echo "== $name" | tee -a "$OUT/$log"
  "$@" 2>&1 | tee -a "$OUT/$log"
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc" | tee -a "$OUT/$log"
  [ "$status" -ne 0 ] || status=$rc
}

if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/pydcr-site .whl/*.whl
  export PYTHONPATH=/tmp/pydcr-site${PYTHONPATH:+:$PYTHONPATH}
fi

{ nvidia-smi; python3 -c "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())"; } \
  >"$OUT/machine.txt" 2>&1
step build build.log env PYDCR_CUDA=ON PYDCR_CUDA_ARCHS="${PYDCR_CUDA_ARCHS:-90}" \
  python3 -m pip install --no-build-isolation --no-deps -v -e .
step info tests.log python3 -m pydcr info
step tests tests.log python3 -m pytest -q -p no:cacheprovider tests
step bench-resize bench.log python3 -m bench.resize --device cuda --out "$OUT/resize-cuda.json"
step bench-degrade bench.log python3 -m bench.degrade --device cuda --out "$OUT/degrade-cuda.json"
step bench-center bench.log python3 -m bench.center --device cuda --out "$OUT/center-cuda.json"
echo "gpu_check: exit $status"
exit $status
