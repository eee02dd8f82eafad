#!/usr/bin/env bash
# Make (or reuse) the device test venv: requirements/device.txt + requirements/device-test.txt
# on the given Python, nothing else (no torch, no onnx), as a bare JetPack would have it.
#   tests/device/make_venv.sh PYTHON VENV [NUMPY_SPEC]
#   PYTHON: python3.8, 3.10, /path/to/python; a pyenv version is found when the shim refuses.
#   NUMPY_SPEC: e.g. "numpy<2" (JetPack 5.1 ships numpy 1.x); empty: what pip picks.
# The venv is rebuilt when the interpreter, the requirements or the numpy spec change.
set -euo pipefail
python_arg=${1:?usage: make_venv.sh PYTHON VENV [NUMPY_SPEC]}
venv=${2:?usage: make_venv.sh PYTHON VENV [NUMPY_SPEC]}
numpy_spec=${3:-}
cd "$(dirname "$0")/../.."

resolve_python() {
    local want=$1 exe
    if exe=$("$want" -c 'import sys; print(sys.executable)' 2>/dev/null); then
        echo "$exe"; return 0
    fi
    local version=${want##*/}; version=${version#python}
    for exe in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$version".*/bin/python; do
        [ -x "$exe" ] && { echo "$exe"; return 0; }
    done
    return 1
}

if ! python_exe=$(resolve_python "$python_arg"); then
    echo "error: no Python '$python_arg' here (not on PATH, not a pyenv version); the device" \
         "suite needs Python 3.8+ (PYTHON=python3.8 for JetPack 5.1, python3.10 for JetPack 6)" >&2
    exit 2
fi
stamp_text="$("$python_exe" -VV) | $(cat requirements/device.txt requirements/device-test.txt | cksum) | $numpy_spec"
stamp="$venv/.device-venv-stamp"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$stamp_text" ]; then
    exit 0
fi
rm -rf "$venv"
"$python_exe" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
# Wheels only: a package whose newest release has no wheel for this Python (tokenizers 0.21
# on 3.8) would otherwise be built from source, which needs a Rust toolchain and its index.
"$venv/bin/python" -m pip install -q --only-binary=:all: -r requirements/device.txt \
    -r requirements/device-test.txt \
    ${numpy_spec:+"$numpy_spec"}
if "$venv/bin/python" -c 'import torch' 2>/dev/null; then
    echo "error: torch got into $venv: the device suite must run without it" >&2
    exit 1
fi
printf '%s' "$stamp_text" > "$stamp"
echo "device venv $venv: $("$venv/bin/python" -c 'import sys, numpy, onnxruntime, tokenizers; print("Python", sys.version.split()[0], "numpy", numpy.__version__, "onnxruntime", onnxruntime.__version__, "tokenizers", tokenizers.__version__)')"
