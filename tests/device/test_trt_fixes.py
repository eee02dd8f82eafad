"""TensorRT / Polygraphy fixes of issue 11: failures of TensorRT, pycuda and Polygraphy calls as
one-line ToolkitErrors, the Polygraphy floor for TensorRT 11, TF32 through CreateConfig, the
DLA version rule and strong typing on TensorRT 11.

The version rules and the error conversions run here on real exceptions raised by small real
functions (and by Polygraphy itself, where it fails without TensorRT); nothing stands in for a
TensorRT call that succeeds. The tests at the end need TensorRT and a GPU and skip elsewhere.
"""
from __future__ import annotations

import importlib.util
import sys
import types

import pytest
from click.testing import CliRunner

from common.errors import ToolkitError
from engines import trt_info
from engines.build_steps import call_build_step, check_polygraphy
from engines.builder_config import BuildOptions, check_dla, make_config_loader, plan_precision
from engines.profiles import build_profiles
from runtime import trt_backend
from runtime.buffers import import_pycuda
from runtime.trt_backend import trt_call

HAS_TRT = importlib.util.find_spec("tensorrt") is not None
AGX_ORIN = "NVIDIA Jetson AGX Orin Developer Kit"


def _one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message and "Traceback" not in message
    return message


# ---------------------------------------------------------------- TensorRT calls (runtime)

class _Context:
    """Behaves as IExecutionContext's bindings do when a call fails."""

    def set_optimization_profile_async(self, profile: int, stream: int) -> bool:
        # pyCore.cpp (8.5, 8.6, 10.3, 11.0): PY_ASSERT_RUNTIME_ERROR(...); return true;
        raise RuntimeError("Error in set optimization profile async.")

    def set_input_shape(self, name: str, shape) -> bool:
        return False  # setInputShape's bool, passed through by the bindings

    def create_nothing(self):
        return None  # create_execution_context / deserialize_cuda_engine on failure


def test_set_optimization_profile_async_runtime_error_becomes_one_line():
    context = _Context()
    with pytest.raises(ToolkitError) as info:
        trt_call("engines/x.plan", context.set_optimization_profile_async, 1, 0x7F00DEAD0000)
    message = _one_line(info)
    assert message.startswith("engines/x.plan: TensorRT set_optimization_profile_async(1, "
                              "0x7f00dead0000) failed: Error in set optimization profile async.")


def test_false_and_none_returns_become_errors_and_true_passes_through():
    context = _Context()
    with pytest.raises(ToolkitError, match=r"set_input_shape\('input_ids', \(1, 9\)\) failed "
                                           r"\(TensorRT returned False"):
        trt_call("x.plan", context.set_input_shape, "input_ids", (1, 9))
    with pytest.raises(ToolkitError, match=r"returned None.*\(out of GPU memory\?\)$"):
        trt_call("x.plan", context.create_nothing, hint=" (out of GPU memory?)")
    marker = object()
    assert trt_call("ok", lambda: True) is True
    assert trt_call("ok", lambda: marker) is marker


def test_plugin_initialisation_is_called_once_and_absent_bindings_are_tolerated(monkeypatch):
    calls = []

    def init_libnvinfer_plugins(logger, namespace):
        calls.append(namespace)
        return False  # the plugin library did not initialize

    monkeypatch.setattr(trt_backend, "_PLUGINS_READY", None)
    lean = types.SimpleNamespace()  # tensorrt_lean: no init_libnvinfer_plugins
    assert trt_backend._init_plugins(lean) is None
    full = types.SimpleNamespace(init_libnvinfer_plugins=init_libnvinfer_plugins)
    assert trt_backend._init_plugins(full) is False
    assert trt_backend._init_plugins(full) is False
    assert calls == [""]  # once per process, default namespace, as Polygraphy calls it


# ---------------------------------------------------------------- pycuda

def _pycuda_like(failure: BaseException):
    """import_module for a pycuda whose driver loads but whose cuInit fails, as on a machine
    whose GPU is absent or taken (pycuda raises its own Error subclasses there)."""
    driver = types.ModuleType("pycuda.driver")

    class Error(Exception):
        pass

    class LogicError(Error):
        pass

    driver.Error, driver.LogicError = Error, LogicError

    def import_module(name):
        if name == "pycuda.driver":
            return driver
        raise failure  # importing pycuda.autoprimaryctx runs cuInit and retains the context

    return import_module, driver


def test_pycuda_driver_error_without_a_usable_gpu_is_one_line():
    def import_module(name):  # pycuda.driver loads; importing autoprimaryctx runs cuInit
        if name == "pycuda.driver":
            return driver
        raise driver.LogicError("cuInit failed: no CUDA-capable device is detected")

    _, driver = _pycuda_like(RuntimeError)
    with pytest.raises(ToolkitError) as info:
        import_pycuda("cannot run engine e.plan", import_module)
    message = _one_line(info)
    assert message.startswith("cannot run engine e.plan: the CUDA driver loaded but no GPU")
    assert "no CUDA-capable device" in message


def test_pycuda_builtin_runtime_error_and_import_error_are_one_line():
    import_module, _ = _pycuda_like(RuntimeError("cuDevicePrimaryCtxRetain failed: unknown"))
    with pytest.raises(ToolkitError, match="no GPU is usable"):
        import_pycuda("x", import_module)

    def no_libcuda(name):
        raise ImportError("libcuda.so.1: cannot open shared object file")

    with pytest.raises(ToolkitError, match="pycuda is missing or cannot load the CUDA driver"):
        import_pycuda("x", no_libcuda)


@pytest.mark.skipif(importlib.util.find_spec("pycuda") is not None,
                    reason="pycuda is installed here: the missing-pycuda path cannot be seen")
def test_missing_pycuda_is_one_line_with_the_real_import():
    with pytest.raises(ToolkitError) as info:
        import_pycuda("cannot run engine e.plan")
    assert "pip install pycuda" in _one_line(info)


# ---------------------------------------------------------------- builds (Polygraphy)

def _legacy_polygraphy_step():
    """What Polygraphy 0.49.0/0.49.9 do on TensorRT 11: read a removed config attribute."""

    class IBuilderConfig:  # TensorRT 11's config: no int8_calibrator any more
        pass

    config = IBuilderConfig()
    return config.int8_calibrator


def test_build_attribute_error_from_an_old_polygraphy_names_the_floor():
    with pytest.raises(ToolkitError) as info:
        call_build_step("build e.plan from m.onnx", "0.49.9", _legacy_polygraphy_step)
    message = _one_line(info)
    assert "Polygraphy 0.49.9" in message and "int8_calibrator" in message
    assert "polygraphy>=0.50.3" in message


def test_build_polygraphy_exception_and_tensorrt_runtime_error_are_one_line():
    from polygraphy.logger import G_LOGGER

    def failing_build():
        G_LOGGER.critical("Invalid Engine. Please ensure the engine was built correctly")

    with pytest.raises(ToolkitError) as info:
        call_build_step("build e.plan from m.onnx", "0.53.6", failing_build)
    assert "Invalid Engine" in _one_line(info) and "--verbose" in str(info.value)

    def bindings_error():
        raise RuntimeError("Shape provided for min is inconsistent with other shapes.\nmore")

    with pytest.raises(ToolkitError, match="inconsistent with other shapes.( |$)"):
        call_build_step("build e.plan", None, bindings_error)


def test_our_own_toolkit_error_passes_through_a_build_step_unchanged():
    def refuse():
        raise ToolkitError("TensorRT refused profile 'prefill' as the INT8 calibration profile")

    with pytest.raises(ToolkitError) as info:
        call_build_step("build e.plan", None, refuse)
    assert str(info.value).startswith("TensorRT refused profile 'prefill'")


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed: Polygraphy's network loader works")
def test_polygraphy_loader_failing_for_real_becomes_one_line(tiny_classifier_onnx):
    from polygraphy.backend.trt import NetworkFromOnnxPath

    with pytest.raises(ToolkitError) as info:
        call_build_step(f"build e.plan from {tiny_classifier_onnx}", "0.53.6",
                        NetworkFromOnnxPath(str(tiny_classifier_onnx)))
    assert "tensorrt" in _one_line(info).lower()


@pytest.mark.parametrize("polygraphy, trt, refused", [
    ("0.49.0", "11.0.0.1", True),
    ("0.49.9", "11.1", True),
    ("0.49.26", "11.0.0", True),  # reads layer.precision_is_set unguarded
    ("0.49.27", "11.1", True),  # the Polygraphy in TensorRT's own v11.1 tree: same read
    ("0.50.3", "11.0.0", False),  # first release with the try/except AttributeError guard
    ("0.53.6", "11.4.1", False),
    ("0.49.0", "10.3.0.30", False),  # the guard only matters where int8_calibrator is gone
    ("0.49.9", "8.5.2.2", False),
])
def test_polygraphy_floor_for_tensorrt_11(polygraphy, trt, refused):
    if refused:
        with pytest.raises(ToolkitError) as info:
            check_polygraphy(polygraphy, trt)
        message = _one_line(info)
        assert f"Polygraphy {polygraphy}" in message and ">=0.50.3" in message
        assert "layer.precision_is_set" in message
    else:
        check_polygraphy(polygraphy, trt)


def test_the_installed_polygraphy_meets_the_floor():
    import polygraphy

    check_polygraphy(polygraphy.__version__, "11.0.0")


# ---------------------------------------------------------------- TF32 through CreateConfig

@pytest.fixture(scope="module")
def classifier_profiles(tiny_classifier_onnx):
    from common.artifacts import load_onnx_sidecar

    return build_profiles(load_onnx_sidecar(tiny_classifier_onnx))


def test_polygraphy_alone_turns_tf32_off():
    """Why the option is always passed: CreateConfig's own default clears the flag."""
    from polygraphy.backend.trt import CreateConfig

    assert CreateConfig().tf32 is False


@pytest.mark.parametrize("precision, version", [("fp32", "10.3.0"), ("fp16", "8.6.2"),
                                                ("int8", "10.3.0"), ("fp32", "11.0.0")])
def test_tf32_is_on_by_default_and_off_with_no_tf32(classifier_profiles, precision, version):
    on = BuildOptions(precision)
    off = BuildOptions(precision, tf32=False)
    assert on.to_json()["tf32"] is True and off.to_json()["tf32"] is False  # manifest options
    config_on = make_config_loader(on, plan_precision(on, version), classifier_profiles)
    config_off = make_config_loader(off, plan_precision(off, version), classifier_profiles)
    assert type(config_on).__name__ == "CreateConfig"
    assert config_on.tf32 is True and config_off.tf32 is False


def test_tf32_reaches_the_create_config_behind_a_dla_postprocess(tiny_classifier_onnx):
    from common.artifacts import load_onnx_sidecar

    profiles = build_profiles(load_onnx_sidecar(tiny_classifier_onnx), batch=(1, 1, 1),
                              seq=(64, 64, 64))
    options = BuildOptions("fp16", dla_core=0)
    config = make_config_loader(options, plan_precision(options, "8.6.2"), profiles)
    assert type(config).__name__ == "PostprocessConfig" and config._config.tf32 is True


def test_build_cli_accepts_no_tf32(tiny_classifier_onnx, tmp_path):
    from engines.build import main

    result = CliRunner().invoke(main, ["--onnx", str(tiny_classifier_onnx), "--precision",
                                       "fp32", "--no-tf32", "--output", str(tmp_path / "e.plan")])
    assert "No such option" not in result.output
    if not HAS_TRT:
        assert result.exit_code == 2 and "TensorRT is not installed" in result.output


# ---------------------------------------------------------------- DLA and strong typing

@pytest.mark.parametrize("version, has_dla", [
    ("8.5.2.2", True), ("8.6.2.3", True), ("10.3.0.30", True), ("10.13.3", True),
    ("11.0.0.1", False), ("11.3.1", False), ("11.4", False), ("11.4.0.9", False),
    ("11.4.1", True), ("11.4.1.2", True), ("11.4.3", True),
    ("11.5.0", False), ("11.6.1", False), ("12.0", False),  # 11.5 dropped JetPack
])
def test_dla_version_rule(version, has_dla):
    assert trt_info.has_dla_builds(version) is has_dla


@pytest.mark.parametrize("version, module, jetpack, problem", [
    ("11.4.1", AGX_ORIN, "7.2.2", None),
    ("11.4.1", AGX_ORIN, "7.3", None),
    ("11.4.1", AGX_ORIN, None, None),  # unknown JetPack: num_DLA_cores decides
    ("11.4.1", None, "unknown", None),
    ("11.4.1", AGX_ORIN, "7.1", "JetPack 7.2.2 or later"),
    ("11.4.1", "NVIDIA Jetson Orin NX Engineering Reference Developer Kit", "7.2.2",
     "only on Jetson AGX Orin"),
    ("11.4.1", "NVIDIA Jetson AGX Thor Developer Kit", "7.2.2", "only on Jetson AGX Orin"),
    ("11.2.0", AGX_ORIN, "7.2.2", "builds no DLA engines"),
    ("11.5.0", AGX_ORIN, "7.2.2", "11.5 dropped JetPack"),
    ("11.4.2", AGX_ORIN, "7.2.2", None),
    ("10.7.0", AGX_ORIN, "6.2", None),
    ("8.5.2.2", "NVIDIA Jetson AGX Orin Developer Kit", "5.1", None),
    ("10.3.0", "NVIDIA Jetson Orin NX Engineering Reference Developer Kit", "6.1", None),
])
def test_dla_platform_rule(version, module, jetpack, problem):
    found = trt_info.dla_platform_problem(version, module, jetpack)
    if problem is None:
        assert found is None
    else:
        assert problem in found


def test_check_dla_accepts_tensorrt_11_4_1_on_agx_orin_and_refuses_11_4_0(tiny_classifier_onnx):
    from common.artifacts import load_onnx_sidecar

    profiles = build_profiles(load_onnx_sidecar(tiny_classifier_onnx), batch=(1, 1, 1),
                              seq=(64, 64, 64))
    options = BuildOptions("int8", "qdq", dla_core=1)
    check_dla(options, profiles, "11.4.1", 2, AGX_ORIN, "7.2.2")
    with pytest.raises(ToolkitError, match="builds no DLA engines"):
        check_dla(options, profiles, "11.4.0", 2, AGX_ORIN, "7.2.2")
    with pytest.raises(ToolkitError, match="JetPack 7.2.2 or later"):
        check_dla(options, profiles, "11.4.1", 2, AGX_ORIN, "7.0")


@pytest.mark.parametrize("precision, version, strongly_typed", [
    ("fp32", "11.0.0", True), ("int8", "11.0.0", True), ("fp32", "11.4.1", True),
    ("fp32", "10.3.0", False), ("int8", "10.3.0", True), ("fp16", "10.3.0", False),
    ("int8", "8.6.2", False),
])
def test_strong_typing_is_always_on_with_tensorrt_11(precision, version, strongly_typed):
    plan = plan_precision(BuildOptions(precision), version)
    assert plan.strongly_typed is strongly_typed
    assert ("strongly typed" in plan.describe()) is strongly_typed


# ---------------------------------------------------------------- on a GPU with TensorRT

def needs_trt(test):
    marks = [pytest.mark.trt, pytest.mark.gpu,
             pytest.mark.skipif(not HAS_TRT, reason="TensorRT is not installed: runs on a "
                                "Jetson or a GPU box with TensorRT"),
             pytest.mark.skipif(importlib.util.find_spec("pycuda") is None,
                                reason="pycuda is not installed (TensorRT buffers)")]
    for mark in marks:
        test = mark(test)
    return test


@pytest.fixture(scope="module")
def fp32_plans(tiny_classifier_onnx, tmp_path_factory):
    from engines.build import build_engine

    folder = tmp_path_factory.mktemp("trt_fixes")
    plans = {}
    for tf32 in (True, False):
        plan = folder / f"classifier.tf32_{tf32}.plan"
        build_engine(tiny_classifier_onnx, plan, BuildOptions("fp32", tf32=tf32))
        plans[tf32] = plan
    return plans


@needs_trt
@pytest.mark.parametrize("tf32", [True, False])
def test_manifest_records_tf32_and_strong_typing(fp32_plans, tf32):
    import tensorrt as trt

    from engines.manifest import load_manifest

    manifest = load_manifest(fp32_plans[tf32])
    assert manifest["tf32"] is tf32 and manifest["build_options"]["tf32"] is tf32
    assert manifest["precision_plan"]["strongly_typed"] is (not trt_info.has_precision_flags(
        trt.__version__))


@needs_trt
def test_real_context_refuses_a_missing_profile_with_one_line(fp32_plans):
    import tensorrt as trt

    from runtime.session import open_session

    with open_session(fp32_plans[True]) as session:
        assert trt_backend._init_plugins(trt) in (True, None)
        context = session._engine.create_execution_context()
        with pytest.raises(ToolkitError) as info:
            trt_call(session.path, context.set_optimization_profile_async, 7,
                     session._stream.handle)
        assert "set_optimization_profile_async(7, " in _one_line(info)
        assert "failed" in str(info.value)
        del context


@needs_trt
def test_real_pycuda_finds_the_gpu():
    cuda = import_pycuda("gpu check")
    assert cuda.Context.get_device().compute_capability()[0] >= 5
    assert "pycuda.autoprimaryctx" in sys.modules
