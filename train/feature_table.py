"""Row-per-step tables (CSV, Parquet) of labelled feature sequences, grouped into sequences.

One row is one step: a sequence id column, an optional step column (the order within the
sequence; without it the file order), one column per feature and a label column that is
constant within a sequence. Rows of one sequence need not be adjacent. Every error names the
file, the column and the line (CSV) or row (Parquet). numpy only; Parquet needs pyarrow.
"""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from common.errors import ToolkitError

DEFAULT_STEP_COLUMN = "step"
_INTEGER = re.compile(r"^[+-]?\d+$")


@dataclass(frozen=True)
class TableColumns:
    """Column names of a row-per-step table."""

    id: str = "sequence_id"
    step: Optional[str] = None  # None: "step" when the table has it, else the file order
    label: str = "label"
    features: Optional[Tuple[str, ...]] = None  # None: every other column, in file order


def read_columns(path: Path, fmt: str) -> Dict[str, np.ndarray]:
    """``{column name: (rows,) array}``; CSV cells stay strings, Parquet keeps its types."""
    if fmt == "parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ToolkitError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow), "
                               "or give the data as .csv or .npz") from None
        try:
            table = pq.read_table(path)
        except Exception as exc:  # pyarrow raises its own ArrowInvalid/OSError family
            raise ToolkitError(f"{path}: not a readable Parquet file ({exc})") from None
        return {name: table.column(name).to_numpy(zero_copy_only=False)
                for name in table.column_names}
    try:
        with open(path, encoding="utf-8", newline="") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ToolkitError(f"{path}: not a readable CSV file ({exc})") from None
    if len(rows) < 2:
        raise ToolkitError(f"{path}: expected a header line and at least one data line")
    header = [name.strip() for name in rows[0]]
    for i, row in enumerate(rows[1:]):
        if len(row) != len(header):
            raise ToolkitError(f"{path}: line {i + 2} has {len(row)} cells; the header has "
                               f"{len(header)}")
    cells = np.asarray(rows[1:], dtype=str)  # (rows, columns)
    return {name: cells[:, k] for k, name in enumerate(header)}


def where(path: Path, row: int) -> str:
    """How an error names a data row: the CSV line (header = line 1) or the Parquet row."""
    return f"line {row + 2}" if path.suffix.lower() == ".csv" else f"row {row}"


def numeric(path: Path, name: str, values: np.ndarray) -> np.ndarray:
    """-> (rows,) float64; an empty or non-numeric cell is an error naming its row."""
    if values.dtype.kind in "iuf":
        return values.astype(np.float64)
    try:
        return values.astype(np.float64)
    except (TypeError, ValueError):
        for row, cell in enumerate(values.tolist()):
            try:
                float(cell)
            except (TypeError, ValueError):
                raise ToolkitError(f"{path}: column {name!r} has {cell!r} at {where(path, row)}:"
                                   " expected a number") from None
        raise


def label_values(path: Path, name: str, values: np.ndarray) -> np.ndarray:
    """Labels as int64 when every cell is an integer, else as strings."""
    if values.dtype.kind in "iu":
        return values.astype(np.int64)
    if values.dtype.kind == "f":
        raise ToolkitError(f"{path}: label column {name!r} holds floats: expected integers or "
                           "strings")
    text = values.astype(str)
    if all(_INTEGER.match(v) for v in set(text.tolist())):
        return text.astype(np.int64)
    return text


def _pick_columns(path: Path, names: List[str], columns: TableColumns):
    """-> (step column or None, feature columns), checked against the table's header."""
    for role, name in (("sequence id", columns.id), ("label", columns.label)):
        if name not in names:
            raise ToolkitError(f"{path}: no {role} column {name!r}; it has {names}")
    step = columns.step
    if step is None:
        step = DEFAULT_STEP_COLUMN if DEFAULT_STEP_COLUMN in names else None
    elif step not in names:
        raise ToolkitError(f"{path}: no step column {step!r}; it has {names}")
    taken = {columns.id, columns.label, step}
    features = list(columns.features) if columns.features else [
        n for n in names if n not in taken]
    missing = [n for n in features if n not in names]
    if missing:
        raise ToolkitError(f"{path}: no feature column {missing[0]!r}; it has {names}")
    if not features:
        raise ToolkitError(f"{path}: no feature columns besides {sorted(n for n in taken if n)}")
    clash = [n for n in features if n in taken]
    if clash:
        raise ToolkitError(f"{path}: column {clash[0]!r} cannot be both a feature and the "
                           "id/step/label column")
    return step, features


def group_sequences(path: Path, table: Dict[str, np.ndarray], columns: TableColumns):
    """Group rows into sequences (in order of first appearance), ordered by step.

    -> features (N, longest, F) float32 zero past each length, lengths (N,) int64,
       labels (N,) int64 or str, sequence ids (N,), feature names."""
    step_name, feature_names = _pick_columns(path, list(table), columns)
    ids = table[columns.id]
    n_rows = len(ids)
    exact = np.stack([numeric(path, n, table[n]) for n in feature_names], axis=1)  # (rows, F)
    with np.errstate(over="ignore"):  # beyond float32 becomes inf: refused just below
        values = exact.astype(np.float32)  # (rows, F) as the model will see them
    bad = np.argwhere(~np.isfinite(values))  # checked after the cast: 1e39 is inf in float32
    if len(bad):
        row, k = bad[0]
        beyond = " (beyond float32's +-3.4e38)" if np.isfinite(exact[row, k]) else ""
        raise ToolkitError(f"{path}: column {feature_names[k]!r} is {exact[row, k]:g}{beyond} "
                           f"at {where(path, int(row))} (sequence {ids[row].item()!r}): "
                           "expected finite float32 numbers")
    unique_ids, first, seq_of_row = np.unique(ids, return_index=True, return_inverse=True)
    rank = np.empty(len(unique_ids), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(unique_ids))
    seq = rank[seq_of_row.reshape(-1)]  # (rows,) sequence number in order of first appearance
    steps = numeric(path, step_name, table[step_name]) if step_name else np.arange(n_rows)
    order = np.lexsort((np.arange(n_rows), steps, seq))  # by sequence, step, then file order
    seq, steps = seq[order], steps[order]
    if step_name is not None:
        dup = np.flatnonzero((seq[1:] == seq[:-1]) & (steps[1:] == steps[:-1]))
        if len(dup):
            a, b = sorted((int(order[dup[0]]), int(order[dup[0] + 1])))
            raise ToolkitError(f"{path}: sequence {ids[a].item()!r} has step "
                               f"{steps[dup[0]]:g} twice ({where(path, a)} and "
                               f"{where(path, b)}) in column {step_name!r}")
    lengths = np.bincount(seq, minlength=len(unique_ids)).astype(np.int64)  # (N,)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])  # (N,) first sorted row of each
    position = np.arange(n_rows) - starts[seq]  # (rows,) step index within its sequence
    features = np.zeros((len(lengths), int(lengths.max()), len(feature_names)), np.float32)
    features[seq, position] = values[order]
    labels = label_values(path, columns.label, table[columns.label])[order]  # (rows,)
    first_label = labels[starts]  # (N,)
    changed = np.flatnonzero(labels != first_label[seq])
    if len(changed):
        s = seq[changed[0]]
        a, b = int(order[starts[s]]), int(order[changed[0]])
        raise ToolkitError(
            f"{path}: sequence {ids[a].item()!r} has label {labels[starts[s]].item()!r} at "
            f"{where(path, a)} and {labels[changed[0]].item()!r} at {where(path, b)}: the label "
            f"column "
            f"{columns.label!r} must be constant within a sequence")
    seq_ids = ids[order][starts]  # (N,)
    return features, lengths, first_label, seq_ids, feature_names
