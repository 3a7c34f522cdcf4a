"""Batch-level intra-modal mixup: the formulas on known tensors (pure mechanics, synthetic batches)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from medcoss_monai.handlers.intra_modal_mixup import IntraModalMixupHandler
from medcoss_monai.transforms import TextMixup, TextMixupd


class _Engine:
    def __init__(self, output: dict, epoch: int = 1):
        self.state = SimpleNamespace(output=output, epoch=epoch)


def _mix_images(handler: IntraModalMixupHandler, x: torch.Tensor) -> torch.Tensor:
    out = {"batch": {"image": x}, "inputs": {"x": x.clone()}, "pretext": "mae"}
    handler(_Engine(out))
    return out["inputs"]["x"]


def _recover(x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(lam, partner) of each mixed sample, read from the output alone.

    Sample i of the input is constant i in channel 0 and i**2 in channel 1, so a blend
    ``lam * i + (1 - lam) * j`` of two samples fixes ``j`` (the only one consistent in both channels) and ``lam``.
    """
    lams, partners = [], []
    for i, (a, b) in enumerate(x[:, :, 0, 0].double().tolist()):
        assert torch.allclose(x[i, 0], torch.full_like(x[i, 0], a)), "a mixed sample must stay constant"
        if abs(a - i) < 1e-5 and abs(b - i * i) < 1e-5:  # its own partner (MixUp sums lam, 1 - lam in float32)
            lams.append(1.0)
            partners.append(i)
            continue
        fits = []
        for j in set(range(x.shape[0])) - {i}:
            lam = (a - j) / (i - j)
            if abs(lam * i * i + (1 - lam) * j * j - b) < 1e-5 and -1e-6 <= lam <= 1 + 1e-6:
                fits.append((lam, j))
        assert len(fits) == 1, (i, a, b, fits)
        lams.append(fits[0][0])
        partners.append(fits[0][1])
    return np.array(lams), np.array(partners)


def _images(b: int = 8) -> torch.Tensor:
    i = torch.arange(b, dtype=torch.float64).view(b, 1, 1, 1)  # float64: only lam carries float32 error
    return torch.cat([i.expand(b, 1, 4, 5), (i**2).expand(b, 1, 4, 5)], dim=1).clone()


def test_image_mixup_blends_each_sample_with_a_partner_with_its_own_lam():
    handler = IntraModalMixupHandler(seed=0, all_batches=True)
    lam, partner = _recover(_mix_images(handler, _images()))
    assert sorted(partner.tolist()) == list(range(8))  # partners form a permutation of the batch
    moved = partner != np.arange(8)
    assert moved.sum() >= 4 and len(set(np.round(lam[moved], 6))) == moved.sum()  # one lam per sample


def test_image_mixup_draws_anew_per_batch_and_per_epoch_reproducibly():
    x = _images()
    handler = IntraModalMixupHandler(seed=0, all_batches=True)
    handler.set_epoch(_Engine({}, epoch=1))
    first, second = _recover(_mix_images(handler, x)), _recover(_mix_images(handler, x))
    assert not np.array_equal(first[1], second[1]) and not np.allclose(first[0], second[0])
    handler.set_epoch(_Engine({}, epoch=1))
    again = _recover(_mix_images(handler, x))
    np.testing.assert_allclose(again[0], first[0])
    np.testing.assert_array_equal(again[1], first[1])
    handler.set_epoch(_Engine({}, epoch=2))
    assert not np.allclose(_recover(_mix_images(handler, x))[0], first[0])


def test_image_mixup_lam_is_uniform_and_short_batches_mix():
    handler = IntraModalMixupHandler(seed=3, all_batches=True)
    lams = []
    for b in (8, 8, 5) * 40:  # a short last batch must mix too
        lam, partner = _recover(_mix_images(handler, _images(b)))
        lams += lam[partner != np.arange(b)].tolist()
    lams = np.array(lams)
    # U(0, 1): mean 1/2, standard deviation 1/sqrt(12)
    assert abs(lams.mean() - 0.5) < 0.04 and abs(lams.std() - 12**-0.5) < 0.03, (lams.mean(), lams.std())


def test_current_batches_are_not_mixed():
    x = _images()
    out = {"batch": {"image": x}, "inputs": {"x": x.clone()}, "pretext": "mae"}
    IntraModalMixupHandler(seed=0)(_Engine(out))
    assert torch.equal(out["inputs"]["x"], x)


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


def test_text_mixup_draws_a_new_partner_and_choice_per_batch():
    ids, att, _ = _texts()
    mix = TextMixup().set_random_state(0)
    a, _, _ = mix(ids, att)
    perm_a, r_a = mix.perm.copy(), mix.r
    b, _, _ = mix(ids, att)
    assert not np.array_equal(perm_a, mix.perm) and r_a != mix.r and not torch.equal(a, b)


def test_text_mixup_needs_a_batch():
    with pytest.raises(ValueError, match="collated batch"):
        TextMixup()(torch.arange(5))
