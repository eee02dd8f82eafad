"""A feature classifier on ``--target cpu`` (python backend): the exported ONNX through ONNX
Runtime with ``runtime.features.FeatureClassifier`` (one arena at the largest batch, reused),
with the I/O of the Jetson's ``tensorrt_plan`` model (``triton_repo/feature_configs.py``):
``features`` FP32 [-1, F] raw and ``attention_mask`` INT32 [-1] in, ``logits`` FP32
[num_labels] out. The graph normalizes the raw features itself.

Requests queued together (dynamic batching) run as one batch: each row is cut to its mask's
real steps and ``FeatureClassifier.logits_for_rows`` pads each run to its longest row exactly
as ``runtime/classify.py --features`` does, so the logits equal the runtime's. Config
parameter ``model``: the ONNX file in the version folder (its sidecar beside it).
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any, Dict, List, Mapping, Sequence

import numpy as np

_TOOLKIT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_toolkit")
if os.path.isdir(_TOOLKIT) and _TOOLKIT not in sys.path:  # inside a built repository
    sys.path.insert(0, _TOOLKIT)

from common.errors import ToolkitError  # noqa: E402
from triton_repo.models.requests import (  # noqa: E402
    answer_together,
    check_dtype,
    check_input_names,
    check_parameters,
    model_parameters,
    request_inputs,
    required_parameter,
    triton_error,
)

INPUTS = ("features", "attention_mask")
OUTPUT = "logits"


def rows_from_padded(features: np.ndarray, attention_mask: np.ndarray, feature_dim: int,
                     max_len: int, max_batch: int) -> List[np.ndarray]:
    """Right-padded (rows, seq, F) fp32 + (rows, seq) int32 mask -> each row's real steps."""
    check_dtype("features", features, "float32")
    check_dtype("attention_mask", attention_mask, "int32")
    if features.ndim != 3 or features.shape[:2] != attention_mask.shape or \
            features.shape[0] < 1 or features.shape[2] != feature_dim:
        raise ToolkitError(f"features {list(features.shape)} and attention_mask "
                           f"{list(attention_mask.shape)}: expected [batch, seq, {feature_dim}] "
                           "and [batch, seq]")
    if features.shape[0] > max_batch:
        raise ToolkitError(f"batch of {features.shape[0]} rows: the profile takes at most "
                           f"{max_batch}")
    if not 1 <= features.shape[1] <= max_len:
        raise ToolkitError(f"sequence length {features.shape[1]}: the classifier takes "
                           f"1..{max_len}")
    lengths = attention_mask.sum(axis=1)  # (rows,)
    positions = np.arange(features.shape[1])
    if not np.isin(attention_mask, (0, 1)).all() or (lengths < 1).any() or \
            not (attention_mask == (positions[None, :] < lengths[:, None])).all():
        raise ToolkitError("attention_mask must be right-padded 1s then 0s, with at least one "
                           "real step per row")
    rows = [features[r, :n] for r, n in enumerate(lengths)]
    if not all(np.isfinite(row).all() for row in rows):
        raise ToolkitError("features hold NaN or Inf in a real step")
    return rows


class OrtFeatureClassifier:
    """Several requests' padded windows -> their logits, in runs of the classifier's batch."""

    def __init__(self, session, info: Mapping[str, Any]):
        from runtime.features import FeatureClassifier

        self.classifier = FeatureClassifier(session, dict(info))

    @classmethod
    def open(cls, onnx_path: str) -> OrtFeatureClassifier:
        from runtime.session import open_session
        from runtime.tokenization import model_info

        return cls(open_session(onnx_path), model_info(onnx_path))

    def parse(self, inputs: Mapping[str, np.ndarray], parameters: Any = None):
        check_parameters(parameters)
        check_input_names(inputs, INPUTS)
        c = self.classifier
        return rows_from_padded(inputs["features"], inputs["attention_mask"], c.feature_dim,
                                c.max_len, c.max_batch)

    def logits(self, requests_rows: Sequence[List[np.ndarray]]) -> List[np.ndarray]:
        flat = [row for rows in requests_rows for row in rows]
        logits = self.classifier.logits_for_rows(flat)  # (all rows, labels) float32
        out, start = [], 0
        for rows in requests_rows:
            out.append(logits[start:start + len(rows)])
            start += len(rows)
        return out

    def close(self) -> None:
        self.classifier.close()
        self.classifier.session.close()


class TritonPythonModel:
    """Adapter: parse every request (a bad one gets its error), run the good ones together."""

    def initialize(self, args: Dict[str, str]) -> None:
        import triton_python_backend_utils as pb_utils

        self.pb_utils = pb_utils
        params = model_parameters(json.loads(args["model_config"]))
        model = required_parameter(params, "model", args.get("model_name", "feature model"))
        self.model = OrtFeatureClassifier.open(os.path.join(os.path.dirname(__file__), model))

    def execute(self, requests):
        return answer_together(self.pb_utils, requests, self.model.parse, self.model.logits,
                               OUTPUT)

    def finalize(self) -> None:
        self.model.close()
