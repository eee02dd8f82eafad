"""Optimization profiles: the min/opt/max shape of every engine input, derived from the ONNX
sidecar's named axes and the command line, checked against the ranges the ONNX declares.

Shapes come from named axes: a profile is first a range per axis (``batch``, ``seq`` for the
classifier; ``batch``, ``new``, ``past``, ``total`` for the decoder) and every input's shape
follows from its axis names in the sidecar, so tied axes cannot disagree (the decoder's
``attention_mask`` is ``[batch, total]`` with ``total = past + new``; ``past_key_{l}`` is
``[past, batch, kv_dim]``). A feature classifier's ``features`` is ``[batch, seq, F]``: its
F is a fixed size, so min = opt = max = F in every profile, as TensorRT requires of a
dimension the network fixes (``IOptimizationProfile::setDimensions`` rule (3),
``NvInferRuntime.h`` at 8.5.2, v10.16 and v11.1); a ``--profile`` asking another F is refused.
Plain code, no TensorRT: the result converts to Polygraphy ``Profile`` objects, which
construct without TensorRT.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Dict, List, Sequence, Tuple

from common.errors import ToolkitError

Shape = Tuple[int, ...]
Range = Tuple[int, int, int]  # (min, opt, max) of one axis
ShapeRange = Tuple[Shape, Shape, Shape]  # (min, opt, max) shapes of one input

PREFILL, DECODE = "prefill", "decode"


@dataclass(frozen=True)
class ProfileSpec:
    """One optimization profile: ``shapes[input] = (min, opt, max)`` in ONNX input order."""

    name: str
    shapes: Dict[str, ShapeRange]
    axes: Dict[str, Range]  # the axis ranges the shapes came from (empty for --profile shapes)

    @property
    def is_static(self) -> bool:
        return all(lo == hi for lo, _, hi in self.shapes.values())

    def first_dynamic_input(self) -> Tuple[str, ShapeRange] | None:
        for name, (lo, opt, hi) in self.shapes.items():
            if lo != hi:
                return name, (lo, opt, hi)
        return None

    def to_polygraphy(self):
        from polygraphy.backend.trt import Profile

        profile = Profile()
        for name, (lo, opt, hi) in self.shapes.items():
            profile.add(name, min=lo, opt=opt, max=hi)
        return profile

    def to_json(self) -> Dict[str, Any]:
        return {
            "name": self.name,
            "axes": {axis: list(r) for axis, r in self.axes.items()},
            "shapes": {name: {"min": list(lo), "opt": list(opt), "max": list(hi)}
                       for name, (lo, opt, hi) in self.shapes.items()},
        }


def parse_range(text: str, what: str) -> Range:
    """``"1,4,8"`` -> (1, 4, 8); ``"8"`` -> (8, 8, 8). what: the option, for the message."""
    try:
        values = [int(v) for v in str(text).split(",")]
    except ValueError:
        raise ToolkitError(f"{what} {text!r}: expected MIN,OPT,MAX integers (or one N)") from None
    if len(values) == 1:
        values = values * 3
    if len(values) != 3:
        raise ToolkitError(f"{what} {text!r}: expected MIN,OPT,MAX (three integers)")
    lo, opt, hi = values
    if not 0 <= lo <= opt <= hi:
        raise ToolkitError(f"{what} {text!r}: expected 0 <= MIN <= OPT <= MAX")
    return lo, opt, hi


def parse_profile_option(text: str) -> Tuple[str, Dict[str, ShapeRange]]:
    """``"NAME:input=1x1,4x64,8x128;mask=..."`` -> (NAME, {input: (min, opt, max)})."""
    name, sep, body = str(text).partition(":")
    if not sep or not name.strip() or not body.strip():
        raise ToolkitError(f"--profile {text!r}: expected NAME:input=MIN,OPT,MAX;... with shapes "
                           "like 1x128")
    shapes: Dict[str, ShapeRange] = {}
    for item in filter(None, (part.strip() for part in body.split(";"))):
        tensor, eq, ranges = item.partition("=")
        parts = ranges.split(",")
        if not eq or len(parts) != 3:
            raise ToolkitError(f"--profile {text!r}: {item!r} should read input=MIN,OPT,MAX")
        shapes[tensor.strip()] = tuple(_parse_shape(p, text) for p in parts)  # type: ignore[misc]
    return name.strip(), shapes


def _parse_shape(text: str, option: str) -> Shape:
    text = text.strip()
    if not re.fullmatch(r"\d+(x\d+)*", text):
        raise ToolkitError(f"--profile {option!r}: shape {text!r} should look like 8x128")
    return tuple(int(d) for d in text.split("x"))


def default_axis_profiles(
    sidecar: Dict[str, Any], batch: Range | None = None, seq: Range | None = None
) -> List[Tuple[str, Dict[str, Range]]]:
    """Axis ranges of the default profiles.

    Classifier: one profile, opt at the largest batch and sequence (throughput). Decoder: a
    prefill profile (``new`` = seq, ``past`` = 0) and a decode profile (``new`` = 1, ``past`` =
    0..seq_max-1), opt batch at its minimum (one generation stream is the common case) and opt
    context at the longest, where decode time is spent. ``seq`` bounds the decoder's context.
    """
    axes = sidecar["dynamic_axes"]
    if sidecar["kind"] == "classifier":
        return [("default", {"batch": batch or _span(axes["batch"], opt="max"),
                             "seq": seq or _span(axes["seq"], opt="max")})]
    batch = batch or _span(axes["batch"], opt="min")
    new_lo = max(1, axes["new"]["min"])
    seq = seq or (new_lo, axes["new"]["max"], axes["new"]["max"])
    if seq[0] < 1:
        raise ToolkitError(f"--seq {seq}: a decoder prompt has at least one token (MIN >= 1)")
    prefill = {"batch": batch, "new": seq, "past": (0, 0, 0), "total": seq}
    past = (0, seq[1] - 1, seq[2] - 1)
    decode = {"batch": batch, "new": (1, 1, 1), "past": past,
              "total": tuple(p + 1 for p in past)}
    return [(PREFILL, prefill), (DECODE, decode)]  # type: ignore[list-item]


def _span(axis: Dict[str, int], opt: str) -> Range:
    lo, hi = int(axis["min"]), int(axis["max"])
    return lo, (hi if opt == "max" else lo), hi


def profile_from_axes(sidecar: Dict[str, Any], name: str, axes: Dict[str, Range]) -> ProfileSpec:
    """Shapes of every input from axis ranges; an axis outside the ONNX's range is refused."""
    shapes: Dict[str, ShapeRange] = {}
    for tensor in sidecar["inputs"]:
        dims = []
        for index, dim in enumerate(tensor["shape"]):
            if isinstance(dim, int):
                dims.append((dim, dim, dim))
                continue
            if dim not in axes:
                raise ToolkitError(f"profile {name!r}: input {tensor['name']!r} axis {index} "
                                   f"({dim!r}) has no range; the profile sets {sorted(axes)}")
            _check_axis(sidecar, name, tensor["name"], dim, axes[dim])
            dims.append(axes[dim])
        shapes[tensor["name"]] = tuple(tuple(d[k] for d in dims) for k in range(3))  # type: ignore
    return ProfileSpec(name, shapes, dict(axes))


def profile_from_shapes(
    sidecar: Dict[str, Any], name: str, shapes: Dict[str, ShapeRange]
) -> ProfileSpec:
    """A ``--profile`` given as shapes: every input present, ranks and static sizes right,
    named axes within range and consistent across inputs (and ``total = past + new``)."""
    inputs = {t["name"]: t for t in sidecar["inputs"]}
    unknown = sorted(set(shapes) - set(inputs))
    missing = [n for n in inputs if n not in shapes]
    if unknown or missing:
        raise ToolkitError(f"profile {name!r}: unknown inputs {unknown}, missing inputs "
                           f"{missing}; the ONNX inputs are {list(inputs)}")
    axes: Dict[str, Range] = {}
    for tensor_name, tensor in inputs.items():
        lo, opt, hi = shapes[tensor_name]
        dims = tensor["shape"]
        if not len(lo) == len(opt) == len(hi) == len(dims):
            raise ToolkitError(f"profile {name!r}: input {tensor_name!r} needs {len(dims)} "
                               f"dimensions {dims}, got {lo}, {opt}, {hi}")
        for index, dim in enumerate(dims):
            asked = (lo[index], opt[index], hi[index])
            if not asked[0] <= asked[1] <= asked[2]:
                raise ToolkitError(f"profile {name!r}: input {tensor_name!r} axis {index} "
                                   f"range {asked} is not min <= opt <= max")
            if isinstance(dim, int):
                if asked != (dim, dim, dim):
                    raise ToolkitError(f"profile {name!r}: input {tensor_name!r} axis {index} "
                                       f"is fixed at {dim} in the ONNX; asked {asked}")
                continue
            _check_axis(sidecar, name, tensor_name, dim, asked)
            if axes.setdefault(dim, asked) != asked:
                raise ToolkitError(f"profile {name!r}: axis {dim!r} is {axes[dim]} elsewhere but "
                                   f"{asked} on input {tensor_name!r}; tied axes must agree")
    _check_total(name, axes)
    return ProfileSpec(name, {n: shapes[n] for n in inputs}, axes)


def _check_total(name: str, axes: Dict[str, Range]) -> None:
    if {"total", "past", "new"} <= set(axes):
        want = tuple(p + n for p, n in zip(axes["past"], axes["new"]))
        if tuple(axes["total"]) != want:
            raise ToolkitError(f"profile {name!r}: total {axes['total']} must equal past + new "
                               f"= {want} (min, opt and max)")


def _check_axis(sidecar: Dict[str, Any], profile: str, tensor: str, axis: str, asked) -> None:
    declared = sidecar["dynamic_axes"].get(axis)
    if declared is None:
        raise ToolkitError(f"profile {profile!r}: input {tensor!r} axis {axis!r} has no declared "
                           f"range in the ONNX sidecar ({sorted(sidecar['dynamic_axes'])} do)")
    lo, hi = int(declared["min"]), int(declared["max"])
    if asked[0] < lo or asked[2] > hi:
        raise ToolkitError(f"profile {profile!r}: input {tensor!r} axis {axis!r} asked "
                           f"{asked[0]}..{asked[2]} (opt {asked[1]}) but the ONNX allows "
                           f"{lo}..{hi}")


def build_profiles(
    sidecar: Dict[str, Any],
    batch: Range | None = None,
    seq: Range | None = None,
    explicit: Sequence[Tuple[str, Dict[str, ShapeRange]]] = (),
) -> List[ProfileSpec]:
    """The engine's profiles: explicit ``--profile`` shapes, or defaults from the sidecar with
    ``--batch``/``--seq`` overrides (not both)."""
    if explicit:
        if batch is not None or seq is not None:
            raise ToolkitError("--profile gives full shapes; do not combine it with --batch/--seq")
        names = [name for name, _ in explicit]
        if len(set(names)) != len(names):
            raise ToolkitError(f"--profile names must be unique; got {names}")
        return [profile_from_shapes(sidecar, name, shapes) for name, shapes in explicit]
    return [profile_from_axes(sidecar, name, axes)
            for name, axes in default_axis_profiles(sidecar, batch, seq)]


def calibration_profile_index(profiles: Sequence[ProfileSpec]) -> int:
    """The profile whose OPT shapes INT8 calibration runs at: the first without past positions
    at OPT (the calibration set holds prefill batches; the classifier has no past at all)."""
    for index, profile in enumerate(profiles):
        pasts = [opt for name, (_, opt, _) in profile.shapes.items() if name.startswith("past_")]
        if all(shape[0] == 0 for shape in pasts):
            return index
    raise ToolkitError("INT8 calibration needs a profile with 0 past positions at OPT (a prefill "
                       f"profile); the profiles are {[p.name for p in profiles]}")
