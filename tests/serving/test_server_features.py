"""A continuous-feature classifier through a real tritonserver (the python backend of the
bundled server, the --target cpu repository) equals the runtime on ONNX Runtime; label names
come from the model's labels.txt; a malformed request gets its own one-line error."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.triton

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
LABELS = ["sine", "square", "sawtooth"]


@pytest.fixture(scope="module")
def feature_model(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny_features")
    for suffix in (".onnx", ".onnx.json", ".npz"):
        shutil.copy(FIXTURES / f"tiny_features{suffix}", folder / f"tiny_features{suffix}")
    return folder / "tiny_features.onnx"


@pytest.fixture(scope="module")
def feature_repository(feature_model, tmp_path_factory) -> Path:
    from triton_repo.build import build_repository

    output = tmp_path_factory.mktemp("feature_repo") / "repository"
    return build_repository("cpu", output, features_model=feature_model)


@pytest.fixture(scope="module")
def feature_server(triton_env, feature_repository, tmp_path_factory):
    from triton_harness import free_ports, launch, server_env

    log = tmp_path_factory.mktemp("feature-log") / "server.log"
    server = launch(feature_repository, log, server_env(triton_env, free_ports(3)))
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def test_repository_record_and_config(feature_repository):
    from triton_repo.configs import from_text

    record = json.loads((feature_repository / "repository.json").read_text())
    entry = record["models"]["feature_classifier"]
    assert entry["backend"] == "python" and entry["feature_dim"] == 3
    assert entry["labels"] == LABELS
    config = from_text((feature_repository / "feature_classifier" / "config.pbtxt").read_text())
    assert [(i.name, list(i.dims)) for i in config.input] == [("features", [-1, 3]),
                                                              ("attention_mask", [-1])]
    assert config.max_batch_size == 8 and config.output[0].label_filename == "labels.txt"
    labels = (feature_repository / "feature_classifier" / "labels.txt").read_text().split()
    assert labels == LABELS


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_served_logits_equal_the_runtime(feature_server, feature_model, protocol):
    from calibration.feature_data import read_feature_file
    from runtime.features import open_feature_classifier
    from triton_repo.feature_client import served_logits

    windows = read_feature_file(feature_model.with_suffix(".npz"), 3, LABELS)
    rows = windows.rows()  # 12 windows of 1..40 steps: requests of 8, then 4
    url = feature_server.http_url if protocol == "http" else feature_server.grpc_url
    got, names = served_logits(url, rows, protocol)
    single = np.concatenate([served_logits(url, [row], protocol)[0] for row in rows[:3]])
    session, classifier = open_feature_classifier(str(feature_model))
    with session:
        want = classifier.logits_for_rows(rows)
        classifier.close()
    assert names == LABELS
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    np.testing.assert_allclose(single, want[:3], rtol=0, atol=1e-5)
    assert np.ptp(want) > 0.05


def test_bad_request_gets_its_error_and_the_server_keeps_serving(feature_server):
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    client = httpclient.InferenceServerClient(feature_server.http_url)

    def infer(features, mask):
        inputs = [httpclient.InferInput("features", list(features.shape), "FP32"),
                  httpclient.InferInput("attention_mask", list(mask.shape), "INT32")]
        inputs[0].set_data_from_numpy(features)
        inputs[1].set_data_from_numpy(mask)
        return client.infer("feature_classifier", inputs).as_numpy("logits")

    left_padded = np.array([[0, 1, 1]], np.int32)
    with pytest.raises(InferenceServerException, match="right-padded"):
        infer(np.ones((1, 3, 3), np.float32), left_padded)
    nan = np.ones((1, 3, 3), np.float32)
    nan[0, 1, 2] = np.nan
    with pytest.raises(InferenceServerException, match="NaN or Inf"):
        infer(nan, np.ones((1, 3), np.int32))
    assert infer(np.ones((2, 3, 3), np.float32), np.ones((2, 3), np.int32)).shape == (2, 3)
    client.close()


def test_jetson_and_onnxruntime_backend_configs():
    """The tensorrt_plan (jetson) and onnxruntime_onnx configs: same tensors, Triton's own
    backends; a static engine gets its fixed length; a profile not from batch 1 is refused."""
    from common.errors import ToolkitError
    from triton_repo.feature_configs import feature_config

    profile = {"batch": (1, 4, 8), "seq": (1, 48, 48)}
    plan = feature_config("waves", "tensorrt", profile, 3, 3, 1, 500, dla_core=None)
    assert plan.platform == "tensorrt_plan" and plan.max_batch_size == 8
    assert plan.instance_group[0].kind == plan.instance_group[0].KIND_GPU
    assert [list(i.dims) for i in plan.input] == [[-1, 3], [-1]]
    static = feature_config("waves", "tensorrt", {"batch": (1, 8, 8), "seq": (32, 32, 32)},
                            3, 3, 1, 500, dla_core=0)
    assert [list(i.dims) for i in static.input] == [[32, 3], [32]]
    assert static.instance_group[0].secondary_devices[0].device_id == 0
    ort = feature_config("waves", "onnxruntime", profile, 3, 3, 2, 100)
    assert ort.platform == "onnxruntime_onnx" and ort.instance_group[0].count == 2
    assert ort.dynamic_batching.max_queue_delay_microseconds == 100
    with pytest.raises(ToolkitError, match="batch 1,OPT,MAX"):
        feature_config("waves", "tensorrt", {"batch": (2, 4, 8), "seq": (1, 8, 8)}, 3, 3, 1, 0)


def test_token_classifier_is_refused_as_a_feature_model(tmp_path):
    from common.errors import ToolkitError
    from triton_repo.build import build_repository

    token_model = FIXTURES / "tiny_classifier.onnx"
    with pytest.raises(ToolkitError, match="a token classifier"):
        build_repository("cpu", tmp_path / "r", features_model=token_model)
    assert not (tmp_path / "r").exists()
