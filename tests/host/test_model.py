"""Model behaviour that export and the device runtime rely on."""
import pytest
import torch

from common.errors import ToolkitError
from train.model import (
    ClassifierConfig,
    DecoderConfig,
    DecoderLM,
    EncoderClassifier,
    config_from_dict,
    config_to_dict,
)

TINY_DEC = DecoderConfig(vocab_size=97, max_seq_len=48, d_model=32, n_layers=2, n_heads=4, d_ff=64)
TINY_CLS = ClassifierConfig(vocab_size=97, max_seq_len=48, d_model=32, n_layers=2, n_heads=4,
                            d_ff=64, dropout=0.0)


def _decoder():
    torch.manual_seed(0)
    return DecoderLM(TINY_DEC).eval()


def test_shapes():
    torch.manual_seed(0)
    clf = EncoderClassifier(TINY_CLS).eval()
    assert clf(torch.randint(0, 97, (3, 11)), torch.ones(3, 11)).shape == (3, 2)
    logits, keys, values = _decoder()(torch.randint(0, 97, (2, 9)))
    assert logits.shape == (2, 9, 97)
    assert len(keys) == len(values) == 2
    assert keys[0].shape == values[1].shape == (9, 2, 32)  # (new, batch, kv_dim) position-major


@pytest.mark.parametrize("pooling,ngram_width", [("mean", 0), ("cls", 0), ("meanmax", 0),
                                                 ("meanmax", 3), ("mean", 5)])
def test_padding_does_not_change_the_prediction(pooling, ngram_width):
    torch.manual_seed(0)
    cfg = config_from_dict({**config_to_dict(TINY_CLS), "pooling": pooling,
                            "ngram_width": ngram_width})
    clf = EncoderClassifier(cfg).eval()
    if ngram_width:
        torch.nn.init.normal_(clf.ngram.weight, std=0.1)  # a trained one is not zero
    ids = torch.randint(3, 97, (1, 13))
    plain = clf(ids, torch.ones(1, 13))
    padded_ids = torch.cat([ids, torch.zeros(1, 20, dtype=torch.long)], dim=1)
    padded_mask = torch.cat([torch.ones(1, 13), torch.zeros(1, 20)], dim=1)
    torch.testing.assert_close(clf(padded_ids, padded_mask), plain, atol=1e-5, rtol=1e-5)


def test_changing_a_later_token_leaves_earlier_logits_unchanged():
    model = _decoder()
    ids = torch.randint(0, 97, (1, 20))
    changed = ids.clone()
    changed[0, 12] = (changed[0, 12] + 1) % 97
    a, _, _ = model(ids)
    b, _, _ = model(changed)
    torch.testing.assert_close(a[:, :12], b[:, :12])
    assert not torch.allclose(a[:, 12:], b[:, 12:])


def test_cached_step_by_step_logits_equal_full_forward():
    model = _decoder()
    ids = torch.randint(0, 97, (2, 30))
    full, _, _ = model(ids)
    logits, keys, values = model(ids[:, :7])  # prefill
    steps = [logits]
    for t in range(7, 30):  # decode one position at a time, appending to the cache
        logits, new_k, new_v = model(ids[:, t:t + 1], past_keys=keys, past_values=values)
        keys = [torch.cat([k, nk]) for k, nk in zip(keys, new_k)]
        values = [torch.cat([v, nv]) for v, nv in zip(values, new_v)]
        steps.append(logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


def test_left_padding_with_mask_and_positions_matches_unpadded():
    model = _decoder()
    ids = torch.randint(3, 97, (1, 10))
    plain, _, _ = model(ids)
    padded = torch.cat([torch.zeros(1, 4, dtype=torch.long), ids], dim=1)
    mask = torch.cat([torch.zeros(1, 4), torch.ones(1, 10)], dim=1)
    positions = torch.cat([torch.zeros(1, 4, dtype=torch.long), torch.arange(10)[None]], dim=1)
    out, _, _ = model(padded, position_ids=positions, attention_mask=mask)
    torch.testing.assert_close(out[:, 4:], plain, atol=1e-5, rtol=1e-5)


def test_config_round_trip_and_errors():
    assert config_from_dict(config_to_dict(TINY_DEC)) == TINY_DEC
    with pytest.raises(ToolkitError, match="unknown keys"):
        config_from_dict({**config_to_dict(TINY_CLS), "bogus": 1})
    with pytest.raises(ToolkitError, match="model kind"):
        config_from_dict({"kind": "vision"})
    with pytest.raises(ToolkitError, match="not divisible"):
        DecoderConfig(d_model=30, n_heads=4)


def test_continuous_features_are_projected_instead_of_embedded():
    torch.manual_seed(0)
    cfg = config_from_dict({**config_to_dict(TINY_CLS), "feature_dim": 5})
    clf = EncoderClassifier(cfg).eval()
    features = torch.randn(2, 9, 5)
    plain = clf(features, torch.ones(2, 9))
    assert plain.shape == (2, 2)
    padded = torch.cat([features, torch.randn(2, 4, 5)], dim=1)  # garbage in padded positions
    mask = torch.cat([torch.ones(2, 9), torch.zeros(2, 4)], dim=1)
    torch.testing.assert_close(clf(padded, mask), plain, atol=1e-5, rtol=1e-5)


def test_ngram_convolution_sees_neighbours_only_within_its_width():
    torch.manual_seed(0)
    cfg = config_from_dict({**config_to_dict(TINY_CLS), "ngram_width": 3, "n_layers": 1})
    clf = EncoderClassifier(cfg).eval()
    assert clf.ngram.weight.abs().sum() == 0  # starts as the plain encoder
    torch.nn.init.normal_(clf.ngram.weight)
    ids = torch.randint(3, 97, (1, 12))
    changed = ids.clone()
    changed[0, 5] = (ids[0, 5] + 1) % 94 + 3
    with torch.no_grad():
        x_ids = clf.embed(ids) + clf.pos.weight[:12]
        x_changed = clf.embed(changed) + clf.pos.weight[:12]
        mixed = [x + clf.ngram(x.transpose(1, 2)).transpose(1, 2) for x in (x_ids, x_changed)]
    moved = (mixed[0] - mixed[1]).abs().amax(dim=-1)[0]  # (seq,)
    assert (moved[4:7] > 0).all() and (moved[:4] == 0).all() and (moved[7:] == 0).all()
    with pytest.raises(ToolkitError, match="ngram_width=2"):
        config_from_dict({**config_to_dict(TINY_CLS), "ngram_width": 2})
