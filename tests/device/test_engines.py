"""Engine building without TensorRT: profiles, builder configuration, refusals, the manifest
and the CLI's behaviour where TensorRT is missing. Builds themselves are in test_engines_trt.py."""
from __future__ import annotations

import importlib.util
import json
import os

import pytest
from click.testing import CliRunner

from common.artifacts import load_onnx_sidecar
from common.errors import ToolkitError
from engines import build, manifest, trt_info
from engines.builder_config import (
    BuildOptions,
    check_dla,
    check_opt_level,
    create_config_kwargs,
    make_config_loader,
    plan_precision,
)
from engines.profiles import (
    build_profiles,
    calibration_profile_index,
    parse_profile_option,
    parse_range,
)

HAS_TRT = importlib.util.find_spec("tensorrt") is not None
TRT_85, TRT_86, TRT_10, TRT_11 = "8.5.2.2", "8.6.2.3", "10.3.0.30", "11.0.0.1"


@pytest.fixture(scope="module")
def classifier_sidecar(tiny_classifier_onnx):
    return load_onnx_sidecar(tiny_classifier_onnx)


@pytest.fixture(scope="module")
def decoder_sidecar(tiny_decoder_onnx):
    return load_onnx_sidecar(tiny_decoder_onnx)


def test_engines_leave_out_the_cache_window_outputs(decoder_sidecar):
    """present_* is bound over the KV cache on ONNX Runtime only; an engine keeps the rest of
    the decoder's outputs in order (and a classifier all of its outputs)."""
    from engines.build_steps import engine_outputs, window_outputs

    names = [t["name"] for t in decoder_sidecar["outputs"]]
    kept = [t["name"] for t in engine_outputs(decoder_sidecar["outputs"])]
    assert len(names) == 3 + 4 * 2
    assert kept == ["logits", "topk_values", "topk_indices",
                    "new_key_0", "new_value_0", "new_key_1", "new_value_1"]
    assert window_outputs(decoder_sidecar["outputs"]) == [
        "present_key_0", "present_value_0", "present_key_1", "present_value_1"]
    logits = [{"name": "logits", "dtype": "float32", "shape": ["batch", 2]}]
    assert engine_outputs(logits) == logits and window_outputs(logits) == []


# ---------------------------------------------------------------- profiles

def test_classifier_default_profile_spans_the_onnx_ranges(classifier_sidecar):
    (profile,) = build_profiles(classifier_sidecar)
    assert profile.shapes["input_ids"] == ((1, 1), (8, 64), (8, 64))
    assert profile.shapes["attention_mask"] == profile.shapes["input_ids"]
    poly = profile.to_polygraphy()
    assert list(poly.keys()) == ["input_ids", "attention_mask"]
    assert tuple(poly["input_ids"].opt) == (8, 64)


def test_classifier_batch_and_seq_options(classifier_sidecar):
    (profile,) = build_profiles(classifier_sidecar, parse_range("1,2,4", "--batch"),
                                parse_range("8,32,48", "--seq"))
    assert profile.shapes["input_ids"] == ((1, 8), (2, 32), (4, 48))
    assert profile.axes == {"batch": (1, 2, 4), "seq": (8, 32, 48)}


def test_out_of_range_axis_is_refused_naming_input_axis_and_ranges(classifier_sidecar):
    with pytest.raises(ToolkitError) as err:
        build_profiles(classifier_sidecar, seq=(1, 64, 512))
    message = str(err.value)
    assert "'input_ids'" in message and "'seq'" in message
    assert "1..512" in message and "1..64" in message


def test_decoder_prefill_and_decode_profiles_tie_axes(decoder_sidecar):
    prefill, decode = build_profiles(decoder_sidecar, batch=(1, 1, 4), seq=(1, 16, 32))
    assert (prefill.name, decode.name) == ("prefill", "decode")
    assert prefill.shapes["input_ids"] == ((1, 1), (1, 16), (4, 32))
    assert prefill.shapes["attention_mask"] == prefill.shapes["input_ids"]  # total = new
    assert prefill.shapes["past_key_0"] == ((0, 1, 32), (0, 1, 32), (0, 4, 32))
    assert decode.shapes["input_ids"] == ((1, 1), (1, 1), (4, 1))
    assert decode.shapes["past_value_1"] == ((0, 1, 32), (15, 1, 32), (31, 4, 32))
    assert decode.shapes["attention_mask"] == ((1, 1), (1, 16), (4, 32))  # total = past + 1
    assert calibration_profile_index([prefill, decode]) == 0
    assert calibration_profile_index([decode, prefill]) == 1


def test_decoder_context_beyond_the_onnx_is_refused(decoder_sidecar):
    with pytest.raises(ToolkitError, match=r"'new' asked 1\.\.65 .* allows 1\.\.64"):
        build_profiles(decoder_sidecar, seq=(1, 32, 65))


def test_explicit_profile_option_round_trip(classifier_sidecar):
    option = "small:input_ids=1x4,2x16,2x16;attention_mask=1x4,2x16,2x16"
    (profile,) = build_profiles(classifier_sidecar, explicit=[parse_profile_option(option)])
    assert profile.name == "small"
    assert profile.shapes["attention_mask"] == ((1, 4), (2, 16), (2, 16))


@pytest.mark.parametrize("option, expected", [
    ("p:input_ids=1x4,2x16,2x16", "missing inputs \\['attention_mask'\\]"),
    ("p:input_ids=1x4,2x16,2x16;attention_mask=1x4,2x16,2x32", "tied axes must agree"),
    ("p:input_ids=1x4,2x16,2x99;attention_mask=1x4,2x16,2x99", "allows 1..64"),
    ("p:input_ids=1x4,2x16;attention_mask=1x4,2x16,2x16", "should read input=MIN,OPT,MAX"),
    ("no-colon", "expected NAME:input="),
])
def test_bad_explicit_profiles_are_refused(classifier_sidecar, option, expected):
    with pytest.raises(ToolkitError, match=expected):
        build_profiles(classifier_sidecar, explicit=[parse_profile_option(option)])


def test_decoder_explicit_profile_needs_total_equal_past_plus_new(decoder_sidecar):
    past = "0x1x32,4x1x32,4x1x32"
    shapes = {"input_ids": "1x1,1x1,1x1", "position_ids": "1x1,1x1,1x1",
              "attention_mask": "1x1,1x5,1x9"}  # max should be 4 + 1 = 5
    shapes.update({f"past_{kv}_{layer}": past for kv in ("key", "value") for layer in (0, 1)})
    option = "step:" + ";".join(f"{k}={v}" for k, v in shapes.items())
    with pytest.raises(ToolkitError, match="must equal past \\+ new"):
        build_profiles(decoder_sidecar, explicit=[parse_profile_option(option)])


def test_profile_options_do_not_mix(classifier_sidecar):
    option = parse_profile_option("p:input_ids=1x4,2x16,2x16;attention_mask=1x4,2x16,2x16")
    with pytest.raises(ToolkitError, match="do not combine"):
        build_profiles(classifier_sidecar, batch=(1, 1, 1), explicit=[option])


@pytest.mark.parametrize("text", ["4,2,8", "1,2", "a,b,c", "-1,0,1"])
def test_parse_range_refuses_bad_ranges(text):
    with pytest.raises(ToolkitError, match="--batch"):
        parse_range(text, "--batch")


# ---------------------------------------------------------------- precision and builder config

@pytest.mark.parametrize("precision, source, version, expected", [
    ("fp32", "qdq", TRT_10, (False, False, False, False, False)),
    ("fp16", "qdq", TRT_85, (True, False, False, False, False)),
    ("int8", "qdq", TRT_85, (False, True, False, True, False)),
    ("int8", "qdq", TRT_86, (False, True, False, True, False)),
    ("int8", "qdq", TRT_10, (False, False, True, True, False)),
    ("int8", "qdq", TRT_11, (False, False, True, True, False)),
    ("int8", "calibrate", TRT_86, (False, True, False, False, True)),
    ("int8", "calibrate", TRT_10, (False, True, False, False, True)),
    ("best", "qdq", TRT_10, (True, True, False, True, False)),
    ("best", "calibrate", TRT_85, (True, True, False, False, True)),
    ("fp32", "qdq", TRT_11, (False, False, True, False, False)),  # 11: always strongly typed
    ("fp16", "qdq", TRT_10, (True, False, False, False, False)),
])
def test_precision_plan_per_tensorrt_version(precision, source, version, expected):
    plan = plan_precision(BuildOptions(precision, source), version)
    assert (plan.fp16_flag, plan.int8_flag, plan.strongly_typed, plan.use_qdq_onnx,
            plan.calibrate) == expected
    assert not plan.use_fp16_onnx  # only TensorRT 11's fp16 parses the FP16 ONNX


def test_fp16_on_tensorrt_11_is_strongly_typed_from_the_fp16_onnx():
    plan = plan_precision(BuildOptions("fp16"), TRT_11)
    assert (plan.fp16_flag, plan.int8_flag, plan.strongly_typed, plan.use_qdq_onnx,
            plan.calibrate, plan.use_fp16_onnx) == (False, False, True, False, False, True)
    assert plan.network_mode == "strongly-typed" and "FP16 ONNX" in plan.describe()
    assert plan_precision(BuildOptions("fp16"), "11.4.1.6").use_fp16_onnx
    assert plan_precision(BuildOptions("fp16"), TRT_10).network_mode == "flags"


@pytest.mark.parametrize("precision, source, reason", [
    ("int8", "calibrate", "removed implicit INT8 calibration"),
    ("best", "qdq", "no FP16/INT8 builder flags to mix"),
    ("best", "calibrate", "no FP16/INT8 builder flags to mix"),
])
def test_tensorrt_11_refusals(precision, source, reason):
    with pytest.raises(ToolkitError, match=reason):
        plan_precision(BuildOptions(precision, source), TRT_11)


def test_create_config_for_fp16(classifier_sidecar, tmp_path):
    profiles = build_profiles(classifier_sidecar, batch=(1, 4, 8))
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"cache")
    options = BuildOptions("fp16", opt_level=3, timing_cache=str(cache))
    config = make_config_loader(options, plan_precision(options, TRT_86), profiles)
    assert type(config).__name__ == "CreateConfig"
    assert config.fp16 and not config.int8 and config.calibrator is None
    assert config.builder_optimization_level == 3
    assert config.timing_cache_path == str(cache)
    assert tuple(config.profiles[0]["input_ids"].opt) == (4, 64)


def test_missing_timing_cache_is_not_loaded_but_is_saved_later(classifier_sidecar, tmp_path):
    options = BuildOptions("fp32", timing_cache=str(tmp_path / "new.cache"))
    kwargs = create_config_kwargs(options, plan_precision(options, TRT_10),
                                  build_profiles(classifier_sidecar))
    assert "load_timing_cache" not in kwargs


def test_create_config_for_int8_qdq_and_best(classifier_sidecar):
    profiles = build_profiles(classifier_sidecar)
    int8 = BuildOptions("int8", "qdq")
    config = make_config_loader(int8, plan_precision(int8, TRT_10), profiles)
    assert not config.int8 and not config.fp16  # strongly typed: precision comes from Q/DQ
    config = make_config_loader(int8, plan_precision(int8, TRT_86), profiles)
    assert config.int8 and not config.fp16
    best = BuildOptions("best", "qdq")
    config = make_config_loader(best, plan_precision(best, TRT_10), profiles)
    assert config.int8 and config.fp16


def test_int8_calibration_attaches_the_calibrator_to_the_prefill_profile(
        classifier_sidecar, decoder_sidecar):
    options = BuildOptions("int8", "calibrate")
    plan = plan_precision(options, TRT_10)
    calibrator = object()  # stands for Polygraphy's Calibrator, which needs TensorRT to exist
    # Classifier: one profile, the last one, which Polygraphy calibrates at by itself.
    config = make_config_loader(options, plan, build_profiles(classifier_sidecar), calibrator, 0)
    assert type(config).__name__ == "CreateConfig" and config.calibrator is calibrator
    # Decoder: calibrate at prefill (profile 0), not at Polygraphy's default (the last, decode).
    profiles = build_profiles(decoder_sidecar)
    config = make_config_loader(options, plan, profiles, calibrator,
                                calibration_profile_index(profiles))
    assert type(config).__name__ == "PostprocessConfig"
    assert config._config.int8 and config._config.calibrator is None


def test_dla_static_fp16_build_is_accepted_and_sets_fallback(classifier_sidecar):
    profiles = build_profiles(classifier_sidecar, batch=(1, 1, 1), seq=(64, 64, 64))
    options = BuildOptions("fp16", dla_core=1)
    check_dla(options, profiles, TRT_86, num_dla_cores=2, module="Jetson AGX Orin")
    config = make_config_loader(options, plan_precision(options, TRT_86), profiles)
    assert type(config).__name__ == "PostprocessConfig"  # sets DLA_core after CreateConfig
    assert config._config.use_dla and config._config.allow_gpu_fallback


@pytest.mark.parametrize("options, batch, cores, module, version, reason", [
    (BuildOptions("fp16", dla_core=0), (1, 1, 1), 0, None, TRT_86, "has no DLA"),
    (BuildOptions("fp16", dla_core=0), (1, 1, 1), None,
     "NVIDIA Jetson Orin Nano Developer Kit", TRT_10, "has no DLA"),
    (BuildOptions("fp16", dla_core=2), (1, 1, 1), 2, None, TRT_86, "has 2 DLA cores"),
    (BuildOptions("fp16", dla_core=0), (1, 4, 8), 2, None, TRT_86, "needs static shapes"),
    (BuildOptions("fp32", dla_core=0), (1, 1, 1), 2, None, TRT_86, "FP16 or INT8 only"),
    (BuildOptions("fp16", dla_core=0), (1, 1, 1), 2, None, TRT_11, "builds no DLA"),
])
def test_dla_refusals(classifier_sidecar, options, batch, cores, module, version, reason):
    profiles = build_profiles(classifier_sidecar, batch=batch, seq=(64, 64, 64))
    with pytest.raises(ToolkitError, match=reason):
        check_dla(options, profiles, version, cores, module)


def test_opt_level_needs_tensorrt_8_6():
    with pytest.raises(ToolkitError, match="arrived in 8.6"):
        check_opt_level(3, TRT_85)
    check_opt_level(3, TRT_86)
    check_opt_level(None, TRT_85)
    with pytest.raises(ToolkitError, match="0..5"):
        plan_precision(BuildOptions("fp16", opt_level=7), TRT_86)


# ---------------------------------------------------------------- device detection

def test_version_rules():
    assert trt_info.parse_version("8.6.2.3-1+cuda12.2") == (8, 6, 2, 3)
    assert trt_info.has_builder_optimization_level("8.6.1") and not \
        trt_info.has_builder_optimization_level("8.5.2")
    assert trt_info.has_implicit_int8("10.13.0") and not trt_info.has_implicit_int8("11.0")
    with pytest.raises(ToolkitError):
        trt_info.parse_version("dev")


def test_jetson_detection_from_files(tmp_path):
    (tmp_path / "proc" / "device-tree").mkdir(parents=True)
    (tmp_path / "etc").mkdir()
    (tmp_path / "proc" / "device-tree" / "model").write_bytes(
        b"NVIDIA Jetson AGX Orin Developer Kit\x00")
    (tmp_path / "etc" / "nv_tegra_release").write_text(
        "# R36 (release), REVISION: 3.0, GCID: 36191598, BOARD: generic, EABI: aarch64\n")
    info = trt_info.jetson_info(str(tmp_path))
    assert info == {"module": "NVIDIA Jetson AGX Orin Developer Kit", "l4t": "36.3.0",
                    "jetpack": "6.0", "soc": "unknown"}  # no SoC files in this tree
    assert trt_info.jetson_info(str(tmp_path / "elsewhere")) is None
    assert trt_info.parse_l4t_core_package("nvidia-l4t-core\t35.4.1-20230801124926") == "35.4.1"


# ---------------------------------------------------------------- manifest

def _plan_with_manifest(tmp_path, **overrides):
    plan = tmp_path / "tiny.fp16.plan"
    plan.write_bytes(os.urandom(4096))
    data = {"tensorrt_version": "8.6.2.3", "precision": "fp16", "int8": None,
            "gpu": {"name": "Orin", "compute_capability": "8.7", "source": "pycuda"},
            "profiles": [{"name": "default", "shapes": {}}], "inputs": [], "outputs": [],
            "onnx": {"path": "tiny.onnx", "sha256": "0" * 64}, "build_options": {},
            "created_at": "2025-01-01T00:00:00+00:00", **overrides}
    manifest.write_manifest(plan, data)
    return plan


def test_manifest_round_trip_and_plan_check(tmp_path):
    plan = _plan_with_manifest(tmp_path)
    loaded = manifest.check_plan_file(plan)
    assert loaded["plan"] == plan.name and loaded["plan_bytes"] == 4096
    assert loaded == manifest.load_manifest(plan)
    assert json.loads(manifest.manifest_path(plan).read_text())["format"] == \
        manifest.MANIFEST_FORMAT


def test_compatible_device_passes(tmp_path):
    loaded = manifest.check_plan_file(_plan_with_manifest(tmp_path))
    manifest.check_compatible(loaded, "8.6.2", "NVIDIA Orin (nvgpu)", "8.7")


@pytest.mark.parametrize("version, gpu, cc, problem", [
    ("10.3.0.30", "Orin", "8.7", "TensorRT differ"),
    ("8.6.2.3", "NVIDIA H200", "9.0", "compute capability, GPU differ"),
    ("8.6.2.3", "Xavier", "8.7", "GPU differ"),
])
def test_incompatible_device_is_refused(tmp_path, version, gpu, cc, problem):
    loaded = manifest.check_plan_file(_plan_with_manifest(tmp_path))
    with pytest.raises(ToolkitError) as err:
        manifest.check_compatible(loaded, version, gpu, cc)
    message = str(err.value)
    assert "built with TensorRT 8.6.2.3 for Orin (8.7)" in message
    assert f"this device has TensorRT {version}" in message and problem in message
    assert "make engine" in message


def test_missing_plan_missing_manifest_and_corrupt_plan(tmp_path):
    with pytest.raises(ToolkitError, match="engine plan not found"):
        manifest.check_plan_file(tmp_path / "absent.plan")
    orphan = tmp_path / "orphan.plan"
    orphan.write_bytes(os.urandom(4096))
    with pytest.raises(ToolkitError, match="has no manifest orphan.plan.json"):
        manifest.check_plan_file(orphan)
    plan = _plan_with_manifest(tmp_path)
    data = bytearray(plan.read_bytes())
    data[100] ^= 0xFF
    plan.write_bytes(bytes(data))
    with pytest.raises(ToolkitError, match="does not match its manifest"):
        manifest.check_plan_file(plan)
    plan.write_bytes(b"\0" * 8)
    with pytest.raises(ToolkitError, match="empty or truncated"):
        manifest.check_plan_file(plan)


def test_manifest_of_another_format_is_refused(tmp_path):
    plan = _plan_with_manifest(tmp_path)
    path = manifest.manifest_path(plan)
    data = json.loads(path.read_text())
    del data["tensorrt_version"]
    path.write_text(json.dumps(data))
    with pytest.raises(ToolkitError, match="missing keys \\['tensorrt_version'\\]"):
        manifest.load_manifest(plan)


# ---------------------------------------------------------------- CLI

def _run_cli(*args):
    result = CliRunner().invoke(build.main, list(args))
    return result.exit_code, result.output.strip()


def _gate_report(tmp_path, drop):
    report = tmp_path / "tiny.int8.json"
    report.write_text(json.dumps({"drop": drop, "drop_unit": "accuracy points"}))
    return report


def test_accuracy_gate_refuses_before_building(tiny_classifier_onnx, tmp_path):
    report = _gate_report(tmp_path, 1.25)
    code, out = _run_cli("--onnx", str(tiny_classifier_onnx), "--precision", "int8",
                         "--output", str(tmp_path / "x.plan"), "--accuracy-report", str(report),
                         "--max-drop", "0.5")
    assert code == 2
    assert "1.250 accuracy points" in out and "--max-drop 0.5" in out
    assert not (tmp_path / "x.plan").exists()


def test_bad_profile_is_refused_before_looking_for_tensorrt(tiny_classifier_onnx, tmp_path):
    code, out = _run_cli("--onnx", str(tiny_classifier_onnx), "--seq", "1,64,4096",
                         "--output", str(tmp_path / "x.plan"))
    assert code == 2 and "axis 'seq' asked 1..4096" in out


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed: the build would run")
def test_cli_without_tensorrt_says_what_is_ready(tiny_classifier_onnx, tmp_path):
    calib = tmp_path / "tiny.calib.npz"
    calib.write_bytes(b"placeholder: only its existence is reported")
    report = _gate_report(tmp_path, 0.1)
    code, out = _run_cli("--onnx", str(tiny_classifier_onnx), "--precision", "int8",
                         "--output", str(tmp_path / "x.plan"), "--calib", str(calib),
                         "--calib-cache", str(tmp_path / "tiny.calib.cache"),
                         "--accuracy-report", str(report))
    assert code == 2
    lines = out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: TensorRT is not installed")
    ready, missing = lines[0].split("; ready: ")[1].split("; missing: ")
    assert str(tiny_classifier_onnx) in ready and str(calib) in ready
    assert "tiny_classifier.qdq.onnx" in missing and "tiny.calib.cache" in missing
    assert not (tmp_path / "x.plan").exists()


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed: the build would run")
def test_build_engine_without_tensorrt_raises(tiny_classifier_onnx, tmp_path):
    with pytest.raises(ToolkitError, match="TensorRT is not installed"):
        build.build_engine(tiny_classifier_onnx, tmp_path / "x.plan")


def test_default_artifact_paths():
    paths = build.default_artifacts("models/imdb.onnx")
    assert str(paths["qdq_onnx"]) == os.path.join("models", "imdb.qdq.onnx")
    assert str(paths["calib"]) == os.path.join("calibration", "imdb.calib.npz")
    assert str(paths["calib_cache"]) == os.path.join("calibration", "imdb.calib.cache")


@pytest.mark.parametrize("version, accepted", [
    ("8.6.3.1", True),    # a later release of the same major: the embedded lean runtime loads it
    ("8.6.1.6", False),   # an earlier release
    ("9.2.0", True),      # TensorRT's portability rule: 8 -> 9, 8 -> 10 and 10 -> 11 only
    ("10.3.0.30", True),
    ("11.1.0", False),    # "a TensorRT 8 engine cannot run with TensorRT 11"
    ("7.2.3", False),
])
def test_version_compatible_plan_loads_on_a_later_release(tmp_path, version, accepted):
    plan = _plan_with_manifest(tmp_path, version_compatible=True)
    loaded = manifest.check_plan_file(plan)
    if accepted:
        manifest.check_compatible(loaded, version, "Orin", "8.7")
    else:
        with pytest.raises(ToolkitError, match="TensorRT differ"):
            manifest.check_compatible(loaded, version, "Orin", "8.7")
    (tmp_path / "plain").mkdir()
    plain = manifest.check_plan_file(_plan_with_manifest(tmp_path / "plain"))
    with pytest.raises(ToolkitError, match="TensorRT differ"):  # without the flag: same release
        manifest.check_compatible(plain, "8.6.3.1", "Orin", "8.7")


@pytest.mark.parametrize("built, here, loads", [
    ("10.3.0.30", "10.3.0.30", True), ("10.3.0", "10.7.0", True), ("10.7.0", "10.3.0", False),
    ("10.3.0", "11.1.0", True), ("10.3.0", "12.0.0", False), ("8.6.1", "10.3.0", True),
    ("8.6.1", "9.0.1", True), ("8.6.1", "11.0.0", False), ("8.5.2", "8.6.1", False),
    ("9.2.0", "10.3.0", False), ("11.0.0", "10.3.0", False),
])
def test_the_version_compatible_rule_is_tensorrts(built, here, loads):
    assert manifest.version_compatible_loads(built, here) is loads
