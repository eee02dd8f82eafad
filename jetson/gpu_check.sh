#!/usr/bin/env bash
# One-command GPU check on an x86 machine with an NVIDIA GPU and a CUDA toolkit (see --help).
set -uo pipefail  # no -e: every step is recorded, and a failed step skips those needing it

usage() {
    cat <<'USAGE'
Usage: jetson/gpu_check.sh [--help]

On an x86_64 machine with an NVIDIA GPU, its driver and a CUDA toolkit, unattended:
  preflight   x86_64, nvidia-smi lists a GPU, nvcc and Python.h exist
  venv        a fresh venv ($GPU_CHECK_VENV) from $PYTHON
  tensorrt    pip install $TENSORRT_SPEC (PyPI wheels; default: tensorrt-cu<driver's CUDA major>)
  pycuda      pip install pycuda, built against $CUDA_HOME
  device-reqs requirements/device.txt + requirements/device-test.txt (onnxruntime, pytest)
  device-check  python -m benchmarks.device_check (the same as make device-check) in the venv:
              versions and device state, the TensorRT parser against the static table, fp32,
              fp16 and int8 engines of the tiny fixtures (and models/*.onnx), classify,
              generate and bench against the committed references, Triton when a tritonserver
              is found, the regression check; its report in $GPU_CHECK_WORK/device-check/
              (report.json, report.md); fails when one of its steps failed
  pytest      pytest -m "trt or gpu" tests/device (fails if none of them ran)
and writes a JSON summary (each step: ok/failed/skipped, seconds, message; versions from the
device check; test counts) atomically to $GPU_CHECK_SUMMARY. Exit status 0 only when every
step passed; else it prints and records exactly which steps failed. Each step's log is in
$GPU_CHECK_WORK/logs.

Environment variables (defaults in brackets):
  PYTHON              interpreter for the venv (3.8 or newer) [python3]
  GPU_CHECK_VENV      venv to (re)create [.venv-gpu-check]
  GPU_CHECK_WORK      the device check's report and engines, logs [results/gpu-check]
  GPU_CHECK_SUMMARY   the JSON summary [$GPU_CHECK_WORK/summary.json]
  CUDA_HOME           CUDA toolkit for building pycuda [/usr/local/cuda]
  TENSORRT_SPEC       pip requirement for TensorRT [tensorrt-cu<N>, N from nvidia-smi]
  PYCUDA_SPEC         pip requirement for pycuda [pycuda>=2022.1]
  GPU_CHECK_KEEP_VENV 1 = reuse an existing venv instead of recreating it [0]
  PIP_INDEX_URL etc.  pip's own variables pass through (a mirror, a proxy)
USAGE
}
case "${1:-}" in
    -h|--help) usage; exit 0 ;;
    "") ;;
    *) echo "error: unknown argument $1 (see --help)" >&2; exit 2 ;;
esac

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
PYTHON="${PYTHON:-python3}"
VENV="${GPU_CHECK_VENV:-.venv-gpu-check}"
WORK="${GPU_CHECK_WORK:-results/gpu-check}"
SUMMARY="${GPU_CHECK_SUMMARY:-$WORK/summary.json}"
CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
PYCUDA_SPEC="${PYCUDA_SPEC:-pycuda>=2022.1}"
export PIP_DISABLE_PIP_VERSION_CHECK=1
mkdir -p "$WORK/logs" || exit 2
STEPS="$WORK/steps.jsonl"
: > "$STEPS"
rm -f "$WORK/device-check/report.json" "$WORK/pytest.xml"
command -v "$PYTHON" >/dev/null || { echo "error: PYTHON=$PYTHON not found" >&2; exit 2; }

record() {  # name status seconds message
    "$PYTHON" -c 'import json, sys; print(json.dumps(dict(zip(
        ("name", "status", "seconds", "message"), sys.argv[1:5]))))' "$@" >> "$STEPS"
}

declare -A STATUS
# step NAME "NEEDS..." CMD...: run CMD (log in $WORK/logs/NAME.log) unless a needed step did not
# pass; record ok/failed/skipped with the time and, on failure, the log's last line.
step() {
    local name=$1 needs=$2 need start rc last
    shift 2
    for need in $needs; do
        if [ "${STATUS[$need]:-}" != "ok" ]; then
            STATUS[$name]=skipped
            record "$name" skipped 0 "not run: $need did not pass"
            echo "== $name: skipped ($need did not pass)"
            return 0
        fi
    done
    echo "== $name"
    start=$(date +%s.%N)
    "$@" > "$WORK/logs/$name.log" 2>&1
    rc=$?
    local seconds
    seconds=$("$PYTHON" -c "import sys; print(round(float(sys.argv[2]) - float(sys.argv[1]), 1))" \
        "$start" "$(date +%s.%N)")
    if [ $rc -eq 0 ]; then
        STATUS[$name]=ok
        record "$name" ok "$seconds" ""
    else
        STATUS[$name]=failed
        last=$(grep -v '^\s*$' "$WORK/logs/$name.log" | tail -n 1 | cut -c1-300)
        record "$name" failed "$seconds" "exit $rc: ${last:-no output} (log: $WORK/logs/$name.log)"
        echo "   failed (exit $rc): ${last:-no output}"
    fi
}

finish() {
    PYTHONPATH="$REPO" "$PYTHON" -c 'import sys
from jetson.gpu_summary import finalize
sys.exit(finalize(*sys.argv[1:]))' "$STEPS" "$SUMMARY" "$WORK/device-check/report.json" \
        "$WORK/pytest.xml"
}

preflight() {
    local arch
    arch=$(uname -m)
    [ "$arch" = "x86_64" ] || { echo "this check is for x86_64 machines, this is $arch" \
        "(on a Jetson use jetson/setup.sh and make test-device)"; return 1; }
    command -v nvidia-smi >/dev/null || { echo "no nvidia-smi: no NVIDIA driver here"; return 1; }
    nvidia-smi -L | grep -q '^GPU ' || { echo "nvidia-smi lists no GPU: $(nvidia-smi -L 2>&1 |
        tail -n 1)"; return 1; }
    nvidia-smi -L
    nvidia-smi | grep -o 'CUDA Version: [0-9.]*' || true
    [ -x "$CUDA_HOME/bin/nvcc" ] || { echo "no nvcc at $CUDA_HOME/bin/nvcc: install a CUDA" \
        "toolkit or set CUDA_HOME"; return 1; }
    "$CUDA_HOME/bin/nvcc" --version | tail -n 2
    "$PYTHON" -c 'import sys, sysconfig, os; sys.exit(sys.version_info < (3, 8) or not
        os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' ||
        { echo "$PYTHON is older than 3.8 or lacks Python.h (apt install python3-dev)"; return 1; }
}

make_venv() {
    if [ "${GPU_CHECK_KEEP_VENV:-0}" != "1" ] || [ ! -x "$VENV/bin/python" ]; then
        rm -rf "$VENV"
        "$PYTHON" -m venv "$VENV" || { echo "python -m venv failed (apt install python3-venv)"
            return 1; }
    fi
    "$VENV/bin/python" -m pip install -q --upgrade pip
}

tensorrt_spec() {
    if [ -n "${TENSORRT_SPEC:-}" ]; then echo "$TENSORRT_SPEC"; return; fi
    local major
    major=$(nvidia-smi | grep -o 'CUDA Version: [0-9]*' | grep -o '[0-9]*$')
    echo "tensorrt-cu${major:-12}"
}

install_tensorrt() {
    local spec
    spec=$(tensorrt_spec)
    echo "pip install $spec"
    "$VENV/bin/python" -m pip install -q "$spec" &&
        "$VENV/bin/python" -c 'import tensorrt; print("tensorrt", tensorrt.__version__)'
}

install_pycuda() {
    CUDA_ROOT="$CUDA_HOME" PATH="$CUDA_HOME/bin:$PATH" \
        "$VENV/bin/python" -m pip install -q --no-binary pycuda "$PYCUDA_SPEC" &&
        "$VENV/bin/python" -c 'import pycuda.driver as d; d.init(); print(d.Device(0).name())'
}

install_device_reqs() {
    "$VENV/bin/python" -m pip install -q -r requirements/device.txt \
        -r requirements/device-test.txt
}

run_device_tests() {
    "$VENV/bin/python" -m pytest -m "trt or gpu" tests/device -q -rs \
        --junitxml "$WORK/pytest.xml"
    local rc=$?
    [ $rc -eq 0 ] || return $rc
    "$PYTHON" - "$WORK/pytest.xml" <<'PY'
import sys
sys.path.insert(0, ".")
from jetson.gpu_summary import junit_counts
counts = junit_counts(sys.argv[1])
print(counts)
if not counts or counts["passed"] == 0:
    print(f"no TensorRT/GPU test ran on a GPU machine: {counts}")
    sys.exit(1)
PY
}

step preflight "" preflight
step venv "preflight" make_venv
step tensorrt "venv" install_tensorrt
step pycuda "venv" install_pycuda
step device-reqs "venv" install_device_reqs
step device-check "tensorrt pycuda device-reqs" "$VENV/bin/python" -m benchmarks.device_check \
    --out "$WORK/device-check"
step pytest "tensorrt pycuda device-reqs" run_device_tests
finish
