#!/usr/bin/env bash
# Set up a Python venv on a Jetson for the device side of the toolkit (see --help).
set -euo pipefail

usage() {
    cat <<'USAGE'
Usage: jetson/setup.sh [--force] [--check-only] [--print-constraints] [--help]

Makes a venv on a Jetson for the device side (runtime, engines, benchmarks, device tests):
  1. refuses a machine that is not a Jetson (no /etc/nv_tegra_release, no Jetson device-tree
     model) unless --force or JETSON_SETUP_FORCE=1;
  2. checks that the system Python imports JetPack's TensorRT bindings (python3-libnvinfer);
  3. creates the venv with --system-site-packages, so those bindings are used, and writes a
     pip.conf into it whose constraints (jetson/pip-constraints.txt) make any
     `pip install tensorrt` in that venv fail: a PyPI tensorrt wheel does not match JetPack.
     Exception: on L4T 39 or later (JetPack 7.2+) with TensorRT 11.4.1 or later, NVIDIA's SBSA
     pip wheels (tensorrt, tensorrt-cu13*) are allowed at exactly the system's TensorRT version;
  4. installs requirements/device.txt, serve.txt and device-test.txt (onnxruntime only if none
     imports); on Python 3.8 (JetPack 5) binary wheels only (--only-binary=:all:), since some
     newer releases (tokenizers) ship no cp38 aarch64 wheel and their sdist needs Rust;
  5. builds pycuda from source against the device's CUDA (CUDA_HOME, nvcc on PATH);
  6. checks that tensorrt still comes from the system site-packages, not the venv (or, where
     the wheels are allowed, that the venv's wheel has the system's version);
  7. prints the module, JetPack, L4T, power mode, TensorRT, CUDA and Python versions
     (python -m jetson.state) and writes the full state to $VENV/device_state.json.

Options:
  --force        set up even if this is not a Jetson (same as JETSON_SETUP_FORCE=1)
  --check-only   stop after the Jetson check (prints what was detected)
  --print-constraints  print the pip constraints the venv would get, and stop
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
  JETSON_SETUP_NO_SERVE 1 = skip requirements/serve.txt (tritonclient) [0]
  JETSON_SETUP_ONLY_BINARY  1 = pip installs binary wheels only, 0 = sdists allowed; empty =
                        wheels only on Python 3.8 [empty]
  TENSORRT_VERSION      the system's TensorRT version, when the system Python cannot say
                        (it decides which TensorRT pip wheel, if any, the venv accepts) [empty]
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
        --print-constraints) CHECK_ONLY=constraints ;;
        *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

# --print-constraints: the constraints alone on stdout (fd 3), every message on stderr
if [ "$CHECK_ONLY" = "constraints" ]; then exec 3>&1 1>&2; else exec 3>&1; fi

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

# TensorRT pip wheels: refused (JetPack's bindings only), except NVIDIA's SBSA wheels from
# TensorRT 11.4.1 on JetPack 7.2+ (L4T >= 39), at exactly the system's TensorRT version.
l4t_major=""
if [[ "$release" =~ R([0-9]+) ]]; then l4t_major="${BASH_REMATCH[1]}"; fi
version_at_least() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n 1)" = "$2" ]; }
system_trt="${TENSORRT_VERSION:-}"
if [ -z "$system_trt" ] && command -v "$PYTHON" >/dev/null; then
    system_trt="$("$PYTHON" -c 'import tensorrt; print(tensorrt.__version__)' 2>/dev/null || true)"
fi
if [ -z "$system_trt" ] && [ -z "$ROOT" ] && command -v dpkg-query >/dev/null; then
    system_trt="$(dpkg-query -W -f='${Version}' tensorrt 2>/dev/null || true)"
    system_trt="${system_trt%%-*}"  # 11.4.1.6-1+cuda13.0 -> 11.4.1.6
fi
TRT_WHEEL_OK=0
if [ -n "$l4t_major" ] && [ "$l4t_major" -ge 39 ] && [ -n "$system_trt" ] &&
        version_at_least "$system_trt" 11.4.1; then
    TRT_WHEEL_OK=1
fi
TRT_WHEELS="tensorrt tensorrt-cu13 tensorrt-cu13-libs tensorrt-cu13-bindings"
print_constraints() {
    if [ "$TRT_WHEEL_OK" = "1" ]; then
        echo "# jetson/setup.sh: L4T $l4t_major, TensorRT $system_trt: NVIDIA's SBSA wheels of"
        echo "# that exact version are allowed; every other TensorRT wheel is refused."
        grep -v -E "^($(echo "$TRT_WHEELS" | tr ' ' '|'))<0$" "$REPO/jetson/pip-constraints.txt"
        for name in $TRT_WHEELS; do echo "${name}==${system_trt}"; done
    else
        cat "$REPO/jetson/pip-constraints.txt"
    fi
}
if [ "$CHECK_ONLY" = "constraints" ]; then print_constraints >&3; exit 0; fi

# 2. JetPack's TensorRT bindings in the system interpreter
command -v "$PYTHON" >/dev/null || die "PYTHON=$PYTHON not found"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 8))' ||
    die "$PYTHON is older than Python 3.8"
if ! "$PYTHON" -c 'import tensorrt' 2>/dev/null; then
    if [ "$TRT_WHEEL_OK" = "1" ]; then
        say "$PYTHON cannot import tensorrt: in the venv, pip install 'tensorrt==$system_trt'" \
            "(NVIDIA's SBSA wheel of the system's TensorRT)"
    elif [ "$FORCE" != "1" ]; then
        die "$PYTHON cannot import tensorrt: install JetPack's bindings" \
            "(sudo apt install python3-libnvinfer, or nvidia-jetpack); this script never" \
            "pip-installs tensorrt"
    else
        say "warning: $PYTHON cannot import tensorrt; the TensorRT tests will skip"
    fi
fi

# 3. The venv, guarded against pip-installed TensorRT
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv --system-site-packages "$VENV" ||
        die "could not create $VENV (Ubuntu: sudo apt install python3-venv)"
fi
PY="$VENV/bin/python"
[ "$VENV" = ".venv-jetson" ] || venv_note=" (export VENV=$VENV for it too)"
CONSTRAINTS="$REPO/jetson/pip-constraints.txt"
if [ "$TRT_WHEEL_OK" = "1" ]; then
    CONSTRAINTS="$(cd "$VENV" && pwd)/pip-constraints.txt"
    print_constraints > "$CONSTRAINTS"
    say "TensorRT $system_trt on L4T $l4t_major: pip may install its SBSA wheels at that version"
fi
printf '[install]\nconstraint = %s\n' "$CONSTRAINTS" > "$VENV/pip.conf"
export PIP_DISABLE_PIP_VERSION_CHECK=1
"$PY" -m pip install -q --upgrade pip

# 4. Device requirements (+ serving, + test tools). Python 3.8 (JetPack 5): wheels only, as
# the newest tokenizers and others have no cp38 aarch64 wheel and pip would build the sdist.
py_version="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
ONLY_BINARY="${JETSON_SETUP_ONLY_BINARY:-}"
if [ -z "$ONLY_BINARY" ]; then
    ONLY_BINARY=0
    [ "$py_version" = "3.8" ] && ONLY_BINARY=1
fi
BINARY_FLAG="--prefer-binary"
[ "$ONLY_BINARY" = "1" ] && BINARY_FLAG="--only-binary=:all:"
say "Python $py_version: pip $BINARY_FLAG"
"$PY" -m pip install -q "$BINARY_FLAG" -r requirements/device.txt ${NUMPY_SPEC:+"$NUMPY_SPEC"}
if [ "${JETSON_SETUP_NO_SERVE:-0}" != "1" ]; then
    "$PY" -m pip install -q "$BINARY_FLAG" -r requirements/serve.txt
fi
if [ "${JETSON_SETUP_NO_TESTS:-0}" != "1" ]; then
    # requirements/device-test.txt without onnxruntime: NVIDIA's onnxruntime-gpu wheel may be
    # in the system site-packages already, and PyPI's CPU onnxruntime would shadow it
    grep -v '^onnxruntime' requirements/device-test.txt > "$VENV/device-test-no-ort.txt"
    "$PY" -m pip install -q "$BINARY_FLAG" -r "$VENV/device-test-no-ort.txt"
    "$PY" -c 'import onnxruntime' 2>/dev/null ||
        "$PY" -m pip install -q "$BINARY_FLAG" "$(grep '^onnxruntime' requirements/device-test.txt)"
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

# 6. tensorrt must still be JetPack's (or, where allowed, a wheel of the system's version)
if trt_file="$("$PY" -c 'import tensorrt; print(tensorrt.__file__)' 2>/dev/null)"; then
    case "$trt_file" in
        "$(cd "$VENV" && pwd)"/*)
            venv_trt="$("$PY" -c 'import tensorrt; print(tensorrt.__version__)' 2>/dev/null)"
            if [ "$TRT_WHEEL_OK" != "1" ]; then
                die "tensorrt in $VENV was pip-installed ($trt_file): pip uninstall it;" \
                    "JetPack's bindings must be used (TensorRT pip wheels are accepted only" \
                    "from 11.4.1 on L4T 39+)"
            elif [ "$venv_trt" != "$system_trt" ]; then
                die "tensorrt $venv_trt in $VENV does not match the system's TensorRT" \
                    "$system_trt: pip install 'tensorrt==$system_trt', or uninstall it"
            fi ;;
    esac
fi

# 7. What this device is
"$PY" -m jetson.state --summary --output "$VENV/device_state.json"
say "done: $VENV (full device state in $VENV/device_state.json)"
# jetson/run_triton.sh runs the Triton python models with this venv unless told otherwise
# (it reads the same VENV variable, default .venv-jetson)
say "serving: TRITON_HOME=/opt/tritonserver jetson/run_triton.sh REPOSITORY runs the python" \
    "models with $VENV${venv_note:-}"
