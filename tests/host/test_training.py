"""Training loop: exact resume, checkpoint errors, tokenizer round trip."""
import random

import pytest
import torch
from tiny_data import tiny_texts

from common.errors import ToolkitError
from train.checkpoint import load_checkpoint, save_checkpoint
from train.imdb import ImdbTask
from train.model import ClassifierConfig, DecoderConfig, build_model
from train.tokenizer import load_tokenizer, save_tokenizer, special_ids, train_bpe
from train.trainer import TrainConfig, mixed_precision_dtype, train

CFG = ClassifierConfig(vocab_size=50, max_seq_len=32, d_model=16, n_layers=1, n_heads=2,
                       d_ff=32, dropout=0.2)


def _task(seed=0):
    rng = random.Random(seed)
    seqs = [[rng.randrange(3, 50) for _ in range(rng.randint(2, 20))] for _ in range(40)]
    labels = [int(sum(s) % 2) for s in seqs]
    return ImdbTask(seqs[:30], labels[:30], seqs[30:], labels[30:], pad_id=0, word_dropout=0.2)


def _weights(path):
    return load_checkpoint(path).model.state_dict()


@pytest.mark.parametrize("cpu_bf16", [False, True])
def test_resumed_run_ends_with_the_weights_of_an_uninterrupted_run(tmp_path, cpu_bf16):
    cfg = TrainConfig(epochs=2, batch_size=4, lr=1e-2, warmup_steps=2, threads=1,
                      cpu_bf16=cpu_bf16)
    steps_per_epoch = _task().steps_per_epoch(4)  # 8: 30 examples in batches of 4
    quiet = lambda msg: None
    full = train(_task(), CFG, cfg, tmp_path / "full", log=quiet)
    half = steps_per_epoch + 3  # stop mid-epoch, the hardest place to resume
    first_half = TrainConfig(**{**cfg.__dict__, "max_steps": half})
    train(_task(), CFG, first_half, tmp_path / "split", log=quiet)
    assert load_checkpoint(tmp_path / "split" / "last.pt").state["step"] == half
    resumed = train(_task(), CFG, cfg, tmp_path / "split", resume=True, log=quiet)
    assert full["steps"] == resumed["steps"] == 2 * steps_per_epoch
    a, b = _weights(tmp_path / "full" / "last.pt"), _weights(tmp_path / "split" / "last.pt")
    for name in a:
        assert torch.equal(a[name], b[name]), name
    accuracies = [[r["val_accuracy"] for r in run["history"]] for run in (full, resumed)]
    assert accuracies[0] == accuracies[1]


def test_best_checkpoint_holds_the_best_epoch(tmp_path):
    result = train(_task(), CFG, TrainConfig(epochs=3, batch_size=4, threads=1), tmp_path,
                   log=lambda m: None)
    best = load_checkpoint(tmp_path / "best.pt")
    assert best.state["metrics"]["accuracy"] == max(r["val_accuracy"] for r in result["history"])
    assert {"optimizer", "scheduler", "rng", "step"} <= set(best.state)


def test_corrupt_truncated_and_foreign_checkpoints_give_one_line_errors(tmp_path):
    path = save_checkpoint(tmp_path / "ok.pt", CFG, build_model(CFG))
    data = path.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    for name, pattern in [("trunc.pt", "corrupt"), ("junk.pt", "corrupt"),
                          ("foreign.pt", "not a checkpoint"), ("missing.pt", "not found")]:
        with pytest.raises(ToolkitError, match=pattern) as err:
            load_checkpoint(tmp_path / name)
        assert "\n" not in str(err.value) and name in str(err.value)
    with pytest.raises(ToolkitError, match="expected a decoder"):
        load_checkpoint(path, kind="decoder")


def test_checkpoint_with_weights_of_another_config_is_refused(tmp_path):
    other = DecoderConfig(vocab_size=50, max_seq_len=32, d_model=16, n_layers=1, n_heads=2, d_ff=32)
    state = torch.load(save_checkpoint(tmp_path / "a.pt", CFG, build_model(CFG)), weights_only=True)
    state["model"] = build_model(other).state_dict()
    torch.save(state, tmp_path / "b.pt")
    with pytest.raises(ToolkitError, match="do not match"):
        load_checkpoint(tmp_path / "b.pt")


def test_tokenizer_round_trip_and_special_ids(tmp_path):
    tok = train_bpe(tiny_texts(), vocab_size=300)
    path = save_tokenizer(tok, tmp_path / "tokenizer.json")
    loaded = load_tokenizer(path)
    text = "the happy cat sat on a mat, and the dog ran!"
    assert loaded.decode(loaded.encode(text).ids).strip() == text
    assert loaded.encode("zebra quokka").ids  # unseen words still encode (byte level)
    assert special_ids(loaded) == {"pad_id": 0, "eos_id": 1, "cls_id": 2}
    with pytest.raises(ToolkitError, match="not found"):
        load_tokenizer(tmp_path / "nope.json")


def test_cpu_bf16_is_used_only_where_asked_and_native():
    cpu = torch.device("cpu")
    assert mixed_precision_dtype(cpu, TrainConfig(cpu_bf16=False)) is None
    native = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    expected = torch.bfloat16 if native else None
    assert mixed_precision_dtype(cpu, TrainConfig(cpu_bf16=True)) == expected


def test_bf16_training_lowers_the_loss(tmp_path):
    cfg = TrainConfig(epochs=3, batch_size=4, lr=1e-2, warmup_steps=2, threads=1, cpu_bf16=True)
    result = train(_task(), CFG, cfg, tmp_path, log=lambda m: None)
    losses = [row["train_loss"] for row in result["history"]]
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("pooling", ["mean", "meanmax", "cls"])
def test_removing_hidden_words_computes_what_masking_them_does(pooling):
    from train.batching import pad_batch
    from train.imdb import drop_words, remove_hidden_tokens

    torch.manual_seed(0)
    cfg = ClassifierConfig(vocab_size=50, max_seq_len=32, d_model=16, n_layers=2, n_heads=2,
                           d_ff=32, dropout=0.0, pooling=pooling)
    model = build_model(cfg).eval()
    rng = random.Random(0)
    seqs = [[rng.randrange(3, 50) for _ in range(n)] for n in (25, 9, 3, 17)]
    ids, mask = pad_batch(seqs, 0)
    hidden = drop_words(mask, 0.6)
    short_ids, short_mask, positions = remove_hidden_tokens(ids, hidden)
    assert short_ids.shape[1] == int(hidden.sum(dim=1).max()) < ids.shape[1]
    for row in range(len(seqs)):  # the kept tokens, in order, at their original positions
        kept = hidden[row].nonzero().flatten()
        n = len(kept)
        assert positions[row, :n].tolist() == kept.tolist()
        assert short_ids[row, :n].tolist() == ids[row, kept].tolist()
        assert short_mask[row].tolist() == [1] * n + [0] * (short_ids.shape[1] - n)
    torch.testing.assert_close(model(short_ids, short_mask, positions), model(ids, hidden),
                               atol=1e-5, rtol=1e-5)
