"""The models' configs as ``tritonclient.grpc.model_config_pb2.ModelConfig`` messages, written
with protobuf's text format (no hand-written pbtxt). Every value comes from the artifacts
(sidecar, engine manifest) or from an argument of ``triton_repo.build``, so the golden files
in tests/serving/golden pin them. Nothing here holds a path or a time: configs are stable.

Jetson choices (the reasons are in DESIGN.md, "Triton"):
- imdb_classifier: dynamic batching with a short queue delay (QUEUE_DELAY_US) and no preferred
  batch size (Triton's batcher guide advises none for most models: a preferred size cuts a
  batch at the profile's opt before max under moderate load). One instance by default
  (``--classifier-instances``): the TensorRT backend shares one engine between instances only
  when it has no dynamic shapes (tensorrt_backend src/model_state.cc,
  ModelState::CreateEngine, "Model with dynamic shapes can't share engine", r23.05 to
  r24.10), and ours always have a dynamic batch, so every instance deserializes its own full
  engine out of the module's DRAM. Warm-up at the profile's opt batch for every padded
  length the tokenizer sends (its length buckets), with real-shaped inputs (zero ids, a mask
  of ones); a DLA engine is served by the GPU instance's secondary device KIND_NVDLA with the
  engine's core.
- tinystories_generate: one instance = one stream at a time, each with its own KV cache
  (``--generator-instances``); a bounded queue (``--generator-queue``): a stream beyond it is
  refused at once with UNAVAILABLE "Exceeds maximum queue size" instead of waiting until the
  client times out.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from common.errors import ToolkitError

# Added latency a lone request can pay while the batcher waits for company: about one
# python-stub hop of the ensemble, a fraction of a Jetson classify (see DESIGN.md).
QUEUE_DELAY_US = 500
DEFAULT_CLASSIFIER_INSTANCES = 1
DEFAULT_GENERATOR_INSTANCES = 1
# Streams that may wait for a generator instance (per model, not per instance): a burst beyond
# instances + this is refused at once (Triton's queue policy) instead of hanging its clients.
DEFAULT_GENERATOR_QUEUE = 4
WARMUP_MASK_FILE = "attention_mask_ones_{length}"  # in the model's warmup/ folder

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


def _batching(config, queue_delay_us: int) -> None:
    """Dynamic batching up to max_batch_size with a short delay; no preferred batch size."""
    if queue_delay_us < 0:
        raise ToolkitError(f"--queue-delay-us {queue_delay_us}: expected >= 0")
    config.dynamic_batching.max_queue_delay_microseconds = queue_delay_us


def classifier_warmup(config, opt_batch: int, lengths: Sequence[int],
                      dtypes: Dict[str, str]) -> None:
    """One warm-up of ``opt_batch`` rows per padded length the tokenizer sends (``lengths``,
    its buckets: the profile's opt length is not one unless it is a bucket): pad ids (zeros)
    under a mask of ones (a real-shaped input: an all-zero mask would pool over nothing). The
    masks' bytes are files in the model's warmup/ folder (``warmup_files``)."""
    for length in lengths:
        warmup = config.model_warmup.add(name=f"padded_{opt_batch}x{length}",
                                         batch_size=opt_batch)
        ids = warmup.inputs["input_ids"]
        ids.data_type, ids.zero_data = data_type(dtypes["input_ids"]), True
        ids.dims.append(length)
        mask = warmup.inputs["attention_mask"]
        mask.data_type = data_type(dtypes["attention_mask"])
        mask.input_data_file = WARMUP_MASK_FILE.format(length=length)
        mask.dims.append(length)


def warmup_files(lengths: Sequence[int], dtypes: Dict[str, str]) -> Dict[str, bytes]:
    """warmup/ folder contents: per length, one row (Triton repeats it per batch row) of ones."""
    import numpy as np

    ones = np.dtype(dtypes["attention_mask"])
    return {WARMUP_MASK_FILE.format(length=n): np.ones(n, ones).tobytes() for n in lengths}


def classifier_plan_config(profile: Dict[str, Tuple[int, int, int]], num_labels: int,
                           dtypes: Dict[str, str], dla_core: Optional[int], instances: int,
                           queue_delay_us: int, lengths: Sequence[int]):
    """imdb_classifier on Jetson: the TensorRT plan, shapes from its first profile; warmed up
    at the padded ``lengths`` the tokenizer sends."""
    pb = _pb()
    (b_min, b_opt, b_max), (s_min, _, s_max) = profile["batch"], profile["seq"]
    if b_min != 1:
        raise ToolkitError(f"the engine's profile takes batches {b_min}..{b_max}; Triton sends "
                           "single requests too, so it needs a profile from batch 1: rebuild "
                           "with --batch 1,OPT,MAX")
    config = pb.ModelConfig(name="imdb_classifier", platform="tensorrt_plan",
                            max_batch_size=b_max)
    _classifier_io(config, -1 if s_min != s_max else s_max, num_labels, dtypes)
    _batching(config, queue_delay_us)
    group = config.instance_group.add(count=instances, kind=pb.ModelInstanceGroup.KIND_GPU,
                                      gpus=[0])
    if dla_core is not None:
        group.secondary_devices.add(kind=pb.ModelInstanceGroup.SecondaryDevice.KIND_NVDLA,
                                    device_id=dla_core)
    classifier_warmup(config, b_opt, lengths, dtypes)
    return config


def classifier_ort_config(profile: Dict[str, Tuple[int, int, int]], num_labels: int,
                          dtypes: Dict[str, str], instances: int, queue_delay_us: int,
                          params: Dict[str, str], lengths: Sequence[int]):
    """imdb_classifier on cpu: the same tensors and batching, a python model running ORT."""
    _, b_opt, b_max = profile["batch"]
    config = _python_model("imdb_classifier", b_max, instances)
    _classifier_io(config, -1, num_labels, dtypes)
    _batching(config, queue_delay_us)
    classifier_warmup(config, b_opt, lengths, dtypes)
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


def generator_config(instances: int, params: Dict[str, str],
                     max_queue: int = DEFAULT_GENERATOR_QUEUE):
    """tinystories_generate: decoupled (a response per token), no batching (one stream per
    instance, its own KV cache). KIND_CPU: the instance kind only says where Triton keeps the
    tensors; the model opens its ONNX Runtime or TensorRT session itself.

    The queue: ``dynamic_batching`` with max_batch_size 0 batches nothing (the scheduler
    takes max(1, max_batch_size) requests at a time, core src/dynamic_batch_scheduler.cc) but
    carries the queue policy: beyond ``max_queue`` waiting streams Triton answers UNAVAILABLE
    "Exceeds maximum queue size" (core src/scheduler_utils.cc, r23.05 to r24.10)."""
    config = _python_model("tinystories_generate", 0, instances)
    _add_tensors(config.input, [("PROMPT", "string", [1]), ("MAX_NEW_TOKENS", "int32", [1]),
                                ("TEMPERATURE", "float32", [1]), ("TOP_K", "int32", [1]),
                                ("TOP_P", "float32", [1]), ("SEED", "int64", [1])],
                 optional=("MAX_NEW_TOKENS", "TEMPERATURE", "TOP_K", "TOP_P", "SEED"))
    _add_tensors(config.output, [("TOKEN_ID", "int32", [-1]), ("TEXT", "string", [1]),
                                 ("STOP_REASON", "string", [1])])
    config.model_transaction_policy.decoupled = True
    config.dynamic_batching.default_queue_policy.max_queue_size = max_queue
    _set_parameters(config, params)
    return config


def to_text(config) -> str:
    from google.protobuf import text_format

    return text_format.MessageToString(config)


def from_text(text: str):
    """Parse a config.pbtxt back into a ModelConfig (tests, and checks of a written repo)."""
    from google.protobuf import text_format

    return text_format.Parse(text, _pb().ModelConfig())
