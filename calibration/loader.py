"""The calibration set on disk (``<name>.calib.npz``) and the data loader that reads it back.

A calibration set is a list of real tokenized batches, each with its own shape, plus a small
JSON metadata entry (a feature classifier's: real feature windows, ``features`` (batch, seq, F)
float32 raw with the mask, kind ``feature_classifier``). ``CalibrationSet`` yields complete feed
dicts ``{input name: array}`` for every input of the ONNX graph, which is what both consumers take:

- ``onnxruntime.quantization`` (host, explicit Q/DQ): every batch as stored, several lengths;
- Polygraphy's ``Calibrator(data_loader=...)`` (device, implicit INT8): TensorRT calibrates at
  the OPT shapes of one profile only, so when Polygraphy hands the loader its ``input_metadata``
  the same rows are re-packed to exactly those shapes.

Device-side: numpy only, Python 3.8. The writer lives here too, so the format has one owner.
"""
from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Sequence, Tuple

import numpy as np

from common.errors import ToolkitError
from common.fileio import atomic_path

FORMAT = "jetson-toolkit/calibration-set"
VERSION = 1
META_KEY = "meta"
TOKEN_INPUTS = {  # per kind, the stored inputs; the first one sets each batch's (batch, seq)
    "classifier": ("input_ids", "attention_mask"),
    "decoder": ("input_ids", "position_ids", "attention_mask"),
    # continuous features: features (batch, seq, F) float32 raw (the graph normalizes), mask
    "feature_classifier": ("features", "attention_mask"),
}
PADDING_SIDE = {"classifier": "right", "decoder": "left", "feature_classifier": "right"}
FLOAT_INPUTS = ("features",)


def primary_input(kind: str) -> str:
    """The input whose first two axes are each batch's (batch, seq)."""
    return TOKEN_INPUTS[kind][0]

Feed = Dict[str, np.ndarray]


def batch_key(index: int, name: str) -> str:
    return f"b{index:04d}.{name}"


def save_calibration_set(
    path: str | os.PathLike, batches: Sequence[Mapping[str, np.ndarray]], meta: Dict[str, Any]
) -> Path:
    """Write token batches and metadata atomically as an uncompressed ``.npz``.

    batches: per batch ``{name: (batch, seq) int32}`` for the kind's TOKEN_INPUTS (``features``:
    (batch, seq, F) float32). meta must hold ``kind``, ``input_names`` (every ONNX input, in
    order), for a decoder ``kv_layers`` and ``kv_dim``, for a feature classifier
    ``feature_dim``; format, version and the batch shapes are added here.
    """
    kind = meta.get("kind")
    if kind not in TOKEN_INPUTS:
        raise ToolkitError(f"calibration set {path}: kind {kind!r}, expected one of "
                           f"{sorted(TOKEN_INPUTS)}")
    arrays: Dict[str, np.ndarray] = {}
    shapes = []
    for index, batch in enumerate(batches):
        for name in TOKEN_INPUTS[kind]:
            dtype = np.float32 if name in FLOAT_INPUTS else np.int32
            arrays[batch_key(index, name)] = np.ascontiguousarray(batch[name], dtype=dtype)
        shapes.append(list(batch[primary_input(kind)].shape[:2]))
    full_meta = {**meta, "format": FORMAT, "version": VERSION, "num_batches": len(shapes),
                 "batch_shapes": shapes, "padding_side": PADDING_SIDE[kind]}
    arrays[META_KEY] = np.array(json.dumps(full_meta, sort_keys=True))  # 0-d unicode, no pickle
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    return Path(path)


class CalibrationSet:
    """Iterable of feed dicts read from a ``.calib.npz``; rewindable (Polygraphy iterates it anew
    on every ``reset()``).

    Attributes: ``input_names`` (every graph input, in order), ``shapes`` (per batch, the
    ``(batch, seq)`` of its token inputs), ``kind``, ``meta`` (the stored metadata).
    Set ``input_metadata`` (Polygraphy does it for its calibrator) to a mapping of input name to
    an object with ``.shape``, and iteration yields batches of exactly those shapes instead.
    """

    def __init__(self, npz_path: str | os.PathLike):
        self.path = Path(npz_path)
        self.meta, self._tokens = _read_npz(self.path)
        self.kind: str = self.meta["kind"]
        self.input_names: List[str] = list(self.meta["input_names"])
        self.primary = primary_input(self.kind)  # input_ids, or features
        self.shapes: List[Tuple[int, int]] = [tuple(b[self.primary].shape[:2])
                                              for b in self._tokens]
        self._input_metadata: Mapping[str, Any] | None = None
        self._fixed_shape: Tuple[int, int] | None = None

    def __len__(self) -> int:
        if self._fixed_shape is not None:
            return len(self._repacked(*self._fixed_shape))
        return len(self._tokens)

    def __iter__(self) -> Iterator[Feed]:
        # Read the target shape when iteration starts, not at iter(): Polygraphy calls iter()
        # in the calibrator's constructor and sets input_metadata afterwards.
        if self._fixed_shape is not None:
            token_batches = self._repacked(*self._fixed_shape)
        else:
            token_batches = self._tokens
        wanted = list(self._input_metadata) if self._input_metadata is not None else None
        for tokens in token_batches:
            feed = self.feed(tokens)
            # Polygraphy rejects a feed with inputs the engine does not have.
            yield feed if wanted is None else {name: feed[name] for name in wanted}

    @property
    def input_metadata(self) -> Mapping[str, Any] | None:
        return self._input_metadata

    @input_metadata.setter
    def input_metadata(self, metadata: Mapping[str, Any] | None) -> None:
        """Polygraphy's hook: fix every batch to the calibration profile's OPT shapes."""
        self._input_metadata = metadata
        self._fixed_shape = None if metadata is None else self._shape_from_metadata(metadata)

    def feed(self, tokens: Mapping[str, np.ndarray]) -> Feed:
        """Token arrays of one batch -> the complete feed, in ``input_names`` order."""
        batch = tokens[self.primary].shape[0]
        feed: Feed = {}
        for name in self.input_names:
            if name in tokens:
                feed[name] = tokens[name]  # (batch, seq) int32
            elif name.startswith(("past_key_", "past_value_")):
                # prefill: no past positions. (0, batch, kv_dim) fp32
                feed[name] = np.zeros((0, batch, self.meta["kv_dim"]), np.float32)
            else:
                raise ToolkitError(f"calibration set {self.path}: no data for input {name!r}")
        return feed

    def fixed_shape_batches(self, batch: int, seq: int) -> List[Feed]:
        """Every stored row re-packed into feeds of exactly (batch, seq) token inputs."""
        return [self.feed(tokens) for tokens in self._repacked(batch, seq)]

    def _shape_from_metadata(self, metadata: Mapping[str, Any]) -> Tuple[int, int]:
        missing = [n for n in metadata if n not in self.input_names]
        if missing:
            raise ToolkitError(f"calibration set {self.path} has no inputs {missing}; it feeds "
                               f"{self.input_names}: rebuild it from this engine's ONNX")
        shape = tuple(int(d) for d in metadata[self.primary].shape)
        if self.primary in FLOAT_INPUTS and len(shape) == 3:
            if shape[2] != int(self.meta["feature_dim"]):
                raise ToolkitError(f"calibration shape of features is {shape}; the set holds "
                                   f"F={self.meta['feature_dim']} features per step")
            shape = shape[:2]
        if len(shape) != 2 or min(shape) < 1:
            raise ToolkitError(f"calibration shape of {self.primary} is {shape}; expected a fixed "
                               "(batch, seq) with both > 0 (the calibration profile's OPT shape)")
        for name in self.input_names:
            if name.startswith("past_") and name in metadata:
                past = int(metadata[name].shape[0])
                if past != 0:
                    raise ToolkitError(
                        f"calibration profile sets {name} to {past} past positions; the "
                        "calibration set holds prefill batches: use a profile whose OPT past is 0")
        return shape[0], shape[1]

    def _repacked(self, batch: int, seq: int) -> List[Dict[str, np.ndarray]]:
        """Real tokens of every stored row, padded (or cut to their first ``seq``) to ``seq``."""
        rows = [row for tokens in self._tokens for row in _real_rows(tokens[self.primary],
                                                                    tokens["attention_mask"])]
        # Cycle rows to fill the last batch: every batch must have the full shape.
        n_batches = -(-len(rows) // batch)
        rows = [rows[i % len(rows)] for i in range(n_batches * batch)]
        return [self._pad_rows(rows[i:i + batch], seq) for i in range(0, len(rows), batch)]

    def _pad_rows(self, rows: Sequence[np.ndarray], seq: int) -> Dict[str, np.ndarray]:
        if self.primary in FLOAT_INPUTS:  # feature rows (len, F): zeros under a mask of 0s
            from calibration.feature_data import pad_rows

            features, mask = pad_rows(rows, seq, int(self.meta["feature_dim"]))
            return {"features": features, "attention_mask": mask}
        pad_id = int(self.meta.get("pad_id", 0))
        input_ids = np.full((len(rows), seq), pad_id, np.int32)  # (batch, seq)
        attention_mask = np.zeros((len(rows), seq), np.int32)  # (batch, seq) 1 = token
        for r, row in enumerate(rows):
            row = row[:seq]
            if self.meta["padding_side"] == "left":
                input_ids[r, seq - len(row):] = row
                attention_mask[r, seq - len(row):] = 1
            else:
                input_ids[r, :len(row)] = row
                attention_mask[r, :len(row)] = 1
        tokens = {"input_ids": input_ids, "attention_mask": attention_mask}
        if "position_ids" in TOKEN_INPUTS[self.kind]:
            tokens["position_ids"] = position_ids_for(attention_mask)
        return tokens


def position_ids_for(attention_mask: np.ndarray) -> np.ndarray:
    """Left-padded rows count positions from their first real token; padding gets 0."""
    positions = np.cumsum(attention_mask, axis=1, dtype=np.int64) - 1  # (batch, seq)
    return np.maximum(positions, 0).astype(np.int32)  # (batch, seq) int32


def _real_rows(input_ids: np.ndarray, attention_mask: np.ndarray) -> List[np.ndarray]:
    return [ids[mask.astype(bool)] for ids, mask in zip(input_ids, attention_mask)]


def _read_npz(path: Path) -> Tuple[Dict[str, Any], List[Dict[str, np.ndarray]]]:
    if not path.is_file():
        raise ToolkitError(f"calibration set not found: {path} (build it with "
                           "python -m calibration.dataset)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise ToolkitError(f"calibration set {path} is not a readable .npz ({exc})") from None
    meta = _parse_meta(path, arrays)
    batches = []
    for index in range(meta["num_batches"]):
        batch = {}
        for name in TOKEN_INPUTS[meta["kind"]]:
            key = batch_key(index, name)
            if key not in arrays:
                raise ToolkitError(f"calibration set {path}: array {key!r} is missing")
            batch[name] = (_checked_features(path, key, arrays[key], meta["feature_dim"])
                           if name in FLOAT_INPUTS else _checked_tokens(path, key, arrays[key]))
        if len({a.shape[:2] for a in batch.values()}) != 1:
            raise ToolkitError(f"calibration set {path}: batch {index} inputs differ in shape")
        batches.append(batch)
    if not batches:
        raise ToolkitError(f"calibration set {path} holds no batches")
    return meta, batches


def _parse_meta(path: Path, arrays: Dict[str, np.ndarray]) -> Dict[str, Any]:
    if META_KEY not in arrays:
        raise ToolkitError(f"calibration set {path} has no {META_KEY!r} entry: not a "
                           "calibration set of this toolkit")
    try:
        meta = json.loads(str(arrays[META_KEY]))
    except json.JSONDecodeError as exc:
        raise ToolkitError(f"calibration set {path}: metadata is not JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ToolkitError(f"calibration set {path}: format is not {FORMAT!r}")
    if meta.get("version") != VERSION:
        raise ToolkitError(f"calibration set {path}: version {meta.get('version')!r}, "
                           f"expected {VERSION}")
    missing = [k for k in ("kind", "input_names", "num_batches", "padding_side") if k not in meta]
    if meta.get("kind") == "decoder":
        missing += [k for k in ("kv_layers", "kv_dim") if k not in meta]
    if meta.get("kind") == "feature_classifier":
        missing += [k for k in ("feature_dim",) if k not in meta]
    if missing or meta["kind"] not in TOKEN_INPUTS:
        raise ToolkitError(f"calibration set {path}: metadata lacks {missing} or has an unknown "
                           f"kind {meta.get('kind')!r}")
    return meta


def _checked_features(path: Path, key: str, array: np.ndarray, feature_dim) -> np.ndarray:
    if array.ndim != 3 or array.dtype != np.float32 or array.size == 0 or \
            array.shape[2] != int(feature_dim) or not np.isfinite(array).all():
        raise ToolkitError(f"calibration set {path}: {key} is {array.dtype} {array.shape}; "
                           f"expected a non-empty finite (batch, seq, {feature_dim}) float32 array")
    return array


def _checked_tokens(path: Path, key: str, array: np.ndarray) -> np.ndarray:
    if array.ndim != 2 or array.dtype != np.int32 or array.size == 0:
        raise ToolkitError(f"calibration set {path}: {key} is {array.dtype} {array.shape}; "
                           "expected a non-empty (batch, seq) int32 array")
    return array
