"""tinystories_generate (python backend, decoupled): a prompt and sampling settings in, one
response per new token streamed out, then a final response with the stop reason.

In: ``PROMPT`` TYPE_STRING [1]; optional ``MAX_NEW_TOKENS`` INT32 [1] (default 64, 0..the
context), ``TEMPERATURE`` FP32 [1] (0 = greedy), ``TOP_K`` INT32 [1] (0 = off), ``TOP_P`` FP32
[1] (1.0 = off), ``SEED`` INT64 [1] (>= 0). Out, per token: ``TOKEN_ID`` [1], ``TEXT`` [1] (the
text that token completes, "" while a UTF-8 character is incomplete), ``STOP_REASON`` [""];
last: ``TOKEN_ID`` [0], ``TEXT`` [""], ``STOP_REASON`` ["eos" | "max_new_tokens" |
"context"], sent with TRITONSERVER_RESPONSE_COMPLETE_FINAL. A bad request gets one error
response (also COMPLETE_FINAL): the stream always ends.

Generation is ``runtime.generate.Generator``, created once per model instance with its
buffers and KV cache sized for one row (the decoder ONNX through ONNX Runtime, or a TensorRT
plan on a Jetson) and warmed up at load with a two-token generation. ``execute`` runs a
stream to its end before it returns, so each instance serves one stream at a time and a
second stream on the same instance waits in Triton's queue; ``instance_group { count: N }``
(``--generator-instances N``) gives N parallel streams, each with its own cache; streams
beyond the config's queue bound are refused by Triton before they reach ``execute``.

Cancellation: ``InferenceResponseSender.is_cancelled()`` exists from Triton 2.39 (23.10) and
is a blocking round trip to the server process (a median 0.14 ms per call on 2.51 here, on a
loaded host; a small decoder's step is not much longer), so it is asked before the prefill
and then once every CANCEL_CHECK_TOKENS tokens or CANCEL_CHECK_S seconds, whichever comes
first: a cancelled stream stops within that much. On an older server the sender has no
``is_cancelled`` and a cancelled stream runs to its end (the server drops its responses).

Config parameters: ``model`` and ``tokenizer`` (files in the version folder; the ONNX sidecar
or the plan's manifest beside the model), ``default_max_new_tokens``; optional
``cancel_check_tokens`` and ``cancel_check_ms`` (the defaults above).
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping

import numpy as np

_TOOLKIT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_toolkit")
if os.path.isdir(_TOOLKIT) and _TOOLKIT not in sys.path:  # inside a built repository
    sys.path.insert(0, _TOOLKIT)

from common.errors import ToolkitError  # noqa: E402
from triton_repo.models.requests import (  # noqa: E402
    check_input_names,
    check_parameters,
    model_parameters,
    request_inputs,
    required_parameter,
    scalar,
    string_tensor,
    triton_error,
    utf8_strings,
)

REQUIRED = ("PROMPT",)
OPTIONAL = ("MAX_NEW_TOKENS", "TEMPERATURE", "TOP_K", "TOP_P", "SEED")
DEFAULT_MAX_NEW_TOKENS = 64
# Ask is_cancelled() at most this often (a round trip to the server per call): every 16 tokens
# or 20 ms, so a 150-token stream asks 11 times instead of 150 (issue 22 measured per-token
# checks doubling the time per token on 2.51).
CANCEL_CHECK_TOKENS = 16
CANCEL_CHECK_S = 0.020


@dataclass(frozen=True)
class GenerateRequest:
    prompt: str
    prompt_ids: List[int]  # <|endoftext|> + the prompt's ids, as runtime.generate
    max_new_tokens: int
    temperature: float
    top_k: int
    top_p: float
    seed: int


class StreamCancelled(Exception):
    """The client cancelled the stream: stop generating, send nothing more but the end."""


class StreamingGenerator:
    """One ``Generator`` (batch 1) and the checks of a request against its limits."""

    def __init__(self, session, tokenizer, info: Mapping[str, Any],
                 default_max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS):
        from runtime.generate import Generator

        self.session = session
        self.tokenizer = tokenizer
        self.generator = Generator(session, tokenizer, dict(info), max_batch=1)
        self.default_max_new_tokens = int(default_max_new_tokens)
        # The longest prompt (in tokens, <|endoftext|> included) that leaves room for a token.
        self.max_prompt = min(self.generator.max_prompt, self.generator.context_limit - 1)
        self.context_limit = self.generator.context_limit
        self.cancel_check_tokens = CANCEL_CHECK_TOKENS
        self.cancel_check_s = CANCEL_CHECK_S
        self.clock = time.monotonic

    @classmethod
    def open(cls, model_path: str, tokenizer_path: str,
             default_max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS) -> StreamingGenerator:
        from runtime.session import open_session
        from runtime.tokenization import load_model_tokenizer, model_info

        info = model_info(model_path)
        tokenizer = load_model_tokenizer(model_path, info, tokenizer_path)
        session = open_session(model_path)
        try:
            return cls(session, tokenizer, info, default_max_new_tokens)
        except ToolkitError:
            session.close()
            raise

    def parse(self, inputs: Mapping[str, np.ndarray], parameters: Any = None) -> GenerateRequest:
        """Check one request; every refusal is a one-line ToolkitError."""
        check_parameters(parameters)
        check_input_names(inputs, REQUIRED, OPTIONAL)
        prompts = utf8_strings("PROMPT", np.asarray(inputs["PROMPT"]).reshape(-1, 1))
        if len(prompts) != 1:
            raise ToolkitError(f"input 'PROMPT' holds {len(prompts)} prompts; this model "
                               "streams one (send one request per prompt)")
        prompt = prompts[0]
        if not prompt.strip():
            raise ToolkitError("input 'PROMPT' is empty: give the start of a story")
        max_new = int(scalar(inputs, "MAX_NEW_TOKENS", "int32", self.default_max_new_tokens))
        if not 0 <= max_new <= self.context_limit:
            raise ToolkitError(f"MAX_NEW_TOKENS={max_new}: expected 0..{self.context_limit} "
                               "(the model's context)")
        temperature = float(scalar(inputs, "TEMPERATURE", "float32", 0.0))
        top_k = int(scalar(inputs, "TOP_K", "int32", 0))
        top_p = float(scalar(inputs, "TOP_P", "float32", 1.0))
        seed = int(scalar(inputs, "SEED", "int64", 0))
        if not math.isfinite(temperature) or temperature < 0:
            raise ToolkitError(f"TEMPERATURE={temperature}: expected a finite value >= 0 "
                               "(0 = greedy)")
        if top_k < 0:
            raise ToolkitError(f"TOP_K={top_k}: expected >= 0 (0 = off)")
        if not (math.isfinite(top_p) and 0.0 < top_p <= 1.0):
            raise ToolkitError(f"TOP_P={top_p}: expected a value in (0, 1] (1 = off)")
        if seed < 0:
            raise ToolkitError(f"SEED={seed}: expected >= 0")
        ids = self.generator.info.encode_prompt(self.tokenizer, prompt)  # the model's rules
        if len(ids) > self.max_prompt:
            raise ToolkitError(f"the prompt is {len(ids)} tokens; this model takes at most "
                               f"{self.max_prompt} (context {self.context_limit})")
        return GenerateRequest(prompt, ids, max_new, temperature, top_k, top_p, seed)

    def stream(self, request: GenerateRequest, send_token: Callable[[int, str], None],
               cancelled: Callable[[], bool] = lambda: False) -> str:
        """Generate, calling ``send_token(token_id, text_piece)`` per new token; returns the
        stop reason ("eos" | "max_new_tokens" | "context"). Raises StreamCancelled when
        ``cancelled()`` is true before the prefill or at one of the checks between tokens
        (every ``cancel_check_tokens`` tokens or ``cancel_check_s`` seconds)."""
        from runtime.sampling import Sampler

        sampler = Sampler(request.temperature, request.top_k, request.top_p, request.seed)
        if cancelled():  # gave up while the stream waited in the queue
            raise StreamCancelled()
        every_tokens, every_s, clock = self.cancel_check_tokens, self.cancel_check_s, self.clock
        since = [0, clock()]  # tokens and time of the last check

        def on_token(row: int, token: int, piece: str) -> None:
            since[0] += 1
            if since[0] >= every_tokens or clock() - since[1] >= every_s:
                if cancelled():
                    raise StreamCancelled()
                since[:] = [0, clock()]
            send_token(int(token), piece)

        result = self.generator.generate_ids([request.prompt_ids], request.max_new_tokens,
                                             sampler, on_token)
        return result.stop_reasons[0]

    def warm_up(self) -> List[int]:
        """A prefill and one decode step at load, so the first client does not pay for the
        backend's lazy initialisation; returns the two greedy tokens."""
        from runtime.sampling import Sampler

        start = self.generator.info.eos_id
        result = self.generator.generate_ids([[0 if start is None else start]], 2, Sampler())
        return result.tokens[0]

    def close(self) -> None:
        self.generator.close()
        self.session.close()


def token_outputs(token_id: int | None, text: str, stop_reason: str) -> Dict[str, np.ndarray]:
    """One response's tensors: a token (TOKEN_ID [1]) or the end (TOKEN_ID [0])."""
    ids = np.array([] if token_id is None else [token_id], np.int32)  # (0,) or (1,) int32
    return {"TOKEN_ID": ids, "TEXT": string_tensor([text]).reshape(1),
            "STOP_REASON": string_tensor([stop_reason]).reshape(1)}


def positive_parameter(params: Mapping[str, str], key: str, default: int) -> int:
    """Config parameter ``key`` as a whole number > 0 (``default`` when absent)."""
    text = str(params.get(key) or "").strip()
    if not text:
        return default
    if not text.isdigit() or int(text) < 1:
        raise ToolkitError(f"model tinystories_generate: config parameter {key!r} is "
                           f"{text!r}; expected a whole number > 0")
    return int(text)


class TritonPythonModel:
    """Decoupled adapter: every request is answered on its response sender, ending in a
    COMPLETE_FINAL send whatever happened (tokens then the stop reason, or one error)."""

    def initialize(self, args: Dict[str, str]) -> None:
        import triton_python_backend_utils as pb_utils

        self.pb_utils = pb_utils
        config = json.loads(args["model_config"])
        if not pb_utils.using_decoupled_model_transaction_policy(config):
            raise pb_utils.TritonModelException(
                "tinystories_generate streams tokens: its config needs "
                "model_transaction_policy { decoupled: true }")
        params = model_parameters(config)
        # optional overrides (not written by the builder; measure_cancel_checks.py sets them)
        try:
            every_tokens = positive_parameter(params, "cancel_check_tokens", CANCEL_CHECK_TOKENS)
            every_ms = positive_parameter(params, "cancel_check_ms", int(CANCEL_CHECK_S * 1000))
        except ToolkitError as exc:
            raise pb_utils.TritonModelException(str(exc)) from None
        folder = os.path.dirname(__file__)
        self.model = StreamingGenerator.open(
            os.path.join(folder, required_parameter(params, "model", "tinystories_generate")),
            os.path.join(folder, required_parameter(params, "tokenizer", "tinystories_generate")),
            int(params.get("default_max_new_tokens") or DEFAULT_MAX_NEW_TOKENS))
        self.model.cancel_check_tokens, self.model.cancel_check_s = every_tokens, every_ms / 1000
        self.model.warm_up()

    def execute(self, requests):
        for request in requests:
            self._serve(request)
        return None

    def _response(self, outputs: Dict[str, np.ndarray]):
        pb = self.pb_utils
        return pb.InferenceResponse(
            output_tensors=[pb.Tensor(name, array) for name, array in outputs.items()])

    def _serve(self, request) -> None:
        pb = self.pb_utils
        final = pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        sender = request.get_response_sender()
        cancelled = getattr(sender, "is_cancelled", None) or (lambda: False)
        try:
            parsed = self.model.parse(request_inputs(request), request.parameters())
            reason = self.model.stream(
                parsed, lambda token, piece: sender.send(self._response(
                    token_outputs(token, piece, ""))), cancelled)
            ending = self._response(token_outputs(None, "", reason))
        except StreamCancelled:
            sender.send(flags=final)
            return
        except Exception as exc:  # a bad request or a failed step: one error, then the end
            ending = pb.InferenceResponse(error=triton_error(pb, exc))
        sender.send(ending, flags=final)

    def finalize(self) -> None:
        self.model.close()
