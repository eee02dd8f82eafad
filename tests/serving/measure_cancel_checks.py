"""What the generator's cancellation checks cost per token, on the real tritonserver.

    .venv/bin/python tests/serving/measure_cancel_checks.py [ROUNDS]   (default 16)

One server serves three copies of tinystories_generate (the tiny decoder fixture) that differ
only in ``cancel_check_tokens`` / ``cancel_check_ms``: every token (the old behaviour), the
default (every 16 tokens or 20 ms), never. Each round streams 150 greedy tokens from each copy
in turn (interleaved, so drift hits all three alike); the figure is the median over rounds of
(final response - request sent) / 150. A measurement, not a test: run it with nothing else on
the machine.
"""
from __future__ import annotations

import queue
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from triton_harness import DECODER_ONNX, free_ports, launch, server_env  # noqa: E402

from triton_repo import dev_server  # noqa: E402
from triton_repo.build import build_repository  # noqa: E402

TOKENS = 150
VARIANTS = {  # name -> (cancel_check_tokens, cancel_check_ms); None: the built config's default
    "every token": ("1", "1000000"),
    "every 16 tokens / 20 ms": (None, None),
    "never": ("1000000000", "1000000000"),
}


def add_variants(repo: Path) -> dict:
    """Copies of tinystories_generate with other check intervals; name -> model name."""
    models = {}
    for i, (name, (tokens, ms)) in enumerate(VARIANTS.items()):
        if tokens is None:
            models[name] = "tinystories_generate"
            continue
        model = f"gen_variant_{i}"
        shutil.copytree(repo / "tinystories_generate", repo / model)
        config = repo / model / "config.pbtxt"
        text = config.read_text().replace('name: "tinystories_generate"', f'name: "{model}"')
        for key, value in (("cancel_check_tokens", tokens), ("cancel_check_ms", ms)):
            text += f'parameters {{ key: "{key}" value {{ string_value: "{value}" }} }}\n'

        config.write_text(text)
        models[name] = model
    return models


def ms_per_token(url: str, model: str) -> float:
    import tritonclient.grpc as grpcclient

    responses: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(url)
    client.start_stream(callback=lambda result, error: responses.put((time.perf_counter(),
                                                                      result, error)))
    prompt = grpcclient.InferInput("PROMPT", [1], "BYTES")
    prompt.set_data_from_numpy(np.array([b"Once upon a time"], dtype=object))
    max_new = grpcclient.InferInput("MAX_NEW_TOKENS", [1], "INT32")
    max_new.set_data_from_numpy(np.array([TOKENS], np.int32))
    sent = time.perf_counter()
    client.async_stream_infer(model, [prompt, max_new], enable_empty_final_response=True)
    tokens = 0
    try:
        while True:
            at, result, error = responses.get(timeout=60)
            if error is not None:
                raise SystemExit(f"{model}: {error}")
            ids = result.as_numpy("TOKEN_ID")
            tokens += 0 if ids is None else int(ids.size)
            final = result.get_response(as_json=True)["parameters"].get("triton_final_response")
            if final and final.get("bool_param"):
                break
    finally:
        client.stop_stream()
        client.close()
    if tokens != TOKENS:
        raise SystemExit(f"{model}: {tokens} tokens, expected {TOKENS}")
    return (at - sent) / TOKENS * 1000


def main(rounds: int) -> None:
    with tempfile.TemporaryDirectory(prefix="cancel-checks-") as tmp:
        repo = build_repository("cpu", Path(tmp) / "repo", stories=DECODER_ONNX)
        models = add_variants(repo)
        server = launch(repo, Path(tmp) / "server.log",
                        server_env(dev_server.prepare(), free_ports(3)))
        try:
            server.wait_ready()
            for model in models.values():  # warm every copy once
                ms_per_token(server.grpc_url, model)
            runs = {name: [] for name in models}
            for _ in range(rounds):
                for name, model in models.items():
                    runs[name].append(ms_per_token(server.grpc_url, model))
        finally:
            server.stop()
    for name, values in runs.items():
        print(f"{name:24s} median {statistics.median(values):.3f} ms/token over {rounds} "
              f"rounds (min {min(values):.3f}, max {max(values):.3f})")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 16)
