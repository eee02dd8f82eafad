"""jetson/run_triton.sh's checks around the start: the server's version, the python models'
modules and interpreter, and the TensorRT of served plans.

The servers below the floor, the container client and the TensorRT libraries are stand-ins
(shell scripts, a docker that runs the look inside the "image" here, shared objects built with
cc whose only content is their soname): what is tested is the script's reading of them. The
python-environment tests run the real bundled tritonserver.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from triton_harness import (
    FIXTURES,
    RUN_TRITON,
    alive,
    free_ports,
    launch,
    server_env,
    write_fake_docker,
)

PYTHON_WITH_MODELS = Path(sys.executable).parent  # numpy, tokenizers, click, onnxruntime
CC = shutil.which("cc") or shutil.which("gcc")


def run_script(*args, env, timeout=90):
    return subprocess.run([str(RUN_TRITON), *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def base_env(tmp_path, **extra):
    env = {"PATH": f"{PYTHON_WITH_MODELS}:/usr/bin:/bin", "HOME": str(tmp_path),
           "VENV": str(tmp_path / "no-setup-venv"), "TRITON_HTTP_PORT": str(free_ports(1)[0])}
    env.update(extra)
    return env


FAKE_SERVER = """#!/bin/sh
# a stand-in tritonserver: --help prints its usage text; a start records its arguments, fails
case " $* " in *" --help "*) printf '%s\\n' "@HELP@"; exit 1 ;; esac
printf '%s\\n' "$@" > "@ARGS@"
printf '%s\\n' "${LD_LIBRARY_PATH:-}" > "@ARGS@.ld"
exit 3
"""


def fake_home(tmp_path: Path, help_text: str = "  --metrics-address <string>",
              nvinfer: str = "") -> Path:
    """A tarball layout: bin/tritonserver (FAKE_SERVER), backends/python, backends/tensorrt;
    with ``nvinfer`` ("8.6.2"), backends/tensorrt/libtriton_tensorrt.so linked against
    lib/libnvinfer.so.<major> -> libnvinfer.so.<nvinfer>, as in JetPack."""
    home = tmp_path / "tritonserver"
    for folder in ("bin", "lib", "backends/python", "backends/tensorrt"):
        (home / folder).mkdir(parents=True, exist_ok=True)
    server = home / "bin" / "tritonserver"
    server.write_text(FAKE_SERVER.replace("@HELP@", help_text)
                      .replace("@ARGS@", str(home / "args")))
    server.chmod(0o755)
    if nvinfer:
        source = home / "empty.c"
        source.write_text("int toolkit_stand_in(void) { return 0; }\n")
        major = nvinfer.split(".")[0]
        real = home / "lib" / f"libnvinfer.so.{nvinfer}"
        subprocess.run([CC, "-shared", "-fPIC", "-o", str(real), str(source),
                        f"-Wl,-soname,libnvinfer.so.{major}"], check=True)
        (home / "lib" / f"libnvinfer.so.{major}").symlink_to(real.name)
        (home / "lib" / "libnvinfer.so").symlink_to(real.name)
        subprocess.run([CC, "-shared", "-fPIC", "-o",
                        str(home / "backends" / "tensorrt" / "libtriton_tensorrt.so"),
                        str(source), f"-L{home / 'lib'}", "-Wl,--no-as-needed", "-lnvinfer"],
                       check=True)
    return home


def http_home(tmp_path: Path, version: str, status: int = 200) -> Path:
    """fake_home whose tritonserver is a stand-in HTTP server: ready at once, /v2 answering
    ``version`` with ``status``; its pid goes to home/pid."""
    home = fake_home(tmp_path)
    server = home / "bin" / "tritonserver"
    server.write_text(f"""#!{sys.executable}
import http.server, json, sys
args = sys.argv[1:]
if "--help" in args:
    print("  --metrics-address <string>")
    sys.exit(1)
address, port = args[args.index("--http-address") + 1], int(args[args.index("--http-port") + 1])
open({str(home / "pid")!r}, "w").write(str(__import__("os").getpid()))

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({{"name": "triton", "version": {version!r}}}).encode()
        v2 = self.path == "/v2"
        self.send_response({status} if v2 else 200)
        self.send_header("Content-Length", str(len(body) if v2 else 0))
        self.end_headers()
        if v2:
            self.wfile.write(body)

    def log_message(self, *args):
        pass

http.server.HTTPServer((address, port), Handler).serve_forever()
""")
    return home


def test_help_states_the_range_the_images_and_every_module():
    from triton_repo.versions import MIN_TRITON, release_of

    text = run_script("--help", env={"PATH": "/usr/bin:/bin"}).stdout
    floor = ".".join(map(str, MIN_TRITON[:2]))
    assert f"Supported Triton: {floor} (release {release_of(MIN_TRITON)}) and later" in text
    for needed in ("JetPack 5.1.x", "JetPack 6.x", "24.02-py3-igpu", "R540", "R560",
                   "numpy", "tokenizers", "click", "onnxruntime", "tensorrt + pycuda",
                   "ARM CPU", "--version-compatible", "TRITON_PYTHON_ENV is refused"):
        assert needed in text, needed
    assert "24.10-py3-igpu" not in text  # needs driver R560; JetPack 6 has R540


def test_a_tarball_older_than_the_floor_is_refused_before_the_start(tmp_path, echo_repository):
    home = fake_home(tmp_path, help_text="  --model-repository <string>\n  --metrics-port "
                                         "<integer>")  # 2.33: no --metrics-address
    result = run_script(echo_repository, env=base_env(tmp_path, TRITON_HOME=str(home)))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"run_triton.sh: error: {home}/bin/tritonserver has no --metrics-address: it is older "
        "than Triton 2.34 (23.05), the supported floor (see --help for the releases per "
        "JetPack)"]
    assert not (home / "args").exists()


def test_a_server_that_cannot_run_is_not_called_old(tmp_path, echo_repository):
    """A tarball missing a library (server#6844: libboost_filesystem on 2.35 JetPack 5.1.2)."""
    home = fake_home(tmp_path, help_text="tritonserver: error while loading shared libraries: "
                                         "libboost_filesystem.so.1.80.0: cannot open shared "
                                         "object file")
    result = run_script(echo_repository, env=base_env(tmp_path, TRITON_HOME=str(home)))
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "--help does not run: tritonserver: error while loading shared libraries" in line
    assert "older than" not in line


def test_a_server_reporting_an_old_version_is_stopped(tmp_path, echo_repository):
    """The /v2 check after the start (a stand-in HTTP server claiming 2.33.0)."""
    home = http_home(tmp_path, "2.33.0")
    result = run_script(echo_repository, env=base_env(tmp_path, TRITON_HOME=str(home)))
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "run_triton.sh: error: Triton 2.33.0 (23.04) is below the supported floor 2.34.0 "
        "(23.05): use a newer tarball or image (see jetson/run_triton.sh --help) (read from "
        "/v2; stopped it)")
    assert not alive(int((home / "pid").read_text()))  # the script stopped it


def test_an_image_below_the_floor_is_refused_before_the_start(tmp_path, echo_repository):
    env = base_env(tmp_path, TRITON_DOCKER=str(write_fake_docker(tmp_path)),
                   TRITON_CONTAINER="nvcr.io/nvidia/tritonserver:23.04-py3",
                   TRITON_SERVER_VERSION="2.33.0")
    result = run_script(echo_repository, env=env)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "run_triton.sh: error: Triton 2.33.0 (23.04) is below the supported floor 2.34.0 "
        "(23.05): use a newer tarball or image (see jetson/run_triton.sh --help)"]
    assert not (tmp_path / "docker-args").exists()  # never started


def test_container_mode_refuses_triton_python_env(tmp_path, echo_repository):
    env = base_env(tmp_path, TRITON_DOCKER=str(write_fake_docker(tmp_path)),
                   TRITON_CONTAINER="nvcr.io/nvidia/tritonserver:24.02-py3-igpu",
                   TRITON_PYTHON_ENV=str(tmp_path))
    result = run_script(echo_repository, env=env)
    assert result.returncode == 2
    assert "TRITON_PYTHON_ENV is not used with TRITON_CONTAINER" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def python_without(tmp_path: Path, missing: str, present=("numpy", "click")) -> Path:
    """A venv-shaped folder whose bin/python3 is the system interpreter without site-packages
    and with empty stand-in packages for ``present``: ``missing`` is not importable."""
    stubs = tmp_path / "stubs"
    for name in present:
        (stubs / name).mkdir(parents=True)
        (stubs / name / "__init__.py").write_text("")
    env = tmp_path / "env-without-" / missing
    (env / "bin").mkdir(parents=True)
    python = env / "bin" / "python3"
    python.write_text(f"#!/bin/sh\nPYTHONPATH={stubs} exec /usr/bin/python3 -S \"$@\"\n")
    python.chmod(0o755)
    return env


@pytest.mark.skipif(not Path("/usr/bin/python3").exists(), reason="needs /usr/bin/python3")
def test_an_image_without_tokenizers_is_refused_before_the_start(tmp_path, echo_repository):
    image_python = python_without(tmp_path, "tokenizers") / "bin"
    env = base_env(tmp_path, TRITON_DOCKER=str(write_fake_docker(tmp_path)),
                   TRITON_CONTAINER="nvcr.io/nvidia/tritonserver:24.02-py3-igpu",
                   TRITON_SERVER_VERSION="2.43.0", PATH=f"{image_python}:/usr/bin:/bin")
    result = run_script(echo_repository, env=env)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "run_triton.sh: error: the python models need module 'tokenizers', which the python3 "
        "of nvcr.io/nvidia/tritonserver:24.02-py3-igpu cannot import: build an image FROM "
        "nvcr.io/nvidia/tritonserver:24.02-py3-igpu with pip install tokenizers"]
    assert not (tmp_path / "docker-args").exists()


# ---------------------------------------------------------------- TensorRT of served plans

@pytest.fixture
def plan_repository(tmp_path):
    """A jetson repository serving a classifier plan built (per its manifest) with
    TensorRT 10.3.0.30; the generator is left out (its plan needs tensorrt in the stub)."""
    from repo_fixtures import plan_for
    from tiny_data import copy_committed_model

    from triton_repo.build import build_repository

    (tmp_path / "onnx").mkdir()
    onnx = copy_committed_model("tiny_classifier", tmp_path / "onnx")
    plan = plan_for(onnx, tmp_path / "engines", tensorrt_version="10.3.0.30")
    return build_repository("jetson", tmp_path / "repo", imdb=plan)


@pytest.mark.skipif(CC is None, reason="needs a C compiler for the stand-in libnvinfer")
def test_a_plan_for_another_tensorrt_is_refused_naming_both(tmp_path, plan_repository):
    home = fake_home(tmp_path, nvinfer="8.6.2")
    result = run_script(plan_repository, env=base_env(tmp_path, TRITON_HOME=str(home)))
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("run_triton.sh: error: imdb_classifier/1/model.plan was built with "
                           "TensorRT 10.3.0.30 but the server's TensorRT backend links "
                           "TensorRT 8.6.2: rebuild the engine with TensorRT 8.6.2")
    assert "--version-compatible" in line
    assert not (home / "args").exists()


@pytest.mark.skipif(CC is None, reason="needs a C compiler for the stand-in libnvinfer")
def test_a_plan_for_the_server_tensorrt_starts(tmp_path, plan_repository):
    home = fake_home(tmp_path, nvinfer="10.3.0")
    result = run_script(plan_repository, env=base_env(tmp_path, TRITON_HOME=str(home)))
    assert result.returncode == 1  # the stand-in server exits 3 once started
    assert "tritonserver exited (status 3) before it was ready" in result.stderr
    args = (home / "args").read_text().splitlines()
    assert not any(a.startswith("--backend-config=tensorrt,version-compatible") for a in args)


@pytest.mark.skipif(CC is None, reason="needs a C compiler for the stand-in libnvinfer")
def test_an_image_whose_tensorrt_differs_is_refused(tmp_path, plan_repository):
    """The look inside the image reads the libnvinfer its TensorRT backend links (here the
    stand-in docker runs it on a stand-in backend folder)."""
    home = fake_home(tmp_path, nvinfer="10.7.0")
    env = base_env(tmp_path, TRITON_DOCKER=str(write_fake_docker(tmp_path)),
                   TRITON_CONTAINER="nvcr.io/nvidia/tritonserver:24.02-py3-igpu",
                   TRITON_SERVER_VERSION="2.43.0", TRITON_BACKEND_DIR=str(home / "backends"),
                   LD_LIBRARY_PATH=str(home / "lib"))
    result = run_script(plan_repository, env=env)
    assert result.returncode == 2
    assert "imdb_classifier/1/model.plan was built with TensorRT 10.3.0.30 but the server's " \
           "TensorRT backend links TensorRT 10.7.0: rebuild the engine with TensorRT " \
           "10.7.0" in result.stderr
    assert not (tmp_path / "docker-args").exists()


def test_a_version_compatible_plan_gets_the_backend_switch(tmp_path):
    from repo_fixtures import plan_for
    from tiny_data import copy_committed_model

    from triton_repo.build import build_repository

    (tmp_path / "onnx").mkdir()
    onnx = copy_committed_model("tiny_classifier", tmp_path / "onnx")
    plan = plan_for(onnx, tmp_path / "engines", tensorrt_version="10.3.0.30",
                    version_compatible=True)
    repo = build_repository("jetson", tmp_path / "repo", imdb=plan)
    home = fake_home(tmp_path)  # no libnvinfer to read: the variable says which TensorRT
    env = base_env(tmp_path, TRITON_HOME=str(home), TRITON_TENSORRT_VERSION="10.7.0")
    result = run_script(repo, env=env)
    assert result.returncode == 1 and "before it was ready" in result.stderr
    args = (home / "args").read_text().splitlines()
    assert "--backend-config=tensorrt,version-compatible=true" in args
    env["TRITON_TENSORRT_VERSION"] = "12.0.0"  # 10 -> 11 only, across majors: refused
    result = run_script(repo, env=env)
    assert result.returncode == 2 and "but the server's TensorRT backend links TensorRT " \
                                      "12.0.0" in result.stderr


# ---------------------------------------------------------------- the python models' Python

@pytest.mark.triton
def test_the_setup_venv_is_found_by_default(triton_env, tmp_path, echo_repository):
    """No TRITON_PYTHON_ENV, a python3 on PATH without numpy: jetson/setup.sh's venv ($VENV,
    default .venv-jetson) is what the stub runs; without it the start is refused."""
    import numpy as np
    import tritonclient.http as httpclient

    env = server_env(triton_env, free_ports(3), PATH="/usr/bin:/bin",
                     VENV=triton_env["TRITON_PYTHON_ENV"])
    del env["TRITON_PYTHON_ENV"]
    server = launch(echo_repository, tmp_path / "server.log", env)
    try:
        output = server.wait_ready().log()
        assert f"python models run with {triton_env['TRITON_PYTHON_ENV']} (jetson/setup.sh's " \
               "venv" in output
        assert "  version  2.51.0" in output
        client = httpclient.InferenceServerClient(server.http_url)
        x = httpclient.InferInput("X", [2], "FP32")
        x.set_data_from_numpy(np.array([1, 2], np.float32))
        np.testing.assert_array_equal(client.infer("echo", [x]).as_numpy("Y"), [2, 4])
        client.close()
    finally:
        server.stop()
    env["VENV"] = str(tmp_path / "absent")
    result = run_script(echo_repository, env=env)
    assert result.returncode == 2
    assert "the python models need module 'numpy' (also missing: tokenizers click), which " \
           "/usr/bin/python3 cannot import: run jetson/setup.sh" in result.stderr


@pytest.mark.triton
@pytest.mark.skipif(not Path("/usr/bin/python3").exists(), reason="needs /usr/bin/python3")
def test_an_env_without_tokenizers_is_refused_before_the_start(triton_env, tmp_path,
                                                               echo_repository):
    env_dir = python_without(tmp_path, "tokenizers")
    env = server_env(triton_env, free_ports(3), TRITON_PYTHON_ENV=str(env_dir))
    result = run_script(echo_repository, env=env)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"run_triton.sh: error: the python models need module 'tokenizers', which "
        f"{env_dir}/bin/python3 cannot import: run jetson/setup.sh (its venv .venv-jetson is "
        f"found by default) or set TRITON_PYTHON_ENV to a venv with requirements/device.txt"]
    assert FIXTURES.is_dir()  # (the committed models the other tests serve)


@pytest.mark.skipif(not Path("/usr/bin/python3").exists(), reason="needs /usr/bin/python3")
def test_a_missing_onnxruntime_gets_its_own_hint(tmp_path):
    """The hint is preflight.py's, per module: onnxruntime is not in requirements/device.txt."""
    from triton_repo.build import build_repository

    repo = build_repository("cpu", tmp_path / "repo", imdb=FIXTURES / "tiny_classifier.onnx")
    env_dir = python_without(tmp_path, "onnxruntime", present=("numpy", "click", "tokenizers"))
    home = fake_home(tmp_path)
    (home / "backends" / "onnxruntime").mkdir()
    result = run_script(repo, env=base_env(tmp_path, TRITON_HOME=str(home),
                                           TRITON_PYTHON_ENV=str(env_dir)))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"run_triton.sh: error: the python models need module 'onnxruntime', which "
        f"{env_dir}/bin/python3 cannot import: pip install onnxruntime into that Python (or, "
        f"on a Jetson, NVIDIA's onnxruntime-gpu wheel for the JetPack)")
    assert not (home / "args").exists()


# ------------------------------------------------ reading the version, platforms, lib paths

def test_the_version_is_read_past_an_http_proxy(tmp_path, echo_repository):
    """urllib sends 127.0.0.1 through http_proxy unless told not to: with a proxy on a dead
    port the healthy server was read as version 'unknown' and killed."""
    home = http_home(tmp_path, "2.51.0")
    dead = f"http://127.0.0.1:{free_ports(1)[0]}"
    env = base_env(tmp_path, TRITON_HOME=str(home), http_proxy=dead, HTTP_PROXY=dead)
    result = run_script("--background", tmp_path / "pid", echo_repository, env=env)
    pid = int((home / "pid").read_text())
    try:
        assert result.returncode == 0, result.stderr
        assert "  version  2.51.0" in result.stdout
        assert alive(pid)
    finally:
        subprocess.run(["kill", str(pid)])


def test_a_version_that_cannot_be_read_is_named_as_such(tmp_path, echo_repository):
    home = http_home(tmp_path, "2.51.0", status=500)
    env = base_env(tmp_path, TRITON_HOME=str(home))
    result = run_script(echo_repository, env=env)
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()[-1:]
    assert line.startswith(f"run_triton.sh: error: could not read the version from "
                           f"http://127.0.0.1:{env['TRITON_HTTP_PORT']}/v2: HTTPError")
    assert "unknown" not in line and line.endswith("; stopped it")
    deadline = time.monotonic() + 10
    while alive(int((home / "pid").read_text())) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(int((home / "pid").read_text()))


def test_an_old_server_warns_that_cancellation_is_not_honoured(tmp_path, echo_repository):
    home = http_home(tmp_path, "2.38.0")
    result = run_script("--background", tmp_path / "pid", echo_repository,
                        env=base_env(tmp_path, TRITON_HOME=str(home)))
    subprocess.run(["kill", (home / "pid").read_text()])
    assert result.returncode == 0, result.stderr
    assert "run_triton.sh: warning: Triton 2.38.0 (23.09) does not tell the python models of " \
           "cancelled requests" in result.stderr


@pytest.mark.parametrize("platform, folder", [
    ("onnxruntime_onnx", "onnxruntime"), ("pytorch_libtorch", "pytorch"),
    ("tensorflow_savedmodel", "tensorflow"), ("tensorflow_graphdef", "tensorflow"),
])
def test_a_platform_needs_its_backend_folder(tmp_path, platform, folder):
    repo = tmp_path / "repo"
    (repo / "m" / "1").mkdir(parents=True)
    (repo / "m" / "config.pbtxt").write_text(f'name: "m"\nplatform: "{platform}"\n')
    home = fake_home(tmp_path)
    result = run_script(repo, env=base_env(tmp_path, TRITON_HOME=str(home)))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"run_triton.sh: error: the repository uses backend '{folder}' but "
        f"{home}/backends/{folder} is missing"]
    (home / "backends" / folder).mkdir()
    result = run_script(repo, env=base_env(tmp_path, TRITON_HOME=str(home)))
    assert result.returncode == 1 and "before it was ready" in result.stderr  # started


@pytest.mark.skipif(not Path("/usr/bin/python3").exists(), reason="needs /usr/bin/python3")
def test_the_base_interpreter_lib_dir_goes_last_and_only_when_needed(tmp_path, echo_repository):
    """A system python3 (JetPack's: LIBDIR /usr/lib/<multiarch>) adds nothing; an interpreter
    whose libpython lies elsewhere (pyenv here, as the pytriton venv) is appended."""
    import sysconfig

    home = fake_home(tmp_path)
    system_env = python_without(tmp_path, "nothing", present=("numpy", "click", "tokenizers"))
    env = base_env(tmp_path, TRITON_HOME=str(home), TRITON_PYTHON_ENV=str(system_env),
                   LD_LIBRARY_PATH="/opt/mine")
    result = run_script(echo_repository, env=env)
    assert result.returncode == 1, result.stderr
    assert (home / "args.ld").read_text().strip() == f"{home}/lib:/opt/mine"
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir.startswith(("/usr/lib", "/lib")) or not (
            Path(libdir) / sysconfig.get_config_var("LDLIBRARY")).exists():
        return  # this interpreter's libpython is where the linker looks anyway
    env["TRITON_PYTHON_ENV"] = str(Path(sys.executable).parent.parent)
    result = run_script(echo_repository, env=env)
    assert result.returncode == 1, result.stderr
    assert (home / "args.ld").read_text().strip() == f"{home}/lib:/opt/mine:{libdir}"


def compatible_plan_repo(tmp_path: Path) -> Path:
    from repo_fixtures import plan_for
    from tiny_data import copy_committed_model

    from triton_repo.build import build_repository

    (tmp_path / "onnx").mkdir()
    onnx = copy_committed_model("tiny_classifier", tmp_path / "onnx")
    plan = plan_for(onnx, tmp_path / "engines", tensorrt_version="10.3.0.30",
                    version_compatible=True)
    return build_repository("jetson", tmp_path / "repo", imdb=plan)


def test_a_version_compatible_plan_on_its_own_release_gets_the_switch(tmp_path):
    """Its lean runtime is host code: TensorRT refuses it unless the backend allows host code,
    which only version-compatible=true does (tensorrt_backend src/loader.cc, r23.09+)."""
    repo = compatible_plan_repo(tmp_path)
    home = fake_home(tmp_path)
    env = base_env(tmp_path, TRITON_HOME=str(home), TRITON_TENSORRT_VERSION="10.3.0")
    result = run_script(repo, env=env)
    assert result.returncode == 1 and "before it was ready" in result.stderr
    assert "--backend-config=tensorrt,version-compatible=true" in \
        (home / "args").read_text().splitlines()
    assert "version-compatible plans need Triton 2.38 (23.09) or later; release tree " \
           f"{home} does not say its version before the start" in result.stderr


def test_a_server_too_old_for_version_compatible_plans_is_refused_before_the_start(tmp_path):
    repo = compatible_plan_repo(tmp_path)
    home = fake_home(tmp_path)
    (home / "TRITON_VERSION").write_text("2.37.0\n")
    env = base_env(tmp_path, TRITON_HOME=str(home), TRITON_TENSORRT_VERSION="10.7.0")
    result = run_script(repo, env=env)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("run_triton.sh: error: Triton 2.37.0 (23.08) cannot load "
                           "version-compatible TensorRT plans")
    assert not (home / "args").exists()
    (home / "TRITON_VERSION").write_text("2.38.0\n")
    assert run_script(repo, env=env).returncode == 1 and (home / "args").exists()
    env = base_env(tmp_path, TRITON_DOCKER=str(write_fake_docker(tmp_path)),
                   TRITON_CONTAINER="nvcr.io/nvidia/tritonserver:23.08-py3",
                   TRITON_SERVER_VERSION="2.37.0", TRITON_TENSORRT_VERSION="10.7.0")
    result = run_script(repo, env=env)
    assert result.returncode == 2
    assert "Triton 2.37.0 (23.08) cannot load version-compatible" in result.stderr
    assert not (tmp_path / "docker-args").exists()
