"""ONNX Runtime backend of the runtime session: IOBinding on preallocated arenas.

Every input and output is bound by address (``bind_input``/``bind_output`` with ``buffer_ptr``)
into the caller's arena, so a run neither allocates tensors nor copies them: outputs are written
where the bindings say, which is how the decoder appends its new keys/values in place. One
IOBinding object lives as long as the session; a tensor is re-bound only when its address or
shape changed since the last run.

Profiles: ONNX Runtime has no optimization profiles, but the runtime checks shapes the same way
on both backends. They come from the ONNX sidecar (``<model>.onnx.json``): each input's axis
names (strings in the sidecar's shapes) take the sidecar's ``dynamic_axes`` ranges, giving ONE
profile (for the decoder it covers prefill and decode: ``past`` 0..max-1, ``new`` 1..max).
``opt`` = ``max``, since ONNX Runtime does not tune for a shape. ``profile_ranges`` (a list of
``{axis: (min, max) | (min, opt, max)}``, one per profile) replaces them, e.g. to mirror a
TensorRT engine's prefill/decode profiles; axes it omits keep the sidecar's range, and with
``profile_ranges`` a graph without a sidecar opens too (axis names from the graph).

Output shapes (``output_shapes``) are resolved by axis name from the input shapes.

Devices: ``CPUExecutionProvider`` (default) uses ``HostArena``s, where host memory is the
tensor memory. With ``CUDAExecutionProvider`` first, arenas are ``CudaArena``s (pycuda primary
context, device 0, one stream); the stream is synchronized before each run because ONNX Runtime
computes on its own stream, and its ``Run`` returns after the GPU work is done.

Sidecar: checked against the graph when the session opens: its ``onnx_sha256`` must be the
file's (a re-export that left a stale sidecar is refused; hashing a 23 MB graph takes about
24 ms here, against 50-110 ms for ``InferenceSession`` itself, and the hash is cached per
file, size and mtime), and its I/O names and ranks must be the graph's.

Alignment: only element alignment is required here (``address_alignment = 0``), so a KV-cache
slot stride that is not a multiple of 256 bytes runs on ONNX Runtime even where TensorRT would
refuse it.

Session options: ONNX Runtime's defaults (all graph optimizations, one intra-op thread per
core) without the per-shape memory pattern, which a decoder's ever-new shapes defeat
(``session_options``).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Dict, List, Mapping, Sequence, Tuple, Union

import numpy as np

from common.errors import ToolkitError
from runtime.buffers import CudaArena, HostArena
from runtime.session import Binding, ProfileShapes, Session, Shape, TensorSpec

Axis = Union[str, int]  # an axis name ("batch") or a fixed size

ORT_DTYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int8)": np.int8, "tensor(uint8)": np.uint8, "tensor(int32)": np.int32,
    "tensor(int64)": np.int64, "tensor(bool)": np.bool_,
}


class OrtSession(Session):
    backend = "onnxruntime"
    address_alignment = 0  # element alignment is enough for ONNX Runtime
    # The CPU Concat copies nothing where source and output coincide (measured); on CUDA it
    # copies the bytes onto themselves (not run here: no GPU).
    overlapping_outputs = True

    def __init__(self, path: Path, providers: Sequence | None = None,
                 profile_ranges: Sequence[Mapping] | None = None):
        path = Path(path)
        # The sidecar first: a stale one is named as such, before ORT parses the graph.
        sidecar = _load_sidecar(path, required=profile_ranges is None)
        self._sess = _inference_session(path, providers)
        self._on_cuda = self._sess.get_providers()[0] == "CUDAExecutionProvider"
        self._device_type = "cuda" if self._on_cuda else "cpu"
        self._stream = _cuda_stream() if self._on_cuda else None
        inputs, self._input_axes = _graph_tensors(self._sess.get_inputs(), sidecar, "inputs", path)
        outputs, self._output_axes = _graph_tensors(
            self._sess.get_outputs(), sidecar, "outputs", path)
        axis_ranges = sidecar["dynamic_axes"] if sidecar else {}
        profiles = [_profile(self._input_axes, axis_ranges, overrides, index, path)
                    for index, overrides in enumerate(profile_ranges or [{}])]
        super().__init__(path, inputs, outputs, profiles)
        self.sidecar = sidecar
        self._io = self._sess.io_binding()
        self._binder = _Binder(self._io, self._device_type)
        # One RunOptions for every run: without it onnxruntime 1.32 makes garbage per call.
        self._run_options = run_options()
        self._bound: Dict[str, Tuple[int, Shape]] = {}  # name -> (address, shape) now bound
        np_types = {name: spec.dtype.type for name, spec in {**inputs, **outputs}.items()}
        self._io_order = ([(n, np_types[n], self._binder.bind_input) for n in inputs]
                          + [(n, np_types[n], self._binder.bind_output) for n in outputs])

    def allocate(self, nbytes: int):
        if self._on_cuda:
            return CudaArena(nbytes, self._stream)
        return HostArena(nbytes)

    def run(self, bindings: Mapping[str, Binding], profile: int = 0,
            check: bool = True) -> None:
        if self._sess is None:
            raise ToolkitError(f"the session for {self.path} is closed")
        if check:
            self.check_bindings(bindings, profile)
        bound = self._bound
        for name, np_type, bind in self._io_order:
            binding = bindings[name]
            where = (binding.arena.ptr + binding.offset, binding.shape)
            if bound.get(name) != where:  # only what moved or changed shape since the last run
                bind(name, np_type, binding.shape, where[0])
                bound[name] = where
        if self._stream is not None:
            self._stream.synchronize()  # uploads on our stream must land before ORT's stream reads
        start = time.perf_counter()
        try:
            self._sess.run_with_iobinding(self._io, self._run_options)
        except _ort_errors() as exc:
            self._bound.clear()  # re-bind everything next time rather than trust a failed run
            raise ToolkitError(self._explain_failure(bindings, exc)) from None
        self.last_timings["compute_ms"] = (time.perf_counter() - start) * 1e3

    def output_shapes(self, input_shapes: Mapping[str, Sequence[int]],
                      profile: int = 0) -> Dict[str, Shape]:
        sizes = _axis_sizes(self._input_axes, input_shapes)
        shapes = {}
        for name, axes in self._output_axes.items():
            unknown = [a for a in axes if isinstance(a, str) and a not in sizes]
            if unknown:
                raise ToolkitError(
                    f"output {name!r} of {self.path.name} has axes {unknown} that no input has; "
                    "give its shape in the binding"
                )
            shapes[name] = tuple(sizes[a] if isinstance(a, str) else a for a in axes)
        return shapes

    def synchronize(self) -> None:
        if self._stream is not None:
            self._stream.synchronize()

    def close(self) -> None:
        self._io = self._binder = None
        self._io_order = []
        self._sess = None
        self._bound = {}

    def _explain_failure(self, bindings: Mapping[str, Binding], exc: Exception) -> str:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        try:
            expected = self.output_shapes({n: bindings[n].shape for n in self.inputs})
        except ToolkitError:
            expected = {}
        for name, shape in expected.items():
            if bindings[name].shape != shape:
                return (f"output {name!r} of {self.path.name} is bound with shape "
                        f"{bindings[name].shape}; these inputs give {shape}")
        return f"onnxruntime failed to run {self.path}: {first_line}"


class _Binder:
    """bind_input/bind_output by address on one IOBinding, for one device.

    A decode step re-binds every cache tensor (each past grows, each new slot moves): 16 to 64
    binds a step. ``IOBinding.bind_input`` builds an ``OrtDevice`` from its name on every call
    (1.6 us here, against 0.8 us for the pybind call it wraps), so the device is made once and
    the pybind object (``IOBinding._iobinding``; the same in onnxruntime 1.19 and 1.32, the
    versions tested) called directly; where that object is not there, the public methods are.
    """

    def __init__(self, io, device_type: str):
        self._io, self._device_type = io, device_type
        raw = getattr(io, "_iobinding", None)
        try:
            from onnxruntime.capi import _pybind_state as C

            kind = C.OrtDevice.cuda() if device_type == "cuda" else C.OrtDevice.cpu()
            self._device = C.OrtDevice(kind, C.OrtDevice.default_memory(), 0)
        except (ImportError, AttributeError, TypeError):
            raw = self._device = None
        self._raw = raw if hasattr(raw, "bind_input") and hasattr(raw, "bind_output") else None

    def bind_input(self, name: str, np_type, shape: Shape, address: int) -> None:
        if self._raw is not None:
            try:
                return self._raw.bind_input(name, self._device, np_type, list(shape), address)
            except TypeError:  # another pybind signature: the public method from now on
                self._raw = None
        self._io.bind_input(name, self._device_type, 0, np_type, shape, address)

    def bind_output(self, name: str, np_type, shape: Shape, address: int) -> None:
        if self._raw is not None:
            try:
                return self._raw.bind_output(name, self._device, np_type, list(shape), address)
            except TypeError:
                self._raw = None
        self._io.bind_output(name, self._device_type, 0, np_type, shape, address)


def _ort_errors() -> Tuple[type, ...]:
    """What onnxruntime raises for a bad model or a failed run (``run_with_iobinding`` raises a
    plain RuntimeError, "Error in execution: ..."); only ever caught around one ORT call."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    names = ("Fail", "InvalidArgument", "InvalidGraph", "InvalidProtobuf", "NoSuchFile",
             "RuntimeException", "NotImplemented", "EPFail")
    return (RuntimeError,) + tuple(getattr(state, n) for n in names if hasattr(state, n))


def _inference_session(path: Path, providers: Sequence | None):
    import onnxruntime as ort

    wanted = list(providers) if providers else ["CPUExecutionProvider"]
    names = provider_names(wanted)
    available = ort.get_available_providers()
    missing = [n for n in names if n not in available]
    if missing:
        raise ToolkitError(
            f"onnxruntime {ort.__version__} lacks providers {missing}; it has {available}"
        )
    try:
        sess = ort.InferenceSession(str(path), session_options(), providers=wanted)
    except _ort_errors() as exc:
        raise ToolkitError(f"onnxruntime cannot load {path}: {str(exc).strip().splitlines()[0]}") \
            from None
    if sess.get_providers()[0] != names[0]:
        raise ToolkitError(
            f"onnxruntime did not enable {names[0]} for {path} (it uses {sess.get_providers()})"
        )
    return sess


def session_options():
    """ONNX Runtime's defaults, less the memory pattern.

    ONNX Runtime plans a run's allocations once per distinct set of input shapes and keeps
    the plan. A decoder step has a new past length every time, so each run misses that cache:
    the plan is built and stored again (450 entries after a 450-token request), which cost
    30-50 us a decode step on a 2-core Xeon host (Llama d256, 2 threads: 675 -> 639 us a
    run, first request). Without it the BFC arena still reuses freed blocks, and a classifier
    at one repeated shape measured the same (all-MiniLM-L6-v2, batch 1, 32 and 256 tokens:
    p50 within run-to-run noise over three alternating runs).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_mem_pattern = False
    return options


def run_options():
    import onnxruntime as ort

    options = ort.RunOptions()
    # onnxruntime 1.32's run_with_iobinding looks this key up on every call and, when it is
    # unset, pays for a raised-and-caught RuntimeError: 33 us a run here, a tenth of a decode
    # step. "0" is the value the lookup defaults to, so setting it changes nothing else.
    options.add_run_config_entry("gpu_graph_id", "0")
    return options


def _cuda_stream():
    from runtime.buffers import import_pycuda

    # The primary context, shared with ORT's CUDA provider and TensorRT.
    cuda = import_pycuda("CUDAExecutionProvider needs pycuda for device buffers")
    return cuda.Stream()


def _load_sidecar(path: Path, required: bool) -> dict | None:
    from common.artifacts import load_onnx_sidecar, sidecar_path

    if sidecar_path(path).is_file():
        # A sidecar left from another export (its onnx_sha256 names other bytes) is refused;
        # the hash is cached per (file, size, mtime), so reopening costs a stat.
        return load_onnx_sidecar(path, check_hash=True)
    if required:
        raise ToolkitError(
            f"no sidecar {sidecar_path(path)} beside {path}: export the model with "
            "export.onnx_model, or pass profile_ranges"
        )
    return None


def _graph_tensors(nodes, sidecar: dict | None, key: str,
                   path: Path) -> Tuple[Dict[str, TensorSpec], Dict[str, Tuple[Axis, ...]]]:
    """TensorSpecs from the graph, axis names from the sidecar (or the graph without one)."""
    declared = {t["name"]: t["shape"] for t in sidecar[key]} if sidecar else {}
    graph_names = [n.name for n in nodes]
    if sidecar and sorted(declared) != sorted(graph_names):
        raise ToolkitError(
            f"sidecar of {path} lists {key} {sorted(declared)} but the graph has "
            f"{sorted(graph_names)}: re-export the model"
        )
    specs, axes = {}, {}
    for node in nodes:
        if node.type not in ORT_DTYPES:
            raise ToolkitError(
                f"{key[:-1]} {node.name!r} of {path} has unsupported type {node.type}"
            )
        dims = declared.get(node.name, node.shape)
        if len(dims) != len(node.shape):
            raise ToolkitError(
                f"sidecar of {path} gives {node.name!r} shape {dims}; the graph has {node.shape}"
            )
        axes[node.name] = tuple(d if isinstance(d, int) else str(d) for d in dims)
        shape = tuple(d if isinstance(d, int) else -1 for d in axes[node.name])
        specs[node.name] = TensorSpec(node.name, np.dtype(ORT_DTYPES[node.type]), shape,
                                      key == "inputs")
    return specs, axes


def _range(value, where: str) -> Tuple[int, int, int]:
    """(min, opt, max) from {"min", "max"[, "opt"]} or a 2-/3-tuple; opt defaults to max."""
    if isinstance(value, Mapping):
        value = (value.get("min"), value.get("opt", value.get("max")), value.get("max"))
    values = tuple(value) if isinstance(value, (tuple, list)) else ()
    if len(values) == 2:
        values = (values[0], values[1], values[1])
    if len(values) != 3 or not all(isinstance(v, int) for v in values) or not (
            0 <= values[0] <= values[1] <= values[2]):
        raise ToolkitError(f"{where}: range {value!r}, expected (min, max) or (min, opt, max)")
    return values


def _profile(input_axes: Mapping[str, Tuple[Axis, ...]], sidecar_ranges: Mapping,
             overrides: Mapping, index: int, path: Path) -> ProfileShapes:
    ranges = {}
    for axis in {a for axes in input_axes.values() for a in axes if isinstance(a, str)}:
        if axis in overrides:
            ranges[axis] = _range(overrides[axis], f"profile_ranges[{index}][{axis!r}]")
        elif axis in sidecar_ranges:
            ranges[axis] = _range(sidecar_ranges[axis], f"sidecar of {path}, axis {axis!r}")
        else:
            raise ToolkitError(f"profile {index} of {path}: no range for axis {axis!r}")
    profile = {}
    for name, axes in input_axes.items():
        bounds = [tuple(ranges[a][i] if isinstance(a, str) else a for a in axes) for i in range(3)]
        profile[name] = (bounds[0], bounds[1], bounds[2])
    return profile


def _axis_sizes(input_axes: Mapping[str, Tuple[Axis, ...]],
                input_shapes: Mapping[str, Sequence[int]]) -> Dict[str, int]:
    sizes: Dict[str, int] = {}
    where: Dict[str, str] = {}
    for name, axes in input_axes.items():
        if name not in input_shapes:
            raise ToolkitError(f"no shape given for input {name!r}")
        shape = tuple(input_shapes[name])
        if len(shape) != len(axes):
            raise ToolkitError(f"input {name!r} shape {shape}: expected {len(axes)} dimensions")
        for axis, size in zip(axes, shape):
            if not isinstance(axis, str):
                continue
            if axis in sizes and sizes[axis] != size:
                raise ToolkitError(
                    f"axis {axis!r} is {sizes[axis]} in {where[axis]!r} but {size} in {name!r}"
                )
            sizes[axis], where[axis] = int(size), name
    return sizes


def provider_names(providers: Sequence | None) -> List[str]:
    """Provider names from the ONNX Runtime ``providers`` argument (names or (name, options))."""
    return [p[0] if isinstance(p, (tuple, list)) else p for p in (providers or [])]
