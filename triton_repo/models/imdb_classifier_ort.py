"""imdb_classifier on ``--target cpu`` (python backend): the classifier ONNX through ONNX
Runtime with the runtime's own ``runtime.classify.Classifier`` (one arena sized at the
largest batch, reused), so an x86 box without a GPU serves the same repository layout as the
Jetson's ``tensorrt_plan`` model: ``input_ids``/``attention_mask`` INT32 [-1] in, ``logits``
FP32 [num_labels] out.

Requests queued together (Triton's dynamic batcher hands several to one ``execute``) run as
one batch: their rows are unpadded by their masks and given to ``Classifier.logits_for_rows``,
which pads each run to its longest row exactly as ``runtime/classify.py`` does, so the logits
equal the runtime's. Config parameter ``model``: the ONNX file in the version folder (its
sidecar beside it).
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

INPUTS = ("input_ids", "attention_mask")
OUTPUT = "logits"


def rows_from_padded(input_ids: np.ndarray, attention_mask: np.ndarray, max_len: int,
                     vocab_size: int, max_batch: int | None = None) -> List[List[int]]:
    """Right-padded (rows, seq) int32 ids + mask -> each row's token ids (mask 1s first)."""
    check_dtype("input_ids", input_ids, "int32")
    check_dtype("attention_mask", attention_mask, "int32")
    if input_ids.ndim != 2 or input_ids.shape != attention_mask.shape or input_ids.shape[0] < 1:
        raise ToolkitError(f"input_ids {list(input_ids.shape)} and attention_mask "
                           f"{list(attention_mask.shape)}: expected the same [batch, seq]")
    if max_batch is not None and input_ids.shape[0] > max_batch:
        raise ToolkitError(f"batch of {input_ids.shape[0]} rows: the classifier's profile takes "
                           f"at most {max_batch}")
    if not 1 <= input_ids.shape[1] <= max_len:
        raise ToolkitError(f"sequence length {input_ids.shape[1]}: the classifier takes "
                           f"1..{max_len}")
    if not np.isin(attention_mask, (0, 1)).all():
        raise ToolkitError("attention_mask holds values other than 0 and 1")
    lengths = attention_mask.sum(axis=1)  # (rows,)
    positions = np.arange(input_ids.shape[1])
    if not (attention_mask == (positions[None, :] < lengths[:, None])).all():
        raise ToolkitError("attention_mask is not right-padded (1s, then 0s) in every row")
    if ((input_ids < 0) | (input_ids >= vocab_size)).any():
        raise ToolkitError(f"input_ids outside the vocabulary [0, {vocab_size})")
    return [input_ids[r, :n].tolist() for r, n in enumerate(lengths)]


class OrtClassifier:
    """Several requests' padded inputs -> their logits, in runs of the Classifier's batch."""

    def __init__(self, session, info: Mapping[str, Any]):
        from runtime.classify import Classifier

        # The tokenizer is imdb_tokenizer's job; the Classifier only needs the sidecar's
        # special tokens (pad id) here, which export always writes.
        self.classifier = Classifier(session, None, dict(info))
        self.vocab_size = int(info["vocab_size"])

    @classmethod
    def open(cls, onnx_path: str) -> OrtClassifier:
        from runtime.session import open_session
        from runtime.tokenization import model_info

        info = model_info(onnx_path)
        return cls(open_session(onnx_path), info)

    def parse(self, inputs: Mapping[str, np.ndarray], parameters: Any = None) -> List[List[int]]:
        check_parameters(parameters)
        check_input_names(inputs, INPUTS)
        return rows_from_padded(inputs["input_ids"], inputs["attention_mask"],
                                self.classifier.max_len, self.vocab_size,
                                self.classifier.max_batch)

    def logits(self, requests_rows: Sequence[List[List[int]]]) -> List[np.ndarray]:
        """Rows of each request -> a (rows, labels) float32 logits array per request."""
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
        model = required_parameter(params, "model", "imdb_classifier")
        self.model = OrtClassifier.open(os.path.join(os.path.dirname(__file__), model))

    def execute(self, requests):
        return answer_together(self.pb_utils, requests, self.model.parse, self.model.logits,
                               OUTPUT)

    def finalize(self) -> None:
        self.model.close()
