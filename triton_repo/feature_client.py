"""A client of a served feature classifier (``triton_repo/feature_configs.py``).

    python -m triton_repo.feature_client --url 127.0.0.1:8000 --features data/test.npz
    python -m triton_repo.feature_client --features w.npy --protocol grpc --url 127.0.0.1:8001 \
        --compare models/waves.onnx --wait 60

The windows of a .npz/.npy file (``calibration.feature_data``: the reader the runtime uses)
go to the server as raw FP32 ``features`` [n, seq, F] with an INT32 ``attention_mask``
[n, seq], right-padded per request to its longest window (never below the model's shortest:
config parameter ``min_seq_len``, or exactly the length of fixed ``[s_max, F]`` dims), in
requests of the model's ``max_batch_size``; ``logits`` come back per window. The label names
are the server's (``labels.txt``, asked once through Triton's classification extension,
``class_count``). ``--compare MODEL`` also runs the same windows through ``runtime.features``
(ONNX Runtime or TensorRT) and fails when a logit differs by more than ``--atol`` or either
side is NaN/Inf. Every failure is one ToolkitError line (``triton_repo.client``).
"""
from __future__ import annotations

if __package__ in (None, ""):  # run by path: the repository root replaces triton_repo/
    import os
    import sys

    _HERE = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
    sys.path.insert(0, os.path.dirname(_HERE))

from typing import List, Optional, Sequence, Tuple

import click
import numpy as np

from common.errors import ToolkitError, exit_on_toolkit_error

FEATURE_MODEL = "feature_classifier"


def served_logits(url: str, rows: Sequence[np.ndarray], protocol: str = "http",
                  model: str = FEATURE_MODEL, timeout_s: float = 60.0):
    """Windows (each (steps, F) raw) -> ((len(rows), labels) float32 logits, label names)."""
    from calibration.feature_data import pad_rows
    from runtime.features import padded_length
    from triton_repo.connection import (
        _deadline,
        _describe,
        _transport_errors,
        make_input,
        open_checked,
    )

    client, _version, config = open_checked(url, protocol, model, timeout_s)
    try:
        step = int(config.get("max_batch_size", 0) or 0) or 1
        min_seq, max_seq = served_lengths(config, f"triton at {url}: {model}")
        feature_dim = int(rows[0].shape[1])
        names = label_names(client, url, protocol, model, feature_dim, config, min_seq,
                            timeout_s)
        out: List[np.ndarray] = []
        for start in range(0, len(rows), step):
            chunk = rows[start:start + step]
            seq = padded_length(chunk, min_seq, max_seq, f"{model} at {url}")
            features, mask = pad_rows(chunk, seq, feature_dim)  # (n, seq, F), (n, seq)
            inputs = [make_input(protocol, "features", features, "FP32"),
                      make_input(protocol, "attention_mask", mask, "INT32")]
            try:
                result = client.infer(model, inputs, **_deadline(protocol, timeout_s))
            except _transport_errors() as exc:
                raise ToolkitError(f"triton at {url}: {model}: {_describe(exc)}") from None
            out.append(result.as_numpy("logits").reshape(len(chunk), -1).astype(np.float32))
    finally:
        client.close()
    return np.concatenate(out), names


def served_lengths(config, where: str) -> Tuple[int, int]:
    """(shortest, longest) window the served model takes: the ``features`` dims [seq, F] (a
    fixed seq > 0 is the only length, as feature_configs writes for a static engine) and the
    ``min_seq_len`` / ``max_seq_len`` parameters feature_configs records (a dynamic engine may
    take >= 8 steps only). An older config without them: 1 step up (unbounded)."""
    from triton_repo.feature_configs import MAX_SEQ_PARAM, MIN_SEQ_PARAM

    features = [i for i in config.get("input") or [] if i.get("name") == "features"]
    dims = [int(d) for d in features[0].get("dims") or []] if features else []
    params = config.get("parameters") or {}

    def param(key: str, default: int) -> int:
        value = (params.get(key) or {}).get("string_value")
        try:
            return default if value is None else int(value)
        except ValueError:
            raise ToolkitError(f"{where}: config parameter {key} = {value!r}: expected an "
                               "integer") from None

    if len(dims) == 2 and dims[0] > 0:  # a static-length engine
        return dims[0], dims[0]
    lo, hi = param(MIN_SEQ_PARAM, 1), param(MAX_SEQ_PARAM, 1 << 30)
    if not 1 <= lo <= hi:
        raise ToolkitError(f"{where}: config parameters {MIN_SEQ_PARAM} {lo}, {MAX_SEQ_PARAM} "
                           f"{hi}: expected 1 <= min <= max")
    return lo, hi


def label_names(client, url: str, protocol: str, model: str, feature_dim: int, config,
                min_seq: int, timeout_s: float) -> List[str]:
    """The model's labels in index order, from one request with ``class_count`` = all labels
    (answers "score:index:label" per label, the label from the model's label_filename). The
    request is one window of one step, padded to the model's shortest length."""
    from calibration.feature_data import pad_rows
    from triton_repo.connection import _deadline, _describe, _transport_errors, make_input

    if protocol == "http":
        import tritonclient.http as module
    else:
        import tritonclient.grpc as module
    outputs = config.get("output") or [{}]
    count = int((outputs[0].get("dims") or [0])[-1])
    features, mask = pad_rows([np.zeros((1, feature_dim), np.float32)], min_seq,
                              feature_dim)  # (1, min_seq, F), (1, min_seq)
    inputs = [make_input(protocol, "features", features, "FP32"),
              make_input(protocol, "attention_mask", mask, "INT32")]
    try:
        result = client.infer(model, inputs, outputs=[module.InferRequestedOutput(
            "logits", class_count=count)], **_deadline(protocol, timeout_s))
    except _transport_errors() as exc:
        raise ToolkitError(f"triton at {url}: {model} (label names): {_describe(exc)}") from None
    entries = [e.decode("utf-8", "replace") for e in result.as_numpy("logits").reshape(-1)]
    names = {}
    for entry in entries:
        parts = entry.split(":", 2)
        if len(parts) == 3 and parts[1].isdigit() and parts[2]:
            names[int(parts[1])] = parts[2]
    missing = [i for i in range(count) if i not in names]
    if count < 1 or missing:
        raise ToolkitError(f"triton at {url}: {model}: no label name for index "
                           f"{missing[0] if missing else 0} of {count} (the classification "
                           f"answer is {entries[:4]}): check the model's labels.txt, one label "
                           "per line")
    return [names[i] for i in range(count)]


def max_abs_diff(got: np.ndarray, expected: np.ndarray) -> float:
    """max |got - expected|; NaN when either side holds NaN or Inf (the comparison failed:
    ``NaN > atol`` alone would pass). export.parity's semantics, without importing export."""
    got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    if not (np.isfinite(got).all() and np.isfinite(expected).all()):
        return float("nan")
    return float(np.max(np.abs(got - expected))) if got.size else 0.0


@click.command(context_settings={"show_default": True})
@click.option("--features", "feature_file", required=True, type=click.Path(dir_okay=False),
              help=".npz (features, lengths, labels) or .npy (N, seq, F) windows")
@click.option("--url", default="127.0.0.1:8000", help="host:port of the server")
@click.option("--protocol", type=click.Choice(["http", "grpc"]), default="http")
@click.option("--model", default=FEATURE_MODEL)
@click.option("--compare", "compare_model", type=click.Path(dir_okay=False), default=None,
              help="also classify with runtime.features on this .onnx/.plan and compare")
@click.option("--atol", type=float, default=1e-4, help="largest allowed |logit difference|")
@click.option("--wait", "wait_s", type=float, default=0.0,
              help="seconds to wait for the server and model to be ready")
@click.option("--limit", type=int, default=None, help="classify only the first N windows")
@exit_on_toolkit_error
def main(feature_file: str, url: str, protocol: str, model: str,
         compare_model: Optional[str], atol: float, wait_s: float, limit: Optional[int]) -> None:
    """Classify feature windows through a served feature classifier."""
    import math

    from calibration.feature_data import read_feature_file
    from runtime.classify import softmax

    if limit is not None and limit < 1:
        raise ToolkitError(f"--limit {limit}: expected a number of windows >= 1")
    if wait_s > 0:
        from triton_repo.connection import wait_until_ready

        wait_until_ready(url, protocol, [model], timeout_s=wait_s)
    rows = read_feature_file(feature_file, read_labels=False).rows()[:limit]
    logits, names = served_logits(url, rows, protocol, model)
    windows = read_feature_file(feature_file, label_names=names)  # string labels need names
    if compare_model:
        from runtime.features import open_feature_classifier

        session, classifier = open_feature_classifier(compare_model)
        with session:
            expected = classifier.logits_for_rows(rows)
            classifier.close()
        if classifier.labels != names:
            raise ToolkitError(f"{compare_model} has labels {classifier.labels}; the served "
                               f"{model} has {names}")
        worst = max_abs_diff(logits, expected)
        if math.isnan(worst):
            raise ToolkitError(f"triton at {url}: {model} or {compare_model} gave NaN/Inf "
                               "logits: the comparison fails")
        if worst > atol:
            raise ToolkitError(f"triton at {url}: {model} logits differ from {compare_model}'s "
                               f"by {worst:.2e} (> --atol {atol:g})")
    predicted = softmax(logits).argmax(axis=1)
    for i, label in enumerate(predicted):
        click.echo(f"{i}\t{names[label]}")
    summary = f"[triton {model} at {url}: {len(rows)} windows"
    if compare_model:
        summary += f"; max |logit diff| vs {compare_model} {worst:.2e}"
    if windows.labels is not None:
        accuracy = float(np.mean(predicted == windows.labels[:len(rows)]))
        summary += f"; accuracy {100 * accuracy:.2f}%"
    click.echo(summary + "]", err=True)


if __name__ == "__main__":
    main()
