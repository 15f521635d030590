#!/usr/bin/env bash
# The GPU check: an editable build with the machine's torch (no network), run the CUDA tests and the
# benchmarks, and leave logs and JSON under $OUT (default: ./gpu_out).
#
#   bash scripts/gpu_check.sh
#   GPU_CHECK_TESTS="-m cuda tests" GPU_CHECK_BENCHES="trunk embed" bash scripts/gpu_check.sh  # a shorter check
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
step() {  # step NAME LOG SECONDS COMMAND...: run with a time limit, tee to LOG, remember the first failure
  local name=$1 log=$2 limit=$3
  shift 3
  echo "== $name" | tee -a "$OUT/$log"
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$OUT/$log"
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
step build build.log 300 env PYDCR_CUDA=ON PYDCR_CUDA_ARCHS="${PYDCR_CUDA_ARCHS:-90}" \
  python3 -m pip install --no-build-isolation --no-deps -v --config-settings=build.tool-args=-k0 -e .
step info tests.log 60 python3 -m pydcr info
# Every later step must run on the GPU: without a device or the CUDA module, stop here and fail.
export PYDCR_REQUIRE_CUDA=1
step cuda tests.log 60 python3 -c "import torch, pydcr; info = pydcr.build_info(); \
assert torch.cuda.is_available() and info['cuda_loaded'], f'CUDA not usable: {info}'"
[ "$status" -eq 0 ] || { echo "gpu_check: exit $status"; exit "$status"; }
# An argument error inside a kernel must reach Python as RuntimeError: torch's own and pydcr's,
# each in a process of its own, with the toolchain facts and a native backtrace if one crashes.
step errors tests.log 180 python3 scripts/check_errors.py
# pytest-xdist spreads the suite over the machine's cores when it is installed.
xdist=$(python3 -c "import xdist" 2>/dev/null && echo "-n 8")
step tests tests.log 240 python3 -m pytest -q -p no:cacheprovider $xdist -rfs ${GPU_CHECK_TESTS:-tests}
# Benchmarks write JSON to a scratch folder, merged into one $OUT/bench.json at the end (the
# machine returns only a few files).
json=$(mktemp -d)
benches=${GPU_CHECK_BENCHES:-resize degrade prelu center embed trunk trunk_host profile_trunk}
for bench in $benches; do
  case $bench in
    embed) step bench-embed bench.log 180 python3 -m bench.embed --device cuda --quick --out "$json/embed.json" ;;
    trunk) step bench-trunk bench.log 240 python3 -m bench.trunk --device cuda --quick ${GPU_CHECK_TRUNK_ARGS---compile} --out "$json/trunk.json" ;;
    trunk_host) step bench-trunk-host bench.log 60 python3 -m bench.trunk --device cuda --host --out "$json/trunk-host.json" ;;
    profile_trunk) step profile-trunk bench.log 150 python3 -m bench.profile_trunk --device cuda --compile ;;
    *) step "bench-$bench" bench.log 90 python3 -m bench.$bench --device cuda --quick --out "$json/$bench.json" ;;
  esac
done
if [ -f "${PYDCR_SHARED:-../shared}/data/lfw/lfw_landmark.txt" ]; then  # the data benchmark needs LFW
  step bench-data bench.log 90 python3 -m bench.data --device cuda --quick --out "$json/data.json"
fi
python3 - "$json" "$OUT/bench.json" <<'PY'
import json, pathlib, sys
merged = {p.stem: json.loads(p.read_text()) for p in sorted(pathlib.Path(sys.argv[1]).glob("*.json"))}
pathlib.Path(sys.argv[2]).write_text(json.dumps(merged, indent=1))
PY
echo "gpu_check: exit $status"
exit $status
