"""Helpers jetson/gpu_check.sh runs inside its venv (a top-level tool, like a make recipe:
unlike the jetson library modules it may import the calibration loader).

    python jetson/gpu_check.py calib-set --onnx tests/fixtures/tiny_classifier.onnx --output X
    python jetson/gpu_check.py versions --output versions.json
"""
from __future__ import annotations

if __package__ in (None, ""):  # run by path: the repository root replaces jetson/ on sys.path
    import os  # (so no module in jetson/ can shadow a standard-library module)
    import sys

    _HERE = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
    sys.path.insert(0, os.path.dirname(_HERE))

from pathlib import Path
from typing import Any, Dict

import click

from common.errors import ToolkitError, exit_on_toolkit_error
from common.fileio import atomic_write_json


def random_calibration_set(onnx_path: Path, output: Path, batches: int = 4,
                           seed: int = 0) -> Path:
    """A calibration set of random in-vocabulary token ids shaped for the model's profile: it
    checks that an implicit-INT8 build runs, not the INT8 model's accuracy."""
    import numpy as np

    from calibration.loader import position_ids_for, save_calibration_set
    from common.artifacts import axis_range, load_onnx_sidecar

    sidecar = load_onnx_sidecar(onnx_path)
    kind = sidecar["kind"]
    batch = min(2, axis_range(sidecar, "batch")[1])
    seq_axis = "seq" if kind == "classifier" else "new"
    seq = min(16, axis_range(sidecar, seq_axis)[1])
    rng = np.random.default_rng(seed)
    token_batches = []
    for _ in range(batches):
        ids = rng.integers(3, sidecar["vocab_size"], size=(batch, seq), dtype=np.int32)
        mask = np.ones((batch, seq), dtype=np.int32)  # (batch, seq) int32, no padding
        feed = {"input_ids": ids, "attention_mask": mask}
        if kind == "decoder":
            feed["position_ids"] = position_ids_for(mask)
        token_batches.append(feed)
    meta: Dict[str, Any] = {"kind": kind, "input_names": [t["name"] for t in sidecar["inputs"]],
                            "source": "random token ids (gpu check)", "seed": seed,
                            "onnx_sha256": sidecar["onnx_sha256"]}
    if kind == "decoder":
        meta.update(kv_layers=sidecar["kv_cache"]["layers"], kv_dim=sidecar["kv_cache"]["kv_dim"])
    return save_calibration_set(output, token_batches, meta)


def versions() -> Dict[str, Any]:
    """Device state plus what the state does not hold: pycuda, the GPU, polygraphy, ORT."""
    from jetson.device_state import collect

    out: Dict[str, Any] = {"device_state": collect()}
    for module in ("pycuda", "polygraphy", "onnxruntime", "tokenizers", "click", "pytest"):
        try:
            out[module] = __import__(module).VERSION_TEXT if module == "pycuda" else \
                __import__(module).__version__
        except ImportError as exc:
            out[module] = f"not importable: {exc}"
    try:
        import pycuda.driver as cuda
    except ImportError as exc:
        out["gpu"] = f"pycuda not importable: {exc}"
        return out
    try:
        cuda.init()
        device = cuda.Device(0)
        out["gpu"] = {"name": device.name(),
                      "compute_capability": "{}.{}".format(*device.compute_capability()),
                      "cuda_driver": cuda.get_driver_version(),
                      "cuda_runtime_pycuda_built_for": cuda.get_version()}
    except cuda.Error as exc:  # a driver that loads but no usable device
        raise ToolkitError(f"pycuda loaded but cannot use GPU 0: {exc}") from None
    return out


@click.group()
def main() -> None:
    """Helpers of jetson/gpu_check.sh."""


@main.command("calib-set")
@click.option("--onnx", "onnx_path", required=True, type=click.Path(path_type=Path))
@click.option("--output", required=True, type=click.Path(path_type=Path))
@exit_on_toolkit_error
def calib_set(onnx_path: Path, output: Path) -> None:
    """Write a random-token calibration set for ONNX (an INT8 build check, not accuracy)."""
    click.echo(f"wrote {random_calibration_set(onnx_path, output)}")


@main.command("versions")
@click.option("--output", required=True, type=click.Path(path_type=Path))
@exit_on_toolkit_error
def versions_cmd(output: Path) -> None:
    """Write the versions JSON (device state, pycuda, GPU, polygraphy, ORT) and print it."""
    import json

    found = versions()
    atomic_write_json(output, found)
    click.echo(json.dumps(found, indent=2, sort_keys=True, default=str))


if __name__ == "__main__":
    main()
