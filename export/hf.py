"""Export a Hugging Face checkpoint folder to ONNX with this project's interface and sidecar.

    python -m export.hf --model DIR --output models/NAME.onnx [--task classifier|decoder]
        [--trt-target 8.6|8.5] [--sentence-pairs]

DIR is a ``save_pretrained`` folder (config.json, weights, tokenizer.json), loaded offline
(``local_files_only``, never remote code), or a ``.pt`` checkpoint of ``train.hf_finetune``.
BERT, DistilBERT, RoBERTa and ELECTRA become classifiers (their sequence-classification head, or
for a bare encoder masked mean pooling + a Linear head from ``--head-seed``; ``--sentence-pairs``
adds ``token_type_ids`` for cross-encoders); GPT-2, GPT-Neo, Llama, Qwen2, Mistral, Phi-3 and
Gemma become decoders with the position-major per-layer KV cache. The graph is our own wrapper of
the model's modules (``export/hf_encoders.py``, ``export/hf_decoders.py``), traced, simplified and
checked as ``export/onnx_model.py`` does; parity is against transformers' forward and greedy
``generate`` (``export/hf_parity.py``). Written atomically: NAME.onnx, NAME.onnx.json (sidecar,
with the HF config under ``model_config``) and NAME.tokenizer.json (the tokenizer that
``AutoTokenizer.from_pretrained(DIR)`` builds from the folder, so ids are transformers' own).
``--trt-target 8.5`` decomposes the LayerNorms (BERT family, GPT-2, GPT-Neo) for TensorRT 8.5 as
``export.onnx_model`` does; Llama's RMSNorm is elementwise ops at every target.
"""
from __future__ import annotations

import hashlib
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Sequence

if __package__ in (None, ""):  # run by path: python export/hf.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import click

from common.errors import ToolkitError, exit_on_toolkit_error
from common.fileio import check_writable_folder, sha256_file
from export.norm_graph import DEFAULT_TARGET, TARGETS, check_target
from export.onnx_model import (
    OPSET,
    TRT_TARGET_HELP,
    axis_ranges,
    describe_export,
    io_spec,
    read_texts,
    tensorrt_fields,
    tokenizer_file,
    trace_checked,
    write_artifacts,
)

DEFAULT_DECODER_CONTEXT = 2048  # a decoder's context unless --max-seq-len says otherwise


@dataclass(frozen=True)
class GraphSpec:
    """The fields ``export.onnx_model.io_spec``/``axis_ranges`` read from a model config."""

    kind: str
    vocab_size: int
    max_seq_len: int
    num_labels: int = 0
    n_layers: int = 0
    kv_dim: int = 0
    token_types: bool = False  # a token_type_ids input (sentence pairs)


def export_hf(model_dir: str | Path, output: str | Path, *, task: str | None = None,
              max_batch: int = 64, topk: int = 64, max_seq_len: int | None = None,
              num_labels: int = 2, head_seed: int = 0, simplify: bool = True,
              check_parity: bool = True, parity_texts: Sequence[str] | None = None,
              greedy_tokens: int = 200, opset: int = OPSET,
              trt_target: str = DEFAULT_TARGET, sentence_pairs: bool = False) -> Path:
    """Export ``model_dir`` to ``output`` (.onnx) with sidecar and tokenizer; returns ``output``.

    sentence_pairs: a classifier gets a ``token_type_ids`` input for (first, second) texts."""
    from export.hf_load import load_hf

    started = time.perf_counter()
    output = Path(output)
    if output.suffix != ".onnx":
        raise ToolkitError(f"--output {output}: expected a path ending in .onnx")
    check_writable_folder(output)  # before minutes of export and parity, not after
    if max_batch < 1:
        raise ToolkitError(f"--max-batch {max_batch}: expected a positive integer")
    check_target(trt_target)
    loaded = load_hf(model_dir, task=task, num_labels=num_labels, head_seed=head_seed)
    text_fields(loaded)  # an unsupported head or text rule: refused before minutes of export
    if sentence_pairs and loaded.kind != "classifier":
        raise ToolkitError(f"--sentence-pairs: {model_dir} is a {loaded.kind}; pairs are for "
                           f"classifiers")
    wrapper, spec = build_wrapper(loaded, topk, max_seq_len, sentence_pairs)
    with tempfile.TemporaryDirectory(prefix="hf-export-") as tmp:
        path = Path(tmp) / "model.onnx"
        simplifier, note = build_graph(wrapper, spec, path, topk, opset, simplify, output,
                                       trt_target)
        export_seconds = time.perf_counter() - started
        parity = None
        if check_parity:
            parity = run_parity(loaded, spec, path, max_batch, parity_texts, greedy_tokens,
                                where=f"{output} (not written)")
            parity["seconds"] = time.perf_counter() - started - export_seconds
        graph_fields = tensorrt_fields(path, trt_target)
        onnx_bytes = path.read_bytes()
        # AutoTokenizer's tokenizer, padding and truncation switched off (hf_load).
        tokenizer_copy = Path(tmp) / "tokenizer.json"
        tokenizer_copy.write_text(loaded.tokenizer.to_str(pretty=False), encoding="utf-8")
        sidecar = build_sidecar(loaded, spec, output, onnx_bytes, topk, opset, max_batch)
        sidecar.update(simplifier=simplifier, simplifier_note=note,
                       export_seconds=export_seconds, parity=parity,
                       tokenizer_sha256=sha256_file(tokenizer_copy),
                       tokenizer_source_sha256=sha256_file(loaded.tokenizer_path),
                       **graph_fields)
        write_artifacts(output, onnx_bytes, tokenizer_copy, sidecar)
    return output


def build_wrapper(loaded, topk: int, max_seq_len: int | None, sentence_pairs: bool = False):
    """(wrapper module in eval mode, GraphSpec) of a loaded HF model."""
    if loaded.kind == "classifier":
        from export.hf_encoders import encoder_wrapper
        from train.hf_model import usable_positions

        limit = usable_positions(loaded.model_type, loaded.hf_config.to_dict())
        trained = getattr(getattr(loaded.model, "cfg", None), "max_seq_len", None)
        limit = min(limit, trained or limit)  # a fine-tuned model: the length it was trained at
        wrapper = encoder_wrapper(loaded, sentence_pairs)
        spec = GraphSpec("classifier", wrapper.vocab_size, _context(max_seq_len, limit),
                         num_labels=len(loaded.labels), token_types=wrapper.token_types)
        return wrapper, spec
    from export.hf_decoders import decoder_wrapper, max_positions

    positions = max_positions(loaded.hf_config)
    seq = _context(max_seq_len, positions)
    if max_seq_len is None and positions > DEFAULT_DECODER_CONTEXT:
        # The runtime preallocates the KV cache for the whole context; 128k positions of a
        # Llama 3.2 1B would be 8 GiB of fp32 cache on a Jetson before the first token.
        seq = DEFAULT_DECODER_CONTEXT
        click.echo(f"context capped at {seq} of {positions} positions; pass --max-seq-len to "
                   "change", err=True)
    wrapper = decoder_wrapper(loaded, topk, seq)
    return wrapper, GraphSpec("decoder", wrapper.vocab_size, seq, n_layers=wrapper.n_layers,
                              kv_dim=wrapper.kv_dim)


def _context(requested: int | None, limit: int) -> int:
    if requested is None:
        return limit
    if not 1 <= requested <= limit:
        raise ToolkitError(f"--max-seq-len {requested}: the model has positions for 1..{limit}")
    return requested


def build_graph(wrapper, spec: GraphSpec, path: Path, topk: int, opset: int, simplify: bool,
                where: Path, trt_target: str = DEFAULT_TARGET):
    """Trace, simplify, stamp and check the graph; save it to ``path``. -> (simplifier, note).

    The wrapper holds the HF model's own LayerNorm modules; for 8.5 they are swapped in the
    wrapper only, so the transformers model the parity check runs keeps its nn.LayerNorm."""
    inputs, outputs = io_spec(spec, topk)
    return trace_checked(wrapper, path, inputs, outputs, opset, simplify, where, trt_target)


def special_tokens(loaded) -> Dict[str, int | None]:
    """pad/eos/cls ids from the HF config, else from the tokenizer's usual names."""
    cfg, tok = loaded.hf_config, loaded.tokenizer

    def first(value):
        return value[0] if isinstance(value, (list, tuple)) else value

    def named(*names):
        return next((tok.token_to_id(n) for n in names if tok.token_to_id(n) is not None), None)

    eos = first(eos_ids(loaded) or getattr(cfg, "eos_token_id", None))
    if eos is None:
        eos = named("<|endoftext|>", "</s>") if loaded.kind == "decoder" else None
    pad = first(getattr(cfg, "pad_token_id", None))
    if pad is None:
        pad = named("[PAD]", "<pad>") if loaded.kind == "classifier" else eos
    cls = named("[CLS]", "<s>") if loaded.kind == "classifier" else None
    ids = {"pad_id": pad, "eos_id": eos, "cls_id": cls}
    rows = loaded.model.get_input_embeddings().weight.shape[0] \
        if hasattr(loaded.model, "get_input_embeddings") else loaded.hf_config.vocab_size
    for key, value in ids.items():
        if value is not None and not 0 <= int(value) < rows:
            raise ToolkitError(f"{loaded.source}: {key} {value} is outside the vocabulary "
                               f"(0..{rows - 1}); fix the config's special token ids")
    return ids


def eos_ids(loaded) -> List[int]:
    """Every end-of-text id of a decoder: config.json's ``eos_token_id`` (an int, or a list as
    in Llama 3) then generation_config.json's, which ``generate`` also stops on."""
    import json

    if loaded.kind != "decoder":
        return []
    values = [getattr(loaded.hf_config, "eos_token_id", None)]
    gen_path = Path(loaded.source) / "generation_config.json"
    if gen_path.is_file():
        try:
            values.append(json.loads(gen_path.read_text(encoding="utf-8")).get("eos_token_id"))
        except (ValueError, UnicodeDecodeError, AttributeError) as exc:
            raise ToolkitError(f"{gen_path} is not a JSON object ({exc})") from None
    ids: List[int] = []
    for value in values:
        for i in value if isinstance(value, (list, tuple)) else [value]:
            if i is not None and int(i) not in ids:
                ids.append(int(i))
    return ids


def text_fields(loaded) -> Dict[str, Any]:
    """The sidecar's text keys (common.artifacts) of an HF model: a classifier reads text as its
    tokenizer does (a train.hf_finetune checkpoint: as it was trained, with the cleaning it
    recorded, head + tail); a decoder's prompt is ``tokenizer(prompt)`` (the tokenizer of
    ``AutoTokenizer``, hf_load) and every eos id stops it."""
    if loaded.kind == "decoder":
        return {"prompt": {"prefix_ids": [], "add_special_tokens": True},
                "eos_ids": eos_ids(loaded)}
    if loaded.text_cleaning is not None:  # a train.hf_finetune checkpoint
        if loaded.text_cleaning not in ("imdb", "none"):
            raise ToolkitError(f"{loaded.source}: text_cleaning {loaded.text_cleaning!r}, "
                               "expected imdb or none")
        text = {"cleaning": loaded.text_cleaning, "truncation": "head_tail",
                "special_tokens": "tokenizer"}
    else:  # transformers' truncation_side (hf_load.folder_tokenizer)
        text = {"cleaning": "none", "truncation": loaded.truncation_side,
                "special_tokens": "tokenizer"}
    from export.hf_load import SEQUENCE_CLASSIFICATION

    problem = "single_label_classification"
    if loaded.head == SEQUENCE_CLASSIFICATION:
        problem = getattr(loaded.hf_config, "problem_type", None) or (
            "regression" if len(loaded.labels) == 1 else problem)
    if problem == "regression" and len(loaded.labels) != 1:
        # the runtime and the Triton postprocess read one score per text
        raise ToolkitError(f"{loaded.source}: a regression head with num_labels "
                           f"{len(loaded.labels)} is not supported (one score per text: "
                           "num_labels 1)")
    return {"text": text, "head": {"problem_type": problem, "threshold": 0.5}}


def build_sidecar(loaded, spec: GraphSpec, output: Path, onnx_bytes: bytes, topk: int,
                  opset: int, max_batch: int) -> Dict[str, Any]:
    import onnx
    import torch
    import transformers

    inputs, outputs = io_spec(spec, topk)
    model_config = {
        "kind": spec.kind, "source": "transformers", "model_type": loaded.model_type,
        "architectures": list(getattr(loaded.hf_config, "architectures", None) or []),
        "head": loaded.head, "head_note": loaded.head_note,
        "hf_config": loaded.hf_config.to_dict(),
    }
    sidecar = {
        "kind": spec.kind, "opset": opset, "inputs": inputs, "outputs": outputs,
        "dynamic_axes": axis_ranges(spec, max_batch), "vocab_size": spec.vocab_size,
        "max_seq_len": spec.max_seq_len, "special_tokens": special_tokens(loaded),
        "tokenizer": tokenizer_file(output).name, "model_config": model_config,
        "checkpoint": str(loaded.source), "checkpoint_sha256": loaded.sha256(),
        "tokenizer_sha256": sha256_file(loaded.tokenizer_path),
        "onnx_sha256": hashlib.sha256(onnx_bytes).hexdigest(),
        "torch_version": torch.__version__, "onnx_version": onnx.__version__,
        "transformers_version": transformers.__version__, **text_fields(loaded),
    }
    if spec.kind == "decoder":
        sidecar.update(topk=topk, kv_cache={"layers": spec.n_layers, "kv_dim": spec.kv_dim,
                                            "layout": "position-major", "dtype": "float32"})
    else:
        sidecar["labels"] = list(loaded.labels)
    return sidecar


def run_parity(loaded, spec: GraphSpec, onnx_path: Path, max_batch: int, texts, greedy_tokens,
               where: str | None = None):
    """Parity of the graph at ``onnx_path`` with transformers; errors name ``where``."""
    from export.hf_parity import check_hf_classifier_parity, check_hf_decoder_parity
    from export.parity import DEFAULT_BATCHES

    batches = sorted({min(b, max_batch) for b in DEFAULT_BATCHES})
    if spec.kind == "classifier":
        return check_hf_classifier_parity(
            loaded.model, onnx_path, vocab_size=spec.vocab_size, max_seq_len=spec.max_seq_len,
            pad_id=special_tokens(loaded)["pad_id"], batches=batches, texts=texts,
            tokenizer=loaded.tokenizer, where=where)
    prompt = None
    if texts:
        prompt = loaded.tokenizer.encode(texts[0]).ids[: spec.max_seq_len // 2] or None
    return check_hf_decoder_parity(loaded.model, onnx_path, vocab_size=spec.vocab_size,
                                   max_seq_len=spec.max_seq_len, batches=batches,
                                   prompt_ids=prompt, greedy_tokens=greedy_tokens, where=where)


def describe_hf_export(output: Path) -> str:
    from common.artifacts import load_onnx_sidecar

    sidecar = load_onnx_sidecar(output)
    config = sidecar["model_config"]
    lines = [f"{config['model_type']} ({', '.join(config['architectures']) or 'no architectures'}"
             f"), head: {config['head']}"]
    if config["head_note"]:
        lines.append(f"note: {config['head_note']}")
    if "text" in sidecar:  # what the runtime will do with texts and logits
        text, head = sidecar["text"], sidecar["head"]
        pairs = any(i["name"] == "token_type_ids" for i in sidecar["inputs"])
        lines.append(f"text: cleaning {text['cleaning']}, truncation {text['truncation']}, "
                     f"special tokens {text['special_tokens']}{', sentence pairs' if pairs else ''}"
                     f"; outputs: {head['problem_type']}")
    elif "prompt" in sidecar:
        specials = sidecar["prompt"]["add_special_tokens"]
        lines.append(f"prompt: encoded as tokenizer(prompt{'' if specials else ', no specials'})"
                     f", generation stops on eos ids {sidecar['eos_ids']}")
    if sidecar["parity"]:
        lines.append(f"parity reference: transformers {sidecar['transformers_version']}")
    return "\n".join(lines + [describe_export(output)])


@click.command()
@click.option("--model", "model_dir", required=True, type=click.Path(path_type=Path),
              help="save_pretrained folder (or a train.hf_finetune checkpoint .pt).")
@click.option("--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="ONNX file to write, e.g. models/minilm.onnx.")
@click.option("--task", type=click.Choice(["classifier", "decoder"]), default=None,
              help="Refuse a model of the other kind.")
@click.option("--max-batch", default=64, show_default=True, help="Largest batch in the sidecar.")
@click.option("--topk", default=64, show_default=True, help="K of the decoder's top-K outputs.")
@click.option("--max-seq-len", type=int, default=None,
              help="Context of the graph [default: the model's positions; for a decoder at "
              f"most {DEFAULT_DECODER_CONTEXT}].")
@click.option("--num-labels", default=2, show_default=True,
              help="Labels of the head made for a bare encoder.")
@click.option("--head-seed", default=0, show_default=True,
              help="Seed of the head made for a bare encoder.")
@click.option("--no-simplify", is_flag=True, help="Keep the graph as traced (no onnxsim).")
@click.option("--no-parity", is_flag=True, help="Skip the ONNX Runtime vs transformers check.")
@click.option("--parity-texts", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Text file, one text a line, for the parity check on real tokens.")
@click.option("--greedy-tokens", default=200, show_default=True,
              help="Decoder: greedy tokens compared with transformers' generate.")
@click.option("--trt-target", type=click.Choice(TARGETS), default=DEFAULT_TARGET,
              show_default=True, help=TRT_TARGET_HELP)
@click.option("--sentence-pairs", is_flag=True,
              help="Classifier: add a token_type_ids input for (first, second) text pairs "
                   "(cross-encoders, NLI; BERT, RoBERTa, ELECTRA).")
@exit_on_toolkit_error
def main(model_dir, output, task, max_batch, topk, max_seq_len, num_labels, head_seed,
         no_simplify, no_parity, parity_texts, greedy_tokens, trt_target, sentence_pairs) -> None:
    """Export a Hugging Face model folder to ONNX with its sidecar and tokenizer."""
    export_hf(model_dir, output, task=task, max_batch=max_batch, topk=topk,
              max_seq_len=max_seq_len, num_labels=num_labels, head_seed=head_seed,
              simplify=not no_simplify, check_parity=not no_parity,
              parity_texts=read_texts(parity_texts), greedy_tokens=greedy_tokens,
              trt_target=trt_target, sentence_pairs=sentence_pairs)
    click.echo(describe_hf_export(output))


if __name__ == "__main__":
    main()
