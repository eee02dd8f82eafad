"""Convert row-per-step CSV/Parquet feature tables to the .npz files the device side reads.

    python -m train.feature_convert --data data/my_sensors --out data/my_sensors_npz
    python -m train.feature_convert --data held_out.csv --labels walk,run,sit --out data/eval

Calibration (``calibration.feature_data``), the accuracy gate, ``runtime/classify.py
--features`` and ``triton_repo.feature_client`` read .npz/.npy only (numpy, no CSV or Parquet
parser on the device). This writes, per input file, ``<split>.npz`` (a folder's
train/valid/test files) or ``<stem>.npz`` (one file) with

- ``features`` (N, seq, F) float32 raw (the exported graph normalizes), zero past each length;
- ``lengths`` (N,) int64; ``labels`` (N,) label names (strings), ``label_names`` (K,) in id
  order; ``feature_names`` (F,) the feature columns.

The files are read and checked exactly as ``train.features`` reads them (same column options,
same one-line errors naming file, column and line/row); labels get the names training gives
them (``--labels``, else the sorted training labels, or 0..max for integers), so a model
trained on the tables maps the converted labels by name. No validation split is held out:
each file is converted as it is. Writes are atomic.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Dict, List, Optional

import click
import numpy as np

from common.errors import ToolkitError, exit_on_toolkit_error
from common.fileio import atomic_write_bytes
from train.feature_data import (
    DEFAULT_COLUMNS,
    FORMATS,
    RawSplit,
    check_same_layout,
    find_split_files,
    label_ids,
    label_vocabulary,
    read_split,
    split_names,
    table_columns,
    table_options,
)
from train.feature_table import TableColumns


def convert(source, out_dir, columns: TableColumns = DEFAULT_COLUMNS,
            labels: Optional[List[str]] = None, fmt: str = "auto") -> Dict[str, Path]:
    """Convert every file of ``source`` (a folder of train/valid/test files, or one file) into
    ``out_dir``; returns ``{name: written .npz}``."""
    source, out_dir = Path(source), Path(out_dir)
    if fmt not in ("auto", *FORMATS):
        raise ToolkitError(f"--format {fmt!r}: expected auto, {', '.join(FORMATS)}")
    files = find_split_files(source, fmt)
    if source.is_file():  # one file: keep its name (held_out.csv -> held_out.npz)
        files = {source.stem: files["train"]}
    raw = {name: read_split(path, columns, fmt) for name, path in files.items()}
    reference = raw.get("train") or next(iter(raw.values()))
    check_same_layout(list(raw.values()), reference)
    names = label_vocabulary(reference, labels)
    written = {}
    for name, split in raw.items():
        path = out_dir / f"{name}.npz"
        if path.resolve() == split.path.resolve():
            raise ToolkitError(f"--out {out_dir}: would overwrite the input {split.path}")
        written[name] = write_npz(path, split, names, reference.feature_names)
    return written


def write_npz(path: Path, split: RawSplit, names: List[str],
              feature_names: Optional[List[str]]) -> Path:
    """The .npz layout of calibration.feature_data, labels as names."""
    ids = label_ids(split, names)  # (N,) int64; an unknown label is one line naming the file
    arrays = {"features": split.features.astype(np.float32),  # (N, seq, F) raw
              "lengths": split.lengths.astype(np.int64),  # (N,)
              "labels": np.asarray(names)[ids],  # (N,) str
              "label_names": np.asarray(names)}  # (K,) str
    if feature_names:
        arrays["feature_names"] = np.asarray(feature_names)  # (F,) str
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_bytes(path, buffer.getvalue())


@click.command(context_settings={"show_default": True})
@click.option("--data", "data_source", type=click.Path(path_type=Path), required=True,
              help="folder with train.* (valid.*, test.*) or one file: .csv, .parquet, .npz")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True,
              help="folder for the .npz files")
@table_options
@click.option("--labels", "label_names", default=None,
              help="comma-separated label names in id order, as given to train.features "
                   "[default: sorted training labels]")
@exit_on_toolkit_error
def main(data_source: Path, out_dir: Path, fmt: str, id_column: str, step_column: Optional[str],
         label_column: str, feature_columns: Optional[str], label_names: Optional[str]) -> None:
    """Write CSV/Parquet feature tables as .npz files for calibration, runtime and Triton."""
    columns = table_columns(id_column, step_column, label_column, feature_columns)
    for path in convert(data_source, out_dir, columns,
                        split_names(label_names, "--labels"), fmt).values():
        with np.load(path) as npz:
            n, seq, dim = npz["features"].shape
        click.echo(f"wrote {path}: {n} sequences of up to {seq} steps, {dim} features")


if __name__ == "__main__":
    main()
