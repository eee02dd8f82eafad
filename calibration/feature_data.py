"""Feature windows on disk: the ``.npz`` / ``.npy`` files a feature classifier reads.

- ``.npz`` with ``features`` (N, seq, F) float, optional ``lengths`` (N,) int (real steps per
  window, the rest is padding; default: all seq steps) and optional ``labels`` (N,) (label
  indices, or label names from the model's list);
- ``.npy`` holding (N, seq, F) or one window (seq, F), every step real.

Every problem is one ToolkitError line naming the file, the field and what was expected: a
missing field, a wrong rank, F differing from the model's, NaN/Inf in a real step, lengths
outside 1..seq, an unknown label, windows longer than the model takes. Rows are padded on
the right with zeros under an attention mask of 0s, as ``runtime.features`` and the exported
graph's mask expect (the raw zeros pass the normalization but the mask hides them).

Device-side: numpy only, Python 3.8 (``calibration.dataset``/``gate`` and ``runtime.features``
read files through it, so the three agree on the format and the padding).
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

from common.errors import ToolkitError

SUFFIXES = (".npz", ".npy")


@dataclass
class FeatureWindows:
    path: Path
    features: np.ndarray  # (N, seq, F) float32, raw (the graph normalizes)
    lengths: np.ndarray  # (N,) int64, 1..seq real steps per window
    labels: Optional[np.ndarray]  # (N,) int64 label indices, or None

    def __len__(self) -> int:
        return int(self.features.shape[0])

    @property
    def feature_dim(self) -> int:
        return int(self.features.shape[2])

    def row(self, index: int) -> np.ndarray:
        """The real steps of window ``index``.  # (length, F) float32"""
        return self.features[index, :int(self.lengths[index])]

    def rows(self, indices: Sequence[int] | None = None) -> List[np.ndarray]:
        picked = range(len(self)) if indices is None else indices
        return [self.row(int(i)) for i in picked]


def read_feature_file(path, feature_dim: int | None = None,
                      label_names: Sequence[str] | None = None, need_labels: bool = False,
                      max_seq: int | None = None, read_labels: bool = True) -> FeatureWindows:
    """Read and check a feature file (module docstring). feature_dim / max_seq: the model's F
    and longest window; label_names: the model's labels (string labels are mapped to them);
    read_labels False: ignore the file's labels (before the model's names are known)."""
    path = Path(path)
    if path.suffix not in SUFFIXES:
        raise ToolkitError(f"{path}: expected a .npz (features, lengths, labels) or a .npy "
                           "(N, seq, F) feature file")
    if not path.is_file():
        raise ToolkitError(f"feature file not found: {path}")
    arrays = _load(path)
    if "features" not in arrays:
        raise ToolkitError(f"{path}: no 'features' array (it has {sorted(arrays)}); expected "
                           "features (N, seq, F) float32")
    features = _features(path, arrays["features"], feature_dim, max_seq)
    lengths = _lengths(path, arrays.get("lengths"), features.shape[:2])
    _check_finite(path, features, lengths)
    labels = arrays.get("labels") if read_labels else None
    if labels is None and need_labels:
        raise ToolkitError(f"{path}: no 'labels' array; the accuracy gate needs labels (N,)")
    if labels is not None:
        labels = _labels(path, labels, len(features), label_names)
    return FeatureWindows(path, features, lengths, labels)


def _load(path: Path) -> dict:
    with open(path, "rb") as f:  # np.load would take any other bytes for a pickle
        magic = f.read(6)
    if magic[:4] != b"PK\x03\x04" and magic != b"\x93NUMPY":
        raise ToolkitError(f"{path} is not a readable {path.suffix} file (neither a zip archive "
                           "nor a .npy header)")
    try:
        if path.suffix == ".npy":
            return {"features": np.load(path, allow_pickle=False)}
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise ToolkitError(f"{path}: holds an object array (windows of different lengths?); "
                               "expected features padded to (N, seq, F) with lengths (N,)"
                               ) from None
        raise ToolkitError(f"{path} is not a readable {path.suffix} file ({exc})") from None
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise ToolkitError(f"{path} is not a readable {path.suffix} file ({exc})") from None


def _features(path: Path, array: np.ndarray, feature_dim, max_seq) -> np.ndarray:
    if array.ndim == 2 and path.suffix == ".npy":
        array = array[None]  # one window (seq, F) -> (1, seq, F)
    if array.ndim != 3 or min(array.shape) < 1:
        raise ToolkitError(f"{path}: features has shape {list(array.shape)}; expected "
                           "(N, seq, F) with every size >= 1")
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise ToolkitError(f"{path}: features is {array.dtype}; expected float32")
    if feature_dim is not None and array.shape[2] != feature_dim:
        raise ToolkitError(f"{path}: features has F={array.shape[2]} values per step; the model "
                           f"takes F={feature_dim}")
    if max_seq is not None and array.shape[1] > max_seq:
        raise ToolkitError(f"{path}: windows of {array.shape[1]} steps; the model takes at most "
                           f"{max_seq}: cut them into shorter windows")
    return np.ascontiguousarray(array, dtype=np.float32)


def _lengths(path: Path, lengths, shape: Tuple[int, int]) -> np.ndarray:
    n, seq = shape
    if lengths is None:
        return np.full(n, seq, np.int64)
    lengths = np.asarray(lengths)
    if lengths.shape != (n,) or not np.issubdtype(lengths.dtype, np.integer):
        raise ToolkitError(f"{path}: lengths is {lengths.dtype} {list(lengths.shape)}; expected "
                           f"({n},) integers, one per window")
    bad = np.flatnonzero((lengths < 1) | (lengths > seq))
    if bad.size:
        raise ToolkitError(f"{path}: lengths[{bad[0]}] = {lengths[bad[0]]}; expected 1..{seq} "
                           "(real steps of the window)")
    return lengths.astype(np.int64)


def _check_finite(path: Path, features: np.ndarray, lengths: np.ndarray) -> None:
    real = np.arange(features.shape[1])[None, :] < lengths[:, None]  # (N, seq) bool
    bad = ~np.isfinite(features) & real[:, :, None]  # (N, seq, F)
    if bad.any():
        n, t, f = (int(i) for i in np.argwhere(bad)[0])
        raise ToolkitError(f"{path}: features[{n}, {t}, {f}] is {features[n, t, f]}; expected "
                           "finite values in every real step")


def _labels(path: Path, labels: np.ndarray, n: int, names) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != (n,):
        raise ToolkitError(f"{path}: labels has shape {list(labels.shape)}; expected ({n},)")
    if labels.dtype.kind in "US":
        if names is None:
            raise ToolkitError(f"{path}: labels are names but no label list to map them to")
        index = {str(name): i for i, name in enumerate(names)}
        unknown = sorted({str(v) for v in labels} - set(index))
        if unknown:
            raise ToolkitError(f"{path}: unknown labels {unknown[:5]}; the model has {list(names)}")
        return np.array([index[str(v)] for v in labels], np.int64)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ToolkitError(f"{path}: labels is {labels.dtype}; expected label indices or names")
    top = len(names) - 1 if names is not None else np.iinfo(np.int64).max
    bad = np.flatnonzero((labels < 0) | (labels > top))
    if bad.size:
        want = f"0..{top} ({list(names)})" if names is not None else "label indices >= 0"
        raise ToolkitError(f"{path}: labels[{bad[0]}] = {labels[bad[0]]}; expected {want}")
    return labels.astype(np.int64)


def is_feature_model(sidecar) -> bool:
    """A continuous-feature classifier's sidecar (``features`` input, export/feature_model.py)."""
    return int(sidecar.get("feature_dim") or 0) > 0


def norm_digest(sidecar) -> str:
    """sha256 of the sidecar's ``feature_norm``: data prepared for other statistics is refused."""
    import hashlib
    import json

    text = json.dumps(sidecar.get("feature_norm"), sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def pad_rows(rows: Sequence[np.ndarray], seq: int, feature_dim: int,
             features: np.ndarray | None = None, mask: np.ndarray | None = None):
    """Right-pad ``rows`` (each (len <= seq, F)) into (features, mask); fills the given buffers
    (views of at least (len(rows), seq)) in place, else allocates.
    -> features (rows, seq, F) float32 (zeros after each row), mask (rows, seq) int32."""
    if features is None:
        features = np.zeros((len(rows), seq, feature_dim), np.float32)  # (rows, seq, F)
    if mask is None:
        mask = np.zeros((len(rows), seq), np.int32)  # (rows, seq) 1 = real step
    features[...] = 0
    mask[...] = 0
    for r, row in enumerate(rows):
        n = min(len(row), seq)
        features[r, :n] = row[:n]
        mask[r, :n] = 1
    return features, mask
