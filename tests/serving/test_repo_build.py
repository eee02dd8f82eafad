"""triton_repo.build without a server: golden configs of both targets, what the configs take
from the artifacts, the self-contained layout, and the refusals."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

pytest.importorskip("tritonclient.grpc.model_config_pb2")

from repo_fixtures import (  # noqa: E402
    ROOT,
    check_golden,
    classifier_onnx,  # noqa: F401  (fixture)
    decoder_onnx,  # noqa: F401  (fixture)
    plan_for,
    read_configs,
)

from common.errors import ToolkitError  # noqa: E402
from triton_repo.build import build_repository, main  # noqa: E402
from triton_repo.configs import from_text  # noqa: E402

CPU_MODELS = ["imdb", "imdb_classifier", "imdb_postprocess", "imdb_tokenizer",
              "tinystories_generate"]


@pytest.fixture(scope="module")
def cpu_repo(tmp_path_factory, classifier_onnx, decoder_onnx):  # noqa: F811
    out = tmp_path_factory.mktemp("cpu") / "repo"
    return build_repository("cpu", out, imdb=classifier_onnx, stories=decoder_onnx)


@pytest.fixture(scope="module")
def jetson_repo(tmp_path_factory, classifier_onnx, decoder_onnx):  # noqa: F811
    engines = tmp_path_factory.mktemp("engines")
    imdb_plan = plan_for(classifier_onnx, engines, batch=(1, 4, 8), precision="int8")
    stories_plan = plan_for(decoder_onnx, engines, precision="fp16")
    out = tmp_path_factory.mktemp("jetson") / "repo"
    return build_repository("jetson", out, imdb=imdb_plan, stories=stories_plan)


# ---------------------------------------------------------------- golden configs

def test_cpu_configs_match_golden(cpu_repo):
    configs = read_configs(cpu_repo)
    assert sorted(configs) == CPU_MODELS
    check_golden("cpu", configs)


def test_jetson_configs_match_golden(jetson_repo):
    configs = read_configs(jetson_repo)
    assert sorted(configs) == CPU_MODELS
    check_golden("jetson", configs)


def test_configs_hold_no_paths_or_times(cpu_repo, jetson_repo):
    for repo in (cpu_repo, jetson_repo):
        for text in read_configs(repo).values():
            assert str(repo) not in text and "/tmp" not in text and str(ROOT) not in text
            assert "2025-" not in text and "created_at" not in text


# ---------------------------------------------------------------- what the configs say

def test_jetson_classifier_comes_from_the_engine_profile(jetson_repo):
    config = from_text((jetson_repo / "imdb_classifier" / "config.pbtxt").read_text())
    assert config.platform == "tensorrt_plan" and config.max_batch_size == 8
    # no preferred size: the batcher fills up to max_batch_size within the queue delay
    assert list(config.dynamic_batching.preferred_batch_size) == []
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    group = config.instance_group[0]
    assert group.count == 1 and list(group.gpus) == [0] and not group.secondary_devices
    assert [w.batch_size for w in config.model_warmup] == [4, 4, 4]  # the profile's opt batch
    assert (jetson_repo / "imdb_classifier" / "1" / "model.plan").stat().st_size == 4096
    for warmup, length in zip(config.model_warmup, (16, 32, 64)):  # the tokenizer's buckets
        assert list(warmup.inputs["input_ids"].dims) == [length]
        mask_file = warmup.inputs["attention_mask"].input_data_file
        mask = (jetson_repo / "imdb_classifier" / "warmup" / mask_file).read_bytes()
        assert mask == b"\x01\x00\x00\x00" * length  # one row of int32 ones
    for name in ("imdb", "imdb_tokenizer", "imdb_postprocess"):
        assert from_text((jetson_repo / name / "config.pbtxt").read_text()).max_batch_size == 8


def test_dla_engine_is_served_through_the_secondary_device(tmp_path, classifier_onnx):  # noqa: F811
    plan = plan_for(classifier_onnx, tmp_path / "engines", batch=(1, 1, 1), seq=(64, 64, 64),
                    dla_core=1, precision="int8")
    repo = build_repository("jetson", tmp_path / "repo", imdb=plan)
    config = from_text((repo / "imdb_classifier" / "config.pbtxt").read_text())
    (device,) = config.instance_group[0].secondary_devices
    assert device.device_id == 1
    assert device.kind == device.KIND_NVDLA
    assert config.max_batch_size == 1
    assert [list(t.dims) for t in config.input] == [[64], [64]]  # DLA: static length
    tokenizer = from_text((repo / "imdb_tokenizer" / "config.pbtxt").read_text())
    assert tokenizer.parameters["length_buckets"].string_value == "64"  # pads to the one shape
    assert not (repo / "tinystories_generate").exists()  # --stories omitted


def test_engine_io_types_reach_the_configs(tmp_path, classifier_onnx):  # noqa: F811
    """The manifest's engine_io (what TensorRT reports) decides the types: an fp16-output
    engine gets FP16 logits through to the postprocess; int64 ids are refused."""
    def io(ids_dtype, logits_dtype):
        return {"tensors": [{"name": "input_ids", "dtype": ids_dtype, "shape": [-1, -1]},
                            {"name": "attention_mask", "dtype": "int32", "shape": [-1, -1]},
                            {"name": "logits", "dtype": logits_dtype, "shape": [-1, 2]}]}

    plan = plan_for(classifier_onnx, tmp_path / "e1", engine_io=io("int32", "float16"))
    repo = build_repository("jetson", tmp_path / "repo", imdb=plan)
    from tritonclient.grpc.model_config_pb2 import TYPE_FP16, TYPE_INT32

    classifier = from_text((repo / "imdb_classifier" / "config.pbtxt").read_text())
    post = from_text((repo / "imdb_postprocess" / "config.pbtxt").read_text())
    assert classifier.output[0].data_type == post.input[0].data_type == TYPE_FP16
    assert [t.data_type for t in classifier.input] == [TYPE_INT32, TYPE_INT32]
    plan = plan_for(classifier_onnx, tmp_path / "e2", engine_io=io("int64", "float32"))
    with pytest.raises(ToolkitError, match="sends int32 ids"):
        build_repository("jetson", tmp_path / "repo2", imdb=plan)


def test_options_reach_the_configs(tmp_path, classifier_onnx, decoder_onnx):  # noqa: F811
    repo = build_repository("cpu", tmp_path / "repo", imdb=classifier_onnx, stories=decoder_onnx,
                            classifier_instances=1, generator_instances=3, queue_delay_us=0,
                            generator_queue=7)
    classifier = from_text((repo / "imdb_classifier" / "config.pbtxt").read_text())
    generator = from_text((repo / "tinystories_generate" / "config.pbtxt").read_text())
    assert classifier.instance_group[0].count == 1 and generator.instance_group[0].count == 3
    assert classifier.dynamic_batching.max_queue_delay_microseconds == 0
    assert generator.model_transaction_policy.decoupled and generator.max_batch_size == 0
    assert generator.dynamic_batching.default_queue_policy.max_queue_size == 7
    assert not generator.dynamic_batching.preferred_batch_size
    repo = build_repository("cpu", tmp_path / "repo2", imdb=classifier_onnx, stories=decoder_onnx,
                            classifier_instances=2)
    classifier = from_text((repo / "imdb_classifier" / "config.pbtxt").read_text())
    generator = from_text((repo / "tinystories_generate" / "config.pbtxt").read_text())
    assert classifier.instance_group[0].count == 2 and generator.instance_group[0].count == 1
    assert generator.dynamic_batching.default_queue_policy.max_queue_size == 4  # the default


def test_warm_up_uses_padded_lengths_not_the_profile_opt(tmp_path, classifier_onnx):  # noqa: F811
    """An engine whose opt length (48) is no bucket: the tokenizer never sends 48, so warming
    up there leaves the lengths it does send cold."""
    plan = plan_for(classifier_onnx, tmp_path / "engines", batch=(1, 2, 8), seq=(1, 48, 64))
    repo = build_repository("jetson", tmp_path / "repo", imdb=plan)
    config = from_text((repo / "imdb_classifier" / "config.pbtxt").read_text())
    tokenizer = from_text((repo / "imdb_tokenizer" / "config.pbtxt").read_text())
    buckets = [int(n) for n in tokenizer.parameters["length_buckets"].string_value.split(",")]
    assert buckets == [16, 32, 64]
    lengths = [list(w.inputs["input_ids"].dims) for w in config.model_warmup]
    assert lengths == [[n] for n in buckets] and [48] not in lengths
    assert {w.batch_size for w in config.model_warmup} == {2}


def test_onnx_generator_on_jetson_says_it_runs_on_the_cpu(tmp_path, decoder_onnx):  # noqa: F811
    from click.testing import CliRunner

    result = CliRunner().invoke(main, [
        "--target", "jetson", "--output", str(tmp_path / "repo"), "--stories", str(decoder_onnx)])
    assert result.exit_code == 0, result.output
    assert "ONNX Runtime on the ARM CPU" in result.stderr
    plan = plan_for(decoder_onnx, tmp_path / "engines")
    result = CliRunner().invoke(main, [
        "--target", "jetson", "--output", str(tmp_path / "repo2"), "--stories", str(plan)])
    assert result.exit_code == 0 and "ARM CPU" not in result.stderr
    help_text = CliRunner().invoke(main, ["--help"]).output
    assert "ARM CPU" in help_text and "--generator-instances" in help_text


def test_a_cls_pooling_model_gets_its_cls_id(tmp_path, classifier_onnx):  # noqa: F811
    from common.artifacts import load_onnx_sidecar, write_onnx_sidecar

    model = tmp_path / "m" / classifier_onnx.name
    model.parent.mkdir()
    for src in classifier_onnx.parent.glob("tiny_classifier.*"):
        shutil.copy(src, model.parent / src.name)
    sidecar = load_onnx_sidecar(model)
    sidecar["model_config"] = {**sidecar["model_config"], "pooling": "cls"}
    write_onnx_sidecar(model, sidecar)
    repo = build_repository("cpu", tmp_path / "repo", imdb=model)
    params = from_text((repo / "imdb_tokenizer" / "config.pbtxt").read_text()).parameters
    assert params["cls_id"].string_value == str(sidecar["special_tokens"]["cls_id"])


# ---------------------------------------------------------------- layout

def test_repository_is_self_contained(cpu_repo):
    """Each python model imports the toolkit from its own _toolkit/, with the project off
    sys.path (python -I, run elsewhere), as the stub does: version and model folder appended,
    then ``import 1.model``."""
    assert not (cpu_repo / "_toolkit").exists()  # a top-level folder would be taken for a model
    for name in ("imdb_tokenizer", "imdb_classifier", "imdb_postprocess", "tinystories_generate"):
        model_dir = cpu_repo / name
        code = ("import importlib, sys; sys.path += [sys.argv[1], sys.argv[2]]; "
                "m = importlib.import_module('1.model'); import common, runtime; "
                "print(m.TritonPythonModel.__name__, common.__file__, runtime.__file__)")
        out = subprocess.run([sys.executable, "-I", "-c", code, str(model_dir / "1"),
                              str(model_dir)], cwd=model_dir.parent.parent, capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        _, common_file, runtime_file = out.stdout.split()
        assert common_file.startswith(str(model_dir / "1" / "_toolkit"))
        assert runtime_file.startswith(str(model_dir / "1" / "_toolkit"))


def test_python_models_get_their_artifacts(cpu_repo, classifier_onnx, decoder_onnx):  # noqa: F811
    from common.fileio import sha256_file

    version = cpu_repo / "imdb_classifier" / "1"
    assert sha256_file(version / "model.onnx") == sha256_file(classifier_onnx)
    assert json.loads((version / "model.onnx.json").read_text())["labels"] == \
        ["negative", "positive"]
    tokenizer = classifier_onnx.with_name("tiny_classifier.tokenizer.json")
    assert sha256_file(cpu_repo / "imdb_tokenizer" / "1" / "tokenizer.json") == \
        sha256_file(tokenizer)
    assert sha256_file(cpu_repo / "tinystories_generate" / "1" / "model.onnx") == \
        sha256_file(decoder_onnx)
    record = json.loads((cpu_repo / "repository.json").read_text())
    assert record["target"] == "cpu"
    assert record["models"]["tinystories_generate"]["sha256"] == sha256_file(decoder_onnx)
    assert (cpu_repo / "imdb" / "1").is_dir()  # an ensemble needs its version folder too
    umask = os.umask(0)
    os.umask(umask)
    assert cpu_repo.stat().st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's 0700


# ---------------------------------------------------------------- refusals

def test_missing_artifacts_are_refused(tmp_path, classifier_onnx):  # noqa: F811
    with pytest.raises(ToolkitError, match="ONNX file not found"):
        build_repository("cpu", tmp_path / "a", imdb=tmp_path / "absent.onnx")
    model = tmp_path / "m" / classifier_onnx.name
    model.parent.mkdir()
    shutil.copy(classifier_onnx, model)
    with pytest.raises(ToolkitError, match="ONNX sidecar not found"):
        build_repository("cpu", tmp_path / "b", imdb=model)
    shutil.copy(classifier_onnx.with_name(classifier_onnx.name + ".json"),
                model.with_name(model.name + ".json"))
    with pytest.raises(ToolkitError, match="tokenizer .* is not found"):
        build_repository("cpu", tmp_path / "c", imdb=model)
    model.with_name("tiny_classifier.tokenizer.json").write_text('{"other": "tokenizer"}')
    with pytest.raises(ToolkitError, match="tokenizer_sha256 differs"):
        build_repository("cpu", tmp_path / "d", imdb=model)
    with pytest.raises(ToolkitError, match="engine plan not found"):
        build_repository("jetson", tmp_path / "e", imdb=tmp_path / "absent.plan")
    assert not any(p.name[0] in "abcde" for p in tmp_path.iterdir())  # nothing written


def test_engine_whose_manifest_does_not_match_its_onnx_is_refused(tmp_path,
                                                                  classifier_onnx):  # noqa: F811
    plan = plan_for(classifier_onnx, tmp_path / "engines", onnx={"path": classifier_onnx.name,
                                                                 "sha256": "0" * 64})
    with pytest.raises(ToolkitError, match="was built from an ONNX with sha256 000000000000"):
        build_repository("jetson", tmp_path / "repo", imdb=plan)
    plan = plan_for(classifier_onnx, tmp_path / "engines2")
    plan.write_bytes(os.urandom(4096))  # replaced after the build
    with pytest.raises(ToolkitError, match="does not match its manifest"):
        build_repository("jetson", tmp_path / "repo", imdb=plan)
    plan = plan_for(classifier_onnx, tmp_path / "engines3")
    plan.with_name(classifier_onnx.name).unlink()  # the ONNX it names is gone
    with pytest.raises(ToolkitError, match="which is not found"):
        build_repository("jetson", tmp_path / "repo", imdb=plan)
    assert not (tmp_path / "repo").exists()


def test_wrong_kind_or_format_for_the_target_is_refused(tmp_path, classifier_onnx,  # noqa: F811
                                                        decoder_onnx):  # noqa: F811
    with pytest.raises(ToolkitError, match=r"--imdb .*expected a \.plan/\.engine"):
        build_repository("jetson", tmp_path / "r", imdb=classifier_onnx)
    plan = plan_for(classifier_onnx, tmp_path / "engines")
    with pytest.raises(ToolkitError, match=r"--imdb .*expected a \.onnx"):
        build_repository("cpu", tmp_path / "r", imdb=plan)
    with pytest.raises(ToolkitError, match="describes a decoder model; expected a classifier"):
        build_repository("cpu", tmp_path / "r", imdb=decoder_onnx)
    with pytest.raises(ToolkitError, match="the engine is a classifier model"):
        build_repository("jetson", tmp_path / "r", stories=plan)
    with pytest.raises(ToolkitError, match="nothing to serve"):
        build_repository("cpu", tmp_path / "r")
    with pytest.raises(ToolkitError, match="--classifier-instances 0"):
        build_repository("cpu", tmp_path / "r", imdb=classifier_onnx, classifier_instances=0)
    with pytest.raises(ToolkitError, match="--generator-instances 0"):
        build_repository("cpu", tmp_path / "r", imdb=classifier_onnx, generator_instances=0)
    with pytest.raises(ToolkitError, match="--generator-queue 0"):
        build_repository("cpu", tmp_path / "r", imdb=classifier_onnx, generator_queue=0)


def test_profiles_triton_cannot_batch_are_refused(tmp_path, classifier_onnx):  # noqa: F811
    plan = plan_for(classifier_onnx, tmp_path / "engines", batch=(2, 4, 8))
    with pytest.raises(ToolkitError, match="needs a profile from batch 1"):
        build_repository("jetson", tmp_path / "repo", imdb=plan)


def test_existing_output_needs_force_and_is_replaced_whole(tmp_path, classifier_onnx,  # noqa: F811
                                                           decoder_onnx):  # noqa: F811
    out = tmp_path / "repo"
    build_repository("cpu", out, imdb=classifier_onnx, stories=decoder_onnx)
    with pytest.raises(ToolkitError, match="exists and is not empty: pass --force"):
        build_repository("cpu", out, stories=decoder_onnx)
    assert (out / "imdb").is_dir()  # untouched by the refusal
    with pytest.raises(ToolkitError, match="ONNX file not found"):
        build_repository("cpu", out, imdb=tmp_path / "absent.onnx", force=True)
    assert (out / "imdb").is_dir()  # a failed forced build leaves the old repository
    build_repository("cpu", out, stories=decoder_onnx, force=True)
    assert sorted(read_configs(out)) == ["tinystories_generate"]  # no stale models left
    assert [p.name for p in tmp_path.iterdir()] == ["repo"]  # no staging folders left
    empty = tmp_path / "empty"
    empty.mkdir()
    build_repository("cpu", empty, stories=decoder_onnx)  # an empty folder is fine


def test_cli_writes_and_refuses_with_one_line(tmp_path, classifier_onnx):  # noqa: F811
    from click.testing import CliRunner

    runner = CliRunner()
    out = tmp_path / "repo"
    result = runner.invoke(main, ["--target", "cpu", "--output", str(out), "--imdb",
                                  str(classifier_onnx)])
    assert result.exit_code == 0, result.output
    assert "imdb, imdb_classifier, imdb_postprocess, imdb_tokenizer" in result.output
    result = runner.invoke(main, ["--target", "cpu", "--output", str(out), "--imdb",
                                  str(classifier_onnx)])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"error: --output {out} exists and is not empty: pass --force to replace it"]
    help_run = subprocess.run([sys.executable, str(ROOT / "triton_repo" / "build.py"), "--help"],
                              capture_output=True, text=True, timeout=60)
    assert help_run.returncode == 0 and "--queue-delay-us" in help_run.stdout
