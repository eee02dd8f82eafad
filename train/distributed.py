"""Training on several processes (GPUs or CPU ranks) launched by ``torchrun``.

``torchrun --nproc_per_node N -m train.imdb ...`` starts N copies of the command with RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT set; :func:`setup` reads them and joins the
process group (NCCL on CUDA, gloo on CPU). Without them, or with WORLD_SIZE=1, everything here
is a no-op and training is the single-process loop it always was.

How the trainer uses it (train/trainer.py): every rank builds the same global batch list from
(seed, epoch); each step's global batch is split by rank (:func:`shard`), each rank's mean loss is
weighted by its share of the examples, so DistributedDataParallel's gradient average equals the
single-process mean over the global batch and the LR schedule counts the same steps. Rank 0
evaluates and writes checkpoints, history, plots and logs; the others print nothing.

Environment (besides torchrun's): ``DIST_BACKEND`` (nccl | gloo, to override the choice),
``DIST_TIMEOUT_S`` (seconds a collective may wait for a missing rank before the job fails;
default 1800, as long as rank 0's evaluation of an epoch may take).
"""

from __future__ import annotations

import atexit
import datetime
import hashlib
import json
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, TypeVar

import torch

from common.errors import ToolkitError

T = TypeVar("T")
DEFAULT_TIMEOUT_S = 1800


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    backend: Optional[str] = None  # None: not distributed

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        if self.backend == "nccl":
            return torch.device("cuda", self.local_rank)
        if self.enabled:
            return torch.device("cpu")  # gloo: CPU ranks (DIST_BACKEND=gloo on a GPU box too)
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")


_CONTEXT: Optional[Context] = None


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ToolkitError(f"environment variable {name}={value!r}: expected an integer") from None


def setup() -> Context:
    """Join the torchrun job described by the environment (once per process); the context.

    Rank != 0 stops printing to stdout from here on, so logs come from rank 0 only."""
    global _CONTEXT
    if _CONTEXT is not None:
        return _CONTEXT
    world_size = _env_int("WORLD_SIZE", 1)
    if world_size <= 1:
        _CONTEXT = Context()
        return _CONTEXT
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    backend = choose_backend(os.environ.get("DIST_BACKEND", ""))
    if backend == "nccl":
        _use_gpu(local_rank)
    timeout_s = _env_int("DIST_TIMEOUT_S", DEFAULT_TIMEOUT_S)
    import torch.distributed as dist

    try:
        dist.init_process_group(
            backend, rank=rank, world_size=world_size,
            timeout=datetime.timedelta(seconds=timeout_s),
        )
    except Exception as exc:  # rendezvous, NCCL or socket errors: one line naming the backend
        raise ToolkitError(
            f"rank {rank}: init_process_group(backend={backend!r}) failed "
            f"({_first_line(exc)}); check MASTER_ADDR/MASTER_PORT or --rdzv-endpoint"
        ) from None
    atexit.register(teardown)
    _CONTEXT = Context(rank, world_size, local_rank,
                       _env_int("LOCAL_WORLD_SIZE", world_size), backend)
    if rank != 0:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115  (for the life of the process)
    return _CONTEXT


def context() -> Context:
    """The current context without joining anything (single process before setup)."""
    return _CONTEXT or Context()


def choose_backend(requested: str) -> str:
    """nccl with CUDA, gloo without; a requested backend this build or machine lacks is a
    one-line error naming it and the fix."""
    import torch.distributed as dist

    if not dist.is_available():
        raise ToolkitError("torch.distributed is not available in this PyTorch build; "
                           "install a PyTorch build with distributed support")
    requested = requested.strip().lower()
    if requested not in ("", "nccl", "gloo"):
        raise ToolkitError(f"DIST_BACKEND={requested!r}: expected nccl or gloo")
    backend = requested or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl" and not torch.cuda.is_available():
        raise ToolkitError("DIST_BACKEND nccl needs CUDA GPUs and none is visible; "
                           "unset DIST_BACKEND to train on CPU ranks with gloo")
    if backend == "nccl" and not dist.is_nccl_available():
        raise ToolkitError("backend nccl is not available in this PyTorch build; install a CUDA "
                           "build of PyTorch with NCCL (Linux), or set DIST_BACKEND=gloo")
    if backend == "gloo" and not dist.is_gloo_available():
        raise ToolkitError("backend gloo is not available in this PyTorch build; "
                           "install the PyTorch wheel from pytorch.org")
    return backend


def _use_gpu(local_rank: int) -> None:
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise ToolkitError(f"LOCAL_RANK {local_rank} but only {count} CUDA devices are visible; "
                           f"use torchrun --nproc_per_node {count} or fewer")
    torch.cuda.set_device(local_rank)


def teardown() -> None:
    """Leave the process group (registered with atexit by setup)."""
    global _CONTEXT
    import gc

    import torch.distributed as dist

    # Anything still holding the process group (a DistributedDataParallel in a reference cycle)
    # would otherwise free gloo's threads during interpreter shutdown, which can abort.
    gc.collect()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _CONTEXT = None


def barrier() -> None:
    if context().enabled:
        import torch.distributed as dist

        dist.barrier()


def broadcast(obj: T) -> T:
    """Rank 0's ``obj`` on every rank (picklable objects)."""
    if not context().enabled:
        return obj
    import torch.distributed as dist

    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def gather(obj: Any) -> List[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    ctx = context()
    if not ctx.enabled:
        return [obj]
    import torch.distributed as dist

    out: List[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def all_sum(value: float) -> float:
    """Sum of a float over the ranks (fp64 so the sum is exact for loss bookkeeping)."""
    ctx = context()
    if not ctx.enabled:
        return value
    import torch.distributed as dist

    device = torch.device("cuda", ctx.local_rank) if ctx.backend == "nccl" else None
    total = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return float(total.item())


def on_rank0_then_share(make: Callable[[], T]) -> T:
    """Run ``make`` on rank 0 only (it may write files) and give its result to every rank:
    the tokenizer is trained and saved once, and every rank gets the same one."""
    ctx = context()
    if not ctx.enabled:
        return make()
    result = None
    error = None
    if ctx.is_main:
        try:
            result = make()
        except ToolkitError as exc:
            error = str(exc)
    result, error = broadcast((result, error))
    if error is not None:
        raise ToolkitError(error)
    return result


def check_same_config(config: Dict[str, Any], what: str = "training config") -> None:
    """Every rank must train the same thing: compare a hash of ``config`` (JSON-able) across
    ranks; a difference is the same one-line error on every rank, naming the first key that
    differs."""
    ctx = context()
    if not ctx.enabled:
        return
    flat = _flatten(json.loads(json.dumps(config, sort_keys=True, default=str)))
    text = json.dumps(flat, sort_keys=True)
    digests = gather(hashlib.sha256(text.encode("utf-8")).hexdigest()[:12])
    differing = [r for r, d in enumerate(digests) if d != digests[0]]
    if not differing:
        return
    configs = gather(flat)  # only on a mismatch: every rank sees it, so all of them gather
    other = configs[differing[0]]
    key = next((k for k in sorted(set(flat) | set(other))
                if configs[0].get(k) != other.get(k)), "?")
    raise ToolkitError(
        f"ranks disagree on the {what}: rank(s) {differing} differ from rank 0 in {key} "
        f"({_short(other.get(key))} vs {_short(configs[0].get(key))}); start every node with "
        "the same options and data"
    )


def _flatten(obj: Any, prefix: str = "") -> Dict[str, Any]:
    if not isinstance(obj, dict):
        return {prefix: obj}
    flat: Dict[str, Any] = {}
    for key, value in obj.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def shard(batch: Sequence[Any], rank: int, world_size: int) -> Tuple[Any, float]:
    """This rank's part of a global batch and its weight (its share of the examples).

    Strided (``batch[rank::world_size]``): batches are sorted by length within buckets, so every
    rank gets a similar mix of lengths. Sizes differ by at most one. A rank left without an
    example (a global batch smaller than the world) runs the first example with weight 0, so it
    still joins the gradient all-reduce and contributes nothing."""
    try:
        total = len(batch)
        part = batch[rank::world_size]
    except TypeError:
        raise ToolkitError(
            f"a task's batch of type {type(batch).__name__} cannot be split across ranks; "
            "Task.batches must return sliceable batches (lists or arrays of examples)"
        ) from None
    if total == 0:
        raise ToolkitError("a task returned an empty batch")
    if len(part) == 0:
        return batch[:1], 0.0
    return part, len(part) / total


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# --- DistributedDataParallel around a trainer Task ---------------------------------------------

class _Opaque:
    """Carries a batch through DistributedDataParallel.forward untouched (DDP would otherwise
    walk lists and move tensors itself; the task moves what it needs)."""

    def __init__(self, batch: Any):
        self.batch = batch


class _TaskLoss(torch.nn.Module):
    """The task's loss as a module, so DistributedDataParallel sees the forward of whatever the
    task calls (``model(...)``, ``model.encode(...)``, the tied embedding) without task changes."""

    def __init__(self, task: Any, model: torch.nn.Module, device: torch.device):
        super().__init__()
        self.task, self.model, self.device = task, model, device

    def forward(self, holder: _Opaque) -> torch.Tensor:
        return self.task.loss(self.model, holder.batch, self.device)


def wrap_task_loss(task: Any, model: torch.nn.Module, device: torch.device,
                   probe_batch: Any) -> torch.nn.Module:
    """DistributedDataParallel over ``task.loss(model, batch, device)``.

    A task may leave parameters out of its loss (masked-LM pretraining skips the classifier
    head): DDP must then look for them every step (find_unused_parameters), and leaves their
    gradients None, as one process does. Asked only when a probe on ``probe_batch`` finds such
    parameters on some rank: the search costs a graph traversal per step."""
    from torch.nn.parallel import DistributedDataParallel

    unused = any(gather(_has_unused_parameters(task, model, device, probe_batch)))
    return DistributedDataParallel(
        _TaskLoss(task, model, device),
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=unused,
    )


def _has_unused_parameters(task: Any, model: torch.nn.Module, device: torch.device,
                           batch: Any) -> bool:
    """Whether the task's loss on ``batch`` leaves a trainable parameter without a gradient.
    The RNG is restored afterwards, so the probe changes nothing a resumed run would see."""
    from train.checkpoint import capture_rng_state, restore_rng_state

    rng = capture_rng_state()
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(task.loss(model, batch, device), params, allow_unused=True)
    restore_rng_state(rng)
    return any(g is None for g in grads)


def sharded_loss(ddp: torch.nn.Module, batch: Sequence[Any], ctx: Context):
    """(this rank's mean loss over its part of ``batch``, that part's share of the examples)."""
    part, weight = shard(batch, ctx.rank, ctx.world_size)
    return ddp(_Opaque(part)), weight
