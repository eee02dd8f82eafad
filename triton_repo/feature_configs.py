"""A continuous-feature classifier in the Triton repository: ``python -m triton_repo.build ...
--features-model models/waves.onnx`` (cpu) or ``engines/waves.int8.plan`` (jetson).

One model, ``feature_classifier`` (``--features-name``), taking raw FP32 features: the graph
applies the training statistics itself, so a client sends what its sensors give.

| tensor | type | dims (max_batch_size = the profile's largest batch) |
|---|---|---|
| in ``features`` | TYPE_FP32 | ``[-1, F]`` (seq, F); right-padded rows |
| in ``attention_mask`` | TYPE_INT32 | ``[-1]`` (seq); 1 = step, 0 = padding |
| out ``logits`` | TYPE_FP32 | ``[num_labels]``, ``label_filename: labels.txt`` |

Config parameters ``min_seq_len`` / ``max_seq_len``: the profile's shortest and longest window
(a static engine has ``[s_max, F]`` dims and min = max); clients pad every request to at least
the min (``triton_repo.feature_client``).

Served by Triton's own backends where they exist: ``tensorrt_plan`` on jetson, and on cpu
``onnxruntime_onnx`` (``--features-backend onnxruntime``, a Triton build with the ONNX Runtime
backend). The tritonserver bundled with nvidia-pytriton (``triton_repo.dev_server``, the
tests) has only the python backend, so the cpu default is ``python``: the same ONNX through
``runtime.features`` (``triton_repo/models/feature_classifier_ort.py``), same I/O. Dynamic
batching as imdb_classifier (``configs.QUEUE_DELAY_US``, no preferred batch size); a
warm-up at the opt shape with zero features under a mask of ones. Configs are
``tritonclient.grpc.model_config_pb2`` messages (``triton_repo.configs``).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

from common.errors import ToolkitError
from common.fileio import atomic_write_text, sha256_file
from triton_repo import configs

DEFAULT_NAME = "feature_classifier"
WARMUP_MASK_FILE = "attention_mask_ones"  # in the model's warmup/ folder
CPU_BACKENDS = ("python", "onnxruntime")
LABELS_FILE = "labels.txt"
MIN_SEQ_PARAM, MAX_SEQ_PARAM = "min_seq_len", "max_seq_len"  # config parameters
Range = Tuple[int, int, int]


def resolve_feature_model(path, allow_plan: bool, option: str = "--features-model"):
    """(model file, onnx, sidecar, manifest or None) of a feature classifier, checked: the
    sidecar hashes to its ONNX, a plan to its manifest and the manifest to that ONNX."""
    from common.artifacts import load_onnx_sidecar
    from triton_repo.artifacts import PLAN_SUFFIXES, _manifest_onnx

    path = Path(path)
    manifest = None
    onnx = path
    if path.suffix in PLAN_SUFFIXES and allow_plan:
        from engines.manifest import check_plan_file

        manifest = check_plan_file(path)
        onnx = _manifest_onnx(path, manifest)
        if sha256_file(onnx) != str((manifest.get("onnx") or {}).get("sha256", "")):
            raise ToolkitError(f"{option} {path}: built from another ONNX than {onnx} "
                               "(sha256 differs): rebuild the engine")
    elif path.suffix != ".onnx":
        wanted = ".plan/.engine" if allow_plan else ".onnx"
        raise ToolkitError(f"{option} {path}: expected a {wanted} file for this target")
    if not onnx.is_file():
        raise ToolkitError(f"{option} {onnx}: ONNX file not found")
    sidecar = load_onnx_sidecar(onnx, kind="classifier", check_hash=True)
    if int(sidecar.get("feature_dim") or 0) <= 0:
        raise ToolkitError(f"{option} {path}: a token classifier (no feature_dim); serve it "
                           "with --imdb")
    return path, onnx, sidecar, manifest


def feature_profile(sidecar: Dict[str, Any], manifest: Optional[Dict[str, Any]]):
    """{"batch": (min, opt, max), "seq": (...)}: the engine's first profile for a plan, the
    sidecar's axes (opt = max) for an ONNX."""
    if manifest is not None:
        shapes = ((manifest.get("profiles") or [{}])[0].get("shapes") or {}).get("features")
        if not shapes or any(len(shapes.get(k, ())) != 3 for k in ("min", "opt", "max")):
            raise ToolkitError("engine manifest: profile 0 has no (batch, seq, F) shapes for "
                               "'features': rebuild the engine")
        lo, opt, hi = (shapes[k] for k in ("min", "opt", "max"))
        return {"batch": (lo[0], opt[0], hi[0]), "seq": (lo[1], opt[1], hi[1])}
    axes = sidecar["dynamic_axes"]
    b = (int(axes["batch"]["min"]), int(axes["batch"]["max"]), int(axes["batch"]["max"]))
    s = (int(axes["seq"]["min"]), int(axes["seq"]["max"]), int(axes["seq"]["max"]))
    return {"batch": b, "seq": s}


def _io(config, seq_dim: int, feature_dim: int, num_labels: int) -> None:
    dt = configs.data_type
    config.input.add(name="features", data_type=dt("float32"), dims=[seq_dim, feature_dim])
    config.input.add(name="attention_mask", data_type=dt("int32"), dims=[seq_dim])
    config.output.add(name="logits", data_type=dt("float32"), dims=[num_labels],
                      label_filename=LABELS_FILE)


def _warmup(config, opt_batch: int, opt_seq: int, feature_dim: int) -> None:
    """Zero raw features under a mask of ones (WARMUP_MASK_FILE) at the opt shape."""
    warmup = config.model_warmup.add(name=f"opt_shape_{opt_batch}x{opt_seq}",
                                     batch_size=opt_batch)
    feats = warmup.inputs["features"]
    feats.data_type, feats.zero_data = configs.data_type("float32"), True
    feats.dims.extend([opt_seq, feature_dim])
    mask = warmup.inputs["attention_mask"]
    mask.data_type = configs.data_type("int32")
    mask.input_data_file = WARMUP_MASK_FILE
    mask.dims.append(opt_seq)


def feature_config(name: str, backend: str, profile: Dict[str, Range], feature_dim: int,
                   num_labels: int, instances: int, queue_delay_us: int,
                   dla_core: Optional[int] = None, params: Optional[Dict[str, str]] = None):
    """backend: "tensorrt" (jetson plan), "onnxruntime" (Triton's ONNX Runtime backend) or
    "python" (the ONNX through runtime.features, for the python-only bundled server)."""
    from tritonclient.grpc import model_config_pb2 as pb

    (b_min, b_opt, b_max), (s_min, s_opt, s_max) = profile["batch"], profile["seq"]
    if b_min != 1:
        raise ToolkitError(f"the profile takes batches {b_min}..{b_max}; Triton sends single "
                           "requests too: rebuild the engine with --batch 1,OPT,MAX")
    if instances < 1 or queue_delay_us < 0:
        raise ToolkitError(f"instances {instances}, queue delay {queue_delay_us} us: expected "
                           ">= 1 and >= 0")
    if backend == "python":
        config = pb.ModelConfig(name=name, backend="python", max_batch_size=b_max)
    else:
        platform = {"tensorrt": "tensorrt_plan", "onnxruntime": "onnxruntime_onnx"}[backend]
        config = pb.ModelConfig(name=name, platform=platform, max_batch_size=b_max)
    kind = (pb.ModelInstanceGroup.KIND_GPU if backend == "tensorrt"
            else pb.ModelInstanceGroup.KIND_CPU)
    group = config.instance_group.add(count=instances, kind=kind)
    if backend == "tensorrt":
        group.gpus.append(0)
        if dla_core is not None:
            group.secondary_devices.add(
                kind=pb.ModelInstanceGroup.SecondaryDevice.KIND_NVDLA, device_id=dla_core)
    static = backend == "tensorrt" and s_min == s_max
    _io(config, s_max if static else -1, feature_dim, num_labels)
    # Requests queued within the delay run as one batch (up to max_batch_size).
    config.dynamic_batching.max_queue_delay_microseconds = queue_delay_us
    _warmup(config, b_opt, s_opt, feature_dim)
    # The profile's window lengths, for clients (triton_repo.feature_client pads every
    # request to at least the min; dims [-1, F] alone do not say an engine takes >= 8 steps).
    params = {MIN_SEQ_PARAM: s_min, MAX_SEQ_PARAM: s_max, **(params or {})}
    for key, value in params.items():
        config.parameters[key].string_value = str(value)
    return config


def write_feature_model(root: Path, target: str, path, instances: int, queue_delay_us: int,
                        write_model: Callable, backend: Optional[str] = None,
                        name: str = DEFAULT_NAME) -> Dict[str, dict]:
    """Write ``root/<name>`` with ``write_model`` (``triton_repo.build._write_model``); returns
    the repository record's entry."""
    import numpy as np

    on_jetson = target == "jetson"
    backend = "tensorrt" if on_jetson else (backend or "python")
    if not on_jetson and backend not in CPU_BACKENDS:
        raise ToolkitError(f"--features-backend {backend!r}: expected one of {list(CPU_BACKENDS)}")
    model, onnx, sidecar, manifest = resolve_feature_model(path, allow_plan=on_jetson)
    profile = feature_profile(sidecar, manifest)
    labels = list(sidecar["labels"])
    feature_dim = int(sidecar["feature_dim"])
    dla = (manifest.get("build_options") or {}).get("dla_core") if manifest else None
    params = {"model": "model.onnx"} if backend == "python" else {}
    config = feature_config(name, backend, profile, feature_dim, len(labels), instances,
                            queue_delay_us, None if dla is None else int(dla), params)
    served = "model.plan" if manifest is not None else "model.onnx"  # Triton's default names
    described = manifest if manifest is not None else sidecar
    files = {served: model, f"{served}.json":
             (json.dumps(described, indent=2, sort_keys=True) + "\n").encode("utf-8")}
    mask = np.ones(profile["seq"][1], np.int32).tobytes()
    write_model(root, config, files,
                source="feature_classifier_ort.py" if backend == "python" else None,
                warmup={WARMUP_MASK_FILE: mask})
    _labels_beside_config(root / name, labels)
    record = {"source": str(model), "sha256": sha256_file(model),
              "onnx_sha256": sidecar["onnx_sha256"], "backend": backend,
              "feature_dim": feature_dim, "labels": labels,
              "feature_names": sidecar.get("feature_names")}
    return {name: record}


def _labels_beside_config(model_dir: Path, labels) -> None:
    """Triton reads ``label_filename`` from the model folder (beside config.pbtxt)."""
    path = atomic_write_text(model_dir / LABELS_FILE, "\n".join(labels) + "\n")
    os.chmod(path, 0o644)
