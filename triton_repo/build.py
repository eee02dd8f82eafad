"""Write a Triton model repository from the toolkit's artifacts.

    python -m triton_repo.build --target cpu --output triton_models \
        --imdb models/imdb.onnx --stories models/stories.onnx
    python -m triton_repo.build --target jetson --output triton_models \
        --imdb engines/imdb.int8.plan --stories engines/stories.fp16.plan

Models (either --imdb or --stories may be omitted; then its models are not written):
- ``imdb`` (ensemble): ``imdb_tokenizer`` (python) -> ``imdb_classifier`` (``tensorrt_plan``
  on jetson; python + ONNX Runtime on cpu) -> ``imdb_postprocess`` (python).
- ``tinystories_generate`` (python, decoupled): the decoder ONNX (cpu, jetson) or plan (jetson).

The repository is self-contained: each python model's version folder ``1/`` holds
``model.py``, the artifacts it opens, and ``_toolkit/`` (the device-side packages model.py
imports: common, runtime, engines, jetson, triton_repo.models), so the folder moves to a Jetson
as one piece. ``_toolkit`` sits inside ``1/`` and not at the repository's top: Triton takes
every top-level folder for a model and refuses to start when one has no config.

The repository is built in a temporary folder beside ``--output`` and renamed into place, so
a failed build leaves nothing half-written; an existing non-empty ``--output`` is replaced
only with ``--force``.
"""
from __future__ import annotations

if __package__ in (None, ""):  # run by path: the repository root replaces triton_repo/
    import os  # (so no module in triton_repo/ can shadow a standard-library module)
    import sys

    _HERE = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
    sys.path.insert(0, os.path.dirname(_HERE))

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Dict, Optional, Union

import click

from common.errors import ToolkitError, exit_on_toolkit_error
from common.fileio import sha256_file
from triton_repo import configs
from triton_repo.artifacts import (
    ModelArtifacts,
    classifier_profile,
    dla_core,
    engine_dtype,
    resolve_model,
)

TARGETS = ("jetson", "cpu")
PROJECT_ROOT = Path(__file__).resolve().parents[1]
MODEL_SOURCES = Path(__file__).resolve().parent / "models"
# Device-side packages model.py imports (a missing optional one is skipped).
TOOLKIT_PACKAGES = ("common", "calibration", "runtime", "engines", "jetson")
TOOLKIT_DIR = "_toolkit"
TOKENIZER_FILE = "tokenizer.json"
REPOSITORY_RECORD = "repository.json"
ONNX_GENERATOR_ON_JETSON = (
    "note: --stories {stories} is an ONNX: tinystories_generate will run it with ONNX "
    "Runtime on the ARM CPU, not the GPU; for the GPU give a decoder plan (python -m "
    "engines.build, then --stories engines/<name>.<precision>.plan)")

FileSource = Union[Path, bytes]


def build_repository(target: str, output: Union[str, os.PathLike],
                     imdb: Optional[Union[str, os.PathLike]] = None,
                     stories: Optional[Union[str, os.PathLike]] = None,
                     classifier_instances: int = configs.DEFAULT_CLASSIFIER_INSTANCES,
                     generator_instances: int = configs.DEFAULT_GENERATOR_INSTANCES,
                     queue_delay_us: int = configs.QUEUE_DELAY_US,
                     generator_queue: int = configs.DEFAULT_GENERATOR_QUEUE,
                     force: bool = False, notify: Callable[[str], None] = lambda line: None,
                     features_model: Optional[Union[str, os.PathLike]] = None,
                     features_backend: Optional[str] = None) -> Path:
    """Write the repository for ``target`` into ``output``; returns its path.

    imdb: the classifier to serve (cpu: its .onnx; jetson: its .plan, the manifest naming the
    ONNX). stories: the decoder (.onnx; on jetson a .plan too). classifier_instances: instances
    of imdb_classifier (on jetson each holds its own engine); generator_instances: of
    tinystories_generate, one stream each; generator_queue: streams that may wait for one.
    notify: gets one line per thing the user should know (where a model runs).
    """
    if target not in TARGETS:
        raise ToolkitError(f"--target {target!r}: expected one of {list(TARGETS)}")
    if imdb is None and stories is None and features_model is None:
        raise ToolkitError("nothing to serve: give --imdb, --stories and/or --features-model")
    for option, count in (("--classifier-instances", classifier_instances),
                          ("--generator-instances", generator_instances),
                          ("--generator-queue", generator_queue)):
        if count < 1:
            raise ToolkitError(f"{option} {count}: expected 1 or more")
    output = Path(output)
    _check_output(output, force)
    on_jetson = target == "jetson"
    classifier = decoder = None
    if imdb is not None:
        classifier = resolve_model(imdb, "classifier", allow_plan=on_jetson,
                                   allow_onnx=not on_jetson, option="--imdb")
    if stories is not None:
        decoder = resolve_model(stories, "decoder", allow_plan=on_jetson, allow_onnx=True,
                                option="--stories")
        if on_jetson and not decoder.is_plan:
            notify(ONNX_GENERATOR_ON_JETSON.format(stories=stories))
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent))
    try:
        # mkdtemp makes the folder 0700; a server running as another user (a container) must
        # read the repository, so it gets the usual mode of a new folder.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)
        models: Dict[str, dict] = {}
        if classifier is not None:
            models.update(_write_imdb(staging, target, classifier, classifier_instances,
                                      queue_delay_us))
        if decoder is not None:
            models.update(_write_generator(staging, decoder, generator_instances,
                                           generator_queue))
        if features_model is not None:  # a continuous-feature classifier (feature_configs.py)
            from triton_repo.feature_configs import write_feature_model

            models.update(write_feature_model(staging, target, features_model,
                                              classifier_instances, queue_delay_us,
                                              _write_model, features_backend))
        record = {"target": target, "models": models}
        (staging / REPOSITORY_RECORD).write_text(json.dumps(record, indent=2, sort_keys=True)
                                                 + "\n", encoding="utf-8")
        _move_into_place(staging, output)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return output


def _check_output(output: Path, force: bool) -> None:
    if output.exists() and not output.is_dir():
        raise ToolkitError(f"--output {output} is a file; expected a folder for the repository")
    if output.is_dir() and any(output.iterdir()) and not force:
        raise ToolkitError(f"--output {output} exists and is not empty: pass --force to "
                           "replace it")


def _move_into_place(staging: Path, output: Path) -> None:
    """Rename the finished repository over ``output`` (an old one is moved aside first)."""
    old = None
    if output.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".old", dir=output.parent))
        os.replace(output, old / output.name)
    os.replace(staging, output)
    if old is not None:
        shutil.rmtree(old)


# -- the IMDB models ----------------------------------------------------------------------------

def text_settings(art: ModelArtifacts, profile) -> Dict[str, str]:
    """imdb_tokenizer's parameters: the row length and special ids of
    ``runtime.classify.Classifier`` (max_seq_len cut to the profile; <cls> for cls pooling),
    and the length buckets it pads to."""
    from tokenizers import Tokenizer

    from runtime.tokenization import special_token_ids
    from triton_repo.models.imdb_tokenizer import length_buckets

    s_min, _, s_max = profile["seq"]
    max_len = min(int(art.sidecar["max_seq_len"]), s_max)
    special = special_token_ids(art.sidecar, Tokenizer.from_file(str(art.tokenizer)))
    pooling = (art.sidecar.get("model_config") or {}).get("pooling", "mean")
    cls_id = special["cls_id"] if pooling == "cls" else None
    if pooling == "cls" and cls_id is None:
        raise ToolkitError(f"{art.onnx} pools on <cls> but its sidecar and tokenizer name no "
                           "cls_id")
    buckets = [max_len] if s_min == s_max else length_buckets(s_min, max_len)
    params = {"tokenizer": TOKENIZER_FILE, "max_len": str(max_len),
              "pad_id": str(special["pad_id"] if special["pad_id"] is not None else 0),
              "length_buckets": ",".join(str(b) for b in buckets)}
    if cls_id is not None:
        params["cls_id"] = str(cls_id)
    from common.artifacts import text_rules

    params["text"] = json.dumps(text_rules(art.sidecar), sort_keys=True)  # cleaning, truncation
    return params


def _write_imdb(root: Path, target: str, art: ModelArtifacts, instances: int,
                queue_delay_us: int) -> Dict[str, dict]:
    profile = classifier_profile(art)
    max_batch = profile["batch"][2]
    labels = list(art.sidecar["labels"])
    inputs = [i["name"] for i in art.sidecar["inputs"]]
    if inputs != ["input_ids", "attention_mask"]:
        raise ToolkitError(f"{art.model}: inputs {inputs}; the repository's ensemble sends one "
                           "text as input_ids and attention_mask (a --sentence-pairs export "
                           "is served by runtime/classify.py --pairs, not by Triton)")
    dtypes = {name: engine_dtype(art, name)
              for name in ("input_ids", "attention_mask", "logits")}
    if (dtypes["input_ids"], dtypes["attention_mask"]) != ("int32", "int32") or \
            dtypes["logits"] not in ("float32", "float16"):
        raise ToolkitError(f"{art.model}: I/O types {dtypes}; the repository's tokenizer sends "
                           "int32 ids and mask and its postprocess takes float32/float16 logits")
    settings = text_settings(art, profile)
    _write_model(root, configs.tokenizer_config(max_batch, settings),
                 {TOKENIZER_FILE: art.tokenizer}, source="imdb_tokenizer.py")
    # warm up at the lengths the tokenizer pads to, not at the profile's opt length
    lengths = [int(n) for n in settings["length_buckets"].split(",")]
    warmup = configs.warmup_files(lengths, dtypes)
    if target == "jetson":
        config = configs.classifier_plan_config(profile, len(labels), dtypes, dla_core(art),
                                                instances, queue_delay_us, lengths)
        _write_model(root, config, {"model.plan": art.model,
                                    "model.plan.json": _manifest_file(art)}, warmup=warmup)
    else:
        config = configs.classifier_ort_config(profile, len(labels), dtypes, instances,
                                               queue_delay_us, {"model": "model.onnx"}, lengths)
        _write_model(root, config, {"model.onnx": art.onnx, "model.onnx.json": _sidecar_file(art)},
                     source="imdb_classifier_ort.py", warmup=warmup)
    from common.artifacts import head_rules

    post_params = {"labels": json.dumps(labels),
                   "head": json.dumps(head_rules(art.sidecar), sort_keys=True)}
    _write_model(root, configs.postprocess_config(max_batch, len(labels), post_params,
                                                  dtypes["logits"]),
                 {}, source="imdb_postprocess.py")
    _write_model(root, configs.ensemble_config(max_batch, len(labels)), {})
    served = _served(art)
    return {"imdb": {"steps": [s[0] for s in configs.ENSEMBLE_STEPS]},
            "imdb_tokenizer": {"tokenizer_sha256": served["tokenizer_sha256"]},
            "imdb_classifier": served, "imdb_postprocess": {"labels": labels}}


# -- the generator -------------------------------------------------------------------------------

def _write_generator(root: Path, art: ModelArtifacts, instances: int,
                     max_queue: int) -> Dict[str, dict]:
    if art.is_plan:
        model_file = "model.plan"
        files = {model_file: art.model, "model.plan.json": _manifest_file(art)}
    else:
        model_file = "model.onnx"
        files = {model_file: art.onnx, "model.onnx.json": _sidecar_file(art)}
    files[TOKENIZER_FILE] = art.tokenizer
    params = {"model": model_file, "tokenizer": TOKENIZER_FILE,
              "default_max_new_tokens": str(64)}
    _write_model(root, configs.generator_config(instances, params, max_queue), files,
                 source="tinystories_generate.py")
    return {"tinystories_generate": _served(art)}


# -- files ----------------------------------------------------------------------------------------

def _write_model(root: Path, config, files: Dict[str, FileSource], source: Optional[str] = None,
                 warmup: Optional[Dict[str, bytes]] = None) -> None:
    """``root/<name>/config.pbtxt``, ``1/`` with ``files`` (and model.py + _toolkit for a python
    model), ``warmup/`` with the warm-up inputs."""
    model_dir = root / config.name
    version_dir = model_dir / "1"
    version_dir.mkdir(parents=True)
    (model_dir / "config.pbtxt").write_text(configs.to_text(config), encoding="utf-8")
    for name, content in files.items():
        _write_file(version_dir / name, content)
    if source is not None:
        shutil.copyfile(MODEL_SOURCES / source, version_dir / "model.py")
        copy_toolkit(version_dir / TOOLKIT_DIR)
    for name, content in (warmup or {}).items():
        (model_dir / "warmup").mkdir(exist_ok=True)
        _write_file(model_dir / "warmup" / name, content)


def _write_file(path: Path, content: FileSource) -> None:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        shutil.copyfile(content, path)


def _sidecar_file(art: ModelArtifacts) -> bytes:
    return (json.dumps(art.sidecar, indent=2, sort_keys=True) + "\n").encode("utf-8")


def _manifest_file(art: ModelArtifacts) -> bytes:
    return (json.dumps(art.manifest, indent=2, sort_keys=True) + "\n").encode("utf-8")


def _served(art: ModelArtifacts) -> Dict[str, str]:
    record = {"source": str(art.model), "sha256": sha256_file(art.model),
              "onnx_sha256": art.sidecar["onnx_sha256"],
              "tokenizer_sha256": sha256_file(art.tokenizer)}
    if art.is_plan:
        record.update(tensorrt_version=str(art.manifest.get("tensorrt_version")),
                      precision=str(art.manifest.get("precision")))
    return record


def copy_toolkit(destination: Path) -> None:
    """The device-side packages (Python sources only) into ``destination``, plus
    ``triton_repo/__init__.py`` and ``triton_repo/models/`` (not the builder)."""
    def only_sources(folder: str, names):
        return [n for n in names if n == "__pycache__" or
                (not n.endswith(".py") and not os.path.isdir(os.path.join(folder, n)))]

    for package in TOOLKIT_PACKAGES:
        if (PROJECT_ROOT / package / "__init__.py").is_file():
            shutil.copytree(PROJECT_ROOT / package, destination / package, ignore=only_sources)
    (destination / "triton_repo").mkdir(parents=True)
    shutil.copyfile(PROJECT_ROOT / "triton_repo" / "__init__.py",
                    destination / "triton_repo" / "__init__.py")
    shutil.copytree(MODEL_SOURCES, destination / "triton_repo" / "models", ignore=only_sources)


@click.command(context_settings={"show_default": True})
@click.option("--target", type=click.Choice(TARGETS), required=True,
              help="jetson: the classifier as a tensorrt_plan; cpu: every model in the python "
                   "backend with ONNX Runtime (an x86 box without a GPU)")
@click.option("--output", type=click.Path(path_type=Path), required=True,
              help="repository folder to write")
@click.option("--imdb", type=click.Path(path_type=Path), default=None,
              help="classifier: .onnx (cpu) or .plan with its manifest (jetson)")
@click.option("--stories", type=click.Path(path_type=Path), default=None,
              help="decoder: .onnx, or on jetson a .plan with its manifest")
@click.option("--classifier-instances", type=int, default=configs.DEFAULT_CLASSIFIER_INSTANCES,
              help="instances of imdb_classifier; on jetson each deserializes its own engine "
                   "(TensorRT's backend shares none with dynamic shapes): memory, not speed")
@click.option("--generator-instances", type=int, default=configs.DEFAULT_GENERATOR_INSTANCES,
              help="instances of tinystories_generate = parallel streams, each with its own "
                   "session and KV cache")
@click.option("--generator-queue", type=int, default=configs.DEFAULT_GENERATOR_QUEUE,
              help="streams that may wait for a generator instance; beyond, Triton refuses a "
                   "stream at once (UNAVAILABLE: Exceeds maximum queue size)")
@click.option("--queue-delay-us", type=int, default=configs.QUEUE_DELAY_US,
              help="imdb_classifier dynamic batching max_queue_delay_microseconds")
@click.option("--force", is_flag=True, help="replace an existing non-empty --output")
@click.option("--features-model", type=click.Path(path_type=Path), default=None,
              help="continuous-feature classifier: .onnx (cpu) or .plan (jetson), served as "
                   "feature_classifier (triton_repo/feature_configs.py)")
@click.option("--features-backend", type=click.Choice(["python", "onnxruntime"]), default=None,
              help="cpu: python (ONNX Runtime in the python backend, the default) or "
                   "onnxruntime (Triton's own ONNX Runtime backend)")
@exit_on_toolkit_error
def main(target: str, output: Path, imdb: Optional[Path], stories: Optional[Path],
         classifier_instances: int, generator_instances: int, generator_queue: int,
         queue_delay_us: int, force: bool, features_model: Optional[Path],
         features_backend: Optional[str]) -> None:
    """Write a Triton model repository serving the IMDB classifier and the TinyStories
    generator.

    \b
    Where each model runs with --target jetson: imdb_classifier on the GPU (or the DLA core
    the engine was built for) through Triton's TensorRT backend; imdb_tokenizer and
    imdb_postprocess on the CPU (python backend); tinystories_generate with a decoder .plan
    on the GPU (TensorRT through pycuda in the python model), with a decoder .onnx on the
    ARM CPU (ONNX Runtime's CPU provider): build a plan with `python -m engines.build` for
    the GPU route.
    """
    path = build_repository(target, output, imdb, stories, classifier_instances,
                            generator_instances, queue_delay_us, generator_queue, force,
                            notify=lambda line: click.echo(line, err=True),
                            features_model=features_model, features_backend=features_backend)
    models = sorted(p.name for p in path.iterdir() if (p / "config.pbtxt").is_file())
    click.echo(f"wrote {path} ({target}): {', '.join(models)}")


if __name__ == "__main__":
    main()
