"""A client of the served repository: classify through the ``imdb`` ensemble, stream stories.

    python -m triton_repo.client classify --url 127.0.0.1:8000 "A wonderful film." "Dull."
    python -m triton_repo.client classify --protocol grpc --url 127.0.0.1:8001 --json "..."
    python -m triton_repo.client generate --url 127.0.0.1:8001 --prompt "Once upon a time"
    python -m triton_repo.client ready --url 127.0.0.1:8000 --model imdb --timeout 60

Classification goes over HTTP or gRPC: the texts are sent as one ``TEXT`` batch (``[n, 1]``
BYTES, UTF-8), split at the model's ``max_batch_size``; each row comes back as ``LABEL`` and
``PROBABILITIES`` (in the sidecar's label order). Generation streams over gRPC (tritonclient's
HTTP client has no decoupled streaming): one response per token, then a final one that carries
the stop reason. A gRPC client holds one stream at a time: ``StreamClient`` runs streams one
after another on one connection; ``generate`` opens one for a single stream.

Servers: Triton 2.34 (23.05) and newer (``triton_repo.versions``). Each client reads the server's
version once as it connects and refuses an older server naming both versions; below 2.35 the
stream end is the model's own final response (Triton's end-of-stream flag does not exist yet).
Every call has a timeout (``timeout_s``, 60 s by default), so a stalled server fails a call
instead of hanging it, and every connection is closed when a check fails.

Every failure the user can act on (server down, model missing or not ready, an error response)
is a one-line ``ToolkitError`` naming the URL and the model. tritonclient is imported inside the
functions, so ``--help`` works without it.
"""
from __future__ import annotations

if __package__ in (None, ""):  # run by path: the repository root replaces triton_repo/
    import os
    import sys

    _HERE = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
    sys.path.insert(0, os.path.dirname(_HERE))

import json
import queue
import time
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence

import click
import numpy as np

from common.errors import ToolkitError, exit_on_toolkit_error
from triton_repo.connection import (  # noqa: F401  (the client's API, used by the load test)
    DEFAULT_TIMEOUT_S,
    DEFAULT_URLS,
    PROTOCOLS,
    _Connected,
    _deadline,
    _describe,
    _strip_scheme,
    _transport_errors,
    check_model,
    connect,
    make_input,
    open_checked,
    server_version,
    text_tensor,
    wait_until_ready,
)
from triton_repo.versions import STREAM_FINAL_RESPONSE_FROM, format_version

CLASSIFIER_MODEL = "imdb"
GENERATOR_MODEL = "tinystories_generate"


@dataclass
class ServedPrediction:
    label: str
    probabilities: np.ndarray  # (num_labels,) float32, in the sidecar's label order


@dataclass
class StreamEvent:
    """One streamed response: a token and its text piece, or the final stop reason."""
    token_id: Optional[int]  # None on the final response
    text: str
    stop_reason: str  # "" while streaming; "eos" | "max_new_tokens" | "context" at the end

    @property
    def final(self) -> bool:
        return self.stop_reason != ""


class ClassifierClient(_Connected):
    """Classify texts through the ensemble; one connection, checked once, reused for every call."""

    def __init__(self, url: str, protocol: str = "http", model: str = CLASSIFIER_MODEL,
                 timeout_s: float = DEFAULT_TIMEOUT_S):
        self.url, self.protocol, self.model = _strip_scheme(url), protocol, model
        self.timeout_s = timeout_s
        self.client, self.server_version, config = open_checked(self.url, protocol, model,
                                                                timeout_s)
        self.max_batch = int(config.get("max_batch_size", 0) or 0)  # 0 = no batch dimension

    def classify(self, texts: Sequence[str]) -> List[ServedPrediction]:
        if not texts:
            return []
        step = self.max_batch or 1
        predictions: List[ServedPrediction] = []
        for start in range(0, len(texts), step):
            predictions.extend(self._request(texts[start:start + step]))
        return predictions

    def _request(self, texts: Sequence[str]) -> List[ServedPrediction]:
        tensor = make_input(self.protocol, "TEXT", text_tensor(texts, self.max_batch > 0), "BYTES")
        try:
            result = self.client.infer(self.model, [tensor],
                                       **_deadline(self.protocol, self.timeout_s))
        except _transport_errors() as exc:
            raise ToolkitError(f"triton at {self.url}: {self.model}: {_describe(exc)}") from None
        labels = result.as_numpy("LABEL").reshape(len(texts))  # (n,) bytes
        probabilities = result.as_numpy("PROBABILITIES").reshape(len(texts), -1)  # (n, labels)
        return [ServedPrediction(label.decode("utf-8"), probabilities[i].astype(np.float32))
                for i, label in enumerate(labels)]


def classify(url: str, texts: Sequence[str], protocol: str = "http",
             model: str = CLASSIFIER_MODEL,
             timeout_s: float = DEFAULT_TIMEOUT_S) -> List[ServedPrediction]:
    with ClassifierClient(url, protocol, model, timeout_s) as client:
        return client.classify(texts)


def generation_inputs(prompt: str, max_new_tokens: Optional[int] = None,
                      temperature: Optional[float] = None, top_k: Optional[int] = None,
                      top_p: Optional[float] = None, seed: Optional[int] = None) -> list:
    """gRPC inputs of ``tinystories_generate``; an option left None is not sent (server default)."""
    arrays = [("PROMPT", text_tensor([prompt], batched=False), "BYTES")]
    optional = [("MAX_NEW_TOKENS", max_new_tokens, np.int32, "INT32"),
                ("TEMPERATURE", temperature, np.float32, "FP32"),
                ("TOP_K", top_k, np.int32, "INT32"), ("TOP_P", top_p, np.float32, "FP32"),
                ("SEED", seed, np.int64, "INT64")]
    for name, value, dtype, datatype in optional:
        if value is not None:
            arrays.append((name, np.array([value], dtype=dtype), datatype))  # (1,)
    return [make_input("grpc", name, array, datatype) for name, array, datatype in arrays]


def _event(result) -> StreamEvent:
    ids = result.as_numpy("TOKEN_ID")
    text = result.as_numpy("TEXT")
    reason = result.as_numpy("STOP_REASON")
    piece = text.reshape(-1)[0].decode("utf-8") if text is not None and text.size else ""
    stop = reason.reshape(-1)[0].decode("utf-8") if reason is not None and reason.size else ""
    token = int(ids.reshape(-1)[0]) if ids is not None and ids.size else None
    return StreamEvent(token, piece, stop)


def _flagged_final(result) -> bool:
    """Triton's own end-of-request flag on a response (2.35+)."""
    params = result.get_response().parameters
    return "triton_final_response" in params and params["triton_final_response"].bool_param


class StreamClient(_Connected):
    """Streams of the generator over one gRPC connection, checked once (model, server version).

    A client holds one stream at a time: ``stream`` runs one request to its end; run them one
    after another, or one StreamClient per thread. On Triton >= 2.35 the request asks for the
    empty final response and the end is Triton's ``triton_final_response`` flag; an older
    server refuses that request parameter (a reserved ``triton_`` name), so there the end is the
    model's own: the response with a non-empty ``STOP_REASON`` (or an error response)."""

    def __init__(self, url: str, model: str = GENERATOR_MODEL,
                 timeout_s: float = DEFAULT_TIMEOUT_S):
        self.url, self.model, self.timeout_s = _strip_scheme(url), model, timeout_s
        self.client, self.server_version, _ = open_checked(self.url, "grpc", model, timeout_s)
        self.final_flag = self.server_version >= STREAM_FINAL_RESPONSE_FROM
        self.sent_at: Optional[float] = None  # perf_counter() as the last request was sent

    def stream(self, inputs: list,
               parameters: Optional[Dict[str, Any]] = None) -> Iterator[StreamEvent]:
        """Send ``inputs`` on a new stream; yield each response until the final one. An error
        response raises ToolkitError; so does no response for ``timeout_s``."""
        responses: queue.Queue[tuple] = queue.Queue()
        self.client.start_stream(callback=lambda result, error: responses.put((result, error)))
        finished = False
        try:
            # from the request's send, not from opening the stream (a first-token time)
            self.sent_at = time.perf_counter()
            self.client.async_stream_infer(self.model, inputs, parameters=parameters,
                                           enable_empty_final_response=self.final_flag)
            while not finished:
                try:
                    result, error = responses.get(timeout=self.timeout_s)
                except queue.Empty:
                    raise ToolkitError(f"triton at {self.url}: {self.model}: no response for "
                                       f"{self.timeout_s:g} s (a hung stream)") from None
                if error is not None:
                    finished = True  # an error response ends the request on the server too
                    raise ToolkitError(f"triton at {self.url}: {self.model}: {_describe(error)}")
                event = _event(result)
                finished = _flagged_final(result) if self.final_flag else event.final
                if result.get_response().outputs or not finished:
                    yield event
        finally:
            # Cancel only a stream the caller abandoned: cancelling a finished one leaves (2.51)
            # the decoupled model unable to unload until the exit timeout.
            self.client.stop_stream(cancel_requests=not finished)


def stream_request(url: str, inputs: list, model: str = GENERATOR_MODEL,
                   parameters: Optional[Dict[str, Any]] = None,
                   timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[StreamEvent]:
    """One stream on its own connection (``StreamClient.stream``), closed when it ends."""
    with StreamClient(url, model, timeout_s) as client:
        yield from client.stream(inputs, parameters)


def generate(url: str, prompt: str, max_new_tokens: Optional[int] = None,
             temperature: Optional[float] = None, top_k: Optional[int] = None,
             top_p: Optional[float] = None, seed: Optional[int] = None,
             model: str = GENERATOR_MODEL,
             timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[StreamEvent]:
    """Stream a continuation of ``prompt``: one event per token, then the final stop reason."""
    inputs = generation_inputs(prompt, max_new_tokens, temperature, top_k, top_p, seed)
    return stream_request(url, inputs, model, timeout_s=timeout_s)


# -- CLI -----------------------------------------------------------------------------------------
@click.group()
def main() -> None:
    """Talk to a tritonserver serving the toolkit's repository (jetson/run_triton.sh)."""


@main.command("classify")
@click.argument("texts", nargs=-1, required=True)
@click.option("--url", default=None, help="host:port (default 127.0.0.1:8000 http, :8001 grpc).")
@click.option("--protocol", type=click.Choice(PROTOCOLS), default="http", show_default=True)
@click.option("--model", default=CLASSIFIER_MODEL, show_default=True)
@click.option("--wait", "wait_s", type=float, default=0.0, show_default=True,
              help="Seconds to wait for the server and model to be ready first.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per text.")
@click.option("--timeout", "timeout_s", type=float, default=DEFAULT_TIMEOUT_S, show_default=True,
              help="Seconds each call may take before it fails.")
@exit_on_toolkit_error
def classify_cmd(texts: Sequence[str], url: Optional[str], protocol: str, model: str,
                 wait_s: float, as_json: bool, timeout_s: float) -> None:
    """Classify TEXTS through the ensemble: label and probabilities per text."""
    url = url or DEFAULT_URLS[protocol]
    if wait_s > 0:
        wait_until_ready(url, protocol, [model], wait_s)
    for text, pred in zip(texts, classify(url, list(texts), protocol, model, timeout_s)):
        if as_json:
            click.echo(json.dumps({"text": text, "label": pred.label,
                                   "probabilities": [float(p) for p in pred.probabilities]}))
        else:
            click.echo(f"{pred.label}\t{float(pred.probabilities.max()):.4f}\t{text[:70]}")


@main.command("generate")
@click.option("--prompt", required=True)
@click.option("--url", default=DEFAULT_URLS["grpc"], show_default=True, help="gRPC host:port.")
@click.option("--max-new-tokens", type=int, default=None, help="Server default: 64.")
@click.option("--temperature", type=float, default=None, help="0 = greedy (server default).")
@click.option("--top-k", type=int, default=None, help="0 = off.")
@click.option("--top-p", type=float, default=None, help="1.0 = off.")
@click.option("--seed", type=int, default=None)
@click.option("--model", default=GENERATOR_MODEL, show_default=True)
@click.option("--wait", "wait_s", type=float, default=0.0, show_default=True,
              help="Seconds to wait for the server and model to be ready first.")
@click.option("--timeout", "timeout_s", type=float, default=DEFAULT_TIMEOUT_S, show_default=True,
              help="Seconds a call, or the wait for the next token, may take before it fails.")
@exit_on_toolkit_error
def generate_cmd(prompt: str, url: str, max_new_tokens: Optional[int],
                 temperature: Optional[float], top_k: Optional[int], top_p: Optional[float],
                 seed: Optional[int], model: str, wait_s: float, timeout_s: float) -> None:
    """Stream a story continuing PROMPT over gRPC, token by token."""
    if wait_s > 0:
        wait_until_ready(url, "grpc", [model], wait_s)
    start = time.perf_counter()
    tokens = 0
    reason = "?"
    events = generate(url, prompt, max_new_tokens, temperature, top_k, top_p, seed, model,
                      timeout_s)
    for i, event in enumerate(events):
        if i == 0:  # the prompt only once the server took the request (else just the error)
            click.echo(prompt, nl=False)
        if event.final:
            reason = event.stop_reason
        if event.token_id is not None:
            tokens += 1
        click.echo(event.text, nl=False)
    elapsed = time.perf_counter() - start
    click.echo()
    click.echo(f"[{tokens} tokens in {elapsed:.2f} s, stop: {reason}]", err=True)


@main.command("ready")
@click.option("--url", default=None, help="host:port (default by protocol).")
@click.option("--protocol", type=click.Choice(PROTOCOLS), default="http", show_default=True)
@click.option("--model", "models", multiple=True, help="Also wait for this model (repeatable).")
@click.option("--timeout", "timeout_s", type=float, default=30.0, show_default=True)
@exit_on_toolkit_error
def ready_cmd(url: Optional[str], protocol: str, models: Sequence[str], timeout_s: float) -> None:
    """Wait until the server (and the given models) are ready; exit 2 after the timeout or on
    a server older than the supported floor."""
    url = url or DEFAULT_URLS[protocol]
    version = wait_until_ready(url, protocol, list(models), timeout_s)
    click.echo(f"ready: {url} ({protocol}), triton {format_version(version)}"
               + (f", models {', '.join(models)}" if models else ""))


if __name__ == "__main__":
    main()
