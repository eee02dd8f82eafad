"""triton_repo.versions and triton_repo.preflight without a server: the version floor, the
modules each repository needs, and the TensorRT comparison of served plans."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

pytest.importorskip("tritonclient.grpc.model_config_pb2")

from repo_fixtures import (  # noqa: E402
    ROOT,
    classifier_onnx,  # noqa: F401  (fixture)
    decoder_onnx,  # noqa: F401  (fixture)
    plan_for,
)

from common.errors import ToolkitError  # noqa: E402
from triton_repo import preflight, versions  # noqa: E402
from triton_repo.build import build_repository  # noqa: E402

PREFLIGHT = ROOT / "triton_repo" / "preflight.py"


@pytest.mark.parametrize("text, version", [
    ("2.51.0", (2, 51, 0)), ("2.40.0dev", (2, 40, 0)), ("v2.35.1", (2, 35, 1)),
    ("24.10", (2, 51, 0)), ("24.02-py3-igpu", (2, 43, 0)), ("23.05", (2, 34, 0)),
    ("22.01", (2, 18, 0)), ("25.01", (2, 54, 0)),
])
def test_versions_and_releases(text, version):
    assert versions.parse_triton_version(text) == version
    if not text.lstrip("v").startswith("2."):  # a YY.MM release maps back to itself
        assert versions.release_of(version) == text[:5]


def test_the_floor_and_the_features_above_it():
    assert versions.MIN_TRITON == (2, 34, 0)
    assert versions.STREAM_FINAL_RESPONSE_FROM == (2, 35, 0)
    (note,) = versions.version_notes((2, 38, 0))  # before is_cancelled()
    assert note.startswith("warning: Triton 2.38.0 (23.09) does not tell the python models of "
                           "cancelled requests (is_cancelled arrives in 2.39.0, 23.10)")
    assert versions.version_notes((2, 39, 0)) == []
    assert versions.check_supported("2.34.0") == (2, 34, 0)
    with pytest.raises(ToolkitError, match=r"Triton 2\.33\.0 \(23\.04\) is below the supported "
                                           r"floor 2\.34\.0 \(23\.05\)"):
        versions.check_supported("2.33.0")
    with pytest.raises(ToolkitError, match="expected a server version"):
        versions.parse_triton_version("unknown")
    with pytest.raises(ToolkitError, match="cannot load version-compatible"):
        versions.check_version_compatible((2, 37, 0))
    versions.check_version_compatible((2, 38, 0))


@pytest.fixture(scope="module")
def repos(tmp_path_factory, classifier_onnx, decoder_onnx):  # noqa: F811
    root = tmp_path_factory.mktemp("preflight")
    engines = root / "engines"
    return {
        "cpu": build_repository("cpu", root / "cpu", imdb=classifier_onnx, stories=decoder_onnx),
        "jetson": build_repository("jetson", root / "jetson",
                                   imdb=plan_for(classifier_onnx, engines),
                                   stories=plan_for(decoder_onnx, engines)),
        "jetson_onnx_stories": build_repository("jetson", root / "j2",
                                                stories=decoder_onnx),
    }


def test_modules_each_repository_needs(repos):
    assert preflight.needed_modules(repos["cpu"]) == ["numpy", "tokenizers", "click",
                                                      "onnxruntime"]
    assert preflight.needed_modules(repos["jetson"]) == ["numpy", "tokenizers", "click",
                                                         "tensorrt", "pycuda"]
    assert preflight.needed_modules(repos["jetson_onnx_stories"]) == [
        "numpy", "tokenizers", "click", "onnxruntime"]
    assert preflight.missing_modules(["json", "no_such_module_here"]) == ["no_such_module_here"]


def test_plans_are_compared_with_the_tensorrt_that_loads_them(repos):
    repo = repos["jetson"]  # both plans built with 10.3.0.30 (plan_for)
    assert preflight.check_plans(repo, "10.3.0", "10.3.0.30") == []
    with pytest.raises(ToolkitError) as refused:
        preflight.check_plans(repo, "8.6.2", "10.3.0.30")
    message = str(refused.value)
    assert "imdb_classifier/1/model.plan was built with TensorRT 10.3.0.30 but the server's " \
           "TensorRT backend links TensorRT 8.6.2" in message
    assert "--version-compatible" in message and "\n" not in message
    with pytest.raises(ToolkitError, match="tinystories_generate/1/model.plan was built with "
                                           "TensorRT 10.3.0.30 but the python models' tensorrt "
                                           "module is 10.4.0"):
        preflight.check_plans(repo, "10.3.0", "10.4.0")
    with pytest.raises(ToolkitError, match="python models cannot import tensorrt"):
        preflight.check_plans(repo, "10.3.0", None)


def test_a_version_compatible_plan_loads_on_a_later_release_of_its_major(tmp_path,
                                                                          classifier_onnx):  # noqa: F811
    plan = plan_for(classifier_onnx, tmp_path / "engines", tensorrt_version="10.3.0.30",
                    version_compatible=True)
    repo = build_repository("jetson", tmp_path / "repo", imdb=plan)
    assert preflight.check_plans(repo, "10.7.0", None) == ["version-compatible"]
    # the same release too: the plan's lean runtime is host code, which the TensorRT backend
    # only allows with the switch (tensorrt_backend src/loader.cc LoadPlan, r23.09+)
    assert preflight.check_plans(repo, "10.3.0", None) == ["version-compatible"]
    assert preflight.check_plans(repo, "11.1.0", None) == ["version-compatible"]  # 10 -> 11
    assert preflight.served_compatible(repo)
    for refused in ("10.2.0", "12.0.0", "9.2.0"):
        with pytest.raises(ToolkitError, match="was built with TensorRT 10.3.0.30"):
            preflight.check_plans(repo, refused, None)


@pytest.mark.parametrize("built, here", [
    ("10.3.0.30", "10.7.0"), ("10.3.0", "11.1.0"), ("10.3.0", "12.0.0"), ("8.6.1", "10.3.0"),
    ("8.6.1", "11.0.0"), ("8.5.2", "8.6.1"), ("10.7.0", "10.3.0"), ("8.6.1", "9.2.0"),
])
def test_preflight_uses_the_engines_rule_for_version_compatible_plans(built, here):
    from engines.manifest import version_compatible_loads

    manifest = {"tensorrt_version": built, "version_compatible": True}
    assert preflight.loads_on(manifest, here) is version_compatible_loads(built, here)
    assert not preflight.loads_on(dict(manifest, version_compatible=False), here)


def test_a_major_only_tensorrt_version_is_not_compared(repos):
    """libnvinfer.so.10 without the full name behind it reads as "10", which matched every
    10.x plan."""
    with pytest.raises(ToolkitError) as refused:
        preflight.check_plans(repos["jetson"], "10", "10.3.0.30")
    message = str(refused.value)
    assert "imdb_classifier/1/model.plan was built with TensorRT 10.3.0.30 but the TensorRT " \
           "that loads it reads as '10'" in message
    assert "set TRITON_TENSORRT_VERSION" in message and "\n" not in message


def test_cli_answers_on_stdout_and_refuses_with_one_line(repos, tmp_path):
    def run(*args, python=sys.executable):
        return subprocess.run([python, str(PREFLIGHT), *map(str, args)], capture_output=True,
                              text=True, timeout=60)

    done = run("modules", repos["cpu"])
    assert done.returncode == 0 and done.stdout.split() == ["numpy", "tokenizers", "click",
                                                            "onnxruntime"]
    done = run("version", "2.33.0")
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert done.stderr.startswith("error: Triton 2.33.0 (23.04) is below the supported floor")
    done = run("version", "2.37.0")
    assert done.returncode == 0 and done.stdout.splitlines()[0] == "2.37.0"
    assert "a cancelled stream runs to its end" in done.stdout.splitlines()[1]
    assert run("version", "2.37.0", "--version-compatible").returncode == 2
    assert run("version", "2.39.0").stdout == "2.39.0\n"
    assert run("compatible", repos["jetson"]).stdout == "\n"
    done = run("hint", "--python", "/usr/bin/python3", "tokenizers", "onnxruntime")
    assert done.returncode == 0 and done.stdout.count("\n") == 1
    done = run("plans", repos["jetson"], "--backend-trt", "8.5.2", "--python-trt", "10.3.0")
    assert done.returncode == 2 and "TensorRT 8.5.2" in done.stderr
    system_python = shutil.which("python3", path="/usr/bin:/bin")
    if system_python:  # the device's system python3: stdlib only, no click needed
        assert run("modules", repos["jetson"], python=system_python).returncode == 0
        done = run("plans", repos["jetson"], "--backend-trt", "10.3.0", "--python-trt",
                   "10.3.0.30", python=system_python)  # engines/manifest.py's rule imported
        assert done.returncode == 0, done.stderr


def test_each_missing_module_gets_its_own_hint():
    line = preflight.module_hint(["tokenizers"], "/usr/bin/python3")
    assert line == ("the python models need module 'tokenizers', which /usr/bin/python3 cannot "
                    "import: run jetson/setup.sh (its venv .venv-jetson is found by default) or "
                    "set TRITON_PYTHON_ENV to a venv with requirements/device.txt")
    line = preflight.module_hint(["numpy", "onnxruntime", "tensorrt", "pycuda"], "py")
    assert line.startswith("the python models need module 'numpy' (also missing: onnxruntime "
                           "tensorrt pycuda), which py cannot import: for numpy: run "
                           "jetson/setup.sh")
    assert "for onnxruntime: pip install onnxruntime" in line
    assert "for tensorrt: use JetPack's TensorRT bindings" in line
    assert "never pip install tensorrt" in line
    assert "pip install tensorrt" not in line.replace("never pip install tensorrt", "")
    assert "for pycuda: pip install pycuda" in line and "CUDA toolkit" in line
    line = preflight.module_hint(["tokenizers", "tensorrt"], "the python3 of IMG", "IMG")
    assert "for tokenizers: build an image FROM IMG with pip install tokenizers" in line
    assert "for tensorrt: use the image's own TensorRT bindings" in line
    assert "pip install tensorrt" not in line.replace("never pip install tensorrt", "")
    assert "\n" not in line


def test_a_plan_without_its_manifest_is_refused(repos, tmp_path):
    repo = tmp_path / "copy"
    shutil.copytree(repos["jetson"], repo)
    (repo / "imdb_classifier" / "1" / "model.plan.json").unlink()
    with pytest.raises(ToolkitError, match="no manifest model.plan.json beside it"):
        preflight.check_plans(repo, "10.3.0", "10.3.0")
    manifest = json.loads((repos["jetson"] / "imdb_classifier" / "1" /
                           "model.plan.json").read_text())
    assert preflight.loads_on(dict(manifest, tensorrt_version="unknown"), "8.6.2")


def test_a_corrupt_manifest_is_one_line(repos, tmp_path):
    repo = tmp_path / "copy"
    shutil.copytree(repos["jetson"], repo)
    manifest = repo / "imdb_classifier" / "1" / "model.plan.json"
    manifest.write_text('{"tensorrt_version": "10.3')
    with pytest.raises(ToolkitError, match=r"model.plan.json: not a readable JSON manifest"):
        preflight.check_plans(repo, "10.3.0", "10.3.0")
    done = subprocess.run([sys.executable, str(PREFLIGHT), "plans", str(repo), "--backend-trt",
                           "10.3.0"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert done.stderr.startswith(f"error: {manifest}: not a readable JSON manifest")
    manifest.write_text("[]")
    with pytest.raises(ToolkitError, match="expected a JSON object"):
        preflight.served_compatible(repo)
