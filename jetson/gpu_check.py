"""A helper the device check (benchmarks/device_check_steps.py) runs in its venv: a top-level
tool, like a make recipe (unlike the jetson library modules it may import the calibration
loader). Versions and device state are the device check's own first step now.

    python jetson/gpu_check.py calib-set --onnx tests/fixtures/tiny_classifier.onnx --output X
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

from common.errors import exit_on_toolkit_error


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


@click.group()
def main() -> None:
    """Helpers of the device check (benchmarks.device_check)."""


@main.command("calib-set")
@click.option("--onnx", "onnx_path", required=True, type=click.Path(path_type=Path))
@click.option("--output", required=True, type=click.Path(path_type=Path))
@exit_on_toolkit_error
def calib_set(onnx_path: Path, output: Path) -> None:
    """Write a random-token calibration set for ONNX (an INT8 build check, not accuracy)."""
    click.echo(f"wrote {random_calibration_set(onnx_path, output)}")


if __name__ == "__main__":
    main()
