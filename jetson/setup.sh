#!/usr/bin/env bash
# Set up a Python venv on a Jetson for the device side of the toolkit (see --help).
set -euo pipefail

usage() {
    cat <<'USAGE'
Usage: jetson/setup.sh [--force] [--check-only] [--help]

Makes a venv on a Jetson for the device side (runtime, engines, benchmarks, device tests):
  1. refuses a machine that is not a Jetson (no /etc/nv_tegra_release, no Jetson device-tree
     model) unless --force or JETSON_SETUP_FORCE=1;
  2. checks that the system Python imports JetPack's TensorRT bindings (python3-libnvinfer);
  3. creates the venv with --system-site-packages, so those bindings are used, and writes a
     pip.conf into it whose constraints (jetson/pip-constraints.txt) make any
     `pip install tensorrt` in that venv fail: a PyPI tensorrt wheel does not match JetPack;
  4. installs requirements/device.txt and device-test.txt (onnxruntime only if none imports);
  5. builds pycuda from source against the device's CUDA (CUDA_HOME, nvcc on PATH);
  6. checks that tensorrt still comes from the system site-packages, not the venv;
  7. prints the module, JetPack, L4T, power mode, TensorRT, CUDA and Python versions
     (python -m jetson.state) and writes the full state to $VENV/device_state.json.

Options:
  --force        set up even if this is not a Jetson (same as JETSON_SETUP_FORCE=1)
  --check-only   stop after the Jetson check (prints what was detected)
  --help         this text

Environment variables (defaults in brackets):
  VENV                  venv to create or update [.venv-jetson]
  PYTHON                interpreter the venv is made from: JetPack's, which has the TensorRT
                        bindings [python3]
  CUDA_HOME             CUDA toolkit pycuda is built against [/usr/local/cuda]
  PYCUDA_SPEC           pip requirement for pycuda [pycuda>=2022.1]
  NUMPY_SPEC            numpy requirement; JetPack's TensorRT/OpenCV bindings are built
                        against NumPy 1.x [numpy<2]; set it empty to lift the cap
  JETSON_SETUP_FORCE    1 = do not refuse a machine that is not a Jetson [0]
  JETSON_SETUP_NO_TESTS 1 = skip requirements/device-test.txt (pytest, onnxruntime) [0]
  JETSON_SETUP_SKIP_PYCUDA  1 = do not build pycuda (e.g. --force on a box without CUDA) [0]
  JETSON_ROOT           filesystem root the Jetson check reads (for tests) [/]
USAGE
}

FORCE="${JETSON_SETUP_FORCE:-0}"
CHECK_ONLY=0
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --force) FORCE=1 ;;
        --check-only) CHECK_ONLY=1 ;;
        *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
VENV="${VENV:-.venv-jetson}"
PYTHON="${PYTHON:-python3}"
CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
PYCUDA_SPEC="${PYCUDA_SPEC:-pycuda>=2022.1}"
NUMPY_SPEC="${NUMPY_SPEC-numpy<2}"
ROOT="${JETSON_ROOT:-/}"
ROOT="${ROOT%/}"  # "/" -> "" so paths read /etc/..., not //etc/...

die() { echo "error: $*" >&2; exit 1; }
say() { echo "jetson/setup.sh: $*"; }

# 1. A Jetson? (the same files jetson.device_state reads)
model=""
if [ -r "$ROOT/proc/device-tree/model" ]; then
    model="$(tr -d '\0' < "$ROOT/proc/device-tree/model")"
fi
release=""
if [ -r "$ROOT/etc/nv_tegra_release" ]; then
    release="$(head -n 1 "$ROOT/etc/nv_tegra_release")"
fi
if [ -z "$release" ] && [[ "$model" != *Jetson* ]]; then
    if [ "$FORCE" != "1" ]; then
        die "this is not a Jetson (no $ROOT/etc/nv_tegra_release; device-tree model:" \
            "'${model:-none}'); run it on the Jetson, or pass --force / JETSON_SETUP_FORCE=1" \
            "to set up anyway"
    fi
    say "not a Jetson (model '${model:-none}'): continuing because of --force"
else
    say "Jetson: ${model:-unknown model}; ${release:-no /etc/nv_tegra_release}"
fi
[ "$CHECK_ONLY" = "1" ] && exit 0

# 2. JetPack's TensorRT bindings in the system interpreter
command -v "$PYTHON" >/dev/null || die "PYTHON=$PYTHON not found"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 8))' ||
    die "$PYTHON is older than Python 3.8"
if ! "$PYTHON" -c 'import tensorrt' 2>/dev/null; then
    if [ "$FORCE" != "1" ]; then
        die "$PYTHON cannot import tensorrt: install JetPack's bindings" \
            "(sudo apt install python3-libnvinfer, or nvidia-jetpack); this script never" \
            "pip-installs tensorrt"
    fi
    say "warning: $PYTHON cannot import tensorrt; the TensorRT tests will skip"
fi

# 3. The venv, guarded against pip-installed TensorRT
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv --system-site-packages "$VENV" ||
        die "could not create $VENV (Ubuntu: sudo apt install python3-venv)"
fi
PY="$VENV/bin/python"
printf '[install]\nconstraint = %s\n' "$REPO/jetson/pip-constraints.txt" > "$VENV/pip.conf"
export PIP_DISABLE_PIP_VERSION_CHECK=1
"$PY" -m pip install -q --upgrade pip

# 4. Device requirements (+ test tools)
"$PY" -m pip install -q -r requirements/device.txt ${NUMPY_SPEC:+"$NUMPY_SPEC"}
if [ "${JETSON_SETUP_NO_TESTS:-0}" != "1" ]; then
    # requirements/device-test.txt without onnxruntime: NVIDIA's onnxruntime-gpu wheel may be
    # in the system site-packages already, and PyPI's CPU onnxruntime would shadow it
    grep -v '^onnxruntime' requirements/device-test.txt > "$VENV/device-test-no-ort.txt"
    "$PY" -m pip install -q -r "$VENV/device-test-no-ort.txt"
    "$PY" -c 'import onnxruntime' 2>/dev/null ||
        "$PY" -m pip install -q "$(grep '^onnxruntime' requirements/device-test.txt)"
fi

# 5. pycuda against this device's CUDA
if [ "${JETSON_SETUP_SKIP_PYCUDA:-0}" != "1" ]; then
    [ -x "$CUDA_HOME/bin/nvcc" ] || die "nvcc not found at $CUDA_HOME/bin/nvcc: install the" \
        "CUDA toolkit (sudo apt install nvidia-jetpack, or cuda-toolkit-<version>) or set CUDA_HOME"
    export CUDA_HOME CUDA_ROOT="$CUDA_HOME" PATH="$CUDA_HOME/bin:$PATH"
    export LD_LIBRARY_PATH="$CUDA_HOME/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    "$PY" -c 'import sysconfig, os, sys; sys.exit(not os.path.exists(os.path.join(
        sysconfig.get_paths()["include"], "Python.h")))' ||
        die "Python.h not found: sudo apt install python3-dev (pycuda is compiled here)"
    if ! "$PY" -c 'import pycuda.driver' 2>/dev/null; then
        "$PY" -m pip install -q --no-binary pycuda "$PYCUDA_SPEC" ||
            die "building $PYCUDA_SPEC against $CUDA_HOME failed (see pip's output above)"
    fi
    "$PY" -c 'import pycuda.driver as d; d.init(); print("pycuda sees", d.Device(0).name())' ||
        die "pycuda is installed but cannot use the GPU (is this user in the video/render" \
            "group? does /dev/nvhost-* or /dev/nvgpu exist?)"
fi

# 6. tensorrt must still be JetPack's
if trt_file="$("$PY" -c 'import tensorrt; print(tensorrt.__file__)' 2>/dev/null)"; then
    case "$trt_file" in
        "$(cd "$VENV" && pwd)"/*) die "tensorrt in $VENV was pip-installed ($trt_file):" \
            "pip uninstall it; JetPack's bindings must be used" ;;
    esac
fi

# 7. What this device is
"$PY" -m jetson.state --summary --output "$VENV/device_state.json"
say "done: $VENV (full device state in $VENV/device_state.json)"
