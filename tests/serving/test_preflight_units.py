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
    assert versions.REQUEST_CANCELLATION_FROM == (2, 39, 0)
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
    assert preflight.check_plans(repo, "10.3.0", None) == []  # same release: no switch needed
    for older_or_other_major in ("10.2.0", "11.1.0"):
        with pytest.raises(ToolkitError, match="was built with TensorRT 10.3.0.30"):
            preflight.check_plans(repo, older_or_other_major, None)


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
    assert run("version", "2.37.0").returncode == 0
    assert run("version", "2.37.0", "--version-compatible").returncode == 2
    done = run("plans", repos["jetson"], "--backend-trt", "8.5.2", "--python-trt", "10.3.0")
    assert done.returncode == 2 and "TensorRT 8.5.2" in done.stderr
    system_python = shutil.which("python3", path="/usr/bin:/bin")
    if system_python:  # the device's system python3: stdlib only, no click needed
        assert run("modules", repos["jetson"], python=system_python).returncode == 0


def test_a_plan_without_its_manifest_is_refused(repos, tmp_path):
    repo = tmp_path / "copy"
    shutil.copytree(repos["jetson"], repo)
    (repo / "imdb_classifier" / "1" / "model.plan.json").unlink()
    with pytest.raises(ToolkitError, match="no manifest model.plan.json beside it"):
        preflight.check_plans(repo, "10.3.0", "10.3.0")
    manifest = json.loads((repos["jetson"] / "imdb_classifier" / "1" /
                           "model.plan.json").read_text())
    assert preflight.loads_on(dict(manifest, tensorrt_version="unknown"), "8.6.2")
