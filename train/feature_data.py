"""Labelled sequences of float feature vectors from users' files, checked field by field.

Formats (one label per sequence):

- ``.npz``: ``features`` (N, seq, F) float, ``labels`` (N,) int or str, optional ``lengths``
  (N,) int (default: every sequence is ``seq`` long; steps past a length are ignored),
  optional ``feature_names`` (F,) str and ``label_names`` (K,) str (names of integer labels).
- ``.csv`` / ``.parquet``: one row per step (``train.feature_table``).

A source is a folder with ``train.<ext>`` and optional ``valid.<ext>`` / ``test.<ext>``, or one
file (the training split). Without a validation file a seeded, class-stratified fraction of
the training sequences is held out. Normalization statistics come from the training split
only. numpy only, no torch: the device side keeps its own reader of the same .npz layout.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from common.errors import ToolkitError
from train.feature_table import TableColumns, group_sequences, read_columns

FORMATS = ("npz", "csv", "parquet")


def table_options(command):
    """The data-format and column options of every command that reads feature tables
    (train.features, train.feature_convert), so both read a table alike."""
    import click

    options = [
        click.option("--format", "fmt", type=click.Choice(["auto", *FORMATS]), default="auto",
                     help="auto: from the file extension"),
        click.option("--id-column", default="sequence_id",
                     help="CSV/Parquet: the sequence id column"),
        click.option("--step-column", default=None,
                     help="CSV/Parquet: order within a sequence [default: 'step' if present, "
                          "else file order]"),
        click.option("--label-column", default="label", help="CSV/Parquet: the label column"),
        click.option("--feature-columns", default=None,
                     help="CSV/Parquet: comma-separated feature columns [default: all other "
                          "columns]"),
    ]
    for option in reversed(options):  # click lists options in decorator order
        command = option(command)
    return command


def split_names(value: Optional[str], option: str = "") -> Optional[List[str]]:
    """"a,b,c" -> ["a", "b", "c"]; None or "" -> None."""
    if not value:
        return None
    names = [v.strip() for v in value.split(",")]
    if any(not n for n in names):
        where = f"{option} " if option else ""
        raise ToolkitError(f"{where}{value!r}: expected comma-separated names, none empty")
    return names


def table_columns(id_column: str, step_column: Optional[str], label_column: str,
                  feature_columns: Optional[str]) -> TableColumns:
    """The TableColumns of the options ``table_options`` adds."""
    features = split_names(feature_columns, "--feature-columns")
    return TableColumns(id_column, step_column, label_column,
                        tuple(features) if features else None)
SPLITS = ("train", "valid", "test")
STD_FLOOR = 1e-6
DEFAULT_COLUMNS = TableColumns()
NPZ_LAYOUT = "features (N, seq, F), labels (N,), optional lengths (N,)"


@dataclass
class RawSplit:
    """One file as read, before labels become ids."""

    path: Path
    features: np.ndarray  # (N, seq, F) float32, zero past each length
    lengths: np.ndarray  # (N,) int64 in 1..seq
    labels: np.ndarray  # (N,) int64 or str
    feature_names: Optional[List[str]] = None
    label_names: Optional[List[str]] = None  # names of integer labels, if the file has them
    seq_ids: Optional[np.ndarray] = None  # (N,) the id column of a table

    def sequence(self, i: int) -> str:
        if self.seq_ids is None:
            return f"sequence {i}"
        return f"sequence {self.seq_ids[i].item()!r}"


@dataclass
class FeatureSplit:
    name: str  # the file, and "(held out)" for a validation split cut from training
    features: np.ndarray  # (N, seq, F) float32, zero past each length
    lengths: np.ndarray  # (N,) int64
    labels: np.ndarray  # (N,) int64 label ids


@dataclass
class FeatureData:
    splits: Dict[str, FeatureSplit]
    labels: List[str]  # label names in id order
    feature_names: Optional[List[str]]
    sources: Dict[str, str] = field(default_factory=dict)  # split -> file

    @property
    def feature_dim(self) -> int:
        return int(self.splits["train"].features.shape[2])

    @property
    def longest(self) -> int:
        return max(int(s.lengths.max()) for s in self.splits.values())


def read_split(path: Path, columns: TableColumns = DEFAULT_COLUMNS, fmt: str = "auto"
               ) -> RawSplit:
    """Read and check one file; ``fmt`` "auto" takes the format from its extension."""
    fmt = path.suffix.lower().lstrip(".") if fmt == "auto" else fmt
    if fmt not in FORMATS:
        raise ToolkitError(f"{path}: unknown data format {fmt!r}: expected .npz, .csv or "
                           ".parquet")
    if not path.is_file():
        raise ToolkitError(f"data file not found: {path}")
    if fmt == "npz":
        return read_npz(path)
    features, lengths, labels, seq_ids, names = group_sequences(
        path, read_columns(path, fmt), columns)
    return RawSplit(path, features, lengths, labels, names, None, seq_ids)


def read_npz(path: Path) -> RawSplit:
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ToolkitError(f"{path}: not a readable .npz file ({exc})") from None
    with archive:
        fields = {name: _npz_field(path, archive, name) for name in archive.files}
    if "features" not in fields or "labels" not in fields:
        missing = "features" if "features" not in fields else "labels"
        raise ToolkitError(f"{path}: no field {missing!r} (it has {sorted(fields)}): expected "
                           f"{NPZ_LAYOUT}")
    features, labels = fields["features"], fields["labels"]
    if features.ndim != 3 or 0 in features.shape:
        raise ToolkitError(f"{path}: field 'features' has shape {features.shape}: expected "
                           "(N, seq, F) with N, seq, F > 0 (one feature per step: (N, seq, 1))")
    if features.dtype.kind not in "fiu":
        raise ToolkitError(f"{path}: field 'features' has dtype {features.dtype}: expected floats")
    n, seq, dim = features.shape
    lengths = _npz_lengths(path, fields.get("lengths"), n, seq)
    if labels.shape != (n,):
        raise ToolkitError(f"{path}: field 'labels' has shape {labels.shape}: expected ({n},), "
                           "one label per sequence")
    if labels.dtype.kind in "iu":
        labels = labels.astype(np.int64)
    elif labels.dtype.kind != "U":
        raise ToolkitError(f"{path}: field 'labels' has dtype {labels.dtype}: expected integers "
                           "or strings")
    features = features.astype(np.float32)
    real = np.arange(seq)[None, :] < lengths[:, None]  # (N, seq) True on real steps
    bad = np.argwhere(~np.isfinite(features) & real[:, :, None])
    if len(bad):
        i, t, k = (int(v) for v in bad[0])
        raise ToolkitError(f"{path}: field 'features' has {features[i, t, k]} at sequence {i}, "
                           f"step {t}, feature {k}: expected finite numbers")
    features[~real] = 0.0  # padding: whatever the file held there is ignored
    names = _names(path, fields.get("feature_names"), "feature_names", dim)
    label_names = _names(path, fields.get("label_names"), "label_names", None)
    return RawSplit(path, features, lengths, labels, names, label_names)


def _npz_field(path: Path, archive, name: str) -> np.ndarray:
    try:
        return archive[name]
    except ValueError:  # object arrays need pickle, which we never load
        hint = (" (sequences of different lengths?): pad them into one (N, seq, F) float array "
                "and give each length in 'lengths'") if name == "features" else ""
        raise ToolkitError(f"{path}: field {name!r} is an object array{hint}") from None
    except (OSError, EOFError) as exc:
        raise ToolkitError(f"{path}: field {name!r} is unreadable ({exc})") from None


def _npz_lengths(path: Path, lengths, n: int, seq: int) -> np.ndarray:
    if lengths is None:
        return np.full(n, seq, dtype=np.int64)
    if lengths.shape != (n,) or lengths.dtype.kind not in "iu":
        raise ToolkitError(f"{path}: field 'lengths' has shape {lengths.shape} and dtype "
                           f"{lengths.dtype}: expected ({n},) integers")
    bad = np.flatnonzero((lengths < 1) | (lengths > seq))
    if len(bad):
        raise ToolkitError(f"{path}: field 'lengths' has {lengths[bad[0]]} at sequence "
                           f"{bad[0]}: expected 1..{seq} (the features' seq axis)")
    return lengths.astype(np.int64)


def _names(path: Path, values, name: str, size: Optional[int]) -> Optional[List[str]]:
    if values is None:
        return None
    if values.ndim != 1 or values.dtype.kind != "U" or (size is not None and len(values) != size):
        expected = f"({size},) strings" if size is not None else "a list of strings"
        raise ToolkitError(f"{path}: field {name!r} has shape {values.shape} and dtype "
                           f"{values.dtype}: expected {expected}")
    return [str(v) for v in values]


def find_split_files(source: Path, fmt: str = "auto") -> Dict[str, Path]:
    """``{split: file}`` of a folder (train required) or a single file (train only);
    ``fmt`` other than "auto" looks only for ``<split>.<fmt>``."""
    if source.is_file():
        return {"train": source}
    if not source.is_dir():
        raise ToolkitError(f"feature data {source} does not exist: expected a folder with "
                           "train.npz|csv|parquet (and optional valid.*, test.*) or one file "
                           "(a sample: python -m train.feature_sample --out DIR)")
    found: Dict[str, Path] = {}
    formats = FORMATS if fmt == "auto" else (fmt,)
    for split in SPLITS:
        files = [source / f"{split}.{ext}" for ext in formats
                 if (source / f"{split}.{ext}").is_file()]
        if len(files) > 1:
            raise ToolkitError(f"{source}: {' and '.join(f.name for f in files)} both exist: "
                               f"keep one file per split")
        if files:
            found[split] = files[0]
    if "train" not in found:
        raise ToolkitError(f"{source}: no {' or '.join('train.' + ext for ext in formats)}")
    return found


def label_vocabulary(train: RawSplit, given: Optional[Sequence[str]]) -> List[str]:
    """Label names in id order: ``given``, else the file's ``label_names``, else the training
    labels (sorted strings, or 0..max for integers)."""
    if given:
        return [str(v) for v in given]
    if train.labels.dtype.kind == "U":
        return sorted(set(train.labels.tolist()))
    if train.label_names:
        return list(train.label_names)
    if train.labels.min() < 0:
        i = int(np.argmax(train.labels < 0))
        raise ToolkitError(f"{train.path}: label {train.labels[i].item()} at {train.sequence(i)}: "
                           "integer labels must be 0 or more")
    return [str(i) for i in range(int(train.labels.max()) + 1)]


def label_ids(raw: RawSplit, names: List[str]) -> np.ndarray:
    """(N,) int64 ids of ``raw``'s labels in ``names``; unknown labels are an error."""
    if raw.labels.dtype.kind == "U":
        index = {name: i for i, name in enumerate(names)}
        ids = np.array([index.get(v, -1) for v in raw.labels.tolist()], dtype=np.int64)
    else:
        # integer labels are ids into the names (label_names / --labels / 0..max)
        ids = np.where((raw.labels >= 0) & (raw.labels < len(names)), raw.labels, -1)
    unknown = np.flatnonzero(ids < 0)
    if len(unknown):
        i = int(unknown[0])
        raise ToolkitError(f"{raw.path}: label {raw.labels[i].item()!r} at {raw.sequence(i)} "
                           f"is not one of the training labels {names}")
    return ids


def hold_out(split: FeatureSplit, fraction: float, seed: int):
    """(train, valid): a seeded ``fraction`` of each class held out for validation."""
    if not 0.0 < fraction < 1.0:
        raise ToolkitError(f"--val-fraction {fraction}: expected a value in (0, 1)")
    rng = np.random.default_rng(seed)
    held = []
    for label in np.unique(split.labels):
        members = rng.permutation(np.flatnonzero(split.labels == label))
        count = max(1, int(round(len(members) * fraction))) if len(members) > 1 else 0
        held += members[:count].tolist()  # every class with 2+ sequences is validated
    if not held or len(held) == len(split.labels):
        raise ToolkitError(f"{split.name}: --val-fraction {fraction} of {len(split.labels)} "
                           "sequences leaves an empty training or validation split")
    mask = np.zeros(len(split.labels), dtype=bool)
    mask[held] = True
    part = lambda m, name: FeatureSplit(name, split.features[m], split.lengths[m],
                                        split.labels[m])
    return part(~mask, split.name), part(mask, f"{split.name} (held out)")


def check_same_layout(raws: Sequence[RawSplit], train: RawSplit) -> None:
    """Every split has the training split's F, feature names and kind of labels."""
    for r in raws:
        if r.features.shape[2] != train.features.shape[2]:
            raise ToolkitError(f"{r.path}: {r.features.shape[2]} features per step; "
                               f"{train.path} has {train.features.shape[2]}")
        if r.feature_names and train.feature_names and r.feature_names != train.feature_names:
            raise ToolkitError(f"{r.path}: feature names {r.feature_names} differ from "
                               f"{train.path}'s {train.feature_names}")
        if (r.labels.dtype.kind == "U") != (train.labels.dtype.kind == "U"):
            raise ToolkitError(f"{r.path}: labels are {r.labels.dtype}, {train.path}'s are "
                               f"{train.labels.dtype}: use strings or integers in both")


def load_feature_data(source, columns: TableColumns = DEFAULT_COLUMNS,
                      labels: Optional[Sequence[str]] = None, val_fraction: float = 0.1,
                      split_seed: int = 0, fmt: str = "auto") -> FeatureData:
    """Read every split of ``source`` with one label vocabulary and one feature layout."""
    if fmt not in ("auto", *FORMATS):
        raise ToolkitError(f"data format {fmt!r}: expected auto, {', '.join(FORMATS)}")
    files = find_split_files(Path(source), fmt)
    raw = {split: read_split(path, columns, fmt) for split, path in files.items()}
    names = label_vocabulary(raw["train"], labels)
    train = raw["train"]
    check_same_layout(list(raw.values()), train)
    splits = {split: FeatureSplit(str(r.path), r.features, r.lengths, label_ids(r, names))
              for split, r in raw.items()}
    if "valid" not in splits:
        splits["train"], splits["valid"] = hold_out(splits["train"], val_fraction, split_seed)
    return FeatureData(splits, names, train.feature_names,
                       {split: str(path) for split, path in files.items()})


def normalization_stats(split: FeatureSplit) -> Dict[str, List[float]]:
    """Per-feature mean and std over the real steps of ``split`` (the training split)."""
    real = np.arange(split.features.shape[1])[None, :] < split.lengths[:, None]  # (N, seq)
    steps = split.features[real].astype(np.float64)  # (real steps, F)
    std = np.maximum(steps.std(axis=0), STD_FLOOR)
    return {"mean": steps.mean(axis=0).tolist(), "std": std.tolist()}


def normalize(features: np.ndarray, lengths: np.ndarray, stats: Dict) -> np.ndarray:
    """(N, seq, F) float32 features standardised with ``stats``; padding stays zero."""
    mean = np.asarray(stats["mean"], dtype=np.float32)  # (F,)
    std = np.asarray(stats["std"], dtype=np.float32)  # (F,)
    if mean.shape != (features.shape[2],) or std.shape != mean.shape:
        raise ToolkitError(f"normalization statistics for {mean.shape[0]} features: the data "
                           f"has {features.shape[2]}")
    real = np.arange(features.shape[1])[None, :] < lengths[:, None]  # (N, seq)
    return (((features - mean) / std) * real[:, :, None]).astype(np.float32)
