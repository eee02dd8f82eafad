"""Issue 21, engine side, without TensorRT: which graph a build parses on each TensorRT version
(FP16 ONNX on 11, Q/DQ ONNX for int8, FP32 otherwise), the refusals of a missing or wrong FP16
ONNX, the parse check running first in build_engine, keep_fp32's layer selection and config, the
manifest's new records and the Polygraphy floor written everywhere."""
from __future__ import annotations

import re
import shutil
import sys
import types
from pathlib import Path

import pytest

import common
from common.artifacts import load_onnx_sidecar, sidecar_path, write_onnx_sidecar
from common.errors import ToolkitError
from engines import build, manifest, trt_info
from engines.build_inputs import (
    keep_fp32_record,
    keep_fp32_warning,
    network_record,
    prepare_build,
    tensorrt_target_record,
)
from engines.builder_config import (
    BuildOptions,
    create_config_kwargs,
    plan_precision,
    select_fp32_layers,
)
from engines.profiles import build_profiles

ROOT = Path(__file__).resolve().parents[2]
TRT_86, TRT_10, TRT_11 = "8.6.2.3", "10.3.0.30", "11.4.1.6"


def _one_line(info) -> str:
    message = str(info.value)
    assert "\n" not in message
    return message


def _variant(onnx_path: Path, suffix: str, **changes) -> Path:
    """A copy of the ONNX beside it as <name>.<suffix>.onnx, with a sidecar changed as asked
    (what calibration.fp16 / calibration.qdq write: same inputs, their own precision)."""
    name = onnx_path.name[: -len(".onnx")]
    target = onnx_path.with_name(f"{name}.{suffix}.onnx")
    shutil.copy(onnx_path, target)
    data = dict(load_onnx_sidecar(onnx_path), **changes)
    write_onnx_sidecar(target, data)
    return target


@pytest.fixture
def model(tiny_classifier_onnx, tmp_path) -> Path:
    """The tiny classifier in a folder of its own (variants are written beside it)."""
    for path in tiny_classifier_onnx.parent.glob("tiny_classifier.*"):
        shutil.copy(path, tmp_path / path.name)
    return tmp_path / "tiny_classifier.onnx"


@pytest.fixture
def watched_parse_check(monkeypatch):
    """Records every call of common.trt_onnx.check_onnx_for_tensorrt and answers a note."""
    calls = []

    def check(onnx_path, sidecar, trt_version):
        calls.append((Path(onnx_path), sidecar, trt_version))
        return f"parse check: watched {Path(onnx_path).name} for TensorRT {trt_version}"

    fake = types.SimpleNamespace(check_onnx_for_tensorrt=check)
    monkeypatch.setitem(sys.modules, "common.trt_onnx", fake)
    monkeypatch.setattr(common, "trt_onnx", fake, raising=False)
    return calls


# ---------------------------------------------------------------- which graph is parsed

def test_fp16_on_tensorrt_11_parses_the_fp16_onnx_beside_the_fp32_one(model,
                                                                      watched_parse_check):
    fp16 = _variant(model, "fp16", precision="fp16",
                    keep_fp32={"why": "range", "tensors": ["a"]})
    inputs = prepare_build(model, BuildOptions("fp16"), TRT_11)
    assert inputs.source == fp16 and inputs.plan.use_fp16_onnx
    assert watched_parse_check == [(fp16, inputs.source_sidecar, TRT_11)]
    assert not inputs.pins_fp32  # strongly typed: the FP16 graph's types decide
    record = network_record(inputs, TRT_11)
    assert record["file"] == str(fp16) and record["mode"] == "strongly-typed"
    assert "FP16 ONNX" in record["why"] and len(record["sha256"]) == 64


@pytest.mark.parametrize("version", [TRT_86, TRT_10])
def test_fp16_before_tensorrt_11_parses_the_fp32_onnx_with_the_flag(model, watched_parse_check,
                                                                    version):
    _variant(model, "fp16", precision="fp16")  # present, but not what flags builds use
    inputs = prepare_build(model, BuildOptions("fp16"), version)
    assert inputs.source == model and inputs.plan.fp16_flag
    assert network_record(inputs, version)["mode"] == "flags"
    assert watched_parse_check[0][0] == model


@pytest.mark.parametrize("version, mode", [(TRT_86, "flags"), (TRT_10, "strongly-typed"),
                                           (TRT_11, "strongly-typed")])
def test_int8_parses_the_qdq_onnx_on_every_version(model, watched_parse_check, version, mode):
    qdq = _variant(model, "qdq", precision="int8-qdq")
    inputs = prepare_build(model, BuildOptions("int8"), version, qdq_onnx=qdq)
    assert inputs.source == qdq and watched_parse_check[0][0] == qdq
    assert network_record(inputs, version)["mode"] == mode


def test_missing_fp16_onnx_is_refused_in_one_line_with_the_command(model, watched_parse_check):
    with pytest.raises(ToolkitError) as info:
        prepare_build(model, BuildOptions("fp16"), TRT_11)
    message = _one_line(info)
    expected = model.with_name("tiny_classifier.fp16.onnx")
    assert message.startswith(f"FP16 ONNX not found: {expected}")
    assert f"python -m calibration.fp16 --onnx {model} --output {expected}" in message
    assert "make calibrate" in message
    assert watched_parse_check == []  # refused before the parse check


@pytest.mark.parametrize("changes, expected", [
    ({"precision": "int8-qdq"}, "sidecar precision 'int8-qdq', expected 'fp16'"),
    ({"precision": "fp16", "inputs": [{"name": "ids", "dtype": "int32", "shape": [1, 1]}]},
     "has other inputs than"),
])
def test_fp16_onnx_of_another_kind_is_refused(model, watched_parse_check, changes, expected):
    fp16 = _variant(model, "fp16", **changes)
    with pytest.raises(ToolkitError) as info:
        prepare_build(model, BuildOptions("fp16"), TRT_11, fp16_onnx=fp16)
    message = _one_line(info)
    assert expected in message and str(fp16) in message and "calibration.fp16" in message


def test_fp16_onnx_without_a_sidecar_names_the_command(model, watched_parse_check):
    fp16 = _variant(model, "fp16", precision="fp16")
    sidecar_path(fp16).unlink()
    with pytest.raises(ToolkitError) as info:
        prepare_build(model, BuildOptions("fp16"), TRT_11)
    assert "python -m calibration.fp16" in _one_line(info)


# ---------------------------------------------------------------- the parse check runs first

def test_build_engine_runs_the_parse_check_before_anything_is_loaded_or_built(
        model, tmp_path, monkeypatch, watched_parse_check):
    """With a TensorRT version known, the first thing build_engine does after choosing the
    graph is the parse check: its refusal comes out, and nothing after it ran."""
    def refuse(onnx_path, sidecar, trt_version):
        watched_parse_check.append(Path(onnx_path))
        raise ToolkitError(f"{onnx_path}: will not parse on TensorRT {trt_version}")

    monkeypatch.setattr(sys.modules["common.trt_onnx"], "check_onnx_for_tensorrt", refuse)
    monkeypatch.setattr(trt_info, "tensorrt_version", lambda: "8.5.2.2")
    later = []
    for name in ("polygraphy_version", "num_dla_cores", "build_profiles", "build_serialized",
                 "make_config_loader", "staged_copy"):
        monkeypatch.setattr(build, name, lambda *a, _n=name, **k: later.append(_n))
    with pytest.raises(ToolkitError, match="will not parse on TensorRT 8.5.2.2"):
        build.build_engine(model, tmp_path / "x.plan", BuildOptions("fp16", dla_core=0))
    assert watched_parse_check == [model] and later == []
    assert not (tmp_path / "x.plan").exists()


def test_prepare_build_with_the_real_parse_check(model):
    pytest.importorskip("common.trt_onnx", reason="common/trt_onnx.py is not there yet")
    inputs = prepare_build(model, BuildOptions("fp32"), TRT_10)
    assert inputs.parse_note.startswith("parse check:") and "\n" not in inputs.parse_note


# ---------------------------------------------------------------- keep_fp32

LAYERS = [  # (layer name, output tensor names), as TensorRT's parser names them
    ("ReduceMean_1", ["ln.mean"]),
    ("Sub_2", ["ln.centered"]),
    ("unnamed_layer_3", ["ln.centered_squared_cast"]),  # an importer's helper layer
    ("Split_4", ["a", "ln.var"]),
    ("MatMul_5", ["logits"]),
]


def test_select_fp32_layers_picks_the_layers_and_outputs_named():
    chosen = select_fp32_layers(LAYERS, ["ln.var", "ln.mean", "ln.centered", "gone", "ln.mean"])
    assert chosen["layers"] == {0: [0], 1: [0], 3: [1]}  # only the named output of Split_4
    assert chosen["matched"] == ["ln.var", "ln.mean", "ln.centered"]
    assert chosen["unmatched"] == ["gone"]
    assert select_fp32_layers(LAYERS, []) == {"layers": {}, "matched": [], "unmatched": []}


@pytest.mark.parametrize("precision, version, obey", [
    ("fp16", TRT_86, True), ("best", TRT_10, True), ("int8", TRT_86, True),
    ("fp32", TRT_10, False), ("int8", TRT_10, False), ("fp32", TRT_11, False),
])
def test_precision_constraints_obey_only_in_flag_builds_that_lower_precision(
        tiny_classifier_onnx, precision, version, obey):
    options = BuildOptions(precision)
    plan = plan_precision(options, version)
    kwargs = create_config_kwargs(options, plan, build_profiles(
        load_onnx_sidecar(tiny_classifier_onnx)), obey_precision=True)
    assert (kwargs.get("precision_constraints") == "obey") is obey
    assert plan.lowers_precision_by_flags is obey
    without = create_config_kwargs(options, plan, build_profiles(
        load_onnx_sidecar(tiny_classifier_onnx)))
    assert "precision_constraints" not in without


def test_keep_fp32_comes_from_the_parsed_graph_else_the_fp32_sidecar(model, watched_parse_check):
    data = dict(load_onnx_sidecar(model), keep_fp32={"why": "LayerNorm", "tensors": ["x", "y"]})
    write_onnx_sidecar(model, data)
    fp16 = prepare_build(model, BuildOptions("fp16"), TRT_86)
    assert fp16.keep_fp32 == ["x", "y"] and fp16.pins_fp32
    qdq = _variant(model, "qdq", precision="int8-qdq", keep_fp32={"tensors": ["q"]})
    int8 = prepare_build(model, BuildOptions("int8"), TRT_86, qdq_onnx=qdq)
    assert int8.keep_fp32 == ["q"] and int8.pins_fp32
    typed = prepare_build(model, BuildOptions("int8"), TRT_10, qdq_onnx=qdq)
    assert not typed.pins_fp32
    record = keep_fp32_record(typed, {})
    assert record == {"listed": 1, "applied": False,
                      "why": "strongly typed: the graph's own types decide"}


def test_keep_fp32_record_counts_matched_against_listed_and_warns(model, watched_parse_check):
    data = dict(load_onnx_sidecar(model), keep_fp32={"tensors": ["ln.mean", "ln.var", "gone"]})
    write_onnx_sidecar(model, data)
    inputs = prepare_build(model, BuildOptions("fp16"), TRT_86)
    chosen = select_fp32_layers(LAYERS, inputs.keep_fp32)
    pinned = {"listed": 3, "matched": len(chosen["matched"]), "layers": len(chosen["layers"]),
              "unmatched": chosen["unmatched"]}
    record = keep_fp32_record(inputs, pinned)
    assert record["applied"] and (record["listed"], record["matched"]) == (3, 2)
    assert keep_fp32_warning(record) == ("note: keep_fp32: 1 of 3 listed tensors match no "
                                         "TensorRT layer output and stay in the build's "
                                         "precision: gone")
    assert keep_fp32_warning(dict(record, unmatched=[])) is None


# ---------------------------------------------------------------- manifest records

def test_tensorrt_target_from_the_sidecar_or_the_old_default():
    assert tensorrt_target_record({})["min_tensorrt"] == "8.6"
    assert tensorrt_target_record({})["layernorm"] == "LayerNormalization"
    target = {"min_tensorrt": "8.5", "layernorm": "decomposed"}
    assert tensorrt_target_record({"tensorrt_target": target}) == target


def _manifest_data(**extra):
    return {"tensorrt_version": TRT_11, "precision": "fp16", "int8": None,
            "gpu": {"name": "Orin", "compute_capability": "8.7"},
            "profiles": [{"name": "default", "shapes": {}}], "inputs": [], "outputs": [],
            "onnx": {"path": "m.onnx", "sha256": "0" * 64}, "build_options": {},
            "created_at": "2026-01-01T00:00:00+00:00", **extra}


def test_manifest_keeps_network_target_parse_check_and_keep_fp32(tmp_path):
    plan = tmp_path / "m.fp16.plan"
    plan.write_bytes(b"\1" * 4096)
    network = {"file": "m.fp16.onnx", "sha256": "1" * 64, "mode": "strongly-typed",
               "why": "TensorRT 11"}
    manifest.write_manifest(plan, _manifest_data(
        network=network, tensorrt_target={"min_tensorrt": "8.6"},
        parse_check="parse check: ok", keep_fp32={"listed": 0, "applied": False}))
    loaded = manifest.load_manifest(plan)
    assert loaded["network"] == network and loaded["parse_check"] == "parse check: ok"
    manifest.write_manifest(plan, _manifest_data())  # manifests from before stay valid
    with pytest.raises(ToolkitError, match="network mode 'typed'"):
        manifest.write_manifest(plan, _manifest_data(network=dict(network, mode="typed")))
    with pytest.raises(ToolkitError, match="keep_fp32 must hold the listed count"):
        manifest.write_manifest(plan, _manifest_data(keep_fp32={"applied": True}))


# ---------------------------------------------------------------- CLI and floors

def test_cli_has_fp16_onnx_and_lists_it_where_tensorrt_is_missing(tiny_classifier_onnx,
                                                                  tmp_path):
    from click.testing import CliRunner

    if trt_info.tensorrt_version() is not None:
        pytest.skip("TensorRT is installed: the build would run")
    fp16 = tmp_path / "elsewhere.fp16.onnx"
    result = CliRunner().invoke(build.main, ["--onnx", str(tiny_classifier_onnx),
                                             "--precision", "fp16", "--fp16-onnx", str(fp16),
                                             "--output", str(tmp_path / "x.plan")])
    assert result.exit_code == 2
    line = result.output.strip()
    assert "TensorRT is not installed" in line and "\n" not in line
    assert str(fp16) in line.split("; missing: ")[1]


def test_make_engine_passes_the_fp16_onnx():
    makefile = (ROOT / "Makefile").read_text()
    target = makefile[makefile.index("\nengine:"):].split("\n\n")[0]
    assert "--fp16-onnx models/$(MODEL).fp16.onnx" in target


def test_polygraphy_floor_is_the_same_everywhere():
    floor = ".".join(map(str, trt_info.POLYGRAPHY_FLOOR))
    assert floor == "0.50.3"
    for rel in ("requirements/device.txt", "requirements/host.txt", "pyproject.toml"):
        found = re.findall(r"polygraphy>=([\d.]+)", (ROOT / rel).read_text())
        assert found == [floor], rel


def test_builder_config_docstring_table_says_fp16_on_11_is_strongly_typed():
    from engines import builder_config

    row = next(line for line in builder_config.__doc__.splitlines()
               if line.startswith("| fp16 "))
    assert "strongly typed FP16" in row and "refused" not in row
    best = next(line for line in builder_config.__doc__.splitlines()
                if line.startswith("| best"))
    assert best.rstrip(" |").endswith("refused")


@pytest.mark.parametrize("name", ["tiny_classifier", "tiny_decoder"])
@pytest.mark.parametrize("suffix, precision", [("fp16", "fp16"), ("qdq", "int8-qdq")])
def test_committed_variants_are_what_the_build_accepts(name, suffix, precision, tmp_path):
    """tests/fixtures/<name>.{fp16,qdq}.onnx (make_fixtures.py) pass the build's checks and
    the parse check of every TensorRT version the TensorRT tests choose them on."""
    pytest.importorskip("common.trt_onnx", reason="common/trt_onnx.py is not there yet")
    from tiny_data import FIXTURES

    for path in FIXTURES.glob(f"{name}.*"):
        shutil.copy(path, tmp_path / path.name)
    onnx_path = tmp_path / f"{name}.onnx"
    variant = tmp_path / f"{name}.{suffix}.onnx"
    assert load_onnx_sidecar(variant)["precision"] == precision
    versions = [TRT_11] if suffix == "fp16" else [TRT_86, TRT_10, TRT_11]
    for version in versions:
        options = BuildOptions("fp16" if suffix == "fp16" else "int8")
        inputs = prepare_build(onnx_path, options, version, qdq_onnx=variant)
        assert inputs.source == variant and inputs.parse_note.startswith("parse check:")
