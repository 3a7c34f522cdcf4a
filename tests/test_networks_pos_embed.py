"""Position embeddings: sine-cosine tables, resizing, and loading weights trained at another size."""

from __future__ import annotations

import pytest
import torch

from medcoss_monai.networks import (
    EncoderClassifier,
    MedCoSSModel,
    PositionEmbedding,
    UnifiedEncoder,
    adapt_state_dict,
    resize_pos_embed,
    sincos_pos_embed,
)

SMALL = {"num_layers": 1, "decoder_layers": 1, "vocab_size": 64, "max_text_len": 16}


def test_sincos_table() -> None:
    t = sincos_pos_embed((4, 4, 2), 128)  # 128 does not split into 3 x even: leftover channels are zero
    assert t.shape == (1, 32, 128)
    assert torch.all(t[..., 126:] == 0) and t[..., :126].abs().sum() > 0
    assert len({tuple(r.tolist()) for r in t[0]}) == 32  # every position distinct
    first = sincos_pos_embed((6,), 8)[0, 0]
    assert torch.equal(first, torch.tensor([0.0, 0, 0, 0, 1, 1, 1, 1]))  # 4 x sin(0), 4 x cos(0)


def test_resize_pos_embed() -> None:
    const = torch.ones(1, 16, 8) * 3.0
    assert torch.allclose(resize_pos_embed(const, (4, 4), (6, 6)), torch.full((1, 36, 8), 3.0), atol=1e-5)
    table = sincos_pos_embed((4, 4, 2), 96)
    out = resize_pos_embed(table, (4, 4, 2), (6, 6, 2))
    assert out.shape == (1, 72, 96)
    assert resize_pos_embed(table, (4, 4, 2), (4, 4, 2)) is table
    # a linear ramp stays a ramp under interpolation (corner values are kept close)
    ramp = torch.linspace(0, 1, 8).reshape(1, 8, 1)
    up = resize_pos_embed(ramp, (8,), (16,))
    assert up.shape == (1, 16, 1) and torch.all(up[0, 1:, 0] >= up[0, :-1, 0])
    with pytest.raises(ValueError, match="needs"):
        resize_pos_embed(torch.zeros(1, 15, 8), (4, 4), (6, 6))
    with pytest.raises(ValueError, match="cannot resize"):
        resize_pos_embed(table, (4, 4, 2), (6, 6))


def test_position_embedding_module() -> None:
    pe = PositionEmbedding((4, 4), 16)
    assert not pe.weight.requires_grad and pe.grid_size == (4, 4)
    assert pe().shape == (1, 16, 16) and pe((8, 6)).shape == (1, 48, 16)
    text = PositionEmbedding((10,), 16, learnable=True)
    assert text.weight.requires_grad
    assert torch.equal(text((4,)), text.weight[:, :4])
    with pytest.raises(ValueError, match="longer"):
        text((11,))
    assert "grid" in dict(pe.named_buffers()) and "grid" in pe.state_dict()
    # a table of the same length made for another grid is refused, not silently loaded
    other = PositionEmbedding((2, 8), 16).state_dict()
    with pytest.raises(RuntimeError, match="adapt_state_dict"):
        pe.load_state_dict(other)
    assert pe.grid_size == (4, 4)


def test_adapt_state_dict_resizes_64_to_96() -> None:
    torch.manual_seed(0)
    small = MedCoSSModel(img_size_2d=(64, 64), pos_embed_type="learnable", **SMALL)
    big = MedCoSSModel(img_size_2d=(96, 96), pos_embed_type="learnable", **SMALL)
    state = small.state_dict()
    with pytest.raises(RuntimeError, match="size mismatch"):
        big.load_state_dict(state)
    assert big.encoder.pos_embed_2d.grid_size == (6, 6)  # a failed load leaves the grid alone
    adapted, report = adapt_state_dict(state, big)
    assert report.resized["encoder.pos_embed_2d.weight"] == ((4, 4), (6, 6))
    assert report.resized["mae_decoder.pos_embed_2d.weight"] == ((4, 4), (6, 6))
    assert not report.skipped and not report.missing and not report.unexpected
    assert "4x4->6x6" in str(report)
    big.load_state_dict(adapted)  # strict load now works
    assert torch.equal(big.encoder.pos_embed_2d.grid, torch.tensor([6, 6]))
    expected = resize_pos_embed(small.encoder.pos_embed_2d.weight.detach(), (4, 4), (6, 6))
    assert torch.allclose(big.encoder.pos_embed_2d.weight, expected)
    assert torch.equal(big.encoder.blocks[0].attn.qkv.weight, small.encoder.blocks[0].attn.qkv.weight)
    assert torch.equal(big.encoder.pos_embed_3d.weight, small.encoder.pos_embed_3d.weight)  # same grid: untouched
    with torch.no_grad():
        assert big(torch.rand(1, 3, 96, 96)).shape == (1, 192)


def test_adapt_state_dict_prefixes_mismatches_and_text_length() -> None:
    torch.manual_seed(0)
    src = MedCoSSModel(**SMALL)
    # encoder-only weights (no prefix) into a full model: "encoder." is added, the heads are missing
    dst = MedCoSSModel(**{**SMALL, "max_text_len": 24})
    adapted, report = adapt_state_dict(src.encoder_state_dict(prefix=""), dst)
    assert report.prefix_change == "+encoder."
    assert report.resized["encoder.pos_embed_text.weight"] == ((16,), (24,))
    assert any(k.startswith("mae_decoder.") for k in report.missing)
    dst.load_state_dict(adapted, strict=False)
    assert torch.equal(dst.encoder.pos_embed_text.weight[:, :16], src.encoder.pos_embed_text.weight)
    # full model (DDP-prefixed) into a bare encoder: prefixes removed, the heads are unexpected
    enc = UnifiedEncoder(hidden_size=192, num_layers=1, num_heads=3, vocab_size=64, max_text_len=16)
    ddp_state = {f"module.{k}": v for k, v in src.state_dict().items()}
    adapted, report = adapt_state_dict(ddp_state, enc)
    assert not report.missing and any("mae_decoder" in k for k in report.unexpected)
    enc.load_state_dict(adapted)
    # a vocabulary of another size cannot be resized: skipped and reported
    other_vocab = MedCoSSModel(**{**SMALL, "vocab_size": 80})
    adapted, report = adapt_state_dict(src.state_dict(), other_vocab)
    assert "encoder.text_embed.weight" in report.skipped and "encoder.text_embed.weight" in report.missing
    assert "shape mismatch" in str(report)
    # a downstream classifier takes the encoder part of a stage's weights
    clf = EncoderClassifier(MedCoSSModel(**SMALL).encoder, num_classes=3)
    adapted, report = adapt_state_dict(src.state_dict(), clf)
    assert set(report.missing) == {k for k in clf.state_dict() if k.startswith("head.")}
    clf.load_state_dict(adapted, strict=False)
    assert torch.equal(clf.encoder.norm.weight, src.encoder.norm.weight)
