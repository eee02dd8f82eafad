"""The device check's judgements: parse verdicts against the table, outputs against the
committed references, and where Triton is. Pure functions over files and JSON (no TensorRT),
so they run and are tested anywhere.

Tolerances (``TOLERANCES``): fp32 engines are held to the trt tests' own bounds (logits within
1e-4 in tests/device/test_engines_trt.py; the first 8 greedy tokens in test_generate.py, as
TF32 kernels may flip a near tie of a random model later on). FP16 and INT8 change the numbers
by design, so they are held to looser bounds: probabilities within 5e-3 (fp16: the trt tests'
fp16 logit bound) or 2e-2 (int8: Q/DQ against FP32 logits moves about 2e-3 in ONNX Runtime,
plus TensorRT's 5e-3 against that), the same label wherever the reference's top two
probabilities are more than twice that apart (a nearer tie may flip without anything being
wrong), and the first 4 (fp16) or 1 (int8) greedy tokens. ONNX Runtime on the fixture is held
to what tests/device asserts: 1e-5 and every token.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np

from benchmarks.device_check import SkipStep
from common.errors import ToolkitError
from common.fileio import read_json
from runtime.buffers import ALIGNMENT  # TensorRT's tensor address alignment

TOLERANCES: Dict[str, Dict[str, Any]] = {
    "onnxruntime": {"probability_atol": 1e-5, "greedy_prefix": None},
    "fp32": {"probability_atol": 1e-4, "greedy_prefix": 8},
    "fp16": {"probability_atol": 5e-3, "greedy_prefix": 4},
    "int8": {"probability_atol": 2e-2, "greedy_prefix": 1},
}
MODEL_TEXTS = ["A wonderful film, the acting was superb and I loved every minute.",
               "Dull, predictable and far too long. I want my two hours back."]
MODEL_PROMPTS = [{"prompt": "Once upon a time", "max_new_tokens": 16}]
PROBLEM_CHARS = 120  # of a table problem in a passed step's note (the fix text is long)


def _sidecar(onnx: Path) -> Optional[Dict[str, Any]]:
    path = Path(f"{onnx}.json")
    return read_json(path, "ONNX sidecar") if path.is_file() else None


# --- the parse check -----------------------------------------------------------------------
def table_summary(onnx: Path) -> str:
    """The static table's verdict per TensorRT version; failed when a version the sidecar
    claims (``tensorrt_target.min_tensorrt`` and later) would not parse the graph."""
    from common import trt_onnx

    sidecar = _sidecar(onnx)
    facts, origin = trt_onnx.facts_for(onnx, sidecar)
    if facts is None:
        raise SkipStep(f"no graph facts for {onnx.name}: {origin}")
    verdicts = trt_onnx.verdicts(facts)
    claimed = ((sidecar or {}).get("tensorrt_target") or {}).get("min_tensorrt")
    for key, verdict in verdicts.items():
        claims = claimed is not None and trt_onnx.version_tuple(key) >= \
            trt_onnx.version_tuple(claimed)
        if claims and not verdict["ok"]:
            raise ToolkitError(f"{onnx.name} claims TensorRT >= {claimed} (sidecar "
                               f"tensorrt_target) but table {key} says: {verdict['problems'][0]}")
    said = ", ".join(f"{key} {'ok' if v['ok'] else 'no'}" for key, v in verdicts.items())
    first = next((v["problems"][0] for v in verdicts.values() if v["problems"]), None)
    return (f"table ({origin}): {said}" + (f"; claims >= {claimed}" if claimed else "")
            + (f"; first problem: {first[:PROBLEM_CHARS]}" if first else ""))


def check_target_version(onnx: Path, trt_version: str) -> None:
    """SkipStep when the graph was exported for a newer TensorRT than this one (JetPack 5.1's
    8.5 cannot import the LayerNormalization nodes of a graph made for 8.6+): building it would
    only repeat the refusal the parse check already compared."""
    from common.trt_onnx import version_tuple

    wanted = ((_sidecar(onnx) or {}).get("tensorrt_target") or {}).get("min_tensorrt")
    if wanted and version_tuple(trt_version) < version_tuple(wanted):
        raise SkipStep(f"{onnx.name} is exported for TensorRT >= {wanted} (sidecar "
                       f"tensorrt_target); this is {trt_version}: re-export it for this "
                       f"TensorRT (make onnx TRT=8.5)")


def parser_against_table(onnx: Path, version: str, found: Dict[str, Any]) -> str:
    """Judge ``engines.parse_check.compare_with_table``'s answer: a disagreement fails, naming
    what each side said, so the table (common/trt_onnx_support.json) gets fixed."""
    from common import trt_onnx

    key = trt_onnx.table_key(version)
    parser = _verdict(found["tensorrt_ok"], found["tensorrt_problems"])
    if found["table_ok"] is None:
        return f"TensorRT {version}'s parser: {parser}; the table could not judge (no facts)"
    table = _verdict(found["table_ok"], found["table_problems"])
    if not found["agree"]:
        raise ToolkitError(f"{onnx.name}: TensorRT {version}'s parser {parser}, but table {key} "
                           f"{table}: fix common/trt_onnx_support.json")
    return f"agree: TensorRT {version}'s parser and table {key} both {parser}"


def _verdict(ok: bool, problems: List[str]) -> str:
    if ok:
        return "parse it"
    return f"refuse it ({len(problems)}: {problems[0] if problems else 'no message'})"


# --- classifier outputs --------------------------------------------------------------------
def classifier_reference(target, classify: Callable, ctx) -> Tuple[Any, List[Dict]]:
    """(inputs, expected probabilities per input): the committed PyTorch logits of a fixture,
    else ONNX Runtime's answer on the model's own ONNX (``classify`` runs the CLI). Inputs are
    texts, or for a feature classifier the path of its windows (``<stem>.npz`` beside it)."""
    inputs = feature_windows(target)
    if inputs is None:
        inputs = MODEL_TEXTS if target.reference is None else None
    if target.reference is None:
        return inputs, classify(str(target.onnx), inputs, ctx)
    from runtime.classify import softmax

    reference = read_json(target.reference, "reference")
    labels = _sidecar(target.onnx)["labels"]
    probabilities = softmax(np.asarray(reference["logits"]))  # (inputs, labels)
    if inputs is None:
        inputs = list(reference["texts"])
    return inputs, [dict(zip(labels, map(float, row))) for row in probabilities]


def feature_windows(target) -> Optional[Path]:
    """A feature classifier's windows (``<stem>.npz`` beside its ONNX); None for a text one."""
    sidecar = _sidecar(target.onnx) or {}
    if sidecar.get("input_kind") != "features":
        return None
    windows = target.onnx.with_suffix(".npz")
    if not windows.is_file():
        raise SkipStep(f"{target.onnx.name} takes features; no {windows.name} of windows "
                       "beside it to classify")
    return windows


def probabilities_from_cli(stdout: str) -> List[Dict[str, float]]:
    """Each ``runtime/classify.py --json`` line's label -> probability."""
    rows = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    return [{k: float(v) for k, v in row["probabilities"].items()} for row in rows]


def check_probabilities(got: List[Dict[str, float]], expected: List[Dict[str, float]],
                        precision: str) -> str:
    tol = TOLERANCES[precision]["probability_atol"]
    if len(got) != len(expected):
        raise ToolkitError(f"{len(got)} answers for {len(expected)} texts")
    worst, labels_checked = 0.0, 0
    for i, (row, ref) in enumerate(zip(got, expected), 1):
        if set(row) != set(ref):
            raise ToolkitError(f"text {i}: labels {sorted(row)}, expected {sorted(ref)}")
        diff = max(abs(row[k] - ref[k]) for k in ref)
        worst = max(worst, diff)
        ranked = sorted(ref.values(), reverse=True)
        if len(ranked) > 1 and ranked[0] - ranked[1] <= 2 * tol:
            continue  # a near tie within the precision's error: either label is right
        labels_checked += 1
        if max(row, key=row.get) != max(ref, key=ref.get):
            raise ToolkitError(f"text {i}: label {max(row, key=row.get)}, reference "
                               f"{max(ref, key=ref.get)} ({precision})")
    if worst > tol:
        raise ToolkitError(f"probabilities differ from the reference by up to {worst:.2g} > "
                           f"{tol:g} ({precision})")
    return (f"{len(got)} texts: probabilities within {worst:.2g} (<= {tol:g}); labels equal on "
            f"{labels_checked} (the rest are ties within the tolerance)")


# --- decoder outputs -----------------------------------------------------------------------
def decoder_reference(target, generate: Callable, ctx) -> Tuple[List[Dict], List[Dict]]:
    """(prompts for the generate worker, expected rows): the committed PyTorch greedy tokens
    of a fixture, else ONNX Runtime's on the model's own ONNX."""
    if target.reference is None:
        return MODEL_PROMPTS, generate(str(target.onnx), MODEL_PROMPTS, ctx)
    greedy = read_json(target.reference, "reference")["greedy"]
    prompts = [{"prompt": r["prompt"], "prompt_ids": r["prompt_ids"],
                "max_new_tokens": len(r["tokens"])} for r in greedy]
    return prompts, greedy


def check_tokens(got: List[Dict], expected: List[Dict], precision: str) -> str:
    prefix = TOLERANCES[precision]["greedy_prefix"]
    if len(got) != len(expected):
        raise ToolkitError(f"{len(got)} generations for {len(expected)} prompts")
    agree = []
    for row, ref in zip(got, expected):
        if row["prompt_ids"] != ref["prompt_ids"]:
            raise ToolkitError(f"prompt {ref['prompt']!r} encodes to {row['prompt_ids'][:8]}..., "
                               f"the reference to {ref['prompt_ids'][:8]}...")
        n = len(ref["tokens"]) if prefix is None else min(prefix, len(ref["tokens"]))
        if row["tokens"][:n] != ref["tokens"][:n]:
            raise ToolkitError(f"prompt {ref['prompt']!r}: first {n} greedy tokens "
                               f"{row['tokens'][:n]}, reference {ref['tokens'][:n]} ({precision})")
        if prefix is None and row["stop_reason"] != ref["stop_reason"]:
            raise ToolkitError(f"prompt {ref['prompt']!r}: stopped at {row['stop_reason']}, "
                               f"reference {ref['stop_reason']}")
        agree.append(sum(a == b for a, b in zip(row["tokens"], ref["tokens"])))
    total = [len(r["tokens"]) for r in expected]
    checked = "all greedy tokens" if prefix is None else f"the first {prefix} greedy tokens"
    return (f"{len(got)} prompts: {checked} equal the reference; equal in all: "
            + ", ".join(f"{a}/{t}" for a, t in zip(agree, total)))


def kv_alignment_problem(plan: Path) -> Optional[str]:
    """Why the runtime cannot bind this decoder engine's KV cache at batch 1, or None: TensorRT
    needs 256-byte aligned addresses, so a KV slot (kv_dim x itemsize) must be a multiple."""
    manifest = read_json(f"{plan}.json", "engine manifest")
    kv_dim = int(manifest["sidecar"]["kv_cache"]["kv_dim"])
    dtypes = {t["name"]: t["dtype"] for t in manifest["engine_io"]["tensors"]}
    itemsize = np.dtype(dtypes.get("past_key_0", "float32")).itemsize
    if (kv_dim * itemsize) % ALIGNMENT == 0:
        return None
    return (f"{plan.name}: a KV slot at batch 1 is {kv_dim} x {itemsize} = {kv_dim * itemsize} "
            f"bytes, not a multiple of the {ALIGNMENT} TensorRT needs for tensor addresses "
            "(runtime.kv_cache); tiny_decoder_long is the fixture made for this")


def bench_summary(report: Dict[str, Any]) -> str:
    row = report["results"][0]
    if report["kind"] == "classifier":
        return (f"batch {row['batch']} seq {row['seq']}: p50 {row['p50_ms']:.3f} ms, "
                f"{row['sequences_per_s']:.0f} seq/s ({report['backend']})")
    return (f"prompt {row['seq']}, {row['new_tokens']} new: prefill p50 "
            f"{row['prefill_p50_ms']:.2f} ms, decode {row['decode_tokens_per_s']:.0f} tokens/s "
            f"({report['backend']})")


# --- Triton --------------------------------------------------------------------------------
def find_tritonserver(env: Mapping[str, str]) -> str:
    """Which tritonserver jetson/run_triton.sh would start (its own order), or SkipStep."""
    if env.get("TRITON_HOME"):
        return f"TRITON_HOME={env['TRITON_HOME']}"
    if env.get("TRITON_CONTAINER"):
        return f"TRITON_CONTAINER={env['TRITON_CONTAINER']}"
    found = shutil.which("tritonserver", path=env.get("PATH"))
    if found:
        return found
    raise SkipStep("no tritonserver: set TRITON_HOME (a release tarball), TRITON_CONTAINER (an "
                   "-igpu image) or put tritonserver on PATH")


def has_tensorrt_backend(env: Mapping[str, str]) -> bool:
    """Whether that server can load plans: its backend directory holds ``tensorrt``."""
    if env.get("TRITON_CONTAINER") and not env.get("TRITON_HOME"):
        return True  # NVIDIA's images ship the TensorRT backend
    if env.get("TRITON_BACKEND_DIR"):
        backends = Path(env["TRITON_BACKEND_DIR"])
    elif env.get("TRITON_HOME"):
        backends = Path(env["TRITON_HOME"]) / "backends"
    else:
        server = shutil.which("tritonserver", path=env.get("PATH")) or ""
        beside = Path(os.path.realpath(server)).parent.parent / "backends"
        backends = beside if beside.is_dir() else Path("/opt/tritonserver/backends")
    return (backends / "tensorrt").is_dir()
