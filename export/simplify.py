"""Graph simplification on the host: onnxsim first, onnxslim when onnxsim fails or is missing.

onnxsim folds the Shape/Gather/Concat chains the TorchScript exporter leaves around every
reshape, which makes the graph smaller for TensorRT's parser and easier to read. It has no
Jetson wheel, so this runs before the ONNX file is copied to the device. Which tool ran is
returned so the sidecar records it: a fallback is reported, never silent.
"""
from __future__ import annotations

from typing import Sequence, Tuple

from common.errors import ToolkitError

SIMPLIFIERS = ("onnxsim", "onnxslim", "none")


def simplify_model(model, skipped_passes: Sequence[str] = ()) -> Tuple[object, str, str]:
    """Simplify an ``onnx.ModelProto`` keeping its dynamic axes.

    skipped_passes: onnxsim passes to skip besides SKIPPED_ONNXSIM_PASSES (the TensorRT 8.5
    export skips FUSE_LAYERNORM_PASS, which would undo its decomposed LayerNorms).

    Returns (model, simplifier, note): simplifier is "onnxsim" or "onnxslim"; note is "" or why
    onnxsim was not used. Raises ToolkitError when neither tool can simplify the graph.
    """
    try:
        simplified = _with_onnxsim(model, skipped_passes) if skipped_passes else \
            _with_onnxsim(model)
        return simplified, "onnxsim", ""
    except ImportError:
        note = "onnxsim is not installed; simplified with onnxslim instead"
    except (RuntimeError, ValueError, AssertionError) as exc:
        note = f"onnxsim failed ({_first_line(exc)}); simplified with onnxslim instead"
    try:
        return _with_onnxslim(model), "onnxslim", note
    except ImportError:
        raise ToolkitError(f"{note.split(';')[0]} and onnxslim is not installed either: "
                           "install one (pip install onnxsim onnxslim) or pass --no-simplify"
                           ) from None
    except (RuntimeError, ValueError, AssertionError) as exc:
        raise ToolkitError(f"{note.split(';')[0]}; onnxslim failed too ({_first_line(exc)}): "
                           "pass --no-simplify to export the graph as traced") from None


# onnxsim turns a Linear on a 3-D input (MatMul + bias Add) into Reshape -> Gemm -> Reshape,
# with the second Reshape's shape computed at run time from Shape/Slice/Concat: five extra
# nodes per biased Linear. TensorRT fuses the bias into the MatMul by itself, and ONNX Runtime's
# CPU provider pays per node (GPT-2 d256 L4: 223 nodes after ORT's optimizations with the
# fusion, 170 without). Unknown names are ignored by onnxsim versions without this pass.
SKIPPED_ONNXSIM_PASSES = ["fuse_matmul_add_bias_into_gemm_batched"]
# onnxsim (0.8) fuses ReduceMean/Sub/Mul/ReduceMean/Add/Sqrt/Div[/Mul/Add] into one
# LayerNormalization at opset 17: right for TensorRT >= 8.6, unparseable for 8.5.
FUSE_LAYERNORM_PASS = "fuse_layer_norm"


def _with_onnxsim(model, skipped_passes: Sequence[str] = ()):
    import onnxsim

    # check_n=0: onnxsim's own check feeds random ints, which are out of range for Gather on
    # token ids; export/parity.py checks the result against PyTorch instead.
    skipped = list(SKIPPED_ONNXSIM_PASSES) + list(skipped_passes)
    simplified, ok = onnxsim.simplify(model, check_n=0, skipped_optimizers=skipped)
    if not ok:
        raise RuntimeError("onnxsim reported the simplified model as invalid")
    return simplified


def _with_onnxslim(model):
    import onnxslim

    return onnxslim.slim(model)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
