"""Masked-LM self-pretraining: the masking recipe, learning, and fine-tuning from its weights."""
import random

import pytest
import torch
from click.testing import CliRunner
from test_train_cli import TINY

from common.errors import ToolkitError
from train import imdb
from train.checkpoint import load_checkpoint
from train.model import ClassifierConfig, build_model
from train.pretrain import IGNORE, MaskedLmTask, mask_tokens
from train.trainer import TrainConfig, train

CFG = ClassifierConfig(vocab_size=40, max_seq_len=32, d_model=16, n_layers=1, n_heads=2,
                       d_ff=32, dropout=0.0)
QUIET = lambda msg: None  # noqa: E731


def _sequences(n, seed=0):
    """Sequences with structure to learn: each repeats one token, so the unmasked tokens of a
    sequence tell what its masked ones are."""
    rng = random.Random(seed)
    return [[rng.randrange(3, 40)] * rng.randint(6, 24) for _ in range(n)]


def test_masking_picks_only_real_tokens_at_the_rate_and_targets_only_those():
    ids = torch.randint(3, 40, (64, 50))
    mask = torch.ones_like(ids)
    mask[:, 30:] = 0  # padding
    gen = torch.Generator().manual_seed(0)
    inputs, targets = mask_tokens(ids, mask, 0.2, mask_id=0, vocab_size=40, generator=gen)
    picked = targets != IGNORE
    assert not picked[:, 30:].any()
    assert torch.equal(targets[picked], ids[picked])
    assert 0.17 < picked[:, :30].float().mean().item() < 0.23
    assert torch.equal(inputs[~picked], ids[~picked])
    masked_share = (inputs[picked] == 0).float().mean().item()
    assert 0.72 < masked_share < 0.88  # 80% become the mask token, the rest random or kept


def test_pretraining_learns_the_structure_of_the_text(tmp_path):
    seqs = _sequences(240)
    task = MaskedLmTask(seqs[:200], seqs[200:], pad_id=0, vocab_size=40, mask_rate=0.2)
    before = task.evaluate(build_model(CFG))["loss"]
    result = train(task, CFG, TrainConfig(epochs=4, batch_size=8, lr=1e-2, warmup_steps=5,
                                          threads=1), tmp_path, log=QUIET)
    after = result["history"][-1]["val_loss"]
    assert before > 3.0 and after < 0.5 * before  # uniform over 40 tokens is ln 40 = 3.7


def test_fine_tuning_starts_from_the_pretrained_weights(tmp_path):
    seqs = _sequences(60)
    pre = MaskedLmTask(seqs[:50], seqs[50:], 0, 40, 0.2)
    train(pre, CFG, TrainConfig(epochs=1, batch_size=8, threads=1), tmp_path / "pre", log=QUIET)
    task = imdb.ImdbTask(seqs[:50], [s[0] % 2 for s in seqs[:50]], seqs[50:],
                         [s[0] % 2 for s in seqs[50:]], pad_id=0)
    frozen = TrainConfig(epochs=1, batch_size=8, lr=0.0, threads=1)  # lr 0: weights stay put
    train(task, CFG, frozen, tmp_path / "ft", log=QUIET, init_from=tmp_path / "pre" / "last.pt")
    pretrained = load_checkpoint(tmp_path / "pre" / "last.pt").model.state_dict()
    tuned = load_checkpoint(tmp_path / "ft" / "last.pt").model.state_dict()
    assert all(torch.equal(pretrained[name], tuned[name]) for name in pretrained)


def test_init_from_a_checkpoint_of_another_config_is_refused(tmp_path):
    seqs = _sequences(30)
    pre = MaskedLmTask(seqs[:20], seqs[20:], 0, 40, 0.2)
    train(pre, CFG, TrainConfig(epochs=1, batch_size=8, threads=1), tmp_path / "pre", log=QUIET)
    task = MaskedLmTask(seqs[:20], seqs[20:], 0, 48, 0.2)
    other = ClassifierConfig(**{**CFG.__dict__, "vocab_size": 48})
    with pytest.raises(ToolkitError, match="another model config"):
        train(task, other, TrainConfig(epochs=1, batch_size=8, threads=1), tmp_path / "ft",
              log=QUIET, init_from=tmp_path / "pre" / "last.pt")


def test_imdb_cli_pretrains_then_fine_tunes(tmp_path):
    out = tmp_path / "imdb"
    result = CliRunner().invoke(imdb.main, ["--data", "sample", "--out-dir", str(out), "--limit",
                                            "200", "--val-size", "40", "--pretrain-epochs", "1",
                                            *TINY])
    assert result.exit_code == 0, result.output
    assert "pretraining" in result.output and "initialised from" in result.output
    assert load_checkpoint(out / "pretrain" / "last.pt").state["train_config"]["mask_rate"] == 0.15
    assert load_checkpoint(out / "best.pt").state["train_config"]["pretrain_epochs"] == 1
