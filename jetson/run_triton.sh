#!/usr/bin/env bash
# Serve a model repository with tritonserver on a Jetson (or any box), bound to loopback.
# `jetson/run_triton.sh --help` explains every option and variable.
set -euo pipefail

PROG="run_triton.sh"

usage() {
  cat <<'EOF'
Usage: jetson/run_triton.sh [--background PIDFILE] MODEL_REPOSITORY [-- TRITONSERVER_ARGS...]

Starts tritonserver on MODEL_REPOSITORY (built by `python -m triton_repo.build`), waits until
/v2/health/ready answers, prints the endpoints and then stays in the foreground until the
server exits (Ctrl-C or SIGTERM stops it; the script exits with the server's status).
With --background PIDFILE it returns once the server is ready, leaving it running, with its
pid in PIDFILE and its log in $TRITON_LOG_FILE (default PIDFILE.log); stop it with
`kill $(cat PIDFILE)`.

Supported Triton: 2.34 (release 23.05) and later; an older server is refused (exit 2). The
floor is --metrics-address (2.34) and the python backend's request.parameters() (2.32).
Newer servers add: 2.35 (23.06) the stream's final-response flag (the client degrades below
it); 2.38 (23.09) version-compatible TensorRT plans; 2.39 (23.10) request cancellation (below
it a cancelled stream runs to its end).
  JetPack 5.1.x (L4T R35)  release tarball tritonserver2.35.0-jetpack5.1.2-update-1.tgz or a
                           later -jetpack5.1.x tarball; no -igpu image runs on JetPack 5.
  JetPack 6.x (L4T R36)    release tarball tritonserver2.<minor>.0-igpu.tar whose CUDA and
                           TensorRT match the JetPack, or an -igpu image no newer than 24.07
                           (24.02-py3-igpu ran on Orin: triton-inference-server/server#7023).
                           JetPack 6 ships driver R540; the 24.08+ images are built for R560
                           and refuse it (server#8536, #7798).
  x86 / SBSA               23.05-py3 (2.34) and later images, or tritonserver on PATH.
The version is read before the start from the image's TRITON_SERVER_VERSION, or a tree's
$TRITON_HOME/TRITON_VERSION file when it has one (else only --help: no --metrics-address is
older than 2.34), and from /v2 once it is ready (directly: never through http_proxy). A
served version-compatible plan needs 2.38, checked before the start where the version is known.

Where tritonserver comes from (the first that is set wins):
  TRITON_HOME          a release tarball unpacked (e.g. /opt/tritonserver on a Jetson): runs
                       $TRITON_HOME/bin/tritonserver with --backend-directory
                       $TRITON_HOME/backends and $TRITON_HOME/lib on LD_LIBRARY_PATH.
  TRITON_CONTAINER     a container image, e.g. nvcr.io/nvidia/tritonserver:24.02-py3-igpu on
                       JetPack 6: `docker run --runtime nvidia --network host` with the
                       repository mounted at the same path (read-only), backends from
                       /opt/tritonserver/backends inside. TRITON_DOCKER (default docker)
                       names the client. The image's own python3 runs the python models, so
                       it needs their modules (below): build an image FROM the -igpu one with
                       `pip install numpy tokenizers click onnxruntime`. The image carries its
                       own TensorRT: plans must be built with that version (or
                       --version-compatible). TRITON_PYTHON_ENV is refused in this mode.
  (neither)            `tritonserver` on PATH, backends from ../backends beside it or
                       /opt/tritonserver/backends.
  TRITON_BACKEND_DIR   overrides the backend directory in every case.

Python models need: numpy, tokenizers, click (every python model); onnxruntime (one serving
an .onnx: the cpu classifier, and the generator built from --stories X.onnx, which on a
Jetson runs on the ARM CPU); tensorrt + pycuda (the generator built from a decoder .plan, on
the GPU). They are checked before the server starts; a missing one is refused with one line
saying how to get it (numpy, tokenizers, click: jetson/setup.sh; onnxruntime: pip or NVIDIA's
Jetson wheel; pycuda: pip, against the CUDA toolkit; tensorrt: JetPack's or the image's own
bindings, never pip on a Jetson).
The python backend's stub runs the first `python3` on PATH, so:
  TRITON_PYTHON_ENV    a venv whose bin/ goes first on PATH (the stub ignores PYTHONPATH), and
                       its base interpreter's lib directory appended to LD_LIBRARY_PATH so the
                       stub loads the matching libpython (only when libpython is there and it
                       is no default linker directory such as /usr/lib/<multiarch>). Default: the venv jetson/setup.sh makes
                       ($VENV, default .venv-jetson beside jetson/, the same variable
                       setup.sh reads) when it exists, else the python3 on PATH.
                       Its Python must be the one the tarball's stub was built for (JetPack's
                       python3, which setup.sh's venv is made from).
                       (`python -m triton_repo.dev_server` prints TRITON_HOME and this for
                       the tritonserver bundled in nvidia-pytriton, for an x86 box.)

TensorRT plans: each plan's manifest (model.plan.json) names the TensorRT it was built with.
Before the start it is compared with the TensorRT that will load it: the libnvinfer the
TensorRT backend links (tarball: ldd of backends/tensorrt; image: the same inside it), and
the python models' tensorrt module for a generator plan. A mismatch is refused naming both:
rebuild the engine with the server's TensorRT, or build it with `python -m engines.build
--version-compatible` (TensorRT 8.6+) to serve it with a later TensorRT of the same major
version (8 -> 9, 8 -> 10 and 10 -> 11 across majors, TensorRT's rule). Any served
version-compatible plan gets --backend-config=tensorrt,version-compatible=true (Triton 2.38+),
its own release too: only that switch lets the backend load the lean runtime it embeds.
  TRITON_TENSORRT_VERSION  the TensorRT version of the server's TensorRT backend, when ldd
                       cannot tell (skips the look-up); needed when it finds only a major
                       version (a libnvinfer.so.10 that is no link to the full name).

Network (nothing listens beyond loopback unless you say so):
  TRITON_BIND          address for HTTP, gRPC and metrics (default 127.0.0.1; 0.0.0.0 to
                       serve the network: Triton has no authentication).
  TRITON_HTTP_PORT     default 8000
  TRITON_GRPC_PORT     default 8001
  TRITON_METRICS_PORT  default 8002

Memory (a Jetson's CPU and GPU share one DRAM, so every pool is taken from the models):
  TRITON_PINNED_MB     pinned host memory pool, MiB (default 32; Triton's own default is
                       256). Our requests carry a few KiB of token ids each.
  TRITON_CUDA_POOL_MB  CUDA memory pool of device TRITON_CUDA_DEVICE, MiB (default 32;
                       Triton's default is 64). Python-backend models on Jetson exchange
                       host tensors only. On a server without CUDA (the x86 test box) 2.51
                       logs "CUDA memory pool disabled" and carries on.
  TRITON_CUDA_DEVICE   default 0

Other:
  TRITON_READY_TIMEOUT seconds to wait for readiness (default 120: the TensorRT engine and
                       the python stubs load first).
  TRITON_EXIT_TIMEOUT  seconds the server waits for in-flight requests on shutdown
                       (--exit-timeout-secs, default 10).
  TRITON_LOG_VERBOSE   tritonserver --log-verbose level (default 0).
  TRITON_LOG_FILE      log file in --background mode (default PIDFILE.log).
  TRITON_STOP_WITH_PID in the foreground, stop the server when this process exits (a test
                       run passes its own pid, so a killed run leaves no server behind).
  TRITON_ARGS          extra tritonserver arguments (split on spaces); arguments after `--`
                       are passed as they are.

Exit status: 2 when tritonserver, its backends, the repository, a python module or a
matching TensorRT is missing, the server is older than 2.34 or an option is wrong; 1 when
the server dies or is not ready in time; otherwise the server's own status.
EOF
}

die() {  # die STATUS MESSAGE
  echo "$PROG: error: $2" >&2
  exit "$1"
}

say() { echo "$PROG: $*" >&2; }

# -- arguments -------------------------------------------------------------------------------
PIDFILE=""
REPO=""
EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --background)
      [ $# -ge 2 ] || die 2 "--background needs a PIDFILE"
      PIDFILE="$2"; shift 2 ;;
    --) shift; EXTRA=("$@"); break ;;
    -*) die 2 "unknown option $1 (see --help)" ;;
    *)
      [ -z "$REPO" ] || die 2 "one MODEL_REPOSITORY expected, got '$REPO' and '$1'"
      REPO="$1"; shift ;;
  esac
done
[ -n "$REPO" ] || die 2 "no MODEL_REPOSITORY given (build one with: python -m triton_repo.build --target jetson --output DIR; see --help)"
[ -d "$REPO" ] || die 2 "model repository $REPO: not a directory"
REPO="$(cd "$REPO" && pwd)"
if ! ls "$REPO"/*/config.pbtxt >/dev/null 2>&1; then
  die 2 "model repository $REPO: no <model>/config.pbtxt inside (expected the output of python -m triton_repo.build)"
fi

is_uint() { case "$1" in ''|*[!0-9]*) return 1 ;; *) return 0 ;; esac; }

BIND="${TRITON_BIND:-127.0.0.1}"
HTTP_PORT="${TRITON_HTTP_PORT:-8000}"
GRPC_PORT="${TRITON_GRPC_PORT:-8001}"
METRICS_PORT="${TRITON_METRICS_PORT:-8002}"
PINNED_MB="${TRITON_PINNED_MB:-32}"
CUDA_POOL_MB="${TRITON_CUDA_POOL_MB:-32}"
CUDA_DEVICE="${TRITON_CUDA_DEVICE:-0}"
READY_TIMEOUT="${TRITON_READY_TIMEOUT:-120}"
EXIT_TIMEOUT="${TRITON_EXIT_TIMEOUT:-10}"
LOG_VERBOSE="${TRITON_LOG_VERBOSE:-0}"
for var in HTTP_PORT GRPC_PORT METRICS_PORT PINNED_MB CUDA_POOL_MB CUDA_DEVICE READY_TIMEOUT \
           EXIT_TIMEOUT LOG_VERBOSE; do
  is_uint "${!var}" || die 2 "TRITON_$var=${!var}: expected a whole number"
done
[ -z "${TRITON_STOP_WITH_PID:-}" ] || is_uint "$TRITON_STOP_WITH_PID" \
  || die 2 "TRITON_STOP_WITH_PID=$TRITON_STOP_WITH_PID: expected a process id"

# -- which tritonserver ----------------------------------------------------------------------
TOOLKIT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PREFLIGHT="$TOOLKIT/triton_repo/preflight.py"
# preflight_with PYTHON ARGS...: triton_repo/preflight.py's answer on stdout; its one-line
# error becomes ours (exit 2; inside $(...) the subshell's exit 2 stops the script: set -e)
preflight_with() {
  local py="$1" out
  shift
  if ! out="$("$py" "$PREFLIGHT" "$@" 2>&1)"; then die 2 "${out#error: }"; fi
  printf '%s' "$out"
}
preflight() { preflight_with "$HOST_PY" "$@"; }

CONTAINER_MODE=0
LAUNCH=()
if [ -n "${TRITON_HOME:-}" ]; then
  SERVER="$TRITON_HOME/bin/tritonserver"
  [ -x "$SERVER" ] || die 2 "TRITON_HOME=$TRITON_HOME: no executable bin/tritonserver (expected an unpacked tritonserver release tarball)"
  BACKENDS="${TRITON_BACKEND_DIR:-$TRITON_HOME/backends}"
  [ ! -d "$TRITON_HOME/lib" ] || export LD_LIBRARY_PATH="$TRITON_HOME/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  LAUNCH=("$SERVER")
  SOURCE="release tree $TRITON_HOME"
elif [ -n "${TRITON_CONTAINER:-}" ]; then
  CONTAINER_MODE=1
  DOCKER="${TRITON_DOCKER:-docker}"
  command -v "$DOCKER" >/dev/null 2>&1 || die 2 "TRITON_CONTAINER=$TRITON_CONTAINER but '$DOCKER' is not on PATH"
  [ -z "${TRITON_PYTHON_ENV:-}" ] || die 2 "TRITON_PYTHON_ENV is not used with TRITON_CONTAINER (the image's python3 runs the python models): unset it, and build an image FROM $TRITON_CONTAINER with pip install numpy tokenizers click onnxruntime"
  BACKENDS="${TRITON_BACKEND_DIR:-/opt/tritonserver/backends}"
  # --network host: the ports are bound inside exactly as on the host (127.0.0.1 stays local).
  LAUNCH=("$DOCKER" run --rm --init --runtime nvidia --network host --shm-size 256m
          -v "$REPO:$REPO:ro" "$TRITON_CONTAINER" tritonserver)
  SOURCE="container $TRITON_CONTAINER"
else
  SERVER="$(command -v tritonserver 2>/dev/null || true)"
  [ -n "$SERVER" ] || die 2 "tritonserver not found: set TRITON_HOME (release tarball), TRITON_CONTAINER (-igpu image) or put tritonserver on PATH (see --help)"
  BACKENDS="${TRITON_BACKEND_DIR:-$(dirname "$SERVER")/../backends}"
  [ -d "$BACKENDS" ] || BACKENDS=/opt/tritonserver/backends
  LAUNCH=("$SERVER")
  SOURCE="$SERVER"
fi
USED_BACKENDS="$(sed -n 's/^backend: *"\([a-z_]*\)".*/\1/p; s/^platform: *"\([a-z_]*\)".*/\1/p' \
                   "$REPO"/*/config.pbtxt | sort -u)"
if [ "$CONTAINER_MODE" = 0 ]; then
  [ -d "$BACKENDS" ] || die 2 "backend directory $BACKENDS: not found (set TRITON_BACKEND_DIR)"
  BACKENDS="$(cd "$BACKENDS" && pwd)"
  for used in $USED_BACKENDS; do
    # a config's platform names the backend folder Triton loads it from (core's
    # GetBackendLibraryProperties): tensorrt_plan, onnxruntime_onnx, pytorch_libtorch and
    # tensorflow_graphdef/_savedmodel; ensemble is built in
    case "$used" in
      ensemble) continue ;;
      tensorrt_plan) used=tensorrt ;;
      onnxruntime_onnx) used=onnxruntime ;;
      pytorch_libtorch) used=pytorch ;;
      tensorflow_graphdef|tensorflow_savedmodel) used=tensorflow ;;
    esac
    [ -d "$BACKENDS/$used" ] || die 2 "the repository uses backend '$used' but $BACKENDS/$used is missing"
  done
  # Older than 2.34 has no --metrics-address (the script's floor): refuse before the start.
  help_text="$("$SERVER" --help 2>&1 || true)"  # (--help exits 1)
  case "$help_text" in
    *--metrics-address*) ;;
    *--model-repository*) die 2 "$SERVER has no --metrics-address: it is older than Triton 2.34 (23.05), the supported floor (see --help for the releases per JetPack)" ;;
    *) die 2 "$SERVER --help does not run: $(printf '%s\n' "$help_text" | head -n 1) (a library of the tarball or JetPack missing?)" ;;
  esac
fi

# -- the python models' interpreter and modules ----------------------------------------------
HOST_PY="$(command -v python3 2>/dev/null || true)"
[ -n "$HOST_PY" ] || die 2 "python3 not found on PATH: the checks before the start need it"
NEEDED="$(preflight modules "$REPO")"
HAS_PLAN=0
if find "$REPO" -mindepth 3 -maxdepth 3 \( -name '*.plan' -o -name '*.engine' \) | grep -q .; then
  HAS_PLAN=1
fi
BACKEND_TRT="${TRITON_TENSORRT_VERSION:-}"
PYTHON_TRT=""
# A served version-compatible plan needs Triton 2.38+: known before the start, checked with the
# version read then (an older server would only fail to load the plan).
COMPAT=()
[ "$HAS_PLAN" = 0 ] || [ -z "$(preflight compatible "$REPO")" ] || COMPAT=(--version-compatible)
# check_version VERSION: refuse one below the floor (or below 2.38 for COMPAT); its notes are
# said once the server is up
check_version() { preflight version "$1" "${COMPAT[@]+"${COMPAT[@]}"}" >/dev/null; }
if [ "$CONTAINER_MODE" = 0 ] && [ -n "${TRITON_HOME:-}" ] && [ -s "$TRITON_HOME/TRITON_VERSION" ]; then
  check_version "$(head -n 1 "$TRITON_HOME/TRITON_VERSION")"  # (when the tree carries one)
elif [ "$CONTAINER_MODE" = 0 ] && [ "${#COMPAT[@]}" != 0 ]; then
  say "note: version-compatible plans need Triton 2.38 (23.09) or later; $SOURCE does not say its version before the start"
fi
if [ "$CONTAINER_MODE" = 1 ]; then
  # One throw-away run of the image: its Triton version, the libnvinfer its TensorRT backend
  # links and the modules its python3 lacks.
  # shellcheck disable=SC2016  # expanded inside the image
  PROBE='echo "triton=${TRITON_SERVER_VERSION:-}"
lib=$(ldd "$1/tensorrt/libtriton_tensorrt.so" 2>/dev/null | sed -n "s/^[[:space:]]*libnvinfer\.so[^ ]* => \(\/[^ ]*\).*/\1/p" | head -n 1)
[ -z "$lib" ] || echo "tensorrt=$(readlink -f "$lib")"
shift
if [ $# -gt 0 ]; then
  python3 -c "import importlib.util, sys; print(\"missing=\" + \" \".join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))" "$@" 2>/dev/null || echo "missing=python3"
fi
case " $* " in *" tensorrt "*) python3 -c "import tensorrt; print(\"pytrt=\" + tensorrt.__version__)" 2>/dev/null ;; esac'
  # shellcheck disable=SC2086  # NEEDED is a list of module names
  PROBED="$("$DOCKER" run --rm --runtime nvidia --entrypoint sh "$TRITON_CONTAINER" -c "$PROBE" probe "$BACKENDS" $NEEDED)" \
    || die 2 "could not run $TRITON_CONTAINER to look inside it ($DOCKER run failed; is the image pulled and the nvidia runtime installed?)"
  IMAGE_TRITON="$(printf '%s\n' "$PROBED" | sed -n 's/^triton=//p')"
  [ -z "$IMAGE_TRITON" ] || check_version "$IMAGE_TRITON"
  lib="$(printf '%s\n' "$PROBED" | sed -n 's/^tensorrt=//p')"
  [ -n "$BACKEND_TRT" ] || BACKEND_TRT="${lib##*libnvinfer.so.}"
  [ "$BACKEND_TRT" != "$lib" ] || BACKEND_TRT=""
  MISSING="$(printf '%s\n' "$PROBED" | sed -n 's/^missing=//p')"
  PYTHON_TRT="$(printf '%s\n' "$PROBED" | sed -n 's/^pytrt=//p')"
  STUB_PY="the python3 of $TRITON_CONTAINER"
  HINT_ARGS=(--container "$TRITON_CONTAINER")
else
  ENV_DIR="${TRITON_PYTHON_ENV:-}"
  SETUP_VENV="${VENV:-.venv-jetson}"  # where jetson/setup.sh puts its venv (the same variable)
  case "$SETUP_VENV" in /*) ;; *) SETUP_VENV="$TOOLKIT/$SETUP_VENV" ;; esac
  if [ -z "$ENV_DIR" ] && [ -n "$NEEDED" ] && [ -x "$SETUP_VENV/bin/python3" ]; then
    ENV_DIR="$SETUP_VENV"
    say "python models run with $ENV_DIR (jetson/setup.sh's venv; TRITON_PYTHON_ENV picks another)"
  fi
  if [ -n "$ENV_DIR" ]; then
    [ -x "$ENV_DIR/bin/python3" ] || die 2 "TRITON_PYTHON_ENV=$ENV_DIR: no bin/python3 (expected a venv)"
    export PATH="$ENV_DIR/bin:$PATH"
    # The base interpreter's libpython, for the stub (a pyenv or uv Python keeps it outside
    # the linker's search path). Not a default directory (JetPack's /usr/lib/<multiarch>):
    # there it is found anyway, and first on the path it would shadow the tarball's own libs.
    # Appended, so $TRITON_HOME/lib stays first.
    PY_LIBDIR="$("$ENV_DIR/bin/python3" - <<'PY'
import os, sysconfig
libdir, lib = sysconfig.get_config_var("LIBDIR") or "", sysconfig.get_config_var("LDLIBRARY") or ""
arch = sysconfig.get_config_var("MULTIARCH") or ""
default = {"/lib", "/usr/lib", "/lib64", "/usr/lib64", "/lib/" + arch, "/usr/lib/" + arch}
if libdir and lib and os.path.exists(os.path.join(libdir, lib)) and \
        os.path.realpath(libdir) not in {os.path.realpath(d) for d in default}:
    print(libdir)
PY
)"
    [ -z "$PY_LIBDIR" ] || export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$PY_LIBDIR"
  fi
  MISSING=""
  STUB_PY=""
  if [ -n "$NEEDED" ]; then
    STUB_PY="$(command -v python3 2>/dev/null || true)"
    [ -n "$STUB_PY" ] || die 2 "the python models need python3 on PATH (the stub runs it): run jetson/setup.sh or set TRITON_PYTHON_ENV"
    # shellcheck disable=SC2086
    MISSING="$(preflight_with "$STUB_PY" missing $NEEDED)"
    case " $NEEDED " in
      *" tensorrt "*) PYTHON_TRT="$("$STUB_PY" -c 'import tensorrt; print(tensorrt.__version__)' 2>/dev/null || true)" ;;
    esac
  fi
  HINT_ARGS=()
  if [ "$HAS_PLAN" = 1 ] && [ -z "$BACKEND_TRT" ] && [ -e "$BACKENDS/tensorrt/libtriton_tensorrt.so" ]; then
    lib="$(ldd "$BACKENDS/tensorrt/libtriton_tensorrt.so" 2>/dev/null \
           | sed -n 's/^[[:space:]]*libnvinfer\.so[^ ]* => \(\/[^ ]*\).*/\1/p' | head -n 1)"
    if [ -n "$lib" ]; then
      real="$(readlink -f "$lib")"
      BACKEND_TRT="${real##*libnvinfer.so.}"
      [ "$BACKEND_TRT" != "$real" ] || BACKEND_TRT=""
    fi
  fi
fi
if [ -n "$MISSING" ]; then
  # shellcheck disable=SC2086  # MISSING is a list of module names
  die 2 "$(preflight hint --python "$STUB_PY" "${HINT_ARGS[@]+"${HINT_ARGS[@]}"}" $MISSING)"
fi
BACKEND_CONFIG=()
if [ "$HAS_PLAN" = 1 ]; then
  PLAN_NOTES="$(preflight plans "$REPO" --backend-trt "$BACKEND_TRT" --python-trt "$PYTHON_TRT")"
  case " $PLAN_NOTES " in
    *" version-compatible "*) BACKEND_CONFIG=(--backend-config=tensorrt,version-compatible=true) ;;
  esac
fi

ARGS=(--model-repository "$REPO" --backend-directory "$BACKENDS"
      --http-address "$BIND" --http-port "$HTTP_PORT"
      --grpc-address "$BIND" --grpc-port "$GRPC_PORT"
      --metrics-address "$BIND" --metrics-port "$METRICS_PORT"
      --pinned-memory-pool-byte-size $((PINNED_MB * 1024 * 1024))
      --cuda-memory-pool-byte-size "$CUDA_DEVICE:$((CUDA_POOL_MB * 1024 * 1024))"
      --exit-timeout-secs "$EXIT_TIMEOUT" --log-verbose "$LOG_VERBOSE"
      "${BACKEND_CONFIG[@]+"${BACKEND_CONFIG[@]}"}")
# shellcheck disable=SC2206  # TRITON_ARGS is documented as split on spaces
[ -z "${TRITON_ARGS:-}" ] || ARGS+=(${TRITON_ARGS})
ARGS+=("${EXTRA[@]+"${EXTRA[@]}"}")

# -- start, wait for readiness ---------------------------------------------------------------
case "$BIND" in 0.0.0.0|::|"[::]") PROBE_HOST=127.0.0.1 ;; *) PROBE_HOST="$BIND" ;; esac
case "$PROBE_HOST" in *:*) PROBE_HOST="[$PROBE_HOST]" ;; esac
READY_URL="http://$PROBE_HOST:$HTTP_PORT/v2/health/ready"

probe() {  # 0 when the server answers ready (asked directly: never through http_proxy)
  if command -v curl >/dev/null 2>&1; then
    curl -sf -o /dev/null --noproxy '*' --max-time 2 "$READY_URL"
  else
    "$HOST_PY" - "$READY_URL" <<'PY' 2>/dev/null
import sys, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
sys.exit(0 if opener.open(sys.argv[1], timeout=2).status == 200 else 1)
PY
  fi
}

if probe; then
  die 2 "something already answers on $READY_URL: pick other TRITON_*_PORT values"
fi

say "starting tritonserver from $SOURCE on $REPO"
if [ -n "$PIDFILE" ]; then
  LOG_FILE="${TRITON_LOG_FILE:-$PIDFILE.log}"
  nohup "${LAUNCH[@]}" "${ARGS[@]}" >"$LOG_FILE" 2>&1 &
else
  "${LAUNCH[@]}" "${ARGS[@]}" &
fi
SERVER_PID=$!

stop_server() {
  kill -TERM "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
}
trap 'stop_server; exit 143' TERM
trap 'stop_server; exit 130' INT

deadline=$((SECONDS + READY_TIMEOUT))
until probe; do
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    status=0; wait "$SERVER_PID" || status=$?
    where="its log is above"; [ -z "$PIDFILE" ] || where="its log: $LOG_FILE"
    die 1 "tritonserver exited (status $status) before it was ready; $where"
  fi
  if [ "$SECONDS" -ge "$deadline" ]; then
    stop_server
    die 1 "tritonserver not ready after ${READY_TIMEOUT}s on $READY_URL (TRITON_READY_TIMEOUT); stopped it"
  fi
  sleep 0.2
done

# The server's own version (/v2 metadata): below the floor it is stopped, whatever it served.
# Read straight from the server: no http_proxy (urllib would send 127.0.0.1 through it).
V2_URL="http://$PROBE_HOST:$HTTP_PORT/v2"
if ! SERVER_VERSION="$("$HOST_PY" - "$V2_URL" <<'PY' 2>&1
import json, sys, urllib.request
try:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    version = json.load(opener.open(sys.argv[1], timeout=5)).get("version", "")
    if not isinstance(version, str) or not version:
        raise ValueError("no version in the answer")
except Exception as exc:  # one line for the script, whatever went wrong
    print(f"{type(exc).__name__}: {exc}".replace("\n", " "))
    sys.exit(1)
print(version)
PY
)"; then
  stop_server
  die 1 "could not read the version from $V2_URL: $SERVER_VERSION; stopped it"
fi
if ! out="$("$HOST_PY" "$PREFLIGHT" version "$SERVER_VERSION" 2>&1)"; then
  stop_server
  die 2 "${out#error: } (read from /v2; stopped it)"
fi
printf '%s\n' "$out" | sed -n '2,$p' | while IFS= read -r line; do say "$line"; done

case "$BIND" in *:*) HOST="[$BIND]" ;; *) HOST="$BIND" ;; esac
cat <<EOF
triton ready: pid $SERVER_PID
  version  $SERVER_VERSION
  http     http://$HOST:$HTTP_PORT
  grpc     $HOST:$GRPC_PORT
  metrics  http://$HOST:$METRICS_PORT/metrics
  models   $REPO
EOF
case "$BIND" in 127.*|::1|localhost) ;; *) say "warning: bound to $BIND: reachable beyond this machine, with no authentication" ;; esac

if [ -n "$PIDFILE" ]; then
  echo "$SERVER_PID" >"$PIDFILE.tmp" && mv -f "$PIDFILE.tmp" "$PIDFILE"
  echo "  log      $LOG_FILE"
  echo "  stop     kill \$(cat $PIDFILE)"
  trap - TERM INT
  exit 0
fi
if [ -n "${TRITON_STOP_WITH_PID:-}" ]; then
  while kill -0 "$SERVER_PID" 2>/dev/null; do
    if ! kill -0 "$TRITON_STOP_WITH_PID" 2>/dev/null; then
      say "process $TRITON_STOP_WITH_PID (TRITON_STOP_WITH_PID) is gone: stopping tritonserver"
      stop_server
      exit 1
    fi
    sleep 1 & wait $! || true  # (a wait, not a bare sleep, so SIGTERM is handled at once)
  done
fi
status=0
wait "$SERVER_PID" || status=$?
# `wait` returns early when a trapped signal arrives; the trap then stops the server.
exit "$status"
