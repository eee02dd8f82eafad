"""The decoder's KV cache: allocated once for the whole context, position-major, as in llama2.c.

One block per layer and per K/V in a session arena::

    k_cache_l  # (max_seq, batch, kv_dim) fp32, position-major, at base_l
    v_cache_l  # (max_seq, batch, kv_dim) fp32, position-major

Each block starts on a 256-byte boundary and is sized for the largest batch; a request with a
smaller batch lays its blocks out with that batch, so positions stay contiguous. The slot of
position ``p`` is ``base_l + p * batch * kv_dim * itemsize``: a step with ``past`` cached and
``new`` fresh positions binds ``past_key_l`` to the prefix ``[0:past]`` and ``new_key_l`` to the
slot range ``[past:past+new]``, so the graph appends in place. Nothing is copied or allocated per
token.

Window outputs: a graph exported by this project also returns ``present_key_l`` (past + new,
batch, kv_dim), the concatenation the layer attends over. On ONNX Runtime (``windows=True``) it
is bound to positions ``[0:past+new]`` of the block itself: the past prefix the Concat reads and
the one it writes are then the same bytes, and ONNX Runtime's CPU Concat copies nothing for
them (a 4 MB window: 6 us bound in place against 120 us to a separate buffer), so the per-step
copy of every layer's cache that a Concat costs is gone. TensorRT makes no promise for outputs
that overlap inputs, so engines are built without these outputs (``engines.build_steps``) and
``windows=False`` binds none.

With windows, ``present_key_l`` is what updates the cache, so a decode step (``new == 1``)
points ``new_key_l`` at a scratch slot after the block's last position instead (Concat then
copies that one position into the window). The scratch slot never moves, so a decode step
re-binds 8 tensors fewer for a 4-layer model; prefill writes its new positions in place.

TensorRT's ``set_tensor_address`` needs 256-byte aligned addresses, so on TensorRT the slot
stride ``batch * kv_dim * itemsize`` must be a multiple of 256 (``aligned_slots=True``; a layout
that breaks it is refused with the nearest aligned choice). ONNX Runtime on the CPU reads and
writes unaligned float buffers correctly, so the ORT backend runs with ``aligned_slots=False``,
which the tiny test models (kv_dim 32, batch 1: a 128-byte stride) rely on.
"""
from __future__ import annotations

from math import gcd
from typing import Dict, Tuple

import numpy as np

from common.errors import ToolkitError
from runtime.buffers import ALIGNMENT, Binding, align

KINDS = ("key", "value")


def kv_block_nbytes(max_seq: int, max_batch: int, kv_dim: int, itemsize: int) -> int:
    """Bytes of one layer's K (or V) block, rounded up so the next block starts aligned."""
    return align(max_seq * max_batch * kv_dim * itemsize)


def kv_cache_nbytes(layers: int, max_seq: int, max_batch: int, kv_dim: int,
                    dtype: np.dtype = np.float32, windows: bool = False) -> int:
    """Arena bytes for the whole cache: 2 blocks (K, V) per layer (with windows, each block
    has one more position: the decode steps' scratch slot)."""
    return 2 * layers * kv_block_nbytes(max_seq + int(windows), max_batch, kv_dim,
                                        np.dtype(dtype).itemsize)


def check_slot_stride(batch: int, kv_dim: int, dtype: np.dtype) -> None:
    """Refuse a (batch, kv_dim, dtype) whose per-position stride is not 256-byte aligned."""
    itemsize = np.dtype(dtype).itemsize
    stride = batch * kv_dim * itemsize
    if stride % ALIGNMENT == 0:
        return
    kv_step = ALIGNMENT // gcd(ALIGNMENT, batch * itemsize)
    batch_step = ALIGNMENT // gcd(ALIGNMENT, kv_dim * itemsize)
    raise ToolkitError(
        f"KV cache slot stride batch*kv_dim*itemsize = {batch}*{kv_dim}*{itemsize} = {stride} "
        f"bytes (dtype {np.dtype(dtype).name}) is not a multiple of {ALIGNMENT}, which TensorRT "
        f"needs for tensor addresses: use kv_dim {align(kv_dim, kv_step)} or batch "
        f"{align(batch, batch_step)}"
    )


class KVCache:
    """Per-layer K/V blocks in ``arena`` from byte ``offset``; ``reset(batch)`` before a request."""

    def __init__(self, arena, offset: int, layers: int, max_seq: int, max_batch: int,
                 kv_dim: int, dtype: np.dtype = np.float32, aligned_slots: bool = True,
                 windows: bool = False):
        self.arena = arena
        self.windows = windows  # bind present_{kind}_l over the block (see the module docstring)
        self.layers = layers
        self.max_seq = max_seq
        self.max_batch = max_batch
        self.kv_dim = kv_dim
        self.dtype = np.dtype(dtype)
        self.aligned_slots = aligned_slots
        self.block_nbytes = kv_block_nbytes(max_seq + int(windows), max_batch, kv_dim,
                                            self.dtype.itemsize)
        if offset % ALIGNMENT or (aligned_slots and (int(arena.ptr) + offset) % ALIGNMENT):
            raise ToolkitError(
                f"KV cache offset {offset} (device address {int(arena.ptr) + offset:#x}) is not "
                f"a multiple of {ALIGNMENT}"
            )
        if offset + self.nbytes > arena.nbytes:
            raise ToolkitError(
                f"KV cache needs {self.nbytes} bytes from offset {offset}; the arena holds "
                f"{arena.nbytes}"
            )
        # base[(layer, kind)]: byte offset of that block in the arena, 256-aligned
        self.base: Dict[Tuple[int, str], int] = {}
        for layer in range(layers):
            for k, kind in enumerate(KINDS):
                self.base[(layer, kind)] = offset + (2 * layer + k) * self.block_nbytes
        # (block offset, past_*, new_*, present_* names) per block: named once, not per token
        self._tensors = [(self.base[(layer, kind)], f"past_{kind}_{layer}",
                          f"new_{kind}_{layer}", f"present_{kind}_{layer}")
                         for layer in range(layers) for kind in KINDS]
        self.batch = 0
        self.slot_nbytes = 0
        self.reset(max_batch)

    @property
    def nbytes(self) -> int:
        return 2 * self.layers * self.block_nbytes

    def reset(self, batch: int) -> None:
        """Lay the blocks out for ``batch`` rows (the cache content becomes meaningless)."""
        if not 1 <= batch <= self.max_batch:
            raise ToolkitError(f"batch {batch}: the KV cache was sized for 1..{self.max_batch}")
        if self.aligned_slots:
            check_slot_stride(batch, self.kv_dim, self.dtype)
        self.batch = batch
        self.slot_nbytes = batch * self.kv_dim * self.dtype.itemsize

    def slot_offset(self, layer: int, kind: str, position: int) -> int:
        """Byte offset in the arena of position ``position`` of one block."""
        return self.base[(layer, kind)] + position * self.slot_nbytes

    def block(self, layer: int, kind: str) -> np.ndarray:
        """Host view of one block: (max_seq, batch, kv_dim), position-major."""
        start = self.base[(layer, kind)]
        count = self.max_seq * self.batch * self.kv_dim
        flat = self.arena.host[start:start + count * self.dtype.itemsize].view(self.dtype)
        return flat.reshape(self.max_seq, self.batch, self.kv_dim)

    def make_bindings(self) -> Dict[str, Binding]:
        """One Binding per cache tensor of the graph, moved in place by ``update_bindings``."""
        bindings: Dict[str, Binding] = {}
        first_slot = (1, self.batch, self.kv_dim)
        for base, past_name, new_name, window_name in self._tensors:
            bindings[past_name] = Binding(self.arena, base, (0, self.batch, self.kv_dim))
            bindings[new_name] = Binding(self.arena, base, first_slot)
            if self.windows:
                bindings[window_name] = Binding(self.arena, base, first_slot)
        return bindings

    def update_bindings(self, bindings: Dict[str, Binding], past: int, new: int) -> None:
        """Point the bindings at one step: ``past_{kind}_l`` = positions [0:past] (input),
        ``new_{kind}_l`` = positions [past:past+new] (output, written in place by the graph) and,
        with windows, ``present_{kind}_l`` = positions [0:past+new] (output over the same bytes,
        which then writes the new positions) while a decode step's ``new_{kind}_l`` goes to the
        scratch slot.

        Moves the existing objects (no new Binding per token).
        """
        if past < 0 or new < 1 or past + new > self.max_seq:
            raise ToolkitError(
                f"KV step past={past}, new={new}: positions must fit in max_seq={self.max_seq}"
            )
        past_shape = (past, self.batch, self.kv_dim)
        new_shape = (new, self.batch, self.kv_dim)
        window_shape = (past + new, self.batch, self.kv_dim)
        # with windows, a decode step's new_* goes to the scratch slot at position max_seq
        new_position = self.max_seq if self.windows and new == 1 else past
        new_offset = new_position * self.slot_nbytes
        for base, past_name, new_name, window_name in self._tensors:
            past_binding = bindings[past_name]
            past_binding.offset, past_binding.shape = base, past_shape
            new_binding = bindings[new_name]
            new_binding.offset, new_binding.shape = base + new_offset, new_shape
            if self.windows:
                window = bindings[window_name]
                window.offset, window.shape = base, window_shape
