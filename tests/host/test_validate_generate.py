"""train.validate and train.generate on the tiny conftest checkpoints, and the training plots."""
from __future__ import annotations

import json
import math

import pytest
import torch
from click.testing import CliRunner

from common.errors import ToolkitError
from train import generate as gen
from train import validate
from train.model import DecoderConfig, DecoderLM

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_cli(command, args):
    return CliRunner().invoke(command, [str(a) for a in args])


def test_validate_classifier_writes_metrics_and_plots(tiny_classifier_checkpoint, tmp_path):
    result = run_cli(validate.main, ["--checkpoint", tiny_classifier_checkpoint, "--split", "test",
                                     "--data", "sample", "--max-samples", 64,
                                     "--output-dir", tmp_path])
    assert result.exit_code == 0, result.output
    assert "SAMPLE data" in result.output and "accuracy" in result.output
    metrics = json.loads((tmp_path / "test_metrics.json").read_text())
    assert metrics["kind"] == "classifier" and metrics["n_samples"] == 64
    assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["loss"] > 0
    cm = metrics["confusion_matrix"]
    assert sum(map(sum, cm)) == 64
    assert metrics["true_counts"] == [sum(row) for row in cm]
    assert metrics["pred_counts"] == [sum(col) for col in zip(*cm)]
    assert metrics["accuracy"] == pytest.approx((cm[0][0] + cm[1][1]) / 64)
    assert set(metrics["per_class"]) == {"negative", "positive"}
    for row in [*metrics["per_class"].values(), metrics["macro"]]:
        assert all(0.0 <= row[k] <= 1.0 for k in ("precision", "recall", "f1"))
    for name in ("test_confusion_matrix.png", "test_class_distribution.png"):
        assert (tmp_path / name).read_bytes().startswith(PNG_MAGIC)


def test_validate_decoder_reports_lm_metrics(tiny_decoder_checkpoint, tmp_path):
    result = run_cli(validate.main, ["--checkpoint", tiny_decoder_checkpoint, "--data", "sample",
                                     "--max-samples", 20, "--seq-len", 32,
                                     "--output-dir", tmp_path])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "valid_metrics.json").read_text())
    assert metrics["split"] == "valid" and metrics["n_samples"] == 20
    # an untrained model with small weights predicts nearly uniformly over its 300 tokens
    assert metrics["loss"] == pytest.approx(math.log(300), abs=0.3)
    assert metrics["perplexity"] == pytest.approx(math.exp(metrics["loss"]), rel=1e-6)
    assert metrics["bits_per_byte"] > 0 and metrics["tokens"] % 32 == 0


def test_validate_rejects_a_split_of_the_other_model(tiny_decoder_checkpoint, tmp_path):
    result = run_cli(validate.main, ["--checkpoint", tiny_decoder_checkpoint, "--split", "test",
                                     "--data", "sample", "--output-dir", tmp_path])
    assert result.exit_code == 2
    assert "expected one of train, valid" in result.output


@pytest.fixture(scope="module")
def decoder(tiny_decoder_checkpoint):
    from train.checkpoint import load_checkpoint

    return load_checkpoint(tiny_decoder_checkpoint, kind="decoder").model


@pytest.fixture(scope="module")
def spread_decoder():
    """A decoder with large random weights: logits far apart, so argmax ties cannot flip."""
    torch.manual_seed(1)
    model = DecoderLM(DecoderConfig(vocab_size=300, max_seq_len=64, d_model=32, n_layers=2,
                                    n_heads=4, d_ff=64)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(std=0.3)
    return model


PROMPT = [1, 40, 41, 42, 43]


def test_greedy_is_deterministic_and_matches_full_recompute(spread_decoder):
    first = gen.generate(spread_decoder, PROMPT, 40)
    assert first == gen.generate(spread_decoder, PROMPT, 40)
    assert len(first) == 40 and len(set(first)) > 1
    assert first == gen.generate_no_cache(spread_decoder, PROMPT, 40)


def test_seeded_sampling_is_reproducible(decoder):
    kwargs = dict(temperature=1.0, top_k=50, top_p=0.9)
    a = gen.generate(decoder, PROMPT, 30, seed=7, **kwargs)
    assert a == gen.generate(decoder, PROMPT, 30, seed=7, **kwargs)
    assert a != gen.generate(decoder, PROMPT, 30, seed=8, **kwargs)


def test_top_k_one_and_tiny_top_p_reduce_to_greedy(spread_decoder):
    greedy = gen.generate(spread_decoder, PROMPT, 20)
    assert gen.generate(spread_decoder, PROMPT, 20, temperature=1.5, top_k=1, seed=3) == greedy
    assert gen.generate(spread_decoder, PROMPT, 20, temperature=1.5, top_p=1e-6, seed=3) == greedy


def test_stops_at_eos_without_returning_it(spread_decoder):
    greedy = gen.generate(spread_decoder, PROMPT, 20)
    eos_id = greedy[5]
    streamed = []
    out = gen.generate_with_reason(spread_decoder, PROMPT, 20, eos_id=eos_id,
                                   on_token=streamed.append)
    assert out.tokens == greedy[:greedy.index(eos_id)] == streamed
    assert out.stop_reason == gen.STOP_EOS
    assert gen.generate_no_cache(spread_decoder, PROMPT, 20, eos_id=eos_id) == out.tokens


def test_stops_at_max_new_tokens_and_context_limit(decoder):
    assert len(gen.generate(decoder, PROMPT, 7)) == 7
    assert gen.generate(decoder, PROMPT, 0) == []
    long_prompt = [1] + [50] * 59  # 60 of the 64 positions
    out = gen.generate_with_reason(decoder, long_prompt, 100)
    assert len(out.tokens) == 4 and out.stop_reason == gen.STOP_CONTEXT
    assert len(gen.generate_no_cache(decoder, long_prompt, 100)) == 4
    assert gen.generate(decoder, [1] * 64, 10) == []
    with pytest.raises(ToolkitError, match="65 tokens; the model's context is 64"):
        gen.generate(decoder, [1] * 65, 10)


@pytest.mark.parametrize("kwargs, message", [
    (dict(temperature=-1.0), "temperature"),
    (dict(top_k=-1), "top_k"),
    (dict(top_p=0.0), "top_p"),
    (dict(max_new_tokens=-1), "max_new_tokens"),
])
def test_bad_sampling_arguments_are_refused(decoder, kwargs, message):
    args = {"max_new_tokens": 5, **kwargs}
    with pytest.raises(ToolkitError, match=message):
        gen.generate(decoder, PROMPT, **args)


def test_generate_cli_streams_the_same_text_as_no_stream(tiny_decoder_checkpoint):
    args = ["--checkpoint", tiny_decoder_checkpoint, "--prompt", "the cat sat",
            "--max-new-tokens", 12]
    streamed = run_cli(gen.main, args + ["--stream"])
    whole = run_cli(gen.main, args + ["--no-stream"])
    assert streamed.exit_code == 0 and whole.exit_code == 0, streamed.output + whole.output
    assert streamed.stdout == whole.stdout
    assert streamed.stdout.startswith(" the cat sat")
    assert "12 tokens" in streamed.stderr and "stopped at max_new_tokens" in streamed.stderr


def test_generate_cli_refuses_a_classifier(tiny_classifier_checkpoint):
    result = run_cli(gen.main, ["--checkpoint", tiny_classifier_checkpoint, "--prompt", "hi"])
    assert result.exit_code == 2
    assert "holds a classifier model; expected a decoder" in result.output


def test_plot_history_writes_curves(tmp_path):
    from train.plots import plot_history

    rows = [{"epoch": e, "step": 10 * e, "train_loss": 1.0 / e, "val_loss": 1.2 / e,
             "val_accuracy": 0.5 + 0.1 * e, "lr": 1e-3, "elapsed_s": 1.0 * e} for e in (1, 2, 3)]
    written = plot_history({"kind": "classifier", "epochs": rows}, tmp_path / "cls")
    assert [p.name for p in written] == ["loss_curve.png", "accuracy_curve.png"]
    assert all(p.read_bytes().startswith(PNG_MAGIC) for p in written)
    for row in rows:
        del row["val_accuracy"]
    written = plot_history({"kind": "decoder", "epochs": rows}, tmp_path / "lm")
    assert [p.name for p in written] == ["loss_curve.png"]
    with pytest.raises(ToolkitError, match='no "epochs" list'):
        plot_history({"kind": "decoder", "epochs": []}, tmp_path)
