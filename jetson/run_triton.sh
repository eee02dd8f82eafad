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

Where tritonserver comes from (the first that is set wins):
  TRITON_HOME          a release tarball unpacked (tritonserver<ver>-igpu.tgz on a Jetson):
                       runs $TRITON_HOME/bin/tritonserver with --backend-directory
                       $TRITON_HOME/backends and $TRITON_HOME/lib on LD_LIBRARY_PATH.
  TRITON_CONTAINER     a container image, e.g. nvcr.io/nvidia/tritonserver:24.10-py3-igpu:
                       `docker run --runtime nvidia --network host` with the repository
                       mounted at the same path (read-only), backends from
                       /opt/tritonserver/backends inside. TRITON_DOCKER (default docker)
                       names the client. The python models import tokenizers (and numpy):
                       use an image built FROM the -igpu one with `pip install tokenizers`.
  (neither)            `tritonserver` on PATH, backends from ../backends beside it or
                       /opt/tritonserver/backends.
  TRITON_BACKEND_DIR   overrides the backend directory in every case.
  TRITON_PYTHON_ENV    a venv whose bin/ goes first on PATH: the python backend stub runs the
                       first `python3` on PATH (and ignores PYTHONPATH), so the model code
                       sees that venv's packages; the base interpreter's lib directory goes
                       on LD_LIBRARY_PATH so the stub loads the matching libpython.
                       (`python -m triton_repo.dev_server` prints TRITON_HOME and this for
                       the tritonserver bundled in nvidia-pytriton, for an x86 box.)

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

Exit status: 2 when tritonserver, its backends or the repository are missing or an option is
wrong; 1 when the server dies or is not ready in time; otherwise the server's own status.
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
LAUNCH=()
if [ -n "${TRITON_HOME:-}" ]; then
  SERVER="$TRITON_HOME/bin/tritonserver"
  [ -x "$SERVER" ] || die 2 "TRITON_HOME=$TRITON_HOME: no executable bin/tritonserver (expected an unpacked tritonserver release tarball)"
  BACKENDS="${TRITON_BACKEND_DIR:-$TRITON_HOME/backends}"
  [ ! -d "$TRITON_HOME/lib" ] || export LD_LIBRARY_PATH="$TRITON_HOME/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  LAUNCH=("$SERVER")
  SOURCE="release tree $TRITON_HOME"
elif [ -n "${TRITON_CONTAINER:-}" ]; then
  DOCKER="${TRITON_DOCKER:-docker}"
  command -v "$DOCKER" >/dev/null 2>&1 || die 2 "TRITON_CONTAINER=$TRITON_CONTAINER but '$DOCKER' is not on PATH"
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
if [ -z "${TRITON_CONTAINER:-}" ] || [ -n "${TRITON_HOME:-}" ]; then
  [ -d "$BACKENDS" ] || die 2 "backend directory $BACKENDS: not found (set TRITON_BACKEND_DIR)"
  BACKENDS="$(cd "$BACKENDS" && pwd)"
  for used in $(sed -n 's/^backend: *"\([a-z_]*\)".*/\1/p; s/^platform: *"\([a-z_]*\)".*/\1/p' \
                  "$REPO"/*/config.pbtxt | sort -u); do
    case "$used" in ensemble) continue ;; tensorrt_plan) used=tensorrt ;; esac
    [ -d "$BACKENDS/$used" ] || die 2 "the repository uses backend '$used' but $BACKENDS/$used is missing"
  done
fi

if [ -n "${TRITON_PYTHON_ENV:-}" ]; then
  [ -x "$TRITON_PYTHON_ENV/bin/python3" ] || die 2 "TRITON_PYTHON_ENV=$TRITON_PYTHON_ENV: no bin/python3 (expected a venv)"
  export PATH="$TRITON_PYTHON_ENV/bin:$PATH"
  PY_LIBDIR="$("$TRITON_PYTHON_ENV/bin/python3" -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR") or "")')"
  [ -z "$PY_LIBDIR" ] || export LD_LIBRARY_PATH="$PY_LIBDIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi

ARGS=(--model-repository "$REPO" --backend-directory "$BACKENDS"
      --http-address "$BIND" --http-port "$HTTP_PORT"
      --grpc-address "$BIND" --grpc-port "$GRPC_PORT"
      --metrics-address "$BIND" --metrics-port "$METRICS_PORT"
      --pinned-memory-pool-byte-size $((PINNED_MB * 1024 * 1024))
      --cuda-memory-pool-byte-size "$CUDA_DEVICE:$((CUDA_POOL_MB * 1024 * 1024))"
      --exit-timeout-secs "$EXIT_TIMEOUT" --log-verbose "$LOG_VERBOSE")
# shellcheck disable=SC2206  # TRITON_ARGS is documented as split on spaces
[ -z "${TRITON_ARGS:-}" ] || ARGS+=(${TRITON_ARGS})
ARGS+=("${EXTRA[@]+"${EXTRA[@]}"}")

# -- start, wait for readiness ---------------------------------------------------------------
case "$BIND" in 0.0.0.0|::|"[::]") PROBE_HOST=127.0.0.1 ;; *) PROBE_HOST="$BIND" ;; esac
case "$PROBE_HOST" in *:*) PROBE_HOST="[$PROBE_HOST]" ;; esac
READY_URL="http://$PROBE_HOST:$HTTP_PORT/v2/health/ready"

probe() {  # 0 when the server answers ready
  if command -v curl >/dev/null 2>&1; then
    curl -sf -o /dev/null --max-time 2 "$READY_URL"
  else
    python3 - "$READY_URL" <<'PY' 2>/dev/null
import sys, urllib.request
sys.exit(0 if urllib.request.urlopen(sys.argv[1], timeout=2).status == 200 else 1)
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

case "$BIND" in *:*) HOST="[$BIND]" ;; *) HOST="$BIND" ;; esac
cat <<EOF
triton ready: pid $SERVER_PID
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
