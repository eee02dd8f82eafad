"""Issue 23's hygiene on tiny random checkpoints: NaN/Inf fails parity (HF and own models), a
corrupt weight file is one line naming it, an unwritable --output is refused before any work,
exported files honour the umask, a failed parity names the output (not a deleted temporary),
and an HF export reports its parity as against transformers."""
from __future__ import annotations

import os
import stat

import numpy as np
import pytest

pytest.importorskip("transformers")
import torch  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from hf_tiny import make_folder  # noqa: E402
from make_fixtures import tiny_checkpoint  # noqa: E402

from common.errors import ToolkitError  # noqa: E402
from export import hf as export_hf_cli  # noqa: E402
from export.hf import describe_hf_export, export_hf  # noqa: E402
from export.onnx_model import export_checkpoint  # noqa: E402
from export.parity import _summarise, max_abs_diff, worst_of  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _one_line_cli_error(args):
    result = CliRunner().invoke(export_hf_cli.main, args)
    assert result.exit_code == 2, result.output
    # transformers' "Loading weights" progress bar is not part of the error
    lines = [line for line in result.output.splitlines() if line.strip() and "it/s]" not in line]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def _poison_safetensors(folder, value=float("nan")):
    """One weight of the folder's model.safetensors set to ``value``; -> the tensor's name."""
    from safetensors.torch import load_file, save_file

    path = folder / "model.safetensors"
    tensors = load_file(str(path))
    name = next(n for n in sorted(tensors) if "att" in n and n.endswith("weight"))
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[3] = value
    save_file(tensors, str(path), metadata={"format": "pt"})
    return name


# -- 1. NaN / Inf anywhere in a comparison is a failure ---------------------------------------
def test_comparisons_treat_nan_and_inf_as_failures():
    ok = np.ones((2, 3), np.float32)
    assert max_abs_diff(ok, ok + 1e-6) < 1e-5
    for bad in (np.nan, np.inf):
        poisoned = ok.copy()
        poisoned[1, 2] = bad
        assert np.isnan(max_abs_diff(poisoned, ok)) and np.isnan(max_abs_diff(ok, poisoned))
        assert np.isnan(max_abs_diff(poisoned, poisoned))  # equal NaN/Inf on both sides too
    assert np.isnan(worst_of([0.1, float("nan"), 0.2])) and np.isnan(worst_of([float("nan"), 1]))
    cases = [{"source": "random", "batch": 1, "max_abs_diff": 1e-6},
             {"source": "random", "batch": 3, "max_abs_diff": float("nan")}]
    with pytest.raises(ToolkitError, match=r"hold NaN/Inf .* at source=random, batch=3"):
        _summarise(cases, 1e-4, "m.onnx", "logits")


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_hf_model_with_a_nan_weight_fails_export(tmp_path, arch):
    folder = make_folder(tmp_path, arch)
    name = _poison_safetensors(folder)
    out = tmp_path / "models" / "m.onnx"
    line = _one_line_cli_error(["--model", str(folder), "--output", str(out), "--max-batch", "2",
                                "--greedy-tokens", "4"])
    assert "NaN/Inf" in line and f"1 NaN/Inf values, first in {name}" in line, line
    assert f"{out} (not written)" in line and "hf-export-" not in line  # not the deleted temp
    assert not out.exists()


def test_own_checkpoint_with_a_nan_weight_fails_export(tmp_path):
    from train.checkpoint import load_checkpoint, save_checkpoint

    for kind in ("classifier", "decoder"):
        path = tiny_checkpoint(tmp_path / kind, kind)
        ckpt = load_checkpoint(path)
        with torch.no_grad():
            next(p for n, p in ckpt.model.named_parameters() if "weight" in n).view(-1)[0] = \
                float("inf")
        save_checkpoint(path, ckpt.config, ckpt.model)
        out = tmp_path / f"{kind}.onnx"
        with pytest.raises(ToolkitError, match=r"NaN/Inf .*weights hold 1 NaN/Inf") as err:
            export_checkpoint(path, out, max_batch=2, greedy_tokens=4)
        assert f"{out} (not written)" in str(err.value) and "onnx-export-" not in str(err.value)
        assert not out.exists()


def test_greedy_checks_fail_when_both_sides_are_nan(tmp_path):
    """Exported without parity, a NaN model's graph and the model agree on argmax-of-NaN
    tokens: the greedy comparisons must still fail, for our decoders and HF ones."""
    from export.hf_load import load_hf
    from export.hf_parity import check_hf_greedy
    from export.parity import check_greedy_decoding, ort_session
    from train.checkpoint import load_checkpoint, save_checkpoint

    path = tiny_checkpoint(tmp_path / "own", "decoder")
    ckpt = load_checkpoint(path)
    with torch.no_grad():
        ckpt.model.state_dict()[next(iter(ckpt.model.state_dict()))].view(-1)[0] = float("nan")
    save_checkpoint(path, ckpt.config, ckpt.model)
    own = export_checkpoint(path, tmp_path / "own.onnx", max_batch=1, check_parity=False)
    with pytest.raises(ToolkitError, match="greedy step 0: logits hold NaN/Inf"):
        check_greedy_decoding(load_checkpoint(path).model, ort_session(own), [5, 6, 7], 4, 5e-3,
                              own)

    folder = make_folder(tmp_path, "llama")
    _poison_safetensors(folder)
    hf = export_hf(folder, tmp_path / "hf.onnx", max_batch=1, check_parity=False)
    with pytest.raises(ToolkitError, match="greedy step 0: logits hold NaN/Inf .* weights hold"):
        check_hf_greedy(load_hf(folder).model, ort_session(hf), [5, 6, 7], 4, 64, 5e-3, hf)


# -- 2. corrupt weight files are one line naming the file -------------------------------------
@pytest.mark.parametrize("damage", ["truncated", "random", "empty"])
def test_corrupt_safetensors_is_one_line(tmp_path, damage):
    folder = make_folder(tmp_path, "bert")
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes({"truncated": data[: len(data) // 2], "random": os.urandom(4096),
                         "empty": b""}[damage])
    line = _one_line_cli_error(["--model", str(folder), "--output", str(tmp_path / "m.onnx")])
    assert f"weight file {weights}" in line, line


@pytest.mark.parametrize("damage", ["truncated", "random"])
def test_corrupt_pytorch_model_bin_is_one_line(tmp_path, damage):
    folder = make_folder(tmp_path, "bert")
    from safetensors.torch import load_file

    state = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    weights = folder / "pytorch_model.bin"
    torch.save(state, weights)
    data = weights.read_bytes()
    weights.write_bytes(data[:-100] if damage == "truncated" else os.urandom(4096))
    line = _one_line_cli_error(["--model", str(folder), "--output", str(tmp_path / "m.onnx")])
    assert str(weights) in line, line
    torch.save(state, weights)  # the intact .bin still exports
    export_hf(folder, tmp_path / "ok.onnx", max_batch=2, check_parity=False)


# -- 3. --output checked first; files with the umask's permissions ----------------------------
def test_unusable_output_folder_is_refused_before_loading(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    missing_model = tmp_path / "no_such_folder"  # loading it first would be another error
    line = _one_line_cli_error(["--model", str(missing_model), "--output",
                                str(blocker / "m.onnx")])
    assert "cannot create folder" in line and str(blocker) in line


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into a read-only folder")
def test_read_only_output_folder_is_refused_before_loading(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    os.chmod(locked, 0o555)
    try:
        line = _one_line_cli_error(["--model", str(tmp_path / "nothing"), "--output",
                                    str(locked / "m.onnx")])
        assert f"cannot write to folder {locked}" in line
    finally:
        os.chmod(locked, 0o755)


def test_exported_files_honour_the_umask_and_parity_names_transformers(tmp_path):
    folder = make_folder(tmp_path, "distilbert")
    saved = os.umask(0o022)
    try:
        out = export_hf(folder, tmp_path / "models" / "m.onnx", max_batch=2)
    finally:
        os.umask(saved)
    for path in (out, out.with_name("m.onnx.json"), out.with_name("m.tokenizer.json")):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    text = describe_hf_export(out)
    assert "parity vs transformers" in text and "PyTorch" not in text, text
    from export.onnx_model import _describe_parity

    decoder = {"reference": "transformers", "tolerance": 5e-3, "max_abs_diff": 1e-6,
               "seconds": 1.0, "cases": [], "greedy": {"tokens": 100, "prompt_tokens": 8,
                                                         "max_abs_diff": 1e-6}}
    assert "prompt equal transformers' generate;" in "\n".join(_describe_parity(decoder))
    own = {k: v for k, v in decoder.items() if k != "reference"}
    assert "parity vs PyTorch" in _describe_parity(own)[0]
