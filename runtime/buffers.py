"""Memory for the runtime: 256-byte alignment, arenas, bindings and the layout of named tensors.

One *arena* per use (a classifier batch, a generator's KV cache and step buffers) is allocated
once at the largest shapes of a profile and reused for every request; tensors are *bindings*:
``(arena, offset, shape)``. Offsets are multiples of 256 bytes because TensorRT's
``set_tensor_address`` requires 256-byte aligned pointers.

Arenas (all expose ``host``, ``ptr``, ``nbytes``, ``upload``, ``download``, ``close``):

- ``HostArena``: ONNX Runtime on the CPU. ``host`` is the memory the graph reads and writes
  (``ptr`` is its address), so ``upload``/``download`` only check the range.
- ``CudaArena``: TensorRT, or ONNX Runtime with the CUDA provider. ``host`` is page-locked
  (``pycuda.driver.pagelocked_empty``), the device block comes from ``mem_alloc``, and
  ``upload``/``download`` are async copies on the session's one stream. pycuda is imported
  only when such an arena is made.

``Binding`` lives here (``runtime.session`` re-exports it) so that this module depends on nothing
in the runtime. A binding is mutable on purpose: a decode loop may move ``offset``/``shape`` of
the same object instead of making a new one per token.
"""
from __future__ import annotations

import importlib
from typing import Dict, Iterable, Mapping, Sequence, Tuple

import numpy as np

from common.errors import ToolkitError

ALIGNMENT = 256  # bytes; TensorRT's requirement for every tensor address


def import_pycuda(context: str, import_module=importlib.import_module):
    """``pycuda.driver`` with the device's primary context retained and pushed
    (``pycuda.autoprimaryctx``, the context TensorRT shares).

    context: what the caller is doing, the start of the error line ("cannot run engine X").
    A missing pycuda (ImportError) and a driver that loads but finds no usable GPU (pycuda's
    ``Error``/``LogicError``/``RuntimeError`` from ``cuInit``/``cuDeviceGet``, raised while
    ``pycuda.autoprimaryctx`` is imported) both become one ``ToolkitError`` line.
    import_module: how modules are imported (tests pass a function that fails as pycuda does).
    """
    try:
        cuda = import_module("pycuda.driver")
    except ImportError as exc:
        raise ToolkitError(f"{context}: pycuda is missing or cannot load the CUDA driver "
                           f"({_first_line(exc)}); pip install pycuda") from None
    driver_errors = (getattr(cuda, "Error", RuntimeError), RuntimeError)
    try:
        import_module("pycuda.autoprimaryctx")
    except ImportError as exc:
        raise ToolkitError(f"{context}: pycuda.autoprimaryctx is missing ({_first_line(exc)}); "
                           "pycuda 2021.1 or later has it") from None
    except driver_errors as exc:
        raise ToolkitError(f"{context}: the CUDA driver loaded but no GPU is usable "
                           f"({_first_line(exc)}); check nvidia-smi (or tegrastats on a "
                           "Jetson) and CUDA_VISIBLE_DEVICES") from None
    return cuda


def current_cuda_device(cuda, context: str):
    """The device of the CUDA context current in this thread (``cuda`` is pycuda.driver).

    pycuda's context stack is per thread and ``pycuda.autoprimaryctx`` pushes the primary
    context only in the thread that first imports it; in any other thread
    ``Context.get_device()`` fails in ``cuCtxGetDevice`` with pycuda's ``LogicError``. That case
    becomes one ToolkitError line saying what to do, whichever way it shows.
    """
    import threading

    where = threading.current_thread().name
    fix = (f"{context}: no CUDA context is current in thread {where!r} (pycuda.autoprimaryctx "
           "made the GPU's primary context current only in the thread that first imported it); "
           "open and use TensorRT sessions in that thread, or call "
           "pycuda.autoprimaryctx.device.retain_primary_context().push() in this one first")
    if cuda.Context.get_current() is None:
        raise ToolkitError(fix)
    logic_error = getattr(cuda, "LogicError", RuntimeError)
    try:
        return cuda.Context.get_device()
    except logic_error as exc:
        raise ToolkitError(f"{fix} ({_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__


def align(nbytes: int, alignment: int = ALIGNMENT) -> int:
    """Round ``nbytes`` up to a multiple of ``alignment`` (align(1) == 256, align(256) == 256)."""
    return -(-int(nbytes) // alignment) * alignment


def tensor_nbytes(shape: Sequence[int], dtype) -> int:
    count = 1
    for dim in shape:
        count *= int(dim)
    return count * np.dtype(dtype).itemsize


def _check_range(arena, offset: int, nbytes: int | None) -> int:
    """Check ``[offset, offset + nbytes)`` is inside the arena; nbytes defaults to the rest."""
    if nbytes is None:
        nbytes = arena.nbytes - offset
    if offset < 0 or nbytes < 0 or offset + nbytes > arena.nbytes:
        raise ToolkitError(
            f"range [{offset}, {offset + nbytes}) is outside the arena of {arena.nbytes} bytes"
        )
    return nbytes


class HostArena:
    """An arena in ordinary host memory, for backends whose device is the CPU."""

    copies = False  # host memory is the tensor memory: upload/download only check the range

    def __init__(self, nbytes: int):
        if nbytes <= 0:
            raise ToolkitError(f"arena size {nbytes} bytes: expected a positive size")
        self.nbytes = align(nbytes)
        # numpy only promises 16-byte alignment: over-allocate and slice to the next 256 bytes.
        self._raw = np.zeros(self.nbytes + ALIGNMENT, dtype=np.uint8)  # (nbytes + 256,) uint8
        start = (-self._raw.ctypes.data) % ALIGNMENT
        self.host = self._raw[start:start + self.nbytes]  # (nbytes,) uint8, 256-aligned
        self.ptr = int(self.host.ctypes.data)

    def upload(self, offset: int = 0, nbytes: int | None = None) -> None:
        _check_range(self, offset, nbytes)  # host memory is the device memory: nothing to copy

    def download(self, offset: int = 0, nbytes: int | None = None) -> None:
        _check_range(self, offset, nbytes)

    def close(self) -> None:
        """Nothing to free early; numpy releases the memory with the last reference."""


class CudaArena:
    """Page-locked host block + device block of the same size, copied on one CUDA stream.

    ``timer`` (optional) gets ``before_upload()`` / ``after_download()`` calls so a backend can
    record CUDA events around the copies (see ``runtime.trt_backend``).
    """

    copies = True  # upload/download queue real copies on the stream

    def __init__(self, nbytes: int, stream, timer=None):
        import pycuda.driver as cuda

        if nbytes <= 0:
            raise ToolkitError(f"arena size {nbytes} bytes: expected a positive size")
        self.nbytes = align(nbytes)
        self._cuda = cuda
        self._stream = stream
        self._timer = timer
        self._device = None
        try:
            self.host = cuda.pagelocked_empty(self.nbytes, np.uint8)  # (nbytes,) uint8, pinned
            self.host.fill(0)
            self._device = cuda.mem_alloc(self.nbytes)  # (nbytes,) bytes, 256-aligned by CUDA
        except cuda.Error as exc:  # pycuda's MemoryError/LogicError: out of (pinned) memory
            raise ToolkitError(f"cannot allocate an arena of {self.nbytes} bytes (pinned host + "
                               f"GPU): {_first_line(exc)}") from None
        self.ptr = int(self._device)
        if self.ptr % ALIGNMENT:
            raise ToolkitError(f"cuMemAlloc returned {self.ptr:#x}, not {ALIGNMENT}-byte aligned")
        # Start from zeros on the device too, so a never-written cache slot reads as 0.
        cuda.memset_d8(self.ptr, 0, self.nbytes)

    def upload(self, offset: int = 0, nbytes: int | None = None) -> None:
        nbytes = _check_range(self, offset, nbytes)
        if nbytes == 0:  # an empty past (prefill) has nothing to copy
            return
        if self._timer is not None:
            self._timer.before_upload()
        self._cuda.memcpy_htod_async(
            self.ptr + offset, self.host[offset:offset + nbytes], self._stream
        )

    def download(self, offset: int = 0, nbytes: int | None = None) -> None:
        nbytes = _check_range(self, offset, nbytes)
        if nbytes == 0:
            return
        self._cuda.memcpy_dtoh_async(
            self.host[offset:offset + nbytes], self.ptr + offset, self._stream
        )
        if self._timer is not None:
            self._timer.after_download()

    def close(self) -> None:
        if self._device is not None:
            self._device.free()
            self._device = None


class Binding:
    """A tensor placed in an arena: ``arena.ptr + offset`` holds ``shape`` elements.

    The dtype is the session's (``session.inputs[name].dtype``); ``view(dtype)`` gives the
    numpy host view, e.g. ``Binding(arena, 0, (2, 7)).view(np.int32)``.
    """

    __slots__ = ("arena", "offset", "shape")

    def __init__(self, arena, offset: int, shape: Sequence[int]):
        self.arena = arena
        self.offset = int(offset)
        self.shape = tuple(int(d) for d in shape)

    @property
    def ptr(self) -> int:
        return self.arena.ptr + self.offset

    def nbytes(self, dtype) -> int:
        return tensor_nbytes(self.shape, dtype)

    def view(self, dtype) -> np.ndarray:
        """The host memory of this tensor as a numpy array of ``shape`` (no copy)."""
        nbytes = _check_range(self.arena, self.offset, self.nbytes(dtype))
        raw = self.arena.host[self.offset:self.offset + nbytes]
        return raw.view(np.dtype(dtype)).reshape(self.shape)

    def upload(self, dtype) -> None:
        self.arena.upload(self.offset, self.nbytes(dtype))

    def download(self, dtype) -> None:
        self.arena.download(self.offset, self.nbytes(dtype))

    def __repr__(self) -> str:
        return f"Binding(offset={self.offset}, shape={self.shape})"


class Slot:
    """Where one named tensor lives in a plan: its offset and its largest shape and size."""

    __slots__ = ("name", "offset", "shape", "dtype", "nbytes")

    def __init__(self, name: str, offset: int, shape: Tuple[int, ...], dtype: np.dtype):
        self.name = name
        self.offset = offset
        self.shape = shape
        self.dtype = dtype
        self.nbytes = tensor_nbytes(shape, dtype)


class BufferPlan:
    """Lays out named tensors at their largest shapes in one arena, each offset 256-aligned.

    >>> plan = BufferPlan()
    >>> plan.add("input_ids", (64, 512), np.int32)     # offset 0
    >>> plan.add("logits", (64, 2), np.float32)        # offset 131072
    >>> arena = session.allocate(plan.nbytes)
    >>> ids = plan.binding(arena, "input_ids", (8, 100))  # a smaller shape in the same slot
    """

    def __init__(self):
        self._slots: Dict[str, Slot] = {}
        self._end = 0  # first free byte

    @classmethod
    def from_shapes(cls, shapes: Mapping[str, Tuple[Sequence[int], object]]) -> BufferPlan:
        """``{name: (max_shape, dtype)}`` in order -> plan."""
        plan = cls()
        for name, (shape, dtype) in shapes.items():
            plan.add(name, shape, dtype)
        return plan

    @classmethod
    def for_session(cls, session, profile: int = 0,
                    names: Iterable[str] | None = None) -> BufferPlan:
        """Every input and output of ``session`` (or only ``names``) at profile ``profile``'s
        largest shapes; outputs sized by ``session.output_shapes`` of those input shapes."""
        max_inputs = session.max_input_shapes(profile)
        shapes = dict(max_inputs)
        shapes.update(session.output_shapes(max_inputs, profile))
        specs = {**session.inputs, **session.outputs}
        wanted = list(specs) if names is None else list(names)
        plan = cls()
        for name in wanted:
            if name not in specs:
                raise ToolkitError(f"tensor {name!r} is not an input or output of {session.path}")
            plan.add(name, shapes[name], specs[name].dtype)
        return plan

    def add(self, name: str, shape: Sequence[int], dtype) -> int:
        """Reserve a slot for ``name`` at its largest ``shape``; returns its offset."""
        if name in self._slots:
            raise ToolkitError(f"tensor {name!r} is already in the buffer plan")
        shape = tuple(int(d) for d in shape)
        if any(d < 0 for d in shape):
            raise ToolkitError(f"tensor {name!r}: shape {shape} has a negative (dynamic) dimension")
        offset = align(self._end)
        slot = Slot(name, offset, shape, np.dtype(dtype))
        self._slots[name] = slot
        self._end = offset + slot.nbytes
        return offset

    @property
    def nbytes(self) -> int:
        """Arena size this plan needs (at least one aligned block, so an empty plan is valid)."""
        return max(align(self._end), ALIGNMENT)

    @property
    def names(self) -> Tuple[str, ...]:
        return tuple(self._slots)

    def __contains__(self, name: str) -> bool:
        return name in self._slots

    def slot(self, name: str) -> Slot:
        if name not in self._slots:
            raise ToolkitError(f"tensor {name!r} is not in the buffer plan; it has {self.names}")
        return self._slots[name]

    def offset(self, name: str) -> int:
        return self.slot(name).offset

    def span(self, name: str) -> Tuple[int, int]:
        """(offset, nbytes) of ``name``'s slot."""
        slot = self.slot(name)
        return slot.offset, slot.nbytes

    def binding(self, arena, name: str, shape: Sequence[int] | None = None) -> Binding:
        """A binding of ``name`` at ``shape`` (default: its largest) that must fit its slot."""
        slot = self.slot(name)
        shape = slot.shape if shape is None else tuple(int(d) for d in shape)
        if tensor_nbytes(shape, slot.dtype) > slot.nbytes:
            raise ToolkitError(
                f"tensor {name!r} shape {shape} does not fit its slot sized for {slot.shape}"
            )
        if arena.nbytes < self._end:
            raise ToolkitError(
                f"arena of {arena.nbytes} bytes is smaller than the plan ({self.nbytes})"
            )
        return Binding(arena, slot.offset, shape)

    def bindings(self, arena, shapes: Mapping[str, Sequence[int]]) -> Dict[str, Binding]:
        return {name: self.binding(arena, name, shape) for name, shape in shapes.items()}

    def view(self, arena, name: str, shape: Sequence[int] | None = None) -> np.ndarray:
        """numpy host view of ``name`` at ``shape`` (default: its largest), with its dtype."""
        return self.binding(arena, name, shape).view(self.slot(name).dtype)
