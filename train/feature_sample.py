"""A generated continuous-feature data set for the demo and the tests: noisy waves to classify.

Each sequence is one of three wave shapes (sine, square, sawtooth) with a random period,
phase, amplitude and offset, 32 to 128 steps long, seen through three channels per step:

- ``signal``: the wave plus Gaussian noise whose level is drawn per sequence,
- ``derivative``: the step-to-step difference of ``signal`` (noisier still),
- ``noise``: a distractor channel of pure noise the model has to learn to ignore.

The noise level spans clean to nearly drowned, and a short sequence of a long period shows
less than one cycle, so a real signal separates the classes but not every sequence can be
told apart: a small model ends well above chance (1/3) and below 100% (docs: the measured
figure is in the README). Deterministic for a given seed; numpy only.

    python -m train.feature_sample --out data/features_sample [--format npz|csv|parquet]
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Tuple

import click
import numpy as np

from common.errors import ToolkitError, exit_on_toolkit_error
from common.fileio import atomic_path

SHAPES = ("sine", "square", "sawtooth")
FEATURE_NAMES = ("signal", "derivative", "noise")
MIN_LEN, MAX_LEN = 32, 128
PERIOD_RANGE = (6.0, 48.0)  # steps per cycle
NOISE_RANGE = (0.05, 0.8)  # noise std relative to the amplitude, drawn per sequence
SPLIT_SIZES = {"train": 3000, "valid": 500, "test": 1000}
SPLIT_SEED_OFFSET = {"train": 0, "valid": 1, "test": 2}


def wave(shape: str, phase_steps: np.ndarray) -> np.ndarray:
    """Unit-amplitude wave of ``shape`` at ``phase_steps`` (cycles, any real)."""
    frac = phase_steps - np.floor(phase_steps)  # (len,) in [0, 1)
    if shape == "sine":
        return np.sin(2.0 * np.pi * frac)
    if shape == "square":
        return np.where(frac < 0.5, 1.0, -1.0)
    return 2.0 * frac - 1.0  # sawtooth: slow rise, sudden drop


def make_sequence(rng: np.random.Generator, label: int) -> np.ndarray:
    """-> (length, 3) float32 steps of one sequence of class ``label``."""
    length = int(rng.integers(MIN_LEN, MAX_LEN + 1))
    period = rng.uniform(*PERIOD_RANGE)
    amplitude = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))
    cycles = np.arange(length) / period + rng.uniform(0.0, 1.0)  # (length,)
    clean = amplitude * wave(SHAPES[label], cycles) + rng.normal(0.0, 0.5)
    noisy = clean + rng.normal(0.0, rng.uniform(*NOISE_RANGE) * amplitude, size=length)
    derivative = np.diff(noisy, prepend=noisy[0])
    distractor = rng.normal(0.0, rng.uniform(0.5, 2.0), size=length)
    return np.stack([noisy, derivative, distractor], axis=1).astype(np.float32)


def make_split(n: int, seed: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> features (n, MAX_LEN, 3) float32 zero past each length, lengths (n,) int64,
    labels (n,) str, the classes balanced and shuffled."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % len(SHAPES))  # (n,) class ids
    features = np.zeros((n, MAX_LEN, len(FEATURE_NAMES)), dtype=np.float32)
    lengths = np.zeros(n, dtype=np.int64)
    for i, label in enumerate(labels):
        steps = make_sequence(rng, int(label))
        features[i, : len(steps)] = steps
        lengths[i] = len(steps)
    return features, lengths, np.asarray(SHAPES)[labels]


def make_sample(seed: int = 0, sizes: Dict[str, int] | None = None) -> Dict[str, tuple]:
    """``{split: (features, lengths, labels)}`` for train, valid and test."""
    sizes = dict(SPLIT_SIZES, **(sizes or {}))
    return {split: make_split(n, seed * 1000 + SPLIT_SEED_OFFSET[split])
            for split, n in sizes.items() if n > 0}


def write_npz(path: Path, features, lengths, labels) -> Path:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to the temp name
            np.savez_compressed(f, features=features, lengths=lengths, labels=labels,
                                feature_names=np.asarray(FEATURE_NAMES))
    return path


def table_columns(features, lengths, labels) -> Dict[str, np.ndarray]:
    """The row-per-step layout: sequence_id, step, one column per feature, label."""
    seq = np.repeat(np.arange(len(lengths)), lengths)  # (rows,) sequence of each row
    step = np.concatenate([np.arange(n) for n in lengths])  # (rows,)
    columns = {"sequence_id": np.char.add("s", seq.astype(str)), "step": step}
    for k, name in enumerate(FEATURE_NAMES):
        columns[name] = features[seq, step, k]
    columns["label"] = labels[seq]
    return columns


def write_table(path: Path, fmt: str, features, lengths, labels) -> Path:
    columns = table_columns(features, lengths, labels)
    with atomic_path(path) as tmp:
        if fmt == "parquet":
            try:
                import pyarrow as pa
                import pyarrow.parquet as pq
            except ImportError:
                raise ToolkitError("--format parquet needs pyarrow: pip install pyarrow") from None
            pq.write_table(pa.table({k: pa.array(v) for k, v in columns.items()}), tmp)
        else:
            rows = zip(*(_csv_cells(v) for v in columns.values()))
            with open(tmp, "w", encoding="utf-8", newline="") as f:
                f.write(",".join(columns) + "\n")
                f.writelines(",".join(row) + "\n" for row in rows)
    return path


def _csv_cells(values: np.ndarray):
    if values.dtype.kind == "f":
        return [f"{v:.6g}" for v in values.tolist()]
    return [str(v) for v in values.tolist()]


@click.command(context_settings={"show_default": True})
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("data/features_sample"), help="folder for train/valid/test files")
@click.option("--format", "fmt", type=click.Choice(["npz", "csv", "parquet"]), default="npz")
@click.option("--seed", type=int, default=0)
@click.option("--train", "n_train", type=int, default=SPLIT_SIZES["train"], help="sequences")
@click.option("--valid", "n_valid", type=int, default=SPLIT_SIZES["valid"], help="sequences")
@click.option("--test", "n_test", type=int, default=SPLIT_SIZES["test"], help="0: no test split")
@exit_on_toolkit_error
def main(out_dir: Path, fmt: str, seed: int, n_train: int, n_valid: int, n_test: int) -> None:
    """Write the noisy-wave sample (3 classes, 3 features per step) as train/valid/test files."""
    if n_train < len(SHAPES) or n_valid < 0 or n_test < 0:
        raise ToolkitError(f"--train {n_train} --valid {n_valid} --test {n_test}: expected "
                           f"at least {len(SHAPES)} training sequences and no negative count")
    sizes = {"train": n_train, "valid": n_valid, "test": n_test}
    for split, (features, lengths, labels) in make_sample(seed, sizes).items():
        path = out_dir / f"{split}.{fmt}"
        if fmt == "npz":
            write_npz(path, features, lengths, labels)
        else:
            write_table(path, fmt, features, lengths, labels)
        click.echo(f"wrote {path}: {len(labels)} sequences of {MIN_LEN}-{MAX_LEN} steps, "
                   f"{len(FEATURE_NAMES)} features ({', '.join(FEATURE_NAMES)}), "
                   f"labels {', '.join(SHAPES)}")


if __name__ == "__main__":
    main()
