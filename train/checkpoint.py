"""Checkpoints: one ``.pt`` file (model, optimizer, scheduler, RNG states, step) written
atomically, with ``tokenizer.json`` beside it. The model config travels inside, so every later
step rebuilds the model from the checkpoint alone.

Layout of a run directory::

    checkpoints/imdb/
        best.pt  last.pt  tokenizer.json  history.json  *.png
"""

from __future__ import annotations

import io
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from common.errors import ToolkitError
from common.fileio import atomic_write_bytes, sha256_file
from train.hf_model import build_model, config_from_dict, config_to_dict  # + HF encoders
from train.model import ModelConfig

FORMAT = "jetson-toolkit/checkpoint"
VERSION = 1
TOKENIZER_FILE = "tokenizer.json"


@dataclass
class Checkpoint:
    path: Path
    config: ModelConfig
    model: torch.nn.Module  # in eval mode, on CPU unless map_location says otherwise
    state: Dict[str, Any]  # the raw dict: optimizer, scheduler, rng, step, epoch, metrics, ...

    @property
    def kind(self) -> str:
        return self.config.kind

    @property
    def tokenizer_path(self) -> Path:
        return self.path.parent / TOKENIZER_FILE

    def sha256(self) -> str:
        return sha256_file(self.path)


def save_checkpoint(
    path: str | Path,
    config: ModelConfig,
    model: torch.nn.Module,
    *,
    optimizer: Optional[torch.optim.Optimizer] = None,
    scheduler: Optional[Any] = None,
    step: int = 0,
    epoch: int = 0,
    train_config: Optional[Dict[str, Any]] = None,
    metrics: Optional[Dict[str, Any]] = None,
    extra: Optional[Dict[str, Any]] = None,
) -> Path:
    """Write the checkpoint atomically; RNG states are captured at the moment of the call."""
    state = {
        "format": FORMAT,
        "version": VERSION,
        "model_config": config_to_dict(config),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": capture_rng_state(),
        "step": int(step),
        "epoch": int(epoch),
        "train_config": dict(train_config or {}),
        "metrics": dict(metrics or {}),
        **(extra or {}),
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(
    path: str | Path, kind: Optional[str] = None, map_location: str = "cpu"
) -> Checkpoint:
    """Load and rebuild the model; every failure is one ToolkitError line naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ToolkitError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ToolkitError(f"checkpoint {path} is corrupt or unreadable ({first_line})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ToolkitError(f"{path} is not a checkpoint of this toolkit (no '{FORMAT}' header)")
    if state.get("version") != VERSION:
        raise ToolkitError(
            f"checkpoint {path} has format version {state.get('version')}; expected {VERSION}"
        )
    config = config_from_dict(state["model_config"])
    if kind is not None and config.kind != kind:
        raise ToolkitError(f"checkpoint {path} holds a {config.kind} model; expected a {kind}")
    model = build_model(config)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise ToolkitError(
            f"checkpoint {path}: weights do not match its {config.kind} config "
            f"({str(exc).splitlines()[0]})"
        ) from None
    model.to(map_location).eval()
    return Checkpoint(path=path, config=config, model=model, state=state)


def capture_rng_state() -> Dict[str, Any]:
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        # Only the device this process trains on: get_rng_state_all() would create a CUDA
        # context on every visible GPU in every DDP rank (hundreds of MiB each).
        rng["cuda_current"] = torch.cuda.get_rng_state()
    return rng


def restore_rng_state(rng: Dict[str, Any]) -> None:
    torch.set_rng_state(rng["torch"])
    if "cuda_current" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda_current"])
    elif "cuda" in rng and torch.cuda.is_available():  # checkpoints written before DDP
        torch.cuda.set_rng_state_all(rng["cuda"])
