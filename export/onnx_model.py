"""Export a training checkpoint to ONNX (opset 17, int32 ids) with its sidecar and tokenizer.

    python -m export.onnx_model --checkpoint checkpoints/imdb/best.pt --output models/imdb.onnx
        [--trt-target 8.6|8.5]

Traces the wrappers of ``export/wrappers.py`` with the TorchScript exporter (the dynamo exporter
cannot go below opset 18, and TensorRT 8.5/8.6 parse up to 17), checks the graph's structure,
simplifies it, checks parity with PyTorch through ONNX Runtime, then writes atomically:
``models/imdb.onnx``, ``models/imdb.onnx.json`` (sidecar) and ``models/imdb.tokenizer.json``.
Nothing is written when a check fails.

``--trt-target 8.5`` (JetPack 5.1) writes each LayerNorm in ops TensorRT 8.5's parser imports
(``export/layernorm.py``); 8.6 (the default) writes one LayerNormalization node each. The sidecar
records the target (``tensorrt_target``), the tensors the engine build keeps FP32 (``keep_fp32``,
``export/norm_graph.py``) and the parse verdict per TensorRT version (``tensorrt_parse``).
"""
from __future__ import annotations

import hashlib
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

if __package__ in (None, ""):  # run by path: python export/onnx_model.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import click

from common.artifacts import (
    SIDECAR_FORMAT,
    SIDECAR_VERSION,
    load_onnx_sidecar,
    sidecar_path,
    validate_onnx_sidecar,
    write_onnx_sidecar,
)
from common.errors import ToolkitError, exit_on_toolkit_error
from common.fileio import atomic_write_bytes, check_writable_folder, sha256_file
from export.norm_graph import DEFAULT_TARGET, TARGETS, check_target, layernorm_style

OPSET = 17
BINARY_LABELS = ["negative", "positive"]
TRT_TARGET_HELP = ("Lowest TensorRT the graph is for: 8.5 (JetPack 5.1) writes LayerNorm as "
                   "ReduceMean/Sub/Mul/Sqrt/Div, 8.6+ as LayerNormalization.")


def export_checkpoint(
    checkpoint: str | Path,
    output: str | Path,
    *,
    max_batch: int = 64,
    topk: int = 64,
    simplify: bool = True,
    check_parity: bool = True,
    opset: int = OPSET,
    kind: str | None = None,
    parity_texts: Sequence[str] | None = None,
    greedy_tokens: int = 200,
    trt_target: str = DEFAULT_TARGET,
) -> Path:
    """Export ``checkpoint`` to ``output`` (.onnx) with sidecar and tokenizer; returns ``output``.

    kind: "classifier" | "decoder" to refuse a checkpoint of the other kind. topk: K of the
    decoder's top-K outputs (1..vocab). parity_texts: real texts for the parity check
    (classifier batch; the decoder's greedy prompt is the first one). trt_target: "8.6" |
    "8.5", the lowest TensorRT the graph is written for (8.5: LayerNorm decomposed).
    """
    from train.checkpoint import load_checkpoint
    from train.tokenizer import load_tokenizer

    started = time.perf_counter()
    output = Path(output)
    if output.suffix != ".onnx":
        raise ToolkitError(f"--output {output}: expected a path ending in .onnx")
    check_writable_folder(output)  # before the export and parity, not after
    if max_batch < 1:
        raise ToolkitError(f"max_batch={max_batch}: expected a positive integer")
    check_target(trt_target)
    ckpt = load_checkpoint(checkpoint, kind=kind)
    if getattr(ckpt.config, "feature_dim", 0) > 0:  # float features, no tokenizer
        from export.feature_model import export_feature_checkpoint

        return export_feature_checkpoint(ckpt, output, max_batch=max_batch, simplify=simplify,
                                         check_parity=check_parity, opset=opset,
                                         trt_target=trt_target, started=started)
    tokenizer = load_tokenizer(ckpt.tokenizer_path)
    topk = topk if ckpt.kind == "decoder" else 0  # the wrapper refuses K outside 1..vocab
    with tempfile.TemporaryDirectory(prefix="onnx-export-") as tmp:
        final = Path(tmp) / "model.onnx"
        simplifier, note = build_graph(ckpt, final, topk, opset, simplify, output, trt_target)
        export_seconds = time.perf_counter() - started
        parity = None
        if check_parity:
            parity = run_parity(ckpt.model, final, ckpt.config, max_batch, tokenizer,
                                parity_texts, greedy_tokens, where=f"{output} (not written)")
            parity["seconds"] = time.perf_counter() - started - export_seconds
        graph_fields = tensorrt_fields(final, trt_target)
        onnx_bytes = final.read_bytes()
    sidecar = build_sidecar(ckpt, tokenizer, output, onnx_bytes, topk, opset, max_batch)
    sidecar.update(simplifier=simplifier, simplifier_note=note, export_seconds=export_seconds,
                   parity=parity, **graph_fields)
    write_artifacts(output, onnx_bytes, ckpt.tokenizer_path, sidecar)
    return output


def build_graph(ckpt, path: Path, topk: int, opset: int, simplify: bool, where: Path,
                trt_target: str = DEFAULT_TARGET):
    """Trace, simplify, stamp and check the graph of ``ckpt``; save it to ``path``.

    Returns (simplifier, note) as ``export.simplify.simplify_model`` reports them.
    """
    from export.wrappers import export_wrapper

    wrapper = export_wrapper(ckpt.model, ckpt.kind, topk)
    inputs, outputs = io_spec(ckpt.config, topk)
    return trace_checked(wrapper, path, inputs, outputs, opset, simplify, where, trt_target)


def trace_checked(wrapper, path: Path, inputs, outputs, opset: int, simplify: bool, where: Path,
                  trt_target: str):
    """Trace ``wrapper`` for ``trt_target`` (8.5: its LayerNorms decomposed for the trace only),
    simplify, stamp the I/O axes, check (``check_graph``) and save to ``path``.
    -> (simplifier, note)."""
    import onnx

    from export.layernorm import decomposed
    from export.wrappers import count_layernorms

    n_layernorms = count_layernorms(wrapper)
    with decomposed(wrapper, trt_target):
        trace_to_onnx(wrapper, path, opset)
    model = onnx.load(str(path))
    simplifier, note = "none", ""
    if simplify:
        from export.simplify import FUSE_LAYERNORM_PASS, simplify_model

        skip = [FUSE_LAYERNORM_PASS] if layernorm_style(trt_target) == "decomposed" else []
        model, simplifier, note = simplify_model(model, skipped_passes=skip)
    stamp_io_shapes(model, inputs, outputs)
    check_graph(model, inputs, outputs, n_layernorms, opset, where, trt_target)
    onnx.save(model, str(path))
    return simplifier, note


def tensorrt_fields(onnx_path: Path, trt_target: str) -> Dict[str, Any]:
    """The sidecar's ``preflight``, ``tensorrt_target``, ``keep_fp32`` (found in the final graph
    by pattern) and ``tensorrt_parse`` (``common.trt_onnx.parse_report``) of a checked graph;
    the graph's parse facts are read once, for the pre-flight verdicts and the sidecar alike."""
    import onnx

    from common.trt_onnx import parse_report
    from export.norm_graph import keep_fp32_record, tensorrt_target
    from export.preflight import preflight_report

    parse = parse_report(onnx_path)
    return {"preflight": preflight_report(onnx_path, parse),
            "tensorrt_target": tensorrt_target(trt_target),
            "keep_fp32": keep_fp32_record(onnx.load(str(onnx_path)).graph),
            "tensorrt_parse": parse}


def build_sidecar(ckpt, tokenizer, output: Path, onnx_bytes: bytes, topk: int, opset: int,
                  max_batch: int) -> Dict[str, Any]:
    """The sidecar keys of CONTRIBUTING.md that describe the model and its files."""
    import onnx
    import torch

    from train.tokenizer import special_ids

    cfg = ckpt.config
    inputs, outputs = io_spec(cfg, topk)
    return {
        "kind": cfg.kind, "opset": opset, "inputs": inputs, "outputs": outputs,
        "dynamic_axes": axis_ranges(cfg, max_batch),
        "vocab_size": cfg.vocab_size, "max_seq_len": cfg.max_seq_len,
        "special_tokens": special_ids(tokenizer), "tokenizer": tokenizer_file(output).name,
        "model_config": ckpt.state["model_config"], "checkpoint": str(ckpt.path),
        "checkpoint_sha256": ckpt.sha256(), "tokenizer_sha256": sha256_file(ckpt.tokenizer_path),
        "onnx_sha256": hashlib.sha256(onnx_bytes).hexdigest(),
        "torch_version": torch.__version__, "onnx_version": onnx.__version__,
        **kind_fields(cfg, ckpt.state, topk), **own_text_fields(cfg.kind, special_ids(tokenizer)),
    }


def own_text_fields(kind: str, special: Dict[str, Any]) -> Dict[str, Any]:
    """Our models' text keys (common.artifacts): IMDB cleaning, head + tail, <cls> first for a
    classifier; <|endoftext|> before each prompt, and the one end-of-text id, for a decoder."""
    from common.artifacts import OWN_TEXT

    if kind == "classifier":
        return {"text": dict(OWN_TEXT),
                "head": {"problem_type": "single_label_classification", "threshold": 0.5}}
    eos = special.get("eos_id")
    ids = [] if eos is None else [int(eos)]
    return {"prompt": {"prefix_ids": ids, "add_special_tokens": False}, "eos_ids": ids}


def tokenizer_file(output: Path) -> Path:
    """``models/imdb.onnx`` -> ``models/imdb.tokenizer.json``."""
    return output.with_name(output.stem + ".tokenizer.json")


def write_artifacts(output: Path, onnx_bytes: bytes, tokenizer_src: Path, sidecar) -> None:
    # Validate first so a bad sidecar cannot leave a new graph beside an old sidecar.
    validate_onnx_sidecar(
        {"format": SIDECAR_FORMAT, "version": SIDECAR_VERSION, **sidecar}, sidecar_path(output))
    atomic_write_bytes(output, onnx_bytes)
    atomic_write_bytes(tokenizer_file(output), tokenizer_src.read_bytes())
    write_onnx_sidecar(output, sidecar)


def io_spec(cfg, topk: int) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]:
    """Graph inputs and outputs as CONTRIBUTING.md lists them: [{name, dtype, shape}]."""
    def t(name, dtype, *shape):
        return {"name": name, "dtype": dtype, "shape": list(shape)}

    if cfg.kind == "classifier":
        inputs = [t("input_ids", "int32", "batch", "seq"),
                  t("attention_mask", "int32", "batch", "seq")]
        if getattr(cfg, "token_types", False):  # sentence pairs (export.hf_encoders)
            inputs.append(t("token_type_ids", "int32", "batch", "seq"))
        return inputs, [t("logits", "float32", "batch", cfg.num_labels)]
    layers = range(cfg.n_layers)
    inputs = [t("input_ids", "int32", "batch", "new"), t("position_ids", "int32", "batch", "new"),
              t("attention_mask", "int32", "batch", "total")]
    inputs += [t(f"past_{kv}_{layer}", "float32", "past", "batch", cfg.kv_dim)
               for layer in layers for kv in ("key", "value")]
    outputs = [t("logits", "float32", "batch", "new", cfg.vocab_size),
               t("topk_values", "float32", "batch", topk),
               t("topk_indices", "int32", "batch", topk)]
    outputs += [t(f"{what}_{kv}_{layer}", "float32", axis, "batch", cfg.kv_dim)
                for what, axis in (("new", "new"), ("present", "total"))
                for layer in layers for kv in ("key", "value")]
    return inputs, outputs


def axis_ranges(cfg, max_batch: int) -> Dict[str, Dict[str, int]]:
    n = cfg.max_seq_len
    if cfg.kind == "classifier":
        return {"batch": {"min": 1, "max": max_batch}, "seq": {"min": 1, "max": n}}
    return {"batch": {"min": 1, "max": max_batch}, "new": {"min": 1, "max": n},
            "past": {"min": 0, "max": n - 1}, "total": {"min": 1, "max": n}}


def kind_fields(cfg, state: Dict[str, Any], topk: int) -> Dict[str, Any]:
    if cfg.kind == "decoder":
        return {"topk": topk, "kv_cache": {"layers": cfg.n_layers, "kv_dim": cfg.kv_dim,
                                           "layout": "position-major", "dtype": "float32"}}
    labels = state.get("labels") or (state.get("train_config") or {}).get("labels")
    if not (isinstance(labels, list) and len(labels) == cfg.num_labels):
        labels = BINARY_LABELS if cfg.num_labels == 2 else \
            [f"label_{i}" for i in range(cfg.num_labels)]
    return {"labels": labels}


def trace_to_onnx(wrapper, path: Path, opset: int) -> None:
    import warnings

    import torch

    # The TorchScript exporter is deprecated, but it is the one that writes opset 17 (DESIGN.md).
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export",
                                category=DeprecationWarning)
        torch.onnx.export(
            wrapper, wrapper.dummy_inputs(), str(path), dynamo=False, opset_version=opset,
            input_names=wrapper.input_names, output_names=wrapper.output_names,
            dynamic_axes=wrapper.dynamic_axes(), do_constant_folding=True,
        )


def stamp_io_shapes(model, inputs, outputs) -> None:
    """Write the spec's axis names and sizes on the graph's I/O (the tracer leaves generated
    names such as 'Transposenew_key_0_dim_2' on some output dims)."""
    values = {v.name: v for v in list(model.graph.input) + list(model.graph.output)}
    for spec in inputs + outputs:
        dims = values[spec["name"]].type.tensor_type.shape.dim
        for dim, size in zip(dims, spec["shape"]):
            if isinstance(size, str):
                dim.dim_param = size
            else:
                dim.dim_value = size


def check_graph(model, inputs, outputs, n_layernorms: int, opset: int, where: Path,
                trt_target: str = DEFAULT_TARGET) -> None:
    """The structure CONTRIBUTING.md promises, or a ToolkitError naming what differs.

    Per nn.LayerNorm: one LayerNormalization node (target 8.6), or one decomposed LayerNorm
    pattern and no LayerNormalization node (8.5)."""
    import onnx
    from onnx import helper

    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise ToolkitError(f"{where}: the exported graph fails onnx.checker ({first})") from None
    got_opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if got_opset != opset:
        raise ToolkitError(f"{where}: exported opset {got_opset}, expected {opset}")
    for kind, spec, values in (("input", inputs, model.graph.input),
                               ("output", outputs, model.graph.output)):
        got = [(v.name, helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name,
                len(v.type.tensor_type.shape.dim)) for v in values]
        want = [(s["name"], s["dtype"], len(s["shape"])) for s in spec]
        if got != want:
            raise ToolkitError(f"{where}: graph {kind}s {got}, expected {want}")
    if check_target(trt_target) == "8.5":
        from export.norm_graph import check_decomposed_graph

        return check_decomposed_graph(model.graph, n_layernorms, where)
    from export.preflight import decomposed_layernorms

    decomposed = decomposed_layernorms(model.graph)
    if decomposed:
        raise ToolkitError(f"{where}: LayerNorm decomposed into ReduceMean/Pow at {decomposed}")
    found = sum(node.op_type == "LayerNormalization" for node in model.graph.node)
    if found != n_layernorms:
        raise ToolkitError(f"{where}: {found} LayerNormalization nodes for {n_layernorms} "
                           "nn.LayerNorm modules (LayerNorm decomposed or lost)")


def run_parity(model, onnx_path, cfg, max_batch, tokenizer, texts, greedy_tokens, where=None):
    """Parity of the (temporary) graph at ``onnx_path``; errors name ``where``."""
    from export.parity import DEFAULT_BATCHES, check_classifier_parity, check_decoder_parity

    batches = sorted({min(b, max_batch) for b in DEFAULT_BATCHES})
    if cfg.kind == "classifier":
        return check_classifier_parity(model, onnx_path, batches=batches, texts=texts,
                                       tokenizer=tokenizer, where=where)
    prompt = tokenizer.encode(texts[0]).ids[: cfg.max_seq_len // 2] if texts else None
    return check_decoder_parity(model, onnx_path, batches=batches, prompt_ids=prompt or None,
                                greedy_tokens=greedy_tokens, where=where)


def describe_export(output: Path) -> str:
    """What was written, with sizes, times, parity figures and the pre-flight report."""
    from export.preflight import format_preflight

    sidecar = load_onnx_sidecar(output)
    written = [output, sidecar_path(output)]
    if sidecar["tokenizer"]:  # a feature classifier has none
        written.append(output.parent / sidecar["tokenizer"])
    lines = [f"wrote {p} ({p.stat().st_size / 1e6:.2f} MB)" for p in written]
    lines.append(f"{sidecar['kind']}, opset {sidecar['opset']}, exported in "
                 f"{sidecar['export_seconds']:.1f} s, simplifier: {sidecar['simplifier']}")
    lines += _describe_target(sidecar)
    if sidecar["simplifier_note"]:
        lines.append(f"note: {sidecar['simplifier_note']}")
    lines += _describe_parity(sidecar["parity"])
    lines += ["pre-flight:", format_preflight(sidecar["preflight"])]
    return "\n".join(lines)


def _describe_target(sidecar: Dict[str, Any]) -> List[str]:
    target = sidecar.get("tensorrt_target")
    if not target:  # a sidecar from before --trt-target
        return []
    kept = len(sidecar.get("keep_fp32", {}).get("tensors", []))
    # The per-version parse verdicts are printed by the pre-flight report.
    return [f"TensorRT target: {target['min_tensorrt']} and later (LayerNorm: "
            f"{target['layernorm']}); engine build keeps {kept} tensors of elementwise "
            "normalizations FP32"]


def _describe_parity(parity: Dict[str, Any] | None) -> List[str]:
    if parity is None:
        return ["parity: skipped (--no-parity)"]
    reference = parity.get("reference", "PyTorch")  # HF exports: "transformers"
    lines = [f"parity vs {reference} (tolerance {parity['tolerance']:.0e}): "
             f"max |diff| {parity['max_abs_diff']:.2e} over {len(parity['cases'])} cases "
             f"in {parity['seconds']:.1f} s"]
    for case in parity["cases"]:
        shape = ", ".join(f"{k} {case[k]}" for k in ("batch", "seq", "past", "new") if k in case)
        lines.append(f"  {case['source']:6s} {shape}: {case['max_abs_diff']:.2e}")
    greedy = parity.get("greedy")
    if greedy:
        who = "transformers' generate" if reference == "transformers" else f"{reference}'s"
        lines.append(f"  greedy: {greedy['tokens']} tokens after a {greedy['prompt_tokens']}-token "
                     f"prompt equal {who}; max |diff| {greedy['max_abs_diff']:.2e}")
    return lines


def read_texts(path: Path | None) -> List[str] | None:
    if path is None:
        return None
    texts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not texts:
        raise ToolkitError(f"--parity-texts {path}: expected one text per line, found none")
    return texts


@click.command()
@click.option("--checkpoint", required=True, type=click.Path(path_type=Path),
              help="Training checkpoint (.pt); tokenizer.json must be beside it.")
@click.option("--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="ONNX file to write, e.g. models/imdb.onnx.")
@click.option("--kind", type=click.Choice(["classifier", "decoder"]), default=None,
              help="Refuse a checkpoint of the other kind.")
@click.option("--max-batch", default=64, show_default=True, help="Largest batch in the sidecar.")
@click.option("--topk", default=64, show_default=True, help="K of the decoder's top-K outputs.")
@click.option("--no-simplify", is_flag=True, help="Keep the graph as traced (no onnxsim).")
@click.option("--no-parity", is_flag=True, help="Skip the ONNX Runtime vs PyTorch check.")
@click.option("--parity-texts", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Text file, one text a line, for the parity check on real tokens.")
@click.option("--greedy-tokens", default=200, show_default=True,
              help="Decoder: greedy tokens compared with PyTorch (up to the context).")
@click.option("--trt-target", type=click.Choice(TARGETS), default=DEFAULT_TARGET,
              show_default=True, help=TRT_TARGET_HELP)
@exit_on_toolkit_error
def main(checkpoint, output, kind, max_batch, topk, no_simplify, no_parity, parity_texts,
         greedy_tokens, trt_target) -> None:
    """Export CHECKPOINT to ONNX with its sidecar and tokenizer."""
    export_checkpoint(checkpoint, output, max_batch=max_batch, topk=topk,
                      simplify=not no_simplify, check_parity=not no_parity, kind=kind,
                      parity_texts=read_texts(parity_texts), greedy_tokens=greedy_tokens,
                      trt_target=trt_target)
    click.echo(describe_export(output))


if __name__ == "__main__":
    main()
