"""triton_repo.feature_client against a real tritonserver serving models it must adapt to: a
fixed-length config ([s_max, F] dims, as feature_configs writes for a static engine; the
server itself rejects any other length), a labels.txt shorter than the labels, a server that
does not answer; plus the --compare / --limit refusals. Each failure is one ToolkitError line."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.triton

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
LABELS = ["sine", "square", "sawtooth"]
FIXED = 48  # the fixture's longest window: the fixed-length model takes exactly this


@pytest.fixture(scope="module")
def feature_model(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny_features")
    for suffix in (".onnx", ".onnx.json", ".npz"):
        shutil.copy(FIXTURES / f"tiny_features{suffix}", folder / f"tiny_features{suffix}")
    return folder / "tiny_features.onnx"


def _copy_model(repository: Path, name: str, edit) -> None:
    from triton_repo.configs import from_text, to_text

    shutil.copytree(repository / "feature_classifier", repository / name)
    path = repository / name / "config.pbtxt"
    config = from_text(path.read_text())
    config.name = name
    edit(config)
    path.write_text(to_text(config))


def _fixed_length(config) -> None:
    """What feature_config writes for a static tensorrt_plan engine of FIXED steps."""
    config.input[0].dims[0] = FIXED
    config.input[1].dims[0] = FIXED
    config.parameters["min_seq_len"].string_value = str(FIXED)


@pytest.fixture(scope="module")
def server(triton_env, feature_model, tmp_path_factory):
    from triton_harness import free_ports, launch, server_env

    from triton_repo.build import build_repository

    repository = build_repository("cpu", tmp_path_factory.mktemp("repo") / "repository",
                                  features_model=feature_model)
    _copy_model(repository, "fixed_features", _fixed_length)
    _copy_model(repository, "short_labels", lambda config: None)
    (repository / "short_labels" / "labels.txt").write_text("sine\nsquare\n")
    log = tmp_path_factory.mktemp("feature-client-log") / "server.log"
    server = launch(repository, log, server_env(triton_env, free_ports(3)))
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def _runtime_logits(feature_model, rows):
    from runtime.features import open_feature_classifier

    session, classifier = open_feature_classifier(str(feature_model))
    with session:
        want = classifier.logits_for_rows(rows)
        classifier.close()
    return want


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_fixed_length_model_gets_every_request_padded_to_its_length(
        server, feature_model, protocol):
    """The label query (one step) and short windows are padded to exactly FIXED steps; the
    padding is masked, so the logits equal the runtime's on the unpadded windows."""
    from calibration.feature_data import read_feature_file
    from triton_repo.feature_client import served_logits

    rows = read_feature_file(feature_model.with_suffix(".npz"), 3, LABELS).rows()
    assert min(len(r) for r in rows) < FIXED
    url = server.http_url if protocol == "http" else server.grpc_url
    got, names = served_logits(url, rows, protocol, model="fixed_features")
    assert names == LABELS
    np.testing.assert_allclose(got, _runtime_logits(feature_model, rows), rtol=0, atol=1e-5)


def test_a_labels_file_missing_a_label_is_one_line(server):
    from common.errors import ToolkitError
    from triton_repo.feature_client import served_logits

    with pytest.raises(ToolkitError) as caught:
        served_logits(server.http_url, [np.zeros((4, 3), np.float32)], model="short_labels")
    message = str(caught.value)
    assert "no label name for index 2 of 3" in message and "labels.txt" in message, message
    assert "\n" not in message


def test_a_label_query_the_server_refuses_is_one_line(server):
    """An old config without the length parameters and dims [-1, F] in front of a model that
    wants FIXED steps: the server refuses the 1-step label query: one line, no traceback."""
    from common.errors import ToolkitError
    from triton_repo.client import connect
    from triton_repo.feature_client import label_names

    client = connect(server.http_url, "http", 10.0)
    config = {"output": [{"dims": [3]}]}
    try:
        with pytest.raises(ToolkitError) as caught:
            label_names(client, server.http_url, "http", "fixed_features", 3, config, 1, 10.0)
    finally:
        client.close()
    message = str(caught.value)
    assert message.startswith(f"triton at {server.http_url}: fixed_features (label names):")
    assert "\n" not in message


def test_served_lengths_read_dims_and_parameters():
    from common.errors import ToolkitError
    from triton_repo.feature_client import served_lengths

    def config(dims, **params):
        return {"input": [{"name": "features", "dims": dims}],
                "parameters": {k: {"string_value": v} for k, v in params.items()}}

    assert served_lengths(config(["32", "3"]), "m") == (32, 32)  # gRPC JSON: int64 as text
    assert served_lengths(config([-1, 3], min_seq_len="8", max_seq_len="64"), "m") == (8, 64)
    assert served_lengths(config([-1, 3]), "m")[0] == 1  # written before the parameters
    with pytest.raises(ToolkitError, match="min_seq_len 9, max_seq_len 4"):
        served_lengths(config([-1, 3], min_seq_len="9", max_seq_len="4"), "m")


def test_compare_fails_on_nan_and_limit_below_one_is_refused(server, feature_model, tmp_path):
    """A NaN logit is a failed comparison (NaN > atol alone is False)."""
    import onnx
    from click.testing import CliRunner

    from common.artifacts import load_onnx_sidecar, write_onnx_sidecar
    from common.fileio import sha256_file
    from triton_repo.feature_client import main

    windows = tmp_path / "nan.npy"
    np.save(windows, np.ones((2, 5, 3), np.float32))
    runner = CliRunner()
    for limit in ("0", "-1"):
        result = runner.invoke(main, ["--url", server.http_url, "--features", str(windows),
                                      "--limit", limit])
        assert result.exit_code != 0 and "expected a number of windows >= 1" in result.output
        assert "Traceback" not in result.output
    # a model whose logits are NaN: the graph's output goes through a Mul by NaN
    graph = onnx.load(str(feature_model))
    out = graph.graph.output[0].name
    graph.graph.node.append(onnx.helper.make_node("Mul", [f"{out}_pre", "nan_const"], [out]))
    for node in graph.graph.node[:-1]:
        node.output[:] = [f"{out}_pre" if o == out else o for o in node.output]
    graph.graph.initializer.append(onnx.numpy_helper.from_array(
        np.array(np.nan, np.float32), "nan_const"))
    poisoned = tmp_path / "nan.onnx"
    onnx.save(graph, str(poisoned))
    sidecar = load_onnx_sidecar(feature_model)
    sidecar["onnx_sha256"] = sha256_file(poisoned)
    write_onnx_sidecar(poisoned, {k: v for k, v in sidecar.items()
                                  if k not in ("format", "version")})
    result = runner.invoke(main, ["--url", server.http_url, "--features", str(windows),
                                  "--compare", str(poisoned)])
    assert result.exit_code != 0, result.output
    assert "NaN/Inf logits: the comparison fails" in result.output, result.output


def test_labels_file_is_replaced_atomically_not_written_in_place(tmp_path):
    """labels.txt is written beside and renamed over (common.fileio): a file the old one is
    linked to (a server reading it, a copy) is never half-written or changed."""
    import os

    from triton_repo.feature_configs import _labels_beside_config

    other = tmp_path / "elsewhere.txt"
    other.write_text("a\nb\n")
    os.link(other, tmp_path / "labels.txt")
    _labels_beside_config(tmp_path, LABELS)
    assert (tmp_path / "labels.txt").read_text().split() == LABELS
    assert other.read_text() == "a\nb\n"
    assert (tmp_path / "labels.txt").stat().st_mode & 0o777 == 0o644
