"""Build a TensorRT engine from an exported ONNX graph with Polygraphy, and write its manifest.

``python -m engines.build --onnx models/imdb.onnx --precision int8 --output engines/imdb.int8.plan``

Polygraphy does the TensorRT work (``NetworkFromOnnxPath`` -> ``CreateConfig`` ->
``EngineBytesFromNetwork``); this module decides what to ask for (engines/builder_config.py,
engines/profiles.py), refuses what cannot work before the build starts, writes the plan
atomically and records in ``<plan>.json`` everything the runtime needs to trust it
(engines/manifest.py). Without TensorRT the CLI says in one line what is missing and which
inputs are ready (exit code 2), so ``make engine`` on the host explains itself. A failing build
(Polygraphy raising, the builder returning no engine, a Polygraphy older than 0.50.3 on
TensorRT 11, a TensorRT binding raising) is one line too (``call_build_step``).

Order inside ``build_engine``: the TensorRT version, then ``engines.build_inputs.prepare_build``
(precision plan, the graph to parse -- FP32, Q/DQ or, on TensorRT 11, FP16 ONNX -- and the
TensorRT parse check of that graph), and only then Polygraphy, DLA and the build itself.
"""
from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence, Tuple

if __package__ in (None, ""):  # run as a script: python engines/build.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import click

from common.artifacts import load_onnx_sidecar, tokenizer_path
from common.errors import ToolkitError, exit_on_toolkit_error
from common.fileio import atomic_write_bytes, read_json, sha256_file
from engines import trt_info
from engines.build_inputs import (
    BuildInputs,
    default_fp16_onnx,
    keep_fp32_record,
    keep_fp32_warning,
    model_name,
    network_record,
    prepare_build,
    tensorrt_target_record,
)
from engines.build_steps import (
    build_serialized,
    check_polygraphy,
    engine_io,
    engine_outputs,
    make_calibrator,
    num_dla_cores,
    polygraphy_version,
    staged_copy,
    window_outputs,
)
from engines.builder_config import (
    INT8_SOURCES,
    PRECISIONS,
    BuildOptions,
    PrecisionPlan,
    check_dla,
    check_opt_level,
    check_version_compatible,
    make_config_loader,
)
from engines.manifest import load_manifest, write_manifest
from engines.profiles import (
    ProfileSpec,
    build_profiles,
    calibration_profile_index,
    parse_profile_option,
    parse_range,
)


def default_artifacts(onnx_path: str | os.PathLike) -> Dict[str, Path]:
    """Where the other inputs of ``models/<name>.onnx`` live (CONTRIBUTING.md table)."""
    onnx_path = Path(onnx_path)
    name = model_name(onnx_path)
    return {"qdq_onnx": onnx_path.with_name(f"{name}.qdq.onnx"),
            "fp16_onnx": default_fp16_onnx(onnx_path),
            "calib": Path("calibration") / f"{name}.calib.npz",
            "calib_cache": Path("calibration") / f"{name}.calib.cache"}


def readiness(paths: Dict[str, Path | None]) -> Tuple[List[str], List[str]]:
    """(ready, missing) among the build inputs, as printable paths."""
    ready = [str(p) for p in paths.values() if p is not None and Path(p).is_file()]
    missing = [str(p) for p in paths.values() if p is not None and not Path(p).is_file()]
    return ready, missing


def tensorrt_missing_message(paths: Dict[str, Path | None]) -> str:
    ready, missing = readiness(paths)
    return (f"TensorRT is not installed here (import tensorrt failed): build engines on the "
            f"device; ready: {', '.join(ready) or 'nothing'}; "
            f"missing: {', '.join(missing) or 'nothing'}")


def check_accuracy_report(report: Path | None, max_drop: float) -> Dict[str, Any] | None:
    """The INT8 accuracy gate of calibration.gate, applied before any build time is spent.

    Returns what the manifest records (None when no report was named). A named report that does
    not exist yet is recorded as ``missing`` (the build goes on, and the CLI says so); a report
    whose drop exceeds ``max_drop`` is refused with both figures.
    """
    if report is None:
        return None
    if not report.is_file():
        return {"report": str(report), "status": "missing", "max_drop": max_drop}
    data = read_json(report, what="accuracy report")
    drop = data.get("drop") if isinstance(data, dict) else None
    if not isinstance(drop, (int, float)):
        raise ToolkitError(f"accuracy report {report}: no numeric 'drop' entry; rewrite it with "
                           "python -m calibration.gate")
    unit = data.get("drop_unit", "(the gate's unit)")
    if drop > max_drop:
        raise ToolkitError(f"accuracy report {report}: INT8 drops {drop:.3f} {unit}, more than "
                           f"--max-drop {max_drop:g}; improve the Q/DQ model or build fp16")
    return {"report": str(report), "status": "passed", "drop": drop, "max_drop": max_drop,
            "drop_unit": unit}


def require_tensorrt() -> str:
    version = trt_info.tensorrt_version()
    if version is None:
        raise ToolkitError("TensorRT is not installed here (import tensorrt failed): build "
                           "engines on the device")
    return version


def build_engine(
    onnx_path: str | os.PathLike,
    plan_path: str | os.PathLike,
    options: BuildOptions | None = None,
    profiles: List[ProfileSpec] | None = None,
    *,
    qdq_onnx: str | os.PathLike | None = None,
    fp16_onnx: str | os.PathLike | None = None,
    calib_npz: str | os.PathLike | None = None,
    calib_cache: str | os.PathLike | None = None,
    accuracy_gate: Dict[str, Any] | None = None,
    notes: Callable[[str], None] | None = None,
) -> Dict[str, Any]:
    """Build ``plan_path`` from ``onnx_path`` and write ``<plan>.json``; returns the manifest.

    profiles: default from the sidecar (engines.profiles.build_profiles). qdq_onnx: the Q/DQ
    graph for ``int8_source="qdq"``; fp16_onnx: the FP16 graph TensorRT 11 builds fp16 from
    (default ``<name>.fp16.onnx`` beside ``onnx_path``); calib_npz/calib_cache: the calibration
    set and the cache (reused when present, written atomically after the build) for
    ``"calibrate"``. notes: gets the parse check's line and other one-line notes (the CLI
    prints them).
    """
    options = options or BuildOptions()
    notes = notes or (lambda line: None)
    version = require_tensorrt()
    onnx_path, plan_path = Path(onnx_path), Path(plan_path)
    # First, before anything is loaded or built: which graph is parsed, and does it parse here.
    inputs = prepare_build(onnx_path, options, version, qdq_onnx=qdq_onnx, fp16_onnx=fp16_onnx)
    notes(inputs.parse_note)
    sidecar, plan = inputs.sidecar, inputs.plan
    profiles = profiles or build_profiles(sidecar)
    check_opt_level(options.opt_level, version)
    check_version_compatible(options, version)
    check_polygraphy(polygraphy_version(), version)
    if options.dla_core is not None:
        jetson = trt_info.jetson_info() or {}
        check_dla(options, profiles, version, num_dla_cores(), jetson.get("module"),
                  jetson.get("jetpack"))
    calibration = _calibration_inputs(sidecar, plan, profiles, calib_npz, calib_cache)
    pinned: Dict[str, Any] = {}

    with contextlib.ExitStack() as stack:
        timing_tmp = staged_copy(stack, options.timing_cache)
        cache_tmp = staged_copy(stack, calibration.get("cache"))
        calibrator = make_calibrator(calibration, cache_tmp)
        # Polygraphy reads the timing cache from the staged copy too, so no lock file is left
        # beside the real one.
        reuse = options.timing_cache and Path(options.timing_cache).is_file()
        staged = replace(options, timing_cache=str(timing_tmp) if reuse else None)
        config = make_config_loader(staged, plan, profiles, calibrator,
                                    calibration.get("profile_index"),
                                    obey_precision=inputs.pins_fp32)
        engine_bytes, seconds = build_serialized(
            inputs.source, plan, config, timing_tmp, plan_path, options.verbose,
            drop_outputs=window_outputs(sidecar["outputs"]),
            keep_fp32=inputs.keep_fp32 if inputs.pins_fp32 else (), keep_fp32_record=pinned)
        atomic_write_bytes(plan_path, engine_bytes)
    keep = keep_fp32_record(inputs, pinned)
    warning = keep_fp32_warning(keep)
    if warning:
        notes(warning)
    write_manifest(plan_path, _manifest_record(
        onnx_path, plan_path, inputs, version, options, profiles, calibration,
        engine_bytes, seconds, accuracy_gate, keep))
    return load_manifest(plan_path)


def _manifest_record(onnx_path: Path, plan_path: Path, inputs: BuildInputs, version: str,
                     options: BuildOptions, profiles, calibration: Dict, engine_bytes: bytes,
                     seconds: float, accuracy_gate, keep_fp32: Dict) -> Dict[str, Any]:
    """Everything engines/manifest.py stores beside the plan (it adds the plan's own hash)."""
    sidecar, plan, source = inputs.sidecar, inputs.plan, inputs.source
    return {
        "kind": sidecar["kind"],
        "tensorrt_version": version,
        "gpu": trt_info.gpu_info(),
        "jetson": trt_info.jetson_info(),
        "precision": options.precision,
        "precision_plan": {"fp16_flag": plan.fp16_flag, "int8_flag": plan.int8_flag,
                           "strongly_typed": plan.strongly_typed, "tf32": bool(options.tf32),
                           "summary": f"{plan.describe()}, TF32 {'on' if options.tf32 else 'off'}"},
        "tf32": bool(options.tf32),
        # True: BuilderFlag.VERSION_COMPATIBLE, the plan loads on later TensorRT releases
        # (a runtime must allow its embedded lean runtime: engine_host_code_allowed)
        "version_compatible": bool(options.version_compatible),
        "int8": _int8_record(plan, source, calibration),
        "network": network_record(inputs, version),
        "tensorrt_target": tensorrt_target_record(sidecar),
        "parse_check": inputs.parse_note,
        "keep_fp32": keep_fp32,
        "profiles": [p.to_json() for p in profiles],
        "inputs": sidecar["inputs"],
        "outputs": engine_outputs(sidecar["outputs"]),
        "engine_io": engine_io(engine_bytes),
        "onnx": {"path": str(onnx_path), "sha256": sha256_file(onnx_path)},
        "built_from": {"path": str(source), "sha256": sha256_file(source)},
        "sidecar": sidecar,
        "tokenizer": (os.path.relpath(tokenizer_path(onnx_path, sidecar), plan_path.parent)
                      if sidecar.get("tokenizer") else None),  # a feature classifier: none
        "build_options": options.to_json(),
        "accuracy_gate": accuracy_gate,
        "build_seconds": round(seconds, 3),
        "polygraphy_version": polygraphy_version(),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _calibration_inputs(sidecar, plan: PrecisionPlan, profiles, calib_npz, calib_cache) -> Dict:
    """Calibration set, cache path and calibration profile; checked before the build."""
    if not plan.calibrate:
        return {}
    cache = Path(calib_cache) if calib_cache is not None else None
    if calib_npz is None or not Path(calib_npz).is_file():
        if cache is None or not cache.is_file():
            raise ToolkitError(f"calibration set not found: {calib_npz} (and no cache to reuse); "
                               "make it with python -m calibration.dataset")
        return {"cache": cache, "npz": None, "cache_reused": True,
                "profile_index": calibration_profile_index(profiles)}
    from calibration.loader import CalibrationSet

    calib_set = CalibrationSet(calib_npz)
    wanted = [t["name"] for t in sidecar["inputs"]]
    if list(calib_set.input_names) != wanted:
        raise ToolkitError(f"calibration set {calib_npz} feeds {list(calib_set.input_names)}; the "
                           f"ONNX takes {wanted}: rebuild it from this ONNX")
    return {"set": calib_set, "npz": Path(calib_npz), "cache": cache,
            "cache_reused": cache is not None and cache.is_file(),
            "profile_index": calibration_profile_index(profiles)}


def _int8_record(plan: PrecisionPlan, source: Path, calibration: Dict) -> Dict | None:
    if plan.use_qdq_onnx:
        return {"source": "qdq", "onnx": str(source), "onnx_sha256": sha256_file(source)}
    if not plan.calibrate:
        return None
    cache, npz = calibration.get("cache"), calibration.get("npz")
    return {"source": "calibration",
            "calibration_set": str(npz) if npz else None,
            "calibration_set_sha256": sha256_file(npz) if npz else None,
            "cache": str(cache) if cache else None,
            "cache_reused": calibration.get("cache_reused", False),
            "cache_sha256": sha256_file(cache) if cache and cache.is_file() else None}


def _profiles_for_cli(onnx_path: Path, batch, seq, profile) -> List[ProfileSpec] | None:
    """Profiles from the sidecar and the options; None when there is no sidecar yet."""
    from common.artifacts import sidecar_path

    if not sidecar_path(onnx_path).is_file():
        return None
    batch_range = parse_range(batch, "--batch") if batch else None
    seq_range = parse_range(seq, "--seq") if seq else None
    explicit = [parse_profile_option(text) for text in profile]
    return build_profiles(load_onnx_sidecar(onnx_path), batch_range, seq_range, explicit)


@click.command(context_settings={"show_default": True})
@click.option("--onnx", "onnx_path", required=True, type=click.Path(path_type=Path),
              help="FP32 ONNX from export/ (its sidecar beside it)")
@click.option("--precision", type=click.Choice(PRECISIONS), default="fp16",
              help="best = fp16 + int8")
@click.option("--output", type=click.Path(path_type=Path), default=None,
              help="plan to write  [default: engines/<name>.<precision>.plan]")
@click.option("--profile", multiple=True,
              help="NAME:input=MIN,OPT,MAX;... with shapes like 1x128 (repeatable)")
@click.option("--batch", help="batch range MIN,OPT,MAX  [default: the ONNX's range]")
@click.option("--seq", help="sequence (decoder: context) range MIN,OPT,MAX")
@click.option("--workspace", "workspace_mib", type=click.IntRange(min=1),
              help="builder workspace limit in MiB")
@click.option("--opt-level", type=click.IntRange(0, 5),
              help="builder optimization level (TensorRT >= 8.6)")
@click.option("--timing-cache", type=click.Path(path_type=Path),
              help="tactic timing cache: loaded if present, saved after the build")
@click.option("--dla-core", type=click.IntRange(min=0),
              help="build for this DLA core with GPU fallback (static shapes only)")
@click.option("--int8-source", type=click.Choice(INT8_SOURCES), default="qdq",
              help="qdq = the Q/DQ ONNX (TensorRT 8.5..11); calibrate = calibrator (8.5..10.x)")
@click.option("--qdq-onnx", type=click.Path(path_type=Path),
              help="[default: models/<name>.qdq.onnx beside --onnx]")
@click.option("--fp16-onnx", type=click.Path(path_type=Path),
              help="FP16 graph (python -m calibration.fp16) that TensorRT 11 builds fp16 from "
                   "[default: models/<name>.fp16.onnx beside --onnx]")
@click.option("--calib", type=click.Path(path_type=Path),
              help="[default: calibration/<name>.calib.npz]")
@click.option("--calib-cache", type=click.Path(path_type=Path),
              help="reused when present  [default: calibration/<name>.calib.cache]")
@click.option("--accuracy-report", type=click.Path(path_type=Path),
              help="calibration.gate report; refuse the INT8 build when its drop > --max-drop")
@click.option("--max-drop", type=float, default=0.5,
              help="allowed drop (the gate's unit: accuracy points or % loss)")
@click.option("--tf32/--no-tf32", default=True,
              help="TF32 for the float layers (on in TensorRT and trtexec; Polygraphy alone "
                   "turns it off); --no-tf32 = strict FP32")
@click.option("--version-compatible", is_flag=True,
              help="TensorRT 8.6+: a version-compatible plan (BuilderFlag.VERSION_COMPATIBLE) "
                   "that later TensorRT releases load too, e.g. a Triton image whose TensorRT "
                   "differs from JetPack's; Triton needs --backend-config=tensorrt,"
                   "version-compatible=true (jetson/run_triton.sh adds it)")
@click.option("--verbose", is_flag=True, help="TensorRT's verbose build log")
@exit_on_toolkit_error
def main(onnx_path: Path, precision: str, output: Path | None, profile: Sequence[str],
         batch: str | None, seq: str | None, workspace_mib: int | None,
         opt_level: int | None, timing_cache: Path | None, dla_core: int | None,
         int8_source: str, qdq_onnx: Path | None, fp16_onnx: Path | None, calib: Path | None,
         calib_cache: Path | None, accuracy_report: Path | None, max_drop: float,
         tf32: bool, version_compatible: bool, verbose: bool) -> None:
    """Build a TensorRT engine (Polygraphy) and its manifest <plan>.json."""
    options = BuildOptions(precision, int8_source, workspace_mib, opt_level, dla_core,
                           str(timing_cache) if timing_cache else None, verbose, tf32,
                           version_compatible)
    defaults = default_artifacts(onnx_path)
    paths = {"onnx": onnx_path, "qdq_onnx": qdq_onnx or defaults["qdq_onnx"],
             "calib": calib or defaults["calib"],
             "calib_cache": calib_cache or defaults["calib_cache"]}
    fp16_path = fp16_onnx or defaults["fp16_onnx"]
    ready_check = dict(paths, fp16_onnx=fp16_path) if options.precision == "fp16" else paths
    output = output or Path("engines") / f"{model_name(onnx_path)}.{precision}.plan"
    gate = None
    if options.uses_int8:
        gate = check_accuracy_report(accuracy_report, max_drop)
    elif accuracy_report is not None:
        click.echo(f"note: --accuracy-report is an INT8 gate; not checked for {precision}",
                   err=True)
    profiles = _profiles_for_cli(onnx_path, batch, seq, profile)
    if trt_info.tensorrt_version() is None:
        raise ToolkitError(tensorrt_missing_message(ready_check))
    if gate is not None and gate["status"] == "missing":
        click.echo(f"note: accuracy report {accuracy_report} not found: INT8 accuracy is "
                   "unchecked (python -m calibration.gate writes it)", err=True)
    manifest = build_engine(onnx_path, output, options, profiles, qdq_onnx=paths["qdq_onnx"],
                            fp16_onnx=fp16_path, calib_npz=paths["calib"],
                            calib_cache=paths["calib_cache"], accuracy_gate=gate,
                            notes=lambda line: click.echo(line, err=True))
    gpu = manifest["gpu"]
    click.echo(f"wrote {output} ({manifest['plan_bytes'] / 2**20:.1f} MiB, TensorRT "
               f"{manifest['tensorrt_version']}, {gpu['name']} ({gpu['compute_capability']}), "
               f"{precision}: {manifest['precision_plan']['summary']}, "
               f"{manifest['network']['mode']} from {manifest['network']['file']}, "
               f"{manifest['build_seconds']:.1f} s) and {output}.json")


if __name__ == "__main__":
    main()
