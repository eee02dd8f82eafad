"""imdb_postprocess (python backend): classifier ``logits`` -> ``LABEL`` and
``PROBABILITIES``, by the sidecar's ``head`` through ``runtime.classify.predictions`` itself
(one definition for the CLI and the server): single-label
the softmax (float64, then float32) and the top label; multi-label each label's sigmoid and the
labels over the threshold joined by "," (all probabilities reported); regression the raw score
in PROBABILITIES and the label name. Labels in the sidecar's order. Config parameters
``labels``: the JSON list of label names; ``head`` (optional): the JSON of
``common.artifacts.head_rules(sidecar)`` (absent: single-label).
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any, Dict, Mapping, Sequence

import numpy as np

_TOOLKIT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_toolkit")
if os.path.isdir(_TOOLKIT) and _TOOLKIT not in sys.path:  # inside a built repository
    sys.path.insert(0, _TOOLKIT)

from common.artifacts import REGRESSION  # noqa: E402
from common.errors import ToolkitError  # noqa: E402
from runtime.classify import predictions  # noqa: E402
from triton_repo.models.requests import (  # noqa: E402
    check_dtype,
    check_input_names,
    check_parameters,
    model_parameters,
    request_inputs,
    required_parameter,
    string_tensor,
    triton_error,
)

INPUT = "logits"
OUTPUTS = ("LABEL", "PROBABILITIES")


class Postprocessor:
    def __init__(self, labels: Sequence[str], head: Mapping[str, Any] | None = None):
        from common.artifacts import head_rules

        self.head = head_rules({"head": dict(head)} if head else {})
        regression = self.head["problem_type"] == REGRESSION
        if (len(labels) != 1) if regression else (len(labels) < 2):
            raise ToolkitError(f"labels {list(labels)}: a {self.head['problem_type']} head needs "
                               + ("one" if regression else "at least two"))
        self.labels = [str(label) for label in labels]

    @classmethod
    def from_parameters(cls, params: Mapping[str, str]) -> Postprocessor:
        text = required_parameter(params, "labels", "imdb_postprocess")
        try:
            labels = json.loads(text)
            head = json.loads(params["head"]) if params.get("head") else None
        except json.JSONDecodeError:
            raise ToolkitError(f"config parameter labels {text!r} or head "
                               f"{params.get('head')!r} is not JSON") from None
        return cls(labels, head)

    def __call__(self, logits: np.ndarray) -> Dict[str, np.ndarray]:
        """(rows, labels) float32 (or an fp16-I/O engine's float16) logits -> LABEL (rows, 1)
        bytes, PROBABILITIES (rows, labels) float32."""
        if logits.dtype != np.float16:
            check_dtype(INPUT, logits, "float32")
        if logits.ndim != 2 or logits.shape[1] != len(self.labels) or logits.shape[0] < 1:
            raise ToolkitError(f"input {INPUT!r} has shape {list(logits.shape)}; expected "
                               f"[batch, {len(self.labels)}]")
        if not np.isfinite(logits).all():
            raise ToolkitError(f"input {INPUT!r} holds NaN or infinite values")
        rows = predictions(logits, self.labels, self.head)
        if self.head["problem_type"] == REGRESSION:  # the score itself
            values = [[p.score] for p in rows]
        else:  # softmax / sigmoid, in the labels' order
            values = [list(p.probabilities.values()) for p in rows]
        return {"LABEL": string_tensor([p.label for p in rows]),
                "PROBABILITIES": np.array(values, np.float32)}  # (rows, labels) float32

    def postprocess_request(self, inputs: Mapping[str, np.ndarray],
                            parameters: Any = None) -> Dict[str, np.ndarray]:
        check_parameters(parameters)
        check_input_names(inputs, [INPUT])
        return self(inputs[INPUT])


class TritonPythonModel:
    """Adapter: Triton requests in, Postprocessor, responses (or an error each) out."""

    def initialize(self, args: Dict[str, str]) -> None:
        import triton_python_backend_utils as pb_utils

        self.pb_utils = pb_utils
        self.postprocess = Postprocessor.from_parameters(
            model_parameters(json.loads(args["model_config"])))

    def execute(self, requests):
        pb = self.pb_utils
        responses = []
        for request in requests:
            try:
                outputs = self.postprocess.postprocess_request(request_inputs(request),
                                                               request.parameters())
                tensors = [pb.Tensor(name, outputs[name]) for name in OUTPUTS]
                responses.append(pb.InferenceResponse(output_tensors=tensors))
            except Exception as exc:  # every failure becomes this request's error response
                responses.append(pb.InferenceResponse(error=triton_error(pb, exc)))
        return responses
