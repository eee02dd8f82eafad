"""The runtime session interface: one API over TensorRT engines and ONNX Runtime graphs.

Everything above the backend (classify, generate, bench) is written against ``Session``:

    with open_session("models/imdb.onnx") as session:          # or engines/imdb.int8.plan
        plan = BufferPlan.for_session(session, profile=0)        # every tensor at its max shape
        arena = session.allocate(plan.nbytes)                    # once
        ids = plan.binding(arena, "input_ids", (8, 100))         # smaller shapes, same slots
        ...fill ids.view(np.int32), upload, session.run(bindings), download, synchronize

Contract (CONTRIBUTING.md, "Runtime session interface"), with these refinements:

- ``session.inputs`` / ``session.outputs``: ``{name: TensorSpec}``; ``shape`` has -1 for
  dynamic axes. ``session.profiles``: list of ``{input name: (min, opt, max)}``.
- ``session.run(bindings, profile=0)`` takes a ``Binding`` for every input and output. Input
  shapes are checked against the profile first (``ToolkitError`` naming tensor, shape and range);
  output bindings carry the caller's output shapes (``session.output_shapes`` computes them).
  Every binding must fit its arena and be aligned as the backend requires
  (``address_alignment``: 256 bytes on TensorRT; the element size on ONNX Runtime, so a KV-cache
  slot whose stride is not a multiple of 256 still runs there).
- ``run`` only enqueues work where the backend is asynchronous (TensorRT): call
  ``arena.download(...)`` and then ``session.synchronize()`` before reading host memory.
- ``session.find_profile(input_shapes)`` picks the first profile that accepts the shapes, so
  shared code can run a decoder's prefill and decode steps on a two-profile TensorRT engine and
  on a one-profile ONNX Runtime session alike.
- ``session.last_timings``: ``{"h2d_ms", "compute_ms", "d2h_ms"}`` of the last run, updated in
  place (TensorRT: CUDA events, valid after ``synchronize``; ONNX Runtime: wall time of the run,
  copies 0 on the CPU).
- ``session.run_simple(feeds)`` allocates per call: for tests and tools, not for hot paths.

``Binding`` is defined in ``runtime.buffers`` and re-exported here.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Mapping, NamedTuple, Sequence, Tuple

import numpy as np

from common.errors import ToolkitError
from runtime.buffers import Binding, BufferPlan, tensor_nbytes

__all__ = ["Binding", "ProfileShapes", "Session", "TensorSpec", "check_shape", "open_session"]

Shape = Tuple[int, ...]
ProfileShapes = Dict[str, Tuple[Shape, Shape, Shape]]  # input name -> (min, opt, max)

ONNX_SUFFIXES = (".onnx",)
ENGINE_SUFFIXES = (".plan", ".engine")


class TensorSpec(NamedTuple):
    name: str
    dtype: np.dtype
    shape: Tuple[int, ...]  # -1 for a dynamic axis
    is_input: bool


def open_session(path: str | os.PathLike, providers: Sequence | None = None,
                 profile_ranges: Sequence[Mapping] | None = None) -> Session:
    """Open ``.onnx`` with ONNX Runtime or ``.plan``/``.engine`` with TensorRT.

    providers: ONNX Runtime execution providers (default CPU). profile_ranges: ONNX Runtime
    only, one ``{axis: (min, max) | (min, opt, max)}`` per profile, replacing the sidecar's
    single profile (see ``runtime.ort_backend``).
    """
    model = Path(path)
    if not model.is_file():
        raise ToolkitError(f"model file not found: {model}")
    suffix = model.suffix.lower()
    if suffix in ONNX_SUFFIXES:
        from runtime.ort_backend import OrtSession

        return OrtSession(model, providers=providers, profile_ranges=profile_ranges)
    if suffix in ENGINE_SUFFIXES:
        if providers or profile_ranges:
            raise ToolkitError(
                f"{model}: providers and profile_ranges apply to ONNX graphs; a TensorRT engine "
                "has its profiles built in"
            )
        from runtime.trt_backend import TrtSession

        return TrtSession(model)
    raise ToolkitError(f"{model}: expected a {'/'.join(ONNX_SUFFIXES + ENGINE_SUFFIXES)} file")


def check_shape(name: str, shape: Sequence[int], profiles: Sequence[ProfileShapes],
                profile: int = 0) -> None:
    """Raise if input ``name`` of ``shape`` is outside optimization profile ``profile``."""
    if not 0 <= profile < len(profiles):
        raise ToolkitError(f"profile {profile} does not exist; this model has {len(profiles)}")
    if name not in profiles[profile]:
        raise ToolkitError(f"{name!r} is not an input of profile {profile}")
    low, _, high = profiles[profile][name]
    if len(shape) != len(low) or any(not lo <= d <= hi for d, lo, hi in zip(shape, low, high)):
        raise ToolkitError(
            f"input {name!r} shape {tuple(shape)} is outside profile {profile}: "
            f"min {tuple(low)} max {tuple(high)}"
        )


class Session:
    """Base of both backends: shape checks, profile lookup and the allocating convenience run.

    Subclasses set ``backend``, ``path``, ``inputs``, ``outputs``, ``profiles`` and
    ``address_alignment``, and implement ``allocate``, ``run`` and ``output_shapes``.
    """

    backend = ""
    address_alignment = 256
    # May an output be bound over the bytes of an input (the decoder's present_* windows over
    # its past_* cache)? TensorRT promises nothing for overlapping tensors, so only backends
    # that copy nothing for such a Concat say yes (runtime/kv_cache.py).
    overlapping_outputs = False

    def __init__(self, path: Path, inputs: Dict[str, TensorSpec],
                 outputs: Dict[str, TensorSpec], profiles: List[ProfileShapes]):
        self.path = Path(path)
        self.inputs = inputs
        self.outputs = outputs
        self.profiles = profiles
        self.last_timings: Dict[str, float] = {"h2d_ms": 0.0, "compute_ms": 0.0, "d2h_ms": 0.0}

    # --- the backend's part -------------------------------------------------------------
    def allocate(self, nbytes: int):
        raise NotImplementedError

    def run(self, bindings: Mapping[str, Binding], profile: int = 0,
            check: bool = True) -> None:
        """Run on the bound tensors. check=False skips ``check_bindings``: only for a caller
        that checked the same bindings before and has since changed nothing but shapes it
        proved are in the profile and fit their buffers (the generator's decode loop)."""
        raise NotImplementedError

    def output_shapes(self, input_shapes: Mapping[str, Sequence[int]],
                      profile: int = 0) -> Dict[str, Shape]:
        """Shapes of every output for these input shapes."""
        raise NotImplementedError

    def synchronize(self) -> None:
        """Wait for queued copies and runs (nothing to wait for on synchronous backends)."""

    def close(self) -> None:
        """Release the backend's objects; arenas are released with their last reference."""

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.backend} {self.path}>"

    # --- shared checks --------------------------------------------------------------------
    def check_shape(self, name: str, shape: Sequence[int], profile: int = 0) -> None:
        check_shape(name, shape, self.profiles, profile)

    def max_input_shapes(self, profile: int = 0) -> Dict[str, Shape]:
        self._check_profile_index(profile)
        return {name: tuple(ranges[2]) for name, ranges in self.profiles[profile].items()}

    def find_profile(self, input_shapes: Mapping[str, Sequence[int]]) -> int:
        """Index of the first profile that accepts every shape; ToolkitError when none does."""
        reasons = []
        for index in range(len(self.profiles)):
            try:
                for name, shape in input_shapes.items():
                    self.check_shape(name, shape, index)
            except ToolkitError as exc:
                reasons.append(str(exc))
                continue
            return index
        raise ToolkitError(
            f"no optimization profile of {self.path.name} fits: " + "; ".join(reasons)
        )

    def check_bindings(self, bindings: Mapping[str, Binding], profile: int) -> None:
        """Every input and output bound, input shapes in the profile, every tensor in its arena."""
        self._check_profile_index(profile)
        if len(bindings) != len(self.inputs) + len(self.outputs):
            self._report_binding_names(bindings)
        for name, spec in self.inputs.items():
            binding = bindings.get(name)
            if binding is None:
                self._report_binding_names(bindings)
            self.check_shape(name, binding.shape, profile)
            self._check_placement(spec, binding)
        for name, spec in self.outputs.items():
            binding = bindings.get(name)
            if binding is None:
                self._report_binding_names(bindings)
            if len(binding.shape) != len(spec.shape) or any(
                fixed != -1 and d != fixed for d, fixed in zip(binding.shape, spec.shape)
            ):
                raise ToolkitError(
                    f"output {name!r} bound with shape {binding.shape}; "
                    f"the model gives {spec.shape}"
                )
            self._check_placement(spec, binding)

    def _check_profile_index(self, profile: int) -> None:
        if not 0 <= profile < len(self.profiles):
            raise ToolkitError(
                f"profile {profile} does not exist; {self.path.name} has {len(self.profiles)}"
            )

    def _check_placement(self, spec: TensorSpec, binding: Binding) -> None:
        nbytes = tensor_nbytes(binding.shape, spec.dtype)
        if binding.offset < 0 or binding.offset + nbytes > binding.arena.nbytes:
            raise ToolkitError(
                f"{spec.name!r} of shape {binding.shape} ({nbytes} bytes) at offset "
                f"{binding.offset} does not fit its arena of {binding.arena.nbytes} bytes"
            )
        alignment = self.address_alignment or spec.dtype.itemsize
        if binding.ptr % alignment:
            raise ToolkitError(
                f"{spec.name!r} at offset {binding.offset} is not {alignment}-byte aligned, "
                f"which {self.backend} requires (round offsets with runtime.buffers.align)"
            )

    def _report_binding_names(self, bindings: Mapping[str, Binding]) -> None:
        expected = set(self.inputs) | set(self.outputs)
        missing = sorted(expected - set(bindings))
        unknown = sorted(set(bindings) - expected)
        raise ToolkitError(
            f"bindings for {self.path.name}: missing {missing}, unknown {unknown}; "
            "bind every input and output"
        )

    # --- convenience ----------------------------------------------------------------------
    def run_simple(self, feeds: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """Run once on numpy inputs and return copies of every output (allocates per call)."""
        unknown = sorted(set(feeds) - set(self.inputs))
        missing = sorted(set(self.inputs) - set(feeds))
        if unknown or missing:
            raise ToolkitError(f"feeds for {self.path.name}: missing {missing}, unknown {unknown}")
        arrays = {name: _as_input(name, feeds[name], spec) for name, spec in self.inputs.items()}
        input_shapes = {name: a.shape for name, a in arrays.items()}
        profile = self.find_profile(input_shapes)
        shapes = dict(input_shapes)
        shapes.update(self.output_shapes(input_shapes, profile))
        specs = {**self.inputs, **self.outputs}
        plan = BufferPlan.from_shapes({name: (shapes[name], specs[name].dtype) for name in specs})
        arena = self.allocate(plan.nbytes)
        try:
            bindings = {name: plan.binding(arena, name) for name in specs}
            for name, array in arrays.items():
                bindings[name].view(array.dtype)[...] = array
                bindings[name].upload(array.dtype)
            self.run(bindings, profile)
            for name, spec in self.outputs.items():
                bindings[name].download(spec.dtype)
            self.synchronize()
            return {name: bindings[name].view(spec.dtype).copy()
                    for name, spec in self.outputs.items()}
        finally:
            arena.close()


def _as_input(name: str, value, spec: TensorSpec) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype != spec.dtype and not np.can_cast(array.dtype, spec.dtype, "same_kind"):
        raise ToolkitError(f"input {name!r} has dtype {array.dtype}; expected {spec.dtype}")
    return np.ascontiguousarray(array, dtype=spec.dtype)
