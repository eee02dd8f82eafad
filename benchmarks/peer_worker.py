"""One greedy generation by one decoding tool, run by ``benchmarks.peers`` in that tool's venv.

    VENV/bin/python benchmarks/peer_worker.py run PEER DIR --prompt 5,17,42 --tokens 450
    VENV/bin/python benchmarks/peer_worker.py prepare PEER FOLDER OUT

PEER is ``ours`` (the runtime's Generator on an ONNX Runtime session), ``transformers``
(``generate`` with its cache), ``optimum`` (``ORTModelForCausalLM``) or ``genai``
(``onnxruntime-genai``). Each peer needs its own venv (optimum-onnx pins transformers < 4.58,
onnxruntime-genai's builder needs transformers 5), so this file imports nothing of the project
but ``ours``' runtime, and only argparse/json/time of the standard library otherwise: it runs
under whichever interpreter a venv has. It prints one JSON line: the tokens and, for every
generated token after the first, the wall time of the step that made it and the positions
cached before that step.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Dict, List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def stamped_result(prompt: List[int], tokens: List[int], stamps: List[float],
                   seconds: float) -> Dict:
    """Step times from one timestamp per generated token: token i (i >= 1) came from the step
    that fed token i-1 with len(prompt) + i - 1 positions already cached."""
    step_ms = [(b - a) * 1e3 for a, b in zip(stamps, stamps[1:])]
    return {"tokens": tokens, "seconds": seconds, "step_ms": step_ms,
            "positions": [len(prompt) + i for i in range(len(step_ms))]}


class TimingStreamer:
    """transformers' streamer interface: ``put`` gets the prompt once, then each new token."""

    def __init__(self):
        self.stamps: List[float] = []
        self.tokens: List[int] = []
        self._seen_prompt = False

    def put(self, value) -> None:
        if not self._seen_prompt:
            self._seen_prompt = True
            return
        self.stamps.append(time.perf_counter())
        self.tokens.extend(int(t) for t in value.reshape(-1).tolist())

    def end(self) -> None:
        pass


def hf_generate(model, prompt: List[int], n: int) -> Dict:
    import torch

    ids = torch.tensor([prompt], dtype=torch.long)
    streamer = TimingStreamer()
    start = time.perf_counter()
    with torch.inference_mode():
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                       min_new_tokens=n, do_sample=False, streamer=streamer, pad_token_id=0)
    return stamped_result(prompt, streamer.tokens, streamer.stamps, time.perf_counter() - start)


def run_transformers(folder: str, prompt: List[int], n: int, threads: int) -> Dict:
    import torch
    import transformers

    torch.set_num_threads(threads)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
    hf_generate(model.eval(), prompt, 8)  # warm-up
    return hf_generate(model, prompt, n)


def prepare_optimum(folder: str, out: str) -> None:
    from optimum.exporters.onnx import main_export

    main_export(folder, output=out, task="text-generation-with-past", local_files_only=True)


def run_optimum(folder: str, prompt: List[int], n: int, threads: int) -> Dict:
    import onnxruntime as ort
    from optimum.onnxruntime import ORTModelForCausalLM

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    model = ORTModelForCausalLM.from_pretrained(folder, session_options=options, use_cache=True,
                                                provider="CPUExecutionProvider")
    hf_generate(model, prompt, 8)
    return hf_generate(model, prompt, n)


def prepare_genai(folder: str, out: str) -> None:
    cache = out + ".cache"
    subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-m", "local",
                    "-i", folder, "-o", out, "-p", "fp32", "-e", "cpu", "-c", cache],
                   check=True)


def set_genai_threads(folder: str, threads: int) -> None:
    """genai takes ONNX Runtime's thread count from genai_config.json only (no API for it)."""
    path = os.path.join(folder, "genai_config.json")
    with open(path, encoding="utf-8") as f:
        config = json.load(f)
    config["model"]["decoder"].setdefault("session_options", {})["intra_op_num_threads"] = threads
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
    os.replace(path + ".tmp", path)


def genai_generate(model, og, prompt: List[int], n: int) -> Dict:
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt) + n, min_length=len(prompt) + n,
                              do_sample=False)
    generator = og.Generator(model, params)
    tokens: List[int] = []
    stamps: List[float] = []
    start = time.perf_counter()
    generator.append_tokens(prompt)  # the prefill; its token comes with the first step below
    while not generator.is_done() and len(tokens) < n:
        generator.generate_next_token()
        tokens.append(int(generator.get_next_tokens()[0]))
        stamps.append(time.perf_counter())
    return stamped_result(prompt, tokens, stamps, time.perf_counter() - start)


def run_genai(folder: str, prompt: List[int], n: int, threads: int) -> Dict:
    import onnxruntime_genai as og

    set_genai_threads(folder, threads)
    model = og.Model(folder)
    genai_generate(model, og, prompt, 8)
    return genai_generate(model, og, prompt, n)


def run_ours(onnx_path: str, prompt: List[int], n: int, threads: int) -> Dict:
    """The runtime's Generator, timed like the other peers: a timestamp when each token is
    chosen (by the sampler), so a step's time includes sampling and the loop's bookkeeping,
    not only the session run (``GenerationResult.decode_ms``)."""
    sys.path.insert(0, ROOT)
    import dataclasses

    from runtime.generate import Generator, open_decoder
    from runtime.sampling import Sampler
    from runtime.session import open_session

    class StampingSampler(Sampler):
        def __init__(self):
            super().__init__(0.0)  # greedy
            self.stamps: List[float] = []

        def sample_topk(self, values, indices) -> int:
            token = super().sample_topk(values, indices)
            self.stamps.append(time.perf_counter())
            return token

    info, tok = open_decoder(onnx_path)
    info = dataclasses.replace(info, eos_id=None)  # every peer generates exactly n tokens
    with open_session(onnx_path) as session:
        generator = Generator(session, tok, info, max_batch=1)
        generator.generate_ids([prompt], 8, Sampler(0.0))
        sampler = StampingSampler()
        start = time.perf_counter()
        result = generator.generate_ids([prompt], n, sampler)
        seconds = time.perf_counter() - start
        generator.close()
    return stamped_result(prompt, list(result.tokens[0]), sampler.stamps, seconds)


RUNNERS = {"ours": run_ours, "transformers": run_transformers, "optimum": run_optimum,
           "genai": run_genai}
PREPARERS = {"optimum": prepare_optimum, "genai": prepare_genai}


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run")
    run.add_argument("peer", choices=sorted(RUNNERS))
    run.add_argument("model", help="folder (or .onnx for ours) the peer loads")
    run.add_argument("--prompt", required=True, help="comma-separated token ids")
    run.add_argument("--tokens", type=int, required=True)
    run.add_argument("--threads", type=int, default=2)
    prepare = sub.add_parser("prepare")
    prepare.add_argument("peer", choices=sorted(PREPARERS))
    prepare.add_argument("folder")
    prepare.add_argument("out")
    args = parser.parse_args(argv)
    if args.command == "prepare":
        PREPARERS[args.peer](args.folder, args.out)
        return 0
    prompt = [int(t) for t in args.prompt.split(",")]
    result = RUNNERS[args.peer](args.model, prompt, args.tokens, args.threads)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
