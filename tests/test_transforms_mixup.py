"""Batch-level intra-modal mixup: the formulas on known tensors (pure mechanics, synthetic batches)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medcoss_monai.transforms import ImageMixup, ImageMixupd, TextMixup, TextMixupd


def _images(b: int = 6) -> torch.Tensor:
    """Each sample constant and distinct (sample i is all i), so a mix reveals lam and the partner."""
    return torch.arange(b, dtype=torch.float32).view(b, 1, 1, 1).expand(b, 3, 4, 5).clone()


def test_image_mixup_formula_per_sample():
    x = _images()
    mix = ImageMixup().set_random_state(0)
    out = mix(x)
    lam, perm = torch.as_tensor(mix.lam, dtype=torch.float32), torch.as_tensor(mix.perm)
    assert sorted(mix.perm.tolist()) == list(range(6)) and len(set(mix.lam.tolist())) == 6
    assert ((lam >= 0) & (lam <= 1)).all()
    expected = lam.view(-1, 1, 1, 1) * x + (1 - lam.view(-1, 1, 1, 1)) * x[perm]
    torch.testing.assert_close(out, expected)
    # each sample stays constant: the blend of two constants
    torch.testing.assert_close(
        out[:, :, 0, 0], (lam * torch.arange(6) + (1 - lam) * perm.float()).view(-1, 1).expand(6, 3)
    )


def test_image_mixup_is_reproducible_and_works_in_3d():
    x = torch.rand(4, 1, 8, 8, 4)
    a = ImageMixup().set_random_state(5)(x)
    b = ImageMixup().set_random_state(5)(x)
    c = ImageMixup().set_random_state(6)(x)
    assert torch.equal(a, b) and not torch.equal(a, c) and a.shape == x.shape


def test_lam_one_is_identity_and_prob_zero_skips():
    x = _images()
    mix = ImageMixup()
    mix.randomize(6)
    mix.lam = np.ones(6)
    torch.testing.assert_close(mix(x, randomize=False), x)
    assert ImageMixup(prob=0.0)(x) is x


def test_image_mixupd_shares_lam_and_perm_across_keys():
    x = _images()
    out = ImageMixupd(["image", "twin"]).set_random_state(1)({"image": x, "twin": x.clone(), "id": "keep"})
    assert torch.equal(out["image"], out["twin"]) and out["id"] == "keep"
    assert not torch.equal(out["image"], x)


def test_image_mixup_needs_a_batch():
    with pytest.raises(ValueError, match="collated batch"):
        ImageMixup()(torch.tensor(1.0))


def _texts(b: int = 8, length: int = 112) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample i: tokens 1000*i + position, padded after a per-sample length; labels on even positions."""
    ids = torch.arange(length).repeat(b, 1) + 1000 * torch.arange(b).view(-1, 1)
    att = (torch.arange(length).repeat(b, 1) < (50 + 5 * torch.arange(b)).view(-1, 1)).long()
    labels = torch.where(torch.arange(length).repeat(b, 1) % 2 == 0, ids, torch.full_like(ids, -100))
    return ids, att, labels


def test_text_mixup_takes_partner_tokens_with_probability_one_minus_r():
    ids, att, labels = _texts()
    mix = TextMixup().set_random_state(0)
    out_ids, out_att, out_labels = mix(ids, att, labels)
    perm = torch.as_tensor(mix.perm)
    take = torch.as_tensor(mix.take_partner)
    # each position comes from the sample itself or from its partner, at the same position
    torch.testing.assert_close(out_ids, torch.where(take, ids[perm], ids))
    torch.testing.assert_close(out_att, torch.where(take, att[perm], att))
    torch.testing.assert_close(out_labels, torch.where(take, labels[perm], labels))
    source = out_ids // 1000  # sample the token came from
    own = source == torch.arange(8).view(-1, 1)
    partner = source == perm.view(-1, 1)
    assert (own | partner).all() and torch.equal(out_ids % 1000, ids % 1000)
    moved = perm != torch.arange(8)
    observed = partner[moved].float().mean().item()
    assert abs(observed - (1 - mix.r)) < 0.05, (observed, mix.r)


def test_text_mixup_ratio_tracks_r_over_many_batches():
    ids, att, _ = _texts(b=4, length=400)
    mix = TextMixup().set_random_state(3)
    rs, shares = [], []
    for _ in range(40):
        mix(ids, att)
        rs.append(mix.r)
        shares.append(float(mix.take_partner.mean()))
    assert np.allclose(shares, 1 - np.array(rs), atol=0.06)
    assert np.std(rs) > 0.2  # r is drawn per batch, over (0, 1)


def test_text_mixupd_mixes_present_keys_alike_and_is_reproducible():
    ids, att, labels = _texts()
    batch = {"input_ids": ids, "attention_mask": att}
    a = TextMixupd().set_random_state(2)(batch)
    b = TextMixupd().set_random_state(2)(batch)
    assert "labels" not in a and torch.equal(a["input_ids"], b["input_ids"])
    # the mask follows the token: a mixed position's mask is its source's mask at that position
    source = a["input_ids"] // 1000
    expected_att = torch.gather(att, 0, source)  # att[source[i, j], j]
    assert torch.equal(a["attention_mask"], expected_att)
    out = TextMixupd().set_random_state(2)({"input_ids": ids, "attention_mask": att, "labels": labels})
    assert torch.equal(out["input_ids"], a["input_ids"])
    assert torch.equal(out["labels"], torch.gather(labels, 0, source))
