"""engines.build --version-compatible: BuilderFlag.VERSION_COMPATIBLE through Polygraphy,
refused below TensorRT 8.6, recorded in the manifest. The build itself needs TensorRT and a GPU
(skipped elsewhere)."""
from __future__ import annotations

import importlib.util

import pytest
from click.testing import CliRunner

from common.artifacts import load_onnx_sidecar
from common.errors import ToolkitError
from engines import build
from engines.builder_config import (
    BuildOptions,
    check_version_compatible,
    create_config_kwargs,
    plan_precision,
)
from engines.profiles import build_profiles

HAS_TRT = importlib.util.find_spec("tensorrt") is not None


@pytest.mark.parametrize("version", ["8.6.1.6", "8.6.2.3", "10.3.0.30", "11.1.0.1"])
def test_the_flag_exists_from_8_6(version):
    check_version_compatible(BuildOptions("fp16", version_compatible=True), version)


def test_tensorrt_8_5_is_refused_with_one_line():
    with pytest.raises(ToolkitError) as refused:
        check_version_compatible(BuildOptions("fp16", version_compatible=True), "8.5.2.2")
    assert str(refused.value) == (
        "--version-compatible: TensorRT 8.5.2.2 has no version-compatible engines "
        "(BuilderFlag.VERSION_COMPATIBLE arrived in 8.6); drop the option or build with "
        "TensorRT 8.6+")
    check_version_compatible(BuildOptions("fp16"), "8.5.2.2")  # not asked: nothing to refuse


def test_polygraphy_is_asked_only_when_the_option_is_given(tiny_classifier_onnx):
    profiles = build_profiles(load_onnx_sidecar(tiny_classifier_onnx))
    for asked in (False, True):
        options = BuildOptions("fp16", version_compatible=asked)
        kwargs = create_config_kwargs(options, plan_precision(options, "10.3.0.30"), profiles)
        assert kwargs.get("version_compatible", False) is asked
        assert options.to_json()["version_compatible"] is asked  # the manifest's build_options


def test_polygraphy_takes_the_keyword():
    pytest.importorskip("polygraphy")
    from polygraphy.backend.trt import CreateConfig

    assert CreateConfig(version_compatible=True).version_compatible is True


def test_cli_offers_the_option():
    result = CliRunner().invoke(build.main, ["--help"])
    assert result.exit_code == 0 and "--version-compatible" in result.output


@pytest.mark.trt
@pytest.mark.gpu
@pytest.mark.skipif(not HAS_TRT, reason="TensorRT is not installed: engines build on the device")
def test_a_version_compatible_engine_is_built_and_recorded(tiny_classifier_onnx, tmp_path):
    import tensorrt as trt

    from engines.build import build_engine

    version = trt.__version__
    if tuple(int(p) for p in version.split(".")[:2]) < (8, 6):
        pytest.skip(f"TensorRT {version} has no version-compatible engines")
    profiles = build_profiles(load_onnx_sidecar(tiny_classifier_onnx), batch=(1, 2, 2),
                              seq=(1, 16, 16))
    plan = tmp_path / "tiny.fp32.plan"
    manifest = build_engine(tiny_classifier_onnx, plan, BuildOptions("fp32",
                                                                     version_compatible=True),
                            profiles)
    assert manifest["version_compatible"] is True
    assert manifest["build_options"]["version_compatible"] is True
    runtime = trt.Runtime(trt.Logger(trt.Logger.ERROR))
    runtime.engine_host_code_allowed = True  # the embedded lean runtime is host code
    engine = runtime.deserialize_cuda_engine(plan.read_bytes())
    assert engine is not None
