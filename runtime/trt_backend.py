"""TensorRT backend of the runtime session: a deserialized plan run on pycuda buffers.

Named-tensor API only (TensorRT 8.5 through 10.x/11): ``num_io_tensors``,
``get_tensor_name/mode/dtype/shape``, ``get_tensor_profile_shape``, ``set_input_shape``,
``set_tensor_address``, ``infer_shapes``, ``execute_async_v3``; no bindings API, no execute_v2.
Every TensorRT call goes through ``trt_call``: a False return *and* a RuntimeError become one
``ToolkitError`` naming the plan and the call. Both happen: ``set_optimization_profile_async``
never returns False (its binding raises RuntimeError on failure and returns True otherwise, in
8.5, 8.6, 10.x and 11), ``infer_shapes`` raises, while ``set_input_shape``,
``set_tensor_address`` and ``execute_async_v3`` return False.

Opening a plan, in order: ``import tensorrt`` and pycuda (a missing one, or a CUDA driver with
no usable GPU, is a ToolkitError, not an ImportError or a pycuda traceback);
``engines.manifest.check_plan_file`` (plan present, manifest present, size and sha256 as built)
and ``check_compatible`` with this TensorRT version and this GPU; ``init_libnvinfer_plugins``
(as Polygraphy does, so a plan with a plugin layer finds its creator); ``Runtime.DLA_core`` set
to the manifest's ``build_options.dla_core`` for a DLA plan (TensorRT runs a DLA engine on the
runtime's core, which defaults to 0 whatever the build used); only then
``deserialize_cuda_engine`` (None is a ToolkitError, which says so when the plugin library
did not initialize). A plan from another TensorRT release or GPU, or a corrupt one, is refused
with one line instead of failing inside deserialization.

CUDA: the device's primary context (``pycuda.autoprimaryctx``, the one TensorRT uses), one
non-default stream per session for copies and execution, page-locked host memory
(``runtime.buffers.CudaArena``). pycuda keeps its context stack per thread and autoprimaryctx
pushes the primary context only in the thread that first imports it: a session opened in
another thread is refused in one line (``runtime.buffers.current_cuda_device``) instead of
pycuda's LogicError from ``cuCtxGetDevice``.

Profiles: ONE execution context per optimization profile, each set to its profile once with
``set_optimization_profile_async`` when the session opens. Switching between prefill and
decode is then free (no re-selection, no re-setting of shapes per switch); the price is one
activation-memory block per profile, small for these compact models.

Per run: input shapes are set only when they changed since the last run on that context;
after a change ``infer_shapes`` runs (an empty list means every shape is known; it replaces
8.5's ``all_binding_shapes_specified`` / 10's ``all_input_dimensions_specified`` checks) and
every output binding's shape must equal ``context.get_tensor_shape``. Addresses are set only
when they changed; all are 256-byte aligned (checked by ``Session.check_bindings``).

Timings: CUDA events on the stream bracket the first upload after a run, the execution and the
last download; ``synchronize()`` turns them into ``last_timings`` = ``{"h2d_ms", "compute_ms",
"d2h_ms"}`` (h2d spans from the first upload to the start of execution, so host-side gaps
between enqueued copies count in it).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Mapping, Sequence, Tuple

import numpy as np

from common.errors import ToolkitError
from runtime.buffers import CudaArena, current_cuda_device, import_pycuda
from runtime.session import Binding, ProfileShapes, Session, Shape, TensorSpec

# TensorRT DataType attribute -> numpy dtype; attributes absent from older releases are skipped.
_TRT_TO_NUMPY = (
    ("float32", np.float32), ("float16", np.float16), ("int8", np.int8), ("int32", np.int32),
    ("bool", np.bool_), ("uint8", np.uint8), ("int64", np.int64),
)

_LOGGER = None  # TensorRT wants one logger per process
_PLUGINS_READY = None  # init_libnvinfer_plugins' answer, once per process (None: not called)


def first_line(exc: BaseException) -> str:
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__


def trt_call(path, fn, *args, hint: str = ""):
    """``fn(*args)`` for a TensorRT call that reports failure by returning False or None, or by
    raising RuntimeError (as the bindings' PY_ASSERT_RUNTIME_ERROR does); both become one
    ``ToolkitError`` line naming the plan ``path``, the call and its arguments. Nothing is
    formatted unless the call fails (it runs once per decode step)."""
    try:
        result = fn(*args)
    except RuntimeError as exc:
        raise ToolkitError(f"{_call_text(path, fn, args)} failed: {first_line(exc)}{hint}") \
            from None
    if result is False or result is None:
        raise ToolkitError(f"{_call_text(path, fn, args)} failed (TensorRT returned {result}; "
                           f"see its log above){hint}")
    return result


def _call_text(path, fn, args) -> str:
    shown = ", ".join(f"{a:#x}" if isinstance(a, int) and a > 1 << 20 else repr(a) for a in args)
    return f"{path}: TensorRT {getattr(fn, '__name__', 'call')}({shown})"


def _import_tensorrt(path: Path):
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise ToolkitError(
            f"cannot run engine {path}: TensorRT is not installed ({exc}); run the .onnx with "
            "ONNX Runtime here, or run the engine on the device it was built on"
        ) from None
    return trt


def _import_pycuda(path: Path):
    return import_pycuda(f"cannot run engine {path}")


def numpy_dtype(trt, trt_dtype, name: str) -> np.dtype:
    """numpy dtype of a TensorRT tensor; bf16/fp8/int4 (no numpy type) are refused."""
    for attr, np_type in _TRT_TO_NUMPY:
        if hasattr(trt, attr) and trt_dtype == getattr(trt, attr):
            return np.dtype(np_type)
    raise ToolkitError(f"tensor {name!r} has TensorRT type {trt_dtype}, which numpy cannot hold")


class TrtSession(Session):
    backend = "tensorrt"
    address_alignment = 256  # set_tensor_address requires it

    def __init__(self, path: Path):
        from engines.manifest import check_compatible, check_plan_file, is_version_compatible

        path = Path(path)
        trt = _import_tensorrt(path)
        cuda = _import_pycuda(path)
        self.manifest = check_plan_file(path)
        device = current_cuda_device(cuda, f"cannot run engine {path}")
        major, minor = device.compute_capability()
        check_compatible(self.manifest, str(trt.__version__), device.name(), f"{major}.{minor}")
        # the runtime outlives the engine
        self._runtime, self._engine = _deserialize(
            trt, path, manifest_dla_core(self.manifest),
            host_code=is_version_compatible(self.manifest))
        self._stream = cuda.Stream()
        inputs, outputs = _io_specs(trt, self._engine, path)
        profiles = [_engine_profile(self._engine, inputs, index)
                    for index in range(self._engine.num_optimization_profiles)]
        super().__init__(path, inputs, outputs, profiles)
        self._io_names = tuple(inputs) + tuple(outputs)
        self._contexts = [self._context_for(index) for index in range(len(profiles))]
        # Per context: input name -> shape, output name -> inferred shape, name -> address, as
        # last given to (or computed by) TensorRT.
        self._shapes: List[Dict[str, Shape]] = [{} for _ in profiles]
        self._output_shapes: List[Dict[str, Shape]] = [{} for _ in profiles]
        self._addresses: List[Dict[str, int]] = [{} for _ in profiles]
        self._timer = _StreamTimer(cuda, self._stream, self.last_timings)

    def _context_for(self, profile: int):
        context = trt_call(self.path, self._engine.create_execution_context,
                           hint=f" (for profile {profile}: out of GPU memory?)")
        # Returns True or raises RuntimeError; trt_call handles both (and a False, harmlessly).
        trt_call(self.path, context.set_optimization_profile_async, profile, self._stream.handle)
        self._stream.synchronize()
        return context

    def allocate(self, nbytes: int):
        return CudaArena(nbytes, self._stream, timer=self._timer)

    def run(self, bindings: Mapping[str, Binding], profile: int = 0,
            check: bool = True) -> None:
        if check:
            self.check_bindings(bindings, profile)
        context = self._contexts[profile]
        self._set_input_shapes(context, bindings, profile)
        self._check_output_shapes(bindings, profile)
        addresses = self._addresses[profile]
        for name in self._io_names:
            address = bindings[name].arena.ptr + bindings[name].offset
            if addresses.get(name) != address:
                trt_call(self.path, context.set_tensor_address, name, address)
                addresses[name] = address
        self._timer.begin_compute()
        trt_call(self.path, context.execute_async_v3, self._stream.handle)
        self._timer.end_compute()

    def _set_input_shapes(self, context, bindings: Mapping[str, Binding], profile: int) -> None:
        """Give TensorRT the input shapes that changed, then refresh the output shapes."""
        shapes = self._shapes[profile]
        changed = False
        for name in self.inputs:
            shape = bindings[name].shape
            if shapes.get(name) != shape:
                trt_call(self.path, context.set_input_shape, name, shape)
                shapes[name] = shape
                changed = True
        if changed:
            self._infer_output_shapes(context, profile)

    def _infer_output_shapes(self, context, profile: int) -> None:
        try:
            unresolved = context.infer_shapes()
        except RuntimeError as exc:  # raised by the bindings when inference hits an error
            raise ToolkitError(f"{self.path}: infer_shapes on profile {profile} failed: "
                               f"{first_line(exc)}") from None
        if unresolved:
            raise ToolkitError(f"TensorRT could not infer the shapes of {list(unresolved)}")
        for name in self.outputs:
            self._output_shapes[profile][name] = tuple(context.get_tensor_shape(name))

    def _check_output_shapes(self, bindings: Mapping[str, Binding], profile: int) -> None:
        expected_shapes = self._output_shapes[profile]
        for name in self.outputs:
            expected = expected_shapes[name]
            if bindings[name].shape != expected:
                raise ToolkitError(
                    f"output {name!r} of {self.path.name} is bound with shape "
                    f"{bindings[name].shape}; these inputs give {expected}"
                )

    def output_shapes(self, input_shapes: Mapping[str, Sequence[int]],
                      profile: int = 0) -> Dict[str, Shape]:
        self._check_profile_index(profile)
        context = self._contexts[profile]
        for name in self.inputs:
            if name not in input_shapes:
                raise ToolkitError(f"no shape given for input {name!r}")
            self.check_shape(name, input_shapes[name], profile)
            shape = tuple(int(d) for d in input_shapes[name])
            trt_call(self.path, context.set_input_shape, name, shape, hint=f" (profile {profile})")
            self._shapes[profile][name] = shape
        self._infer_output_shapes(context, profile)
        return dict(self._output_shapes[profile])

    def synchronize(self) -> None:
        self._stream.synchronize()
        self._timer.collect()

    def close(self) -> None:
        """Contexts before the engine before the runtime, as TensorRT requires."""
        if getattr(self, "_contexts", None):
            self._stream.synchronize()
        self._contexts = []
        self._engine = None
        self._runtime = None


def manifest_dla_core(manifest: Mapping) -> int | None:
    """The DLA core a plan was built for (``build_options.dla_core``), or None for the GPU."""
    core = (manifest.get("build_options") or {}).get("dla_core")
    return None if core is None else int(core)


def _deserialize(trt, path: Path, dla_core: int | None = None, host_code: bool = False):
    global _LOGGER
    if _LOGGER is None:
        _LOGGER = trt.Logger(trt.Logger.WARNING)
    plugins_ready = _init_plugins(trt)
    try:
        runtime = trt.Runtime(_LOGGER)
    except (RuntimeError, TypeError) as exc:  # pybind: "factory function returned nullptr"
        raise ToolkitError(f"TensorRT could not create a runtime for {path}: {first_line(exc)} "
                           "(is the GPU usable? see TensorRT's log above)") from None
    if dla_core is not None:
        # IRuntime::setDLACore (the "DLA_core" property in pyCore.cpp, 8.5 .. 11.1): must be set
        # before deserializing, or a DLA engine runs on core 0 whatever it was built for.
        try:
            runtime.DLA_core = dla_core
        except (RuntimeError, TypeError) as exc:
            raise ToolkitError(f"TensorRT could not select DLA core {dla_core} for {path}: "
                               f"{first_line(exc)}") from None
    if host_code:
        # A version-compatible plan embeds its lean runtime (host code), which IRuntime refuses
        # unless engine_host_code_allowed (pyCore.cpp: v8.6.1, v10.3.0, v11.1).
        runtime.engine_host_code_allowed = True
    try:
        engine = runtime.deserialize_cuda_engine(path.read_bytes())
    except RuntimeError as exc:
        raise ToolkitError(f"TensorRT {trt.__version__} could not deserialize {path}: "
                           f"{first_line(exc)}") from None
    if engine is None:
        plugins = ("" if plugins_ready is not False else
                   "; the TensorRT plugin library did not initialize, so a plugin layer in the "
                   "plan has no creator")
        raise ToolkitError(
            f"TensorRT {trt.__version__} could not deserialize {path} (see its log above{plugins})"
            ": rebuild it with make engine on this device"
        )
    return runtime, engine


def _init_plugins(trt) -> bool | None:
    """Register libnvinfer_plugin's creators once per process, as Polygraphy does before it
    deserializes; False when the library did not initialize, None where the bindings lack the
    call (the lean/dispatch runtimes). A plan without plugin layers loads either way, so the
    answer is only reported if deserialization then fails."""
    global _PLUGINS_READY
    if _PLUGINS_READY is None:
        init = getattr(trt, "init_libnvinfer_plugins", None)
        if init is None:
            return None
        try:
            _PLUGINS_READY = bool(init(_LOGGER, ""))
        except RuntimeError:
            _PLUGINS_READY = False
    return _PLUGINS_READY


def _io_specs(trt, engine, path: Path) -> Tuple[Dict[str, TensorSpec], Dict[str, TensorSpec]]:
    inputs, outputs = {}, {}
    for index in range(engine.num_io_tensors):
        name = engine.get_tensor_name(index)
        is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
        if is_input and getattr(engine, "is_shape_inference_io", lambda _: False)(name):
            raise ToolkitError(f"engine {path}: input {name!r} is a shape tensor (unsupported)")
        spec = TensorSpec(name, numpy_dtype(trt, engine.get_tensor_dtype(name), name),
                          tuple(engine.get_tensor_shape(name)), is_input)
        (inputs if is_input else outputs)[name] = spec
    return inputs, outputs


def _engine_profile(engine, inputs: Mapping[str, TensorSpec], index: int) -> ProfileShapes:
    profile = {}
    for name in inputs:
        low, opt, high = engine.get_tensor_profile_shape(name, index)
        profile[name] = (tuple(low), tuple(opt), tuple(high))
    return profile


class _StreamTimer:
    """CUDA events around the copies and the execution of the last run on one stream."""

    def __init__(self, cuda, stream, timings: Dict[str, float]):
        self._stream = stream
        self._timings = timings  # the session's last_timings, updated in place
        self._h2d_start, self._compute_start, self._compute_end, self._d2h_end = (
            cuda.Event() for _ in range(4))
        self._uploading = False  # an upload was queued since the last run
        self._run_had_upload = False
        self._downloaded = False
        self._pending = False  # a run whose events are not collected yet

    def before_upload(self) -> None:
        if not self._uploading:
            self._h2d_start.record(self._stream)
            self._uploading = True

    def begin_compute(self) -> None:
        self._compute_start.record(self._stream)

    def end_compute(self) -> None:
        self._compute_end.record(self._stream)
        self._run_had_upload, self._uploading = self._uploading, False
        self._downloaded = False
        self._pending = True

    def after_download(self) -> None:
        if self._pending:
            self._d2h_end.record(self._stream)
            self._downloaded = True

    def collect(self) -> None:
        """After the stream is synchronized: event times -> milliseconds."""
        if not self._pending:
            return
        timings = self._timings
        timings["h2d_ms"] = (self._compute_start.time_since(self._h2d_start)
                             if self._run_had_upload else 0.0)
        timings["compute_ms"] = self._compute_end.time_since(self._compute_start)
        timings["d2h_ms"] = (self._d2h_end.time_since(self._compute_end)
                             if self._downloaded else 0.0)
        self._pending = False
