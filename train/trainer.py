"""The training loop shared by both models.

AdamW, linear warmup then cosine decay, gradient clipping, mixed precision on CUDA, evaluation
each epoch, best-checkpoint selection, history JSON and curves, optional Weights & Biases.

Exact resume: batches are a function of (seed, epoch) and the schedule of the total step count,
and a checkpoint holds model, optimizer, scheduler, grad-scaler and RNG states; so N steps,
then a resumed run of N more, ends with the weights of one run of 2N steps.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Protocol

import torch
from tqdm import tqdm

from common.errors import ToolkitError
from common.fileio import atomic_write_json, read_json
from train.checkpoint import load_checkpoint, restore_rng_state, save_checkpoint
from train.model import ModelConfig, build_model, count_parameters


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 3
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_steps: int = 200
    grad_clip: float = 1.0
    seed: int = 0
    threads: int = 0  # CPU threads for torch; 0 = all cores
    max_steps: int = 0  # stop (and save last.pt) after this many steps in total; 0 = no limit
    amp: bool = True  # mixed precision on CUDA (ignored on CPU)


class Task(Protocol):
    """What the loop needs from a model family (IMDB classifier, TinyStories LM)."""

    kind: str

    def steps_per_epoch(self, batch_size: int) -> int: ...
    def batches(self, batch_size: int, seed: int, epoch: int) -> List[Any]: ...
    def loss(self, model: torch.nn.Module, batch: Any, device: torch.device) -> torch.Tensor: ...
    def evaluate(self, model: torch.nn.Module) -> Dict[str, float]: ...
    def score(self, metrics: Dict[str, float]) -> float: ...  # higher is better


def keep_freed_memory_in_process() -> None:
    """Stop glibc from returning large freed blocks to the OS after every op.

    Variable-length batches make PyTorch allocate and free tens of MB per step; by default glibc
    serves those with mmap/munmap, so each step page-faults the memory in again and a 2-core
    machine spends most of its time in the kernel (measured: attention fwd+bwd 2.4 s -> 0.37 s).
    """
    import ctypes
    import ctypes.util

    libc_name = ctypes.util.find_library("c")
    if not libc_name or "musl" in libc_name:
        return
    libc = ctypes.CDLL(libc_name)
    m_trim_threshold, m_mmap_max = -1, -4  # <malloc.h>
    if hasattr(libc, "mallopt"):
        libc.mallopt(m_mmap_max, 0)
        libc.mallopt(m_trim_threshold, 2**30)


def lr_lambda(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def train(
    task: Task,
    model_config: ModelConfig,
    cfg: TrainConfig,
    out_dir: Path,
    resume: bool = False,
    log: Callable[[str], None] = print,
    task_config: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    """Train, evaluate each epoch, keep best.pt and last.pt in out_dir; returns the summary.

    task_config (e.g. the LM's training window) is saved in the checkpoint's train_config."""
    out_dir = Path(out_dir)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
        keep_freed_memory_in_process()
    torch.manual_seed(cfg.seed)
    model = build_model(model_config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = task.steps_per_epoch(cfg.batch_size)
    if steps_per_epoch <= 0:
        raise ToolkitError(f"batch_size={cfg.batch_size} leaves no full batch in the training data")
    total_steps = cfg.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.warmup_steps, total_steps))
    use_amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    step, history, best_score = 0, [], -math.inf
    if resume:
        step, history, best_score = _resume(out_dir / "last.pt", model_config, model, optimizer,
                                            scheduler, scaler, log)
    log(f"{model_config.kind}: {count_parameters(model):,} parameters, {steps_per_epoch} steps/epoch, "
        f"{total_steps} steps, device {device}, threads {torch.get_num_threads()}")
    wandb_run = _maybe_wandb(model_config, cfg, log)
    started = time.time() - (history[-1]["elapsed_s"] if history else 0.0)
    stop_at = min(total_steps, cfg.max_steps) if cfg.max_steps else total_steps

    while step < stop_at:
        epoch = step // steps_per_epoch
        batches = task.batches(cfg.batch_size, cfg.seed, epoch)[step - epoch * steps_per_epoch:]
        model.train()
        running, seen = 0.0, 0
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", mininterval=2.0, leave=False)
        for batch in bar:
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                loss = task.loss(model, batch, device)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            step += 1
            running, seen = running + loss.item(), seen + 1
            bar.set_postfix(loss=f"{running / seen:.4f}", refresh=False)
            if step >= stop_at:
                break
        bar.close()
        def save(name: str, metrics: Optional[Dict[str, float]] = None) -> None:
            extra = {"scaler": scaler.state_dict(), "history": history, "best_score": best_score}
            save_checkpoint(out_dir / name, model_config, model, optimizer=optimizer,
                            scheduler=scheduler, step=step, epoch=epoch,
                            train_config={**asdict(cfg), **(task_config or {})},
                            metrics=metrics, extra=extra)

        if step % steps_per_epoch:  # stopped mid-epoch by max_steps: save to resume, no eval
            save("last.pt")
            log(f"stopped at step {step} (max_steps); resume with --resume")
            break
        metrics = task.evaluate(model)
        row = {"epoch": epoch + 1, "step": step, "train_loss": running / max(seen, 1),
               "lr": scheduler.get_last_lr()[0], "elapsed_s": round(time.time() - started, 2),
               **{f"val_{k}": v for k, v in metrics.items()}}
        history.append(row)
        score = task.score(metrics)
        improved = score > best_score
        best_score = max(best_score, score)
        if improved:
            save("best.pt", metrics)
        save("last.pt", metrics)
        atomic_write_json(out_dir / "history.json", {"kind": model_config.kind, "epochs": history})
        log("epoch {epoch}: train_loss {train_loss:.4f} ".format(**row)
            + " ".join(f"val_{k} {v:.4f}" for k, v in metrics.items())
            + f" ({row['elapsed_s']:.0f} s){'  *best' if improved else ''}")
        if wandb_run is not None:
            wandb_run.log(row, step=step)
    if wandb_run is not None:
        wandb_run.finish()
    return {"steps": step, "history": history, "best_score": best_score,
            "elapsed_s": round(time.time() - started, 2)}


def _resume(path, model_config, model, optimizer, scheduler, scaler, log):
    ckpt = load_checkpoint(path, kind=model_config.kind)
    if ckpt.config != model_config:
        raise ToolkitError(f"{path} was trained with another model config; resume needs the same")
    model.load_state_dict(ckpt.model.state_dict())
    try:
        optimizer.load_state_dict(ckpt.state["optimizer"])
        scheduler.load_state_dict(ckpt.state["scheduler"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ToolkitError(f"{path} has no usable optimizer/scheduler state ({exc})") from None
    if ckpt.state.get("scaler"):
        scaler.load_state_dict(ckpt.state["scaler"])
    restore_rng_state(ckpt.state["rng"])
    history = list(ckpt.state.get("history", []))
    history_file = path.parent / "history.json"
    if not history and history_file.is_file():
        history = read_json(history_file, "training history").get("epochs", [])
    log(f"resumed from {path} at step {ckpt.state['step']}")
    return ckpt.state["step"], history, float(ckpt.state.get("best_score", -math.inf))


def _maybe_wandb(model_config, cfg, log):
    if os.environ.get("WANDB_DISABLED", "").lower() in ("1", "true", "yes") or not os.environ.get("WANDB_API_KEY"):
        return None
    try:
        import wandb
    except ImportError:
        return None
    log("logging to Weights & Biases")
    return wandb.init(project="jetson-transformer-toolkit",
                      config={"model": asdict(model_config), "train": asdict(cfg)})
