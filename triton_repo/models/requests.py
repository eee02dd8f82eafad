"""Request checks and response helpers shared by the python-backend models.

Triton's core already refuses a request with a missing required input, an input the config
does not declare, a wrong datatype or a batch above ``max_batch_size``; the models check the
same again (cheap, and it keeps each model's contract readable and testable without a server)
plus what only the model can know: UTF-8, empty text, value ranges, request parameters.
Every refusal is a ``ToolkitError`` with one line; the adapters turn it into a
``pb_utils.TritonError`` response, so a bad request never kills the stub or hangs a stream.
"""
from __future__ import annotations

import json
from typing import Any, Dict, Iterable, List, Mapping, Sequence

import numpy as np

from common.errors import ToolkitError

# Request parameters the models understand. None: a parameter is a client's mistake (a typo'd
# sampling option would otherwise be ignored silently). Triton's own keys (priority, timeout,
# sequence_*, triton_*) are consumed by the frontend and never reach a model.
KNOWN_PARAMETERS: Sequence[str] = ()


def model_parameters(model_config: Mapping[str, Any]) -> Dict[str, str]:
    """``parameters`` of the model config JSON Triton passes to ``initialize``, as str -> str."""
    params = model_config.get("parameters") or {}
    return {key: str(value.get("string_value", "")) for key, value in params.items()}


def required_parameter(params: Mapping[str, str], key: str, model: str) -> str:
    if not params.get(key):
        raise ToolkitError(f"model {model}: config parameter {key!r} is missing; rebuild the "
                           "repository with python -m triton_repo.build")
    return params[key]


def check_input_names(inputs: Mapping[str, Any], required: Iterable[str],
                      optional: Iterable[str] = ()) -> None:
    required, optional = list(required), list(optional)
    missing = [name for name in required if name not in inputs]
    if missing:
        also = f" (optional: {optional})" if optional else ""
        raise ToolkitError(f"missing input {missing[0]!r}: this model takes {required}{also}")
    extra = sorted(set(inputs) - set(required) - set(optional))
    if extra:
        raise ToolkitError(f"unexpected input {extra[0]!r}: this model takes {required + optional}")


def check_parameters(parameters: Mapping[str, Any] | str | None) -> Dict[str, Any]:
    """Parsed request parameters; any key outside KNOWN_PARAMETERS is refused."""
    if isinstance(parameters, str):
        try:
            parameters = json.loads(parameters or "{}")
        except json.JSONDecodeError:
            raise ToolkitError(f"request parameters {parameters[:40]!r} are not JSON") from None
    parameters = dict(parameters or {})
    unknown = sorted(set(parameters) - set(KNOWN_PARAMETERS))
    if unknown:
        raise ToolkitError(f"unknown request parameter {unknown[0]!r}: this model takes "
                           f"{list(KNOWN_PARAMETERS) or 'no parameters'}")
    return parameters


def check_dtype(name: str, array: np.ndarray, expected: str) -> None:
    """expected: "string" (Triton TYPE_STRING: object/bytes arrays) or a numpy dtype name."""
    if expected == "string":
        ok = array.dtype == object or array.dtype.kind == "S"
    else:
        ok = array.dtype == np.dtype(expected)
    if not ok:
        raise ToolkitError(f"input {name!r} has dtype {array.dtype}; expected "
                           f"{'TYPE_STRING (bytes)' if expected == 'string' else expected}")


def utf8_strings(name: str, array: np.ndarray) -> List[str]:
    """(rows, 1) TYPE_STRING tensor -> one str per row; invalid UTF-8 is refused."""
    check_dtype(name, array, "string")
    if array.ndim != 2 or array.shape[1] != 1:
        raise ToolkitError(f"input {name!r} has shape {list(array.shape)}; expected "
                           "[batch, 1] (one text per row)")
    texts = []
    for row, value in enumerate(array[:, 0]):
        if isinstance(value, str):
            texts.append(value)
            continue
        try:
            texts.append(bytes(value).decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise ToolkitError(f"input {name!r} row {row}: byte {exc.start} "
                               f"(0x{bytes(value)[exc.start]:02x}) is not UTF-8") from None
    return texts


def scalar(inputs: Mapping[str, np.ndarray], name: str, dtype: str, default):
    """The one value of an optional [1] input, or ``default`` when the request omits it."""
    if name not in inputs:
        return default
    array = inputs[name]
    check_dtype(name, array, dtype)
    if array.size != 1:
        raise ToolkitError(f"input {name!r} has shape {list(array.shape)}; expected [1]")
    return array.reshape(-1)[0].item()


def error_message(exc: BaseException) -> str:
    """A ToolkitError's own line; anything else is a bug, named by its type."""
    if isinstance(exc, ToolkitError):
        return str(exc)
    return f"internal error ({type(exc).__name__}: {exc})"


def triton_error(pb_utils, exc: BaseException):
    """``pb_utils.TritonError`` for ``exc``: INVALID_ARG for a bad request, INTERNAL for a bug
    (the code argument exists from Triton 2.38, python_backend r23.09; older stubs take the
    message alone)."""
    codes = getattr(pb_utils.TritonError, "INVALID_ARG", None), \
        getattr(pb_utils.TritonError, "INTERNAL", None)
    code = codes[0] if isinstance(exc, ToolkitError) else codes[1]
    if code is None:
        return pb_utils.TritonError(error_message(exc))
    return pb_utils.TritonError(error_message(exc), code)


def answer_together(pb_utils, requests, parse, run, output: str) -> List[Any]:
    """One response per request: ``parse(inputs, parameters)`` each (a bad request gets its own
    error), then ``run(parsed rows)`` once for the good ones, whose arrays become ``output``;
    a failed run answers every request that was in it."""
    responses: List[Any] = [None] * len(requests)
    good, good_rows = [], []
    for i, request in enumerate(requests):
        try:
            good_rows.append(parse(request_inputs(request), request.parameters()))
            good.append(i)
        except Exception as exc:  # this request's error response; the others still run
            responses[i] = pb_utils.InferenceResponse(error=triton_error(pb_utils, exc))
    if good:
        try:
            for i, array in zip(good, run(good_rows)):
                responses[i] = pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor(output, array)])
        except Exception as exc:
            for i in good:
                responses[i] = pb_utils.InferenceResponse(error=triton_error(pb_utils, exc))
    return responses


def request_inputs(request) -> Dict[str, np.ndarray]:
    """{name: numpy array} of every input a python-backend request carries."""
    return {tensor.name(): tensor.as_numpy() for tensor in request.inputs()}


def string_tensor(values: Sequence[str]) -> np.ndarray:
    """(rows, 1) object array of UTF-8 bytes: Triton's TYPE_STRING layout."""
    array = np.empty((len(values), 1), dtype=object)
    for i, value in enumerate(values):
        array[i, 0] = value.encode("utf-8")
    return array
