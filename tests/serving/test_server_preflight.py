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
        body = json.dumps({{"name": "triton", "version": "2.33.0"}}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body) if self.path == "/v2" else 0))
        self.end_headers()
        if self.path == "/v2":
            self.wfile.write(body)

    def log_message(self, *args):
        pass

http.server.HTTPServer((address, port), Handler).serve_forever()
""")
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
        "nvcr.io/nvidia/tritonserver:24.02-py3-igpu with pip install numpy tokenizers click"]
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
    env["TRITON_TENSORRT_VERSION"] = "11.1.0"  # another major version: refused
    result = run_script(repo, env=env)
    assert result.returncode == 2 and "but the server's TensorRT backend links TensorRT " \
                                      "11.1.0" in result.stderr


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
