"""Build options -> what TensorRT is asked to do: precision flags, strong typing, the INT8
source, DLA, optimization level, workspace and timing cache, as Polygraphy loader arguments.

The decisions are plain functions of the options and the TensorRT version string, so they are
tested without TensorRT:

| precision, INT8 source | TRT 8.5 / 8.6         | TRT 10.x                  | TRT 11              |
|------------------------|-----------------------|---------------------------|---------------------|
| fp32                   | no flags              | no flags                  | strongly typed      |
| fp16                   | FP16 flag             | FP16 flag                 | strongly typed FP16 |
|                        |                       |                           | ONNX (--fp16-onnx)  |
| int8, qdq              | INT8 flag + Q/DQ ONNX | strongly typed Q/DQ ONNX  | same as 10.x        |
| int8, calibrate        | INT8 flag, calibrator | INT8 flag, calibrator     | refused             |
| best (fp16 + int8)     | FP16 + INT8 flags     | FP16 + INT8 flags (weak)  | refused             |

TensorRT 11 has no precision flags and no calibrators, and every network is strongly typed,
fp32 included (the plan says so, and so does the manifest): the types come from the graph, so
fp16 is built from the FP16 ONNX that ``python -m calibration.fp16`` writes (what must stay FP32
is FP32 in that graph), int8 from the Q/DQ ONNX, and ``best`` (FP16 where INT8 has no Q/DQ) has
no meaning left. ``best`` on 10.x stays weakly typed so the layers without Q/DQ may still run in
FP16.

keep_fp32: in the flag-based builds that lower precision (FP16 or INT8 flag), the layers whose
output tensors the sidecar lists under ``keep_fp32.tensors`` (the normalization of graphs
exported for TensorRT 8.5) are pinned to FP32 (``layer.precision``, ``set_output_type``) and
CreateConfig gets ``precision_constraints="obey"``; ``select_fp32_layers`` decides which layers,
from (layer name, output names) pairs, so it is tested without TensorRT. Strongly typed builds
skip it: the graph's own types decide there.

TF32: on by default, as in TensorRT's own builder and trtexec (the figures users compare
against). Polygraphy's ``CreateConfig`` defaults to ``tf32=False`` and then *clears* the flag, so
it is always passed explicitly; ``--no-tf32`` gives strict FP32 for the float layers (those of
an fp32 engine, and the float MatMuls an int8 engine keeps). TF32 runs on Ampere and later (Orin
is compute 8.7); TensorRT ignores the flag on older GPUs (Xavier is 7.2).

Only ``memory_pool_limits`` needs TensorRT to construct (its keys are TensorRT enums), so it
is built lazily, in ``make_config_loader``, only when a workspace limit is asked for.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Sequence, Tuple

from common.errors import ToolkitError
from engines import trt_info
from engines.profiles import ProfileSpec

PRECISIONS = ("fp32", "fp16", "int8", "best")
INT8_SOURCES = ("qdq", "calibrate")
OPT_LEVELS = range(0, 6)


@dataclass
class BuildOptions:
    """What the user asked for (CLI options, or arguments of ``build_engine``)."""

    precision: str = "fp32"
    int8_source: str = "qdq"
    workspace_mib: int | None = None
    opt_level: int | None = None
    dla_core: int | None = None
    timing_cache: str | None = None
    verbose: bool = False
    tf32: bool = True  # trtexec's default; False = strict FP32 (--no-tf32)
    # BuilderFlag.VERSION_COMPATIBLE (TensorRT 8.6+): the plan carries its lean runtime and
    # loads on later TensorRT releases (a server whose TensorRT differs from the builder's)
    version_compatible: bool = False

    @property
    def uses_int8(self) -> bool:
        return self.precision in ("int8", "best")

    @property
    def uses_fp16(self) -> bool:
        return self.precision in ("fp16", "best")

    def to_json(self) -> Dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PrecisionPlan:
    """How the requested precision is realised on one TensorRT version."""

    fp16_flag: bool
    int8_flag: bool
    strongly_typed: bool
    use_qdq_onnx: bool  # parse the Q/DQ ONNX instead of the FP32 one
    calibrate: bool  # implicit INT8: a calibrator feeds the calibration set
    use_fp16_onnx: bool = False  # parse the FP16 ONNX (TensorRT 11's fp16)

    @property
    def network_mode(self) -> str:
        """``"strongly-typed"`` or ``"flags"`` (the manifest's network.mode)."""
        return "strongly-typed" if self.strongly_typed else "flags"

    @property
    def lowers_precision_by_flags(self) -> bool:
        """FP16/INT8 chosen by builder flags: where keep_fp32 pins layers to FP32."""
        return not self.strongly_typed and (self.fp16_flag or self.int8_flag)

    def describe(self) -> str:
        flags = [f for f, on in (("FP16", self.fp16_flag), ("INT8", self.int8_flag)) if on]
        parts = [f"flags {'+'.join(flags) or 'none'}"]
        if self.strongly_typed:
            parts.append("strongly typed")
        if self.use_qdq_onnx:
            parts.append("Q/DQ ONNX")
        if self.use_fp16_onnx:
            parts.append("FP16 ONNX")
        if self.calibrate:
            parts.append("INT8 calibration")
        return ", ".join(parts)


def check_options(options: BuildOptions) -> None:
    """Values that are wrong on any TensorRT version."""
    if options.precision not in PRECISIONS:
        raise ToolkitError(f"precision {options.precision!r}: expected one of {list(PRECISIONS)}")
    if options.int8_source not in INT8_SOURCES:
        raise ToolkitError(f"INT8 source {options.int8_source!r}: expected one of "
                           f"{list(INT8_SOURCES)}")
    if options.opt_level is not None and options.opt_level not in OPT_LEVELS:
        raise ToolkitError(f"--opt-level {options.opt_level}: expected 0..5")
    if options.workspace_mib is not None and options.workspace_mib <= 0:
        raise ToolkitError(f"--workspace {options.workspace_mib} MiB: expected a positive size")
    if options.dla_core is not None and options.dla_core < 0:
        raise ToolkitError(f"--dla-core {options.dla_core}: expected a core index >= 0")


def plan_precision(options: BuildOptions, trt_version: str) -> PrecisionPlan:
    """Flags, typing and INT8 source for ``options`` on ``trt_version`` (see the module table)."""
    check_options(options)
    if trt_info.has_precision_flags(trt_version):
        return _plan_with_flags(options, trt_version)
    # TensorRT 11: strongly typed only, the network file decides the precision
    if options.precision == "best":
        raise ToolkitError(
            f"--precision best: TensorRT {trt_version} has no FP16/INT8 builder flags to mix "
            "precisions (networks are always strongly typed); build int8 from the Q/DQ ONNX, "
            "or fp16 from the FP16 ONNX")
    if options.precision == "fp16":
        return PrecisionPlan(False, False, True, False, False, use_fp16_onnx=True)
    if options.uses_int8 and options.int8_source == "calibrate":
        raise ToolkitError(
            f"--int8-source calibrate: TensorRT {trt_version} removed implicit INT8 "
            "calibration; use --int8-source qdq with the Q/DQ ONNX from calibration.qdq")
    return PrecisionPlan(False, False, True, options.uses_int8, False)


def _plan_with_flags(options: BuildOptions, trt_version: str) -> PrecisionPlan:
    """TensorRT 8.5 .. 10.x: FP16/INT8 flags; Q/DQ graphs strongly typed from 10 on."""
    if not options.uses_int8:
        return PrecisionPlan(options.uses_fp16, False, False, False, False)
    if options.int8_source == "calibrate":
        return PrecisionPlan(options.uses_fp16, True, False, False, True)
    strongly_typed = trt_info.has_strongly_typed(trt_version) and not options.uses_fp16
    return PrecisionPlan(options.uses_fp16, not strongly_typed, strongly_typed, True, False)


def select_fp32_layers(
    layers: Iterable[Tuple[str, Sequence[str]]], keep_fp32: Sequence[str]
) -> Dict[str, Any]:
    """Which TensorRT layers to pin to FP32, from ``(layer_name, output_tensor_names)`` pairs.

    A layer is pinned when one of its outputs is named in ``keep_fp32`` (ONNX node outputs keep
    their names through TensorRT's ONNX parser); the outputs to set to FP32 are those named.
    Returns ``{"layers": {index: [output indices]}, "matched": [...], "unmatched": [...]}`` with
    tensor names in the order ``keep_fp32`` lists them, so a name found in no layer is reported
    rather than silently ignored.
    """
    wanted = set(keep_fp32)
    chosen: Dict[int, List[int]] = {}
    found = set()
    for index, (_, outputs) in enumerate(layers):
        hits = [i for i, name in enumerate(outputs) if name in wanted]
        if hits:
            chosen[index] = hits
            found.update(outputs[i] for i in hits)
    ordered = list(dict.fromkeys(keep_fp32))
    return {"layers": chosen, "matched": [t for t in ordered if t in found],
            "unmatched": [t for t in ordered if t not in found]}


def check_version_compatible(options: BuildOptions, trt_version: str) -> None:
    """BuilderFlag.VERSION_COMPATIBLE exists from TensorRT 8.6 (include/NvInfer.h at v8.6.1,
    v10.3.0, v11.1; not at 8.5.3)."""
    if options.version_compatible and not trt_info.at_least(trt_version, (8, 6)):
        raise ToolkitError(f"--version-compatible: TensorRT {trt_version} has no "
                           "version-compatible engines (BuilderFlag.VERSION_COMPATIBLE arrived "
                           "in 8.6); drop the option or build with TensorRT 8.6+")


def check_opt_level(opt_level: int | None, trt_version: str) -> None:
    if opt_level is not None and not trt_info.has_builder_optimization_level(trt_version):
        raise ToolkitError(f"--opt-level {opt_level}: TensorRT {trt_version} has no builder "
                           "optimization level (it arrived in 8.6); drop --opt-level")


def check_dla(
    options: BuildOptions,
    profiles: Sequence[ProfileSpec],
    trt_version: str,
    num_dla_cores: int | None,
    module: str | None = None,
    jetpack: str | None = None,
) -> None:
    """Refuse a DLA build that cannot work, before spending minutes on it.

    num_dla_cores: ``trt.Builder.num_DLA_cores`` (None when unknown: then the module name
    decides, Orin Nano and Thor having no DLA). module/jetpack: from ``trt_info.jetson_info``
    (TensorRT 11.4.1+ has DLA on AGX Orin with JetPack 7.2.2+ only).
    """
    core = options.dla_core
    if core is None:
        return
    where = f"this device ({module})" if module else "this device"
    problem = trt_info.dla_platform_problem(trt_version, module, jetpack)
    if problem:
        raise ToolkitError(f"--dla-core {core}: {problem}")
    no_dla = num_dla_cores == 0 or (num_dla_cores is None and trt_info.module_has_no_dla(module))
    if no_dla:
        raise ToolkitError(f"--dla-core {core}: {where} has no DLA (Orin Nano has none; AGX Orin "
                           "and Orin NX do); build for the GPU without --dla-core")
    if num_dla_cores is not None and core >= num_dla_cores:
        raise ToolkitError(f"--dla-core {core}: {where} has {num_dla_cores} DLA cores "
                           f"(0..{num_dla_cores - 1})")
    if not (options.uses_fp16 or options.uses_int8):
        raise ToolkitError(f"--dla-core {core}: DLA runs FP16 or INT8 only; use --precision "
                           "fp16, int8 or best")
    for profile in profiles:
        dynamic = profile.first_dynamic_input()
        if dynamic is not None:
            name, (lo, _, hi) = dynamic
            raise ToolkitError(
                f"--dla-core {core}: DLA needs static shapes, but profile {profile.name!r} input "
                f"{name!r} ranges from {lo} to {hi}; give MIN = OPT = MAX (e.g. --batch 1,1,1 "
                "--seq 128,128,128)")


def create_config_kwargs(
    options: BuildOptions,
    plan: PrecisionPlan,
    profiles: Sequence[ProfileSpec],
    calibrator: Any = None,
    obey_precision: bool = False,
) -> Dict[str, Any]:
    """Keyword arguments of Polygraphy's ``CreateConfig`` (everything but memory pools).

    Only options that are set are passed, so older Polygraphy releases that lack newer keywords
    still accept the call. obey_precision: layers were pinned to FP32 (keep_fp32), so TensorRT
    must obey layer precisions (``precision_constraints="obey"``), flag-based builds only.
    """
    kwargs: Dict[str, Any] = {
        "profiles": [p.to_polygraphy() for p in profiles],
        "fp16": plan.fp16_flag,
        "int8": plan.int8_flag,
        "tf32": bool(options.tf32),  # always explicit: Polygraphy's default clears TF32
    }
    if calibrator is not None:
        kwargs["calibrator"] = calibrator
    if obey_precision and plan.lowers_precision_by_flags:
        kwargs["precision_constraints"] = "obey"
    if options.opt_level is not None:
        kwargs["builder_optimization_level"] = options.opt_level
    if options.timing_cache and Path(options.timing_cache).is_file():
        kwargs["load_timing_cache"] = str(options.timing_cache)  # saved after the build either way
    if options.dla_core is not None:
        kwargs["use_dla"] = True
        kwargs["allow_gpu_fallback"] = True  # transformer layers mostly run on the GPU
    if options.version_compatible:  # Polygraphy sets BuilderFlag.VERSION_COMPATIBLE (>= 0.50.3)
        kwargs["version_compatible"] = True
    return kwargs


def memory_pool_limits(workspace_mib: int) -> Dict[Any, int]:
    """``{trt.MemoryPoolType.WORKSPACE: bytes}``; needs TensorRT (the key is its enum)."""
    import tensorrt as trt

    return {trt.MemoryPoolType.WORKSPACE: int(workspace_mib) << 20}


def make_config_loader(
    options: BuildOptions,
    plan: PrecisionPlan,
    profiles: List[ProfileSpec],
    calibrator: Any = None,
    calibration_profile: int | None = None,
    obey_precision: bool = False,
):
    """Polygraphy config loader: ``CreateConfig``, then the settings it has no keyword for.

    Polygraphy calibrates at the last profile's OPT shapes and always picks DLA core 0. When the
    calibration profile is another one (the decoder's prefill profile comes first), the
    calibrator and calibration profile are attached after ``CreateConfig``;
    ``EngineBytesFromNetwork`` then hands the calibrator that profile's shapes.
    """
    from polygraphy.backend.trt import CreateConfig, PostprocessConfig

    if calibrator is not None and calibration_profile is None:
        calibration_profile = len(profiles) - 1
    attach_late = calibrator is not None and calibration_profile != len(profiles) - 1
    kwargs = create_config_kwargs(options, plan, profiles,
                                  calibrator=None if attach_late else calibrator,
                                  obey_precision=obey_precision)
    if options.workspace_mib is not None:
        kwargs["memory_pool_limits"] = memory_pool_limits(options.workspace_mib)
    create = CreateConfig(**kwargs)
    if options.dla_core is None and not attach_late:
        return create

    def finish(builder, network, config) -> None:
        if options.dla_core is not None:
            config.DLA_core = options.dla_core
        if attach_late:
            config.int8_calibrator = calibrator
            trt_profile = profiles[calibration_profile].to_polygraphy().to_trt(builder, network)
            if not config.set_calibration_profile(trt_profile):
                name = profiles[calibration_profile].name
                raise ToolkitError(f"TensorRT refused profile {name!r} as the INT8 "
                                   "calibration profile")

    return PostprocessConfig(create, finish)
