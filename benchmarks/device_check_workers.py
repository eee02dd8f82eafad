"""What the device check runs in its subprocesses: the work that imports TensorRT or pycuda.

    python -m benchmarks.device_check_workers versions --output v.json
    python -m benchmarks.device_check_workers parse --onnx tests/fixtures/tiny_classifier.onnx \
        --output p.json
    python -m benchmarks.device_check_workers generate --model X.plan --reference R.json \
        --output g.json

Each writes one JSON file (stdout stays free for TensorRT's and pycuda's own messages). Kept
out of the orchestrator's process so a crash in a binding (a segfault in a driver) fails one
step instead of the whole run, and so a timeout can kill it.
"""
from __future__ import annotations

import importlib
import platform
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import click

from common.errors import exit_on_toolkit_error
from common.fileio import atomic_write_json, read_json

# (report label, module, attribute holding its version)
VERSIONED_MODULES = (("tensorrt", "tensorrt", "__version__"), ("pycuda", "pycuda", "VERSION_TEXT"),
                     ("polygraphy", "polygraphy", "__version__"),
                     ("onnxruntime", "onnxruntime", "__version__"),
                     ("numpy", "numpy", "__version__"), ("tokenizers", "tokenizers", "__version__"))


def versions() -> Dict[str, Any]:
    """Versions of what the device paths use, why a missing one is missing, the GPU as pycuda
    sees it, and the device state (``engines.trt_info.device_summary``, which holds
    ``jetson.device_state.collect()``)."""
    found: Dict[str, Optional[str]] = {"python": platform.python_version()}
    errors: Dict[str, str] = {}
    for label, module, attribute in VERSIONED_MODULES:
        try:
            found[label] = str(getattr(importlib.import_module(module), attribute, "unknown"))
        except Exception as exc:  # noqa: BLE001 - ImportError, or OSError for a missing .so
            found[label] = None
            errors[label] = f"{type(exc).__name__}: {exc}"
    found["tritonclient"] = _distribution_version("tritonclient")
    from engines import trt_info

    device = trt_info.device_summary()
    found["cuda"] = (device.get("device_state") or {}).get("cuda")
    gpu, gpu_error, pycuda_missing = _pycuda_gpu()
    if gpu:
        found["cuda_driver"] = gpu.pop("cuda_driver")
    return {"versions": found, "errors": errors, "gpu": gpu, "gpu_error": gpu_error,
            "pycuda_missing": pycuda_missing, "device": device}


def _distribution_version(name: str) -> Optional[str]:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _pycuda_gpu():
    """(GPU 0 as pycuda sees it, None, False) or (None, why not, whether pycuda is missing:
    a skip, where a pycuda that loads but cannot use the GPU is a failure)."""
    try:
        import pycuda.driver as cuda
    except Exception as exc:  # noqa: BLE001
        return None, f"pycuda is not importable ({type(exc).__name__}: {exc})", True
    try:
        cuda.init()
        device = cuda.Device(0)
        return {"name": device.name(),
                "compute_capability": "{}.{}".format(*device.compute_capability()),
                "memory_mib": device.total_memory() // 2**20,
                "cuda_driver": str(cuda.get_driver_version())}, None, False
    except Exception as exc:  # noqa: BLE001 - cuda.Error, or a driver/library mismatch
        return None, f"pycuda cannot use GPU 0 ({type(exc).__name__}: {exc})", False


def parse(onnx_path: Path) -> Dict[str, Any]:
    """The real TensorRT ONNX parser's verdict on ``onnx_path`` beside the static table's
    (``engines.parse_check.compare_with_table``)."""
    from engines import trt_info
    from engines.parse_check import compare_with_table

    version = trt_info.tensorrt_version()
    return {"tensorrt": version, **compare_with_table(onnx_path, version)}


def generate(model: str, prompts: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Greedy tokens of each prompt, one row at a time, as runtime/generate.py makes them.

    prompts: ``{"prompt", "max_new_tokens", "prompt_ids" (optional: fed instead of the
    encoding, which is returned for comparison)}``.
    """
    from runtime.generate import Generator, open_decoder
    from runtime.sampling import Sampler
    from runtime.session import open_session

    info, tokenizer = open_decoder(model)
    rows = []
    with open_session(model) as session:
        generator = Generator(session, tokenizer, info, max_batch=1)
        try:
            for item in prompts:
                encoded = generator.encode([item["prompt"]])[0]
                ids = item.get("prompt_ids") or encoded
                result = generator.generate_ids([ids], int(item["max_new_tokens"]), Sampler())
                rows.append({"prompt": item["prompt"], "prompt_ids": encoded,
                             "tokens": result.tokens[0], "stop_reason": result.stop_reasons[0],
                             "backend": session.backend})
        finally:
            generator.close()
    return rows


@click.group()
def main() -> None:
    """Subprocess work of python -m benchmarks.device_check."""


@main.command("versions")
@click.option("--output", required=True, type=click.Path(dir_okay=False, path_type=Path))
@exit_on_toolkit_error
def versions_cmd(output: Path) -> None:
    atomic_write_json(output, versions())


@main.command("parse")
@click.option("--onnx", "onnx_path", required=True, type=click.Path(path_type=Path))
@click.option("--output", required=True, type=click.Path(dir_okay=False, path_type=Path))
@exit_on_toolkit_error
def parse_cmd(onnx_path: Path, output: Path) -> None:
    atomic_write_json(output, parse(onnx_path))


@main.command("generate")
@click.option("--model", required=True, type=click.Path(dir_okay=False))
@click.option("--prompts", "prompts_file", required=True,
              type=click.Path(dir_okay=False, path_type=Path),
              help="JSON list of {prompt, max_new_tokens, prompt_ids?}")
@click.option("--output", required=True, type=click.Path(dir_okay=False, path_type=Path))
@exit_on_toolkit_error
def generate_cmd(model: str, prompts_file: Path, output: Path) -> None:
    prompts = read_json(prompts_file, "prompts file")
    atomic_write_json(output, generate(model, prompts))


if __name__ == "__main__":
    main()
