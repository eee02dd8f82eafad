"""The models' configs as ``tritonclient.grpc.model_config_pb2.ModelConfig`` messages, written
with protobuf's text format (no hand-written pbtxt). Every value comes from the artifacts
(sidecar, engine manifest) or from an argument of ``triton_repo.build``, so the golden files
in tests/serving/golden pin them. Nothing here holds a path or a time: configs are stable.

Jetson choices (the reasons are in DESIGN.md, "Triton"):
- imdb_classifier: dynamic batching with a short queue delay (QUEUE_DELAY_US) and the
  profile's opt batch as the preferred size; one instance (the module's DRAM is shared by CPU
  and GPU, and a second TensorRT context on the one iGPU adds memory, not throughput); warm-up
  at the profile's opt shape with real-shaped inputs (zero ids, a mask of ones); a DLA engine
  is served by the GPU instance's secondary device KIND_NVDLA with the engine's core.
- tinystories_generate: one instance = one stream at a time, each with its own KV cache.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from common.errors import ToolkitError

# Added latency a lone request can pay while the batcher waits for company: about one
# python-stub hop of the ensemble, a fraction of a Jetson classify (see DESIGN.md).
QUEUE_DELAY_US = 500
DEFAULT_INSTANCES = 1
WARMUP_MASK_FILE = "attention_mask_ones"  # in the model's warmup/ folder

_DTYPES = {"int32": "TYPE_INT32", "int64": "TYPE_INT64", "float32": "TYPE_FP32",
           "float16": "TYPE_FP16", "string": "TYPE_STRING"}


def _pb():
    try:
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        raise ToolkitError("tritonclient is not installed (pip install 'tritonclient[all]'): "
                           "the builder writes its configs with model_config_pb2") from None
    return model_config_pb2


def data_type(dtype: str) -> int:
    pb = _pb()
    if dtype not in _DTYPES:
        raise ToolkitError(f"dtype {dtype!r} has no Triton type here; expected one of "
                           f"{sorted(_DTYPES)}")
    return pb.DataType.Value(_DTYPES[dtype])


def _add_tensors(repeated, tensors: Iterable[Tuple[str, str, Sequence[int]]],
                 optional: Iterable[str] = ()) -> None:
    optional = set(optional)
    for name, dtype, dims in tensors:
        tensor = repeated.add(name=name, data_type=data_type(dtype), dims=list(dims))
        if name in optional:
            tensor.optional = True


def _set_parameters(config, params: Dict[str, str]) -> None:
    for key, value in params.items():
        config.parameters[key].string_value = str(value)


def _python_model(name: str, max_batch: int, instances: int = 1):
    pb = _pb()
    config = pb.ModelConfig(name=name, backend="python", max_batch_size=max_batch)
    config.instance_group.add(count=instances, kind=pb.ModelInstanceGroup.KIND_CPU)
    return config


def tokenizer_config(max_batch: int, params: Dict[str, str]):
    """imdb_tokenizer: TEXT -> input_ids, attention_mask (padded to a length bucket)."""
    config = _python_model("imdb_tokenizer", max_batch)
    _add_tensors(config.input, [("TEXT", "string", [1])])
    _add_tensors(config.output, [("input_ids", "int32", [-1]), ("attention_mask", "int32", [-1])])
    config.dynamic_batching.SetInParent()  # hand queued requests over together, never wait
    _set_parameters(config, params)
    return config


def _classifier_io(config, seq_dim: int, num_labels: int, dtypes: Dict[str, str]) -> None:
    _add_tensors(config.input, [("input_ids", dtypes["input_ids"], [seq_dim]),
                                ("attention_mask", dtypes["attention_mask"], [seq_dim])])
    _add_tensors(config.output, [("logits", dtypes["logits"], [num_labels])])


def _batching(config, opt_batch: int, queue_delay_us: int) -> None:
    if queue_delay_us < 0:
        raise ToolkitError(f"--queue-delay-us {queue_delay_us}: expected >= 0")
    config.dynamic_batching.preferred_batch_size.append(opt_batch)
    config.dynamic_batching.max_queue_delay_microseconds = queue_delay_us


def classifier_warmup(config, opt_batch: int, opt_seq: int, dtypes: Dict[str, str]) -> None:
    """One warm-up of ``opt_batch`` rows at ``opt_seq``: pad ids (zeros) under a mask of ones
    (a real-shaped input: an all-zero mask would pool over nothing). The mask's bytes are the
    file WARMUP_MASK_FILE in the model's warmup/ folder (``warmup_files``)."""
    warmup = config.model_warmup.add(name=f"opt_shape_{opt_batch}x{opt_seq}",
                                     batch_size=opt_batch)
    ids = warmup.inputs["input_ids"]
    ids.data_type, ids.zero_data = data_type(dtypes["input_ids"]), True
    ids.dims.append(opt_seq)
    mask = warmup.inputs["attention_mask"]
    mask.data_type, mask.input_data_file = data_type(dtypes["attention_mask"]), WARMUP_MASK_FILE
    mask.dims.append(opt_seq)


def warmup_files(opt_seq: int, dtypes: Dict[str, str]) -> Dict[str, bytes]:
    """warmup/ folder contents: one row (Triton repeats it per batch row) of mask ones."""
    import numpy as np

    return {WARMUP_MASK_FILE: np.ones(opt_seq, np.dtype(dtypes["attention_mask"])).tobytes()}


def classifier_plan_config(profile: Dict[str, Tuple[int, int, int]], num_labels: int,
                           dtypes: Dict[str, str], dla_core: Optional[int], instances: int,
                           queue_delay_us: int):
    """imdb_classifier on Jetson: the TensorRT plan, shapes from its first profile."""
    pb = _pb()
    (b_min, b_opt, b_max), (s_min, s_opt, s_max) = profile["batch"], profile["seq"]
    if b_min != 1:
        raise ToolkitError(f"the engine's profile takes batches {b_min}..{b_max}; Triton sends "
                           "single requests too, so it needs a profile from batch 1: rebuild "
                           "with --batch 1,OPT,MAX")
    config = pb.ModelConfig(name="imdb_classifier", platform="tensorrt_plan",
                            max_batch_size=b_max)
    _classifier_io(config, -1 if s_min != s_max else s_max, num_labels, dtypes)
    _batching(config, b_opt, queue_delay_us)
    group = config.instance_group.add(count=instances, kind=pb.ModelInstanceGroup.KIND_GPU,
                                      gpus=[0])
    if dla_core is not None:
        group.secondary_devices.add(kind=pb.ModelInstanceGroup.SecondaryDevice.KIND_NVDLA,
                                    device_id=dla_core)
    classifier_warmup(config, b_opt, s_opt, dtypes)
    return config


def classifier_ort_config(profile: Dict[str, Tuple[int, int, int]], num_labels: int,
                          dtypes: Dict[str, str], instances: int, queue_delay_us: int,
                          params: Dict[str, str]):
    """imdb_classifier on cpu: the same tensors and batching, a python model running ORT."""
    (_, b_opt, b_max), (_, s_opt, _) = profile["batch"], profile["seq"]
    config = _python_model("imdb_classifier", b_max, instances)
    _classifier_io(config, -1, num_labels, dtypes)
    _batching(config, b_opt, queue_delay_us)
    classifier_warmup(config, b_opt, s_opt, dtypes)
    _set_parameters(config, params)
    return config


def postprocess_config(max_batch: int, num_labels: int, params: Dict[str, str],
                       logits_dtype: str = "float32"):
    """imdb_postprocess: logits (the classifier's output type) -> LABEL, PROBABILITIES."""
    config = _python_model("imdb_postprocess", max_batch)
    _add_tensors(config.input, [("logits", logits_dtype, [num_labels])])
    _add_tensors(config.output, [("LABEL", "string", [1]),
                                 ("PROBABILITIES", "float32", [num_labels])])
    config.dynamic_batching.SetInParent()
    _set_parameters(config, params)
    return config


ENSEMBLE_STEPS: List[Tuple[str, Dict[str, str], Dict[str, str]]] = [
    # (model, {model input: ensemble tensor}, {model output: ensemble tensor})
    ("imdb_tokenizer", {"TEXT": "TEXT"},
     {"input_ids": "input_ids", "attention_mask": "attention_mask"}),
    ("imdb_classifier", {"input_ids": "input_ids", "attention_mask": "attention_mask"},
     {"logits": "logits"}),
    ("imdb_postprocess", {"logits": "logits"},
     {"LABEL": "LABEL", "PROBABILITIES": "PROBABILITIES"}),
]


def ensemble_config(max_batch: int, num_labels: int):
    """imdb: TEXT in, LABEL and PROBABILITIES out, through the three models above."""
    pb = _pb()
    config = pb.ModelConfig(name="imdb", platform="ensemble", max_batch_size=max_batch)
    _add_tensors(config.input, [("TEXT", "string", [1])])
    _add_tensors(config.output, [("LABEL", "string", [1]),
                                 ("PROBABILITIES", "float32", [num_labels])])
    for model, inputs, outputs in ENSEMBLE_STEPS:
        step = config.ensemble_scheduling.step.add(model_name=model, model_version=-1)
        for key, value in inputs.items():
            step.input_map[key] = value
        for key, value in outputs.items():
            step.output_map[key] = value
    return config


def generator_config(instances: int, params: Dict[str, str]):
    """tinystories_generate: decoupled (a response per token), no batching (one stream per
    instance, its own KV cache). KIND_CPU: the instance kind only says where Triton keeps the
    tensors; the model opens its ONNX Runtime or TensorRT session itself."""
    config = _python_model("tinystories_generate", 0, instances)
    _add_tensors(config.input, [("PROMPT", "string", [1]), ("MAX_NEW_TOKENS", "int32", [1]),
                                ("TEMPERATURE", "float32", [1]), ("TOP_K", "int32", [1]),
                                ("TOP_P", "float32", [1]), ("SEED", "int64", [1])],
                 optional=("MAX_NEW_TOKENS", "TEMPERATURE", "TOP_K", "TOP_P", "SEED"))
    _add_tensors(config.output, [("TOKEN_ID", "int32", [-1]), ("TEXT", "string", [1]),
                                 ("STOP_REASON", "string", [1])])
    config.model_transaction_policy.decoupled = True
    _set_parameters(config, params)
    return config


def to_text(config) -> str:
    from google.protobuf import text_format

    return text_format.MessageToString(config)


def from_text(text: str):
    """Parse a config.pbtxt back into a ModelConfig (tests, and checks of a written repo)."""
    from google.protobuf import text_format

    return text_format.Parse(text, _pb().ModelConfig())
