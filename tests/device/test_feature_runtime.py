"""The feature-classifier runtime without torch: the file reader's one-line errors, batching and
padding under the mask, the committed tiny feature model against PyTorch's reference, the
calibration set of feature windows, and classify --features / bench end to end on ONNX
Runtime (tests/fixtures/tiny_features.*, made by make_feature_fixture.py)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from common.errors import ToolkitError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
LABELS = ["sine", "square", "sawtooth"]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny_features")
    for suffix in (".onnx", ".onnx.json", ".npz", ".reference.json"):
        shutil.copy(FIXTURES / f"tiny_features{suffix}", folder / f"tiny_features{suffix}")
    return folder / "tiny_features.onnx"


@pytest.fixture
def classifier(model):
    from runtime.features import open_feature_classifier

    session, classifier = open_feature_classifier(str(model), batch_size=4)
    yield classifier
    classifier.close()
    session.close()


def _npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def _good(n=3, seq=5, f=3):
    return np.ones((n, seq, f), np.float32)


@pytest.mark.parametrize("arrays, message", [
    ({"feats": _good()}, "no 'features' array (it has ['feats'])"),
    ({"features": np.ones((3, 5), np.float32)}, "features has shape [3, 5]; expected (N, seq, F)"),
    ({"features": _good(f=4)}, "features has F=4 values per step; the model takes F=3"),
    ({"features": _good(seq=60)}, "windows of 60 steps; the model takes at most 48"),
    ({"features": _good(), "lengths": np.array([5, 0, 2])}, "lengths[1] = 0; expected 1..5"),
    ({"features": _good(), "lengths": np.array([5, 2])}, "lengths is int64 [2]; expected (3,)"),
    ({"features": _good(), "labels": np.array(["sine", "cosine", "sine"])},
     "unknown labels ['cosine']"),
    ({"features": _good(), "labels": np.array([0, 3, 1])}, "labels[1] = 3; expected 0..2"),
    ({"features": _good(), "labels": np.array([0.5, 1, 1])}, "labels is float64"),
])
def test_reader_refuses_bad_files_in_one_line(classifier, tmp_path, arrays, message):
    path = _npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ToolkitError) as info:
        classifier.read(path)
    text = str(info.value)
    assert "\n" not in text and str(path) in text and message in text


def test_reader_names_the_first_nonfinite_real_step_and_ignores_padding(classifier, tmp_path):
    features = _good()
    features[2, 4, 1] = np.nan  # padding of window 2 (length 3): ignored
    path = _npz(tmp_path / "pad.npz", features=features, lengths=np.array([5, 5, 3]))
    assert len(classifier.read(path)) == 3
    features[1, 2, 0] = np.inf
    path = _npz(tmp_path / "inf.npz", features=features, lengths=np.array([5, 5, 3]))
    with pytest.raises(ToolkitError, match=r"features\[1, 2, 0\] is inf"):
        classifier.read(path)


def test_reader_other_formats(classifier, tmp_path):
    one = tmp_path / "one.npy"
    np.save(one, np.ones((7, 3), np.float32))  # one window (seq, F)
    windows = classifier.read(one)
    assert windows.features.shape == (1, 7, 3) and windows.lengths.tolist() == [7]
    ragged = tmp_path / "ragged.npz"
    np.savez(ragged, features=np.array([np.ones((2, 3)), np.ones((3, 3))], dtype=object))
    with pytest.raises(ToolkitError, match="object array"):
        classifier.read(ragged)
    with pytest.raises(ToolkitError, match="expected a .npz"):
        classifier.read(tmp_path / "x.csv")
    with pytest.raises(ToolkitError, match="not found"):
        classifier.read(tmp_path / "missing.npz")
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"not a zip")
    with pytest.raises(ToolkitError, match="not a readable .npz"):
        classifier.read(broken)


def test_logits_equal_pytorch_alone_and_batched(classifier, model):
    """Each window run alone on its real steps (PyTorch reference) = the runtime batching it
    with longer windows, right-padded under the mask, in batches of 4."""
    windows = classifier.read(model.with_suffix(".npz"))
    want = np.array(json.loads(model.with_suffix(".reference.json").read_text())["logits"])
    got = classifier.logits_for_rows(windows.rows())  # 12 windows: batches of 4
    assert classifier.n_batches == 3
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert np.ptp(want) > 0.05  # the comparison sees values that vary
    alone = np.concatenate([classifier.logits_for_rows([row]) for row in windows.rows()])
    np.testing.assert_allclose(alone, got, atol=1e-5)


def test_padding_content_does_not_leak(classifier, model):
    windows = classifier.read(model.with_suffix(".npz"))
    rows = windows.rows()
    base = classifier.logits_for_rows(rows[:4])
    b = classifier.bindings
    b["features"].view(np.float32)[...] = 1e6  # stale values: the next fill must clear them
    again = classifier.logits_for_rows(rows[:4])
    np.testing.assert_array_equal(base, again)


def test_batch_size_outside_the_profile_is_refused(model):
    from runtime.features import open_feature_classifier

    with pytest.raises(ToolkitError, match="allows 1..8"):
        open_feature_classifier(str(model), batch_size=9)


def test_classify_cli_prints_labels_and_accuracy(model, capsys):
    from runtime.classify import main

    with pytest.raises(SystemExit) as done:
        main(["--model", str(model), "--features", str(model.with_suffix(".npz"))])
    assert done.value.code == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert len(lines) == 12 and all(line.split("\t")[1] in LABELS for line in lines)
    assert "12 windows in 2 batches" in err and "accuracy" in err
    with pytest.raises(SystemExit) as done:
        main(["--model", str(model), "--features", str(model.with_suffix(".npz")), "a text"])
    assert done.value.code == 2


@pytest.mark.parametrize("extra", [[], ["--tokenizer", "any.tokenizer.json"]])
def test_texts_given_to_a_feature_model_name_the_features_option(model, capsys, extra):
    """Not "names no tokenizer" nor a KeyError('input_ids') with --tokenizer."""
    from runtime.classify import main, open_classifier

    with pytest.raises(SystemExit) as done:
        main(["--model", str(model), "a text", *extra])
    assert done.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {model} takes features: use --features FILE", err
    with pytest.raises(ToolkitError, match="takes features: use --features FILE"):
        open_classifier(str(model), tokenizer=(extra or [None, None])[1])


def test_one_softmax_for_texts_and_features():
    import runtime.classify
    import runtime.features

    assert runtime.features.softmax is runtime.classify.softmax
    p = runtime.features.softmax(np.array([[0.0, np.log(3.0)]], np.float32))
    assert np.allclose(p, [[0.25, 0.75]])


def test_feature_calibration_set_round_trip(model, tmp_path):
    from calibration.feature_data import pad_rows, read_feature_file
    from calibration.loader import CalibrationSet, save_calibration_set

    windows = read_feature_file(model.with_suffix(".npz"), 3, LABELS)
    batches = [dict(zip(("features", "attention_mask"), pad_rows(windows.rows()[i:i + 4], 40, 3)))
               for i in (0, 4)]
    path = save_calibration_set(tmp_path / "c.npz", batches, {
        "kind": "feature_classifier", "feature_dim": 3,
        "input_names": ["features", "attention_mask"]})
    calib = CalibrationSet(path)
    assert calib.shapes == [(4, 40), (4, 40)]
    calib.input_metadata = {"features": _Meta((3, 16, 3)), "attention_mask": _Meta((3, 16))}
    fed = list(calib)
    assert len(fed) == 3  # 8 windows cycled into 3 batches of 3
    assert all(f["features"].shape == (3, 16, 3) for f in fed)
    assert all(f["features"].dtype == np.float32 for f in fed)
    first = windows.row(0)[:16]  # the first window, cut to the OPT length
    np.testing.assert_array_equal(fed[0]["features"][0, :len(first)], first)
    with pytest.raises(ToolkitError, match="F=3 features per step"):
        calib.input_metadata = {"features": _Meta((3, 16, 4)),
                                "attention_mask": _Meta((3, 16))}


class _Meta:
    def __init__(self, shape):
        self.shape = shape


def test_bench_feature_model(model):
    from runtime.bench import run_bench

    report = run_bench(str(model), [1, 8], [4], 0, 1, 2, None)
    assert [(r["batch"], r["seq"]) for r in report["results"]] == [(1, 4), (8, 4)]
    with pytest.raises(ToolkitError, match="outside the profiles"):
        run_bench(str(model), [9], [4], 0, 1, 1, None)


def test_engine_profiles_keep_the_feature_dimension_fixed(model):
    from common.artifacts import load_onnx_sidecar
    from engines.profiles import build_profiles, parse_profile_option

    sidecar = load_onnx_sidecar(model)
    (profile,) = build_profiles(sidecar, batch=(1, 4, 8), seq=(1, 32, 48))
    assert profile.shapes["features"] == ((1, 1, 3), (4, 32, 3), (8, 48, 3))
    assert profile.shapes["attention_mask"] == ((1, 1), (4, 32), (8, 48))
    explicit = parse_profile_option("p:features=1x8x4,2x8x4,4x8x4;attention_mask=1x8,2x8,4x8")
    with pytest.raises(ToolkitError, match="fixed at 3"):
        build_profiles(sidecar, explicit=[explicit])
