"""Downstream heads (classification, UNETR-style segmentation) and the paper-size configuration."""

from __future__ import annotations

import pytest
import torch

from medcoss_monai.networks import (
    ClassificationHead,
    EncoderClassifier,
    MedCoSSModel,
    UNETRStyleSegmenter,
    UnifiedEncoder,
)


@pytest.fixture(scope="module")
def encoder() -> UnifiedEncoder:
    torch.manual_seed(0)
    return UnifiedEncoder(num_layers=4)


def test_classification_head() -> None:
    assert ClassificationHead(192, 5)(torch.rand(4, 192)).shape == (4, 5)
    mlp = ClassificationHead(192, 3, hidden=64, dropout=0.1)
    assert mlp(torch.rand(4, 192)).shape == (4, 3)
    assert sum(isinstance(m, torch.nn.Linear) for m in mlp.modules()) == 2


def test_mlp_head_is_the_references() -> None:
    """Reference MLP (MedCoSS ``Downstream/Dim_3/RICORD/model/Unimodel.py``): after the LayerNorm of the
    pooled token, ``Linear(768, 768), LayerNorm(768), GELU, Linear(768, classes)``; no dropout."""
    mlp = ClassificationHead(768, 2, head="mlp")
    kinds = [type(m).__name__ for m in mlp.layers if not isinstance(m, torch.nn.Dropout)]
    assert kinds == ["LayerNorm", "Linear", "LayerNorm", "GELU", "Linear"]
    assert mlp.layers[2].weight.shape == (768, 768) and mlp.layers[3].normalized_shape == (768,)
    assert mlp.layers[6].weight.shape == (2, 768) and not mlp.layers[6].bias.any()  # xavier weights, zero bias
    assert ClassificationHead(768, 2, hidden=256, head="mlp").layers[2].weight.shape == (256, 768)
    # the linear head keeps its keys (checkpoints of earlier fine-tunings load)
    assert list(ClassificationHead(32, 2, head="linear").state_dict()) == [
        "layers.0.weight", "layers.0.bias", "layers.2.weight", "layers.2.bias"]
    assert ClassificationHead(32, 2).kind == "linear" and ClassificationHead(32, 2, hidden=8).kind == "mlp"
    with pytest.raises(ValueError, match="head must be one of"):
        ClassificationHead(32, 2, head="transformer")
    with pytest.raises(ValueError, match="no hidden layer"):
        ClassificationHead(32, 2, hidden=8, head="linear")


def test_encoder_classifier(encoder: UnifiedEncoder) -> None:
    clf = EncoderClassifier(encoder, num_classes=4, hidden=32)
    ids = torch.randint(0, 8192, (2, 112))
    assert clf(ids, attention_mask=torch.ones_like(ids)).shape == (2, 4)
    assert clf(torch.rand(2, 3, 96, 96)).shape == (2, 4)
    assert clf(torch.rand(2, 1, 64, 64, 16)).shape == (2, 4)
    # accepts the pre-training network and a frozen encoder (linear probe) gets no gradient
    probe = EncoderClassifier(MedCoSSModel(num_layers=1), num_classes=2, freeze_encoder=True).train()
    assert not probe.encoder.training
    probe(torch.rand(2, 3, 96, 96)).sum().backward()
    assert all(p.grad is None for p in probe.encoder.parameters())
    assert all(p.grad is not None for p in probe.head.parameters())
    with pytest.raises(TypeError, match="UnifiedEncoder"):
        EncoderClassifier(torch.nn.Linear(2, 2), num_classes=2)


def test_segmenter_2d(encoder: UnifiedEncoder) -> None:
    seg = UNETRStyleSegmenter(encoder, out_channels=3, spatial_dims=2, feature_size=8)
    assert seg.native and seg.hidden_layers == (1, 2, 3)  # k * depth // 4 of the fixture's 4 blocks
    out = seg(torch.rand(2, 3, 96, 96))
    assert out.shape == (2, 3, 96, 96)
    out.mean().backward()
    assert encoder.blocks[0].attn.qkv.weight.grad is not None  # the skips use intermediate blocks
    assert seg(torch.rand(1, 3, 128, 64)).shape == (1, 3, 128, 64)  # other sizes: resized position table
    with pytest.raises(ValueError, match="image batch"):
        seg(torch.rand(1, 1, 64, 64, 16))


def _tapped_blocks(blocks: torch.nn.ModuleList, skips: list[torch.nn.Module], run) -> tuple[int, ...]:
    """Which block's output each skip receives, found by hooks: the skip input holds the same values, reshaped."""
    outs: list[torch.Tensor] = []
    ins: list[torch.Tensor] = []
    hooks = [b.register_forward_hook(lambda m, a, o: outs.append(o.detach())) for b in blocks]
    hooks += [s.register_forward_pre_hook(lambda m, a: ins.append(a[0].detach())) for s in skips]
    with torch.no_grad():
        run()
    for h in hooks:
        h.remove()
    key = lambda t: t.flatten().sort().values  # noqa: E731 (the same values whatever the layout)
    return tuple(next(i for i, o in enumerate(outs) if torch.equal(key(o), key(t))) for t in ins)


def test_segmenter_taps_the_blocks_monai_unetr_taps() -> None:
    from monai.networks.nets import UNETR

    torch.manual_seed(0)
    unetr = UNETR(1, 2, (32, 32, 32), feature_size=8, hidden_size=48, mlp_dim=96, num_heads=4).eval()
    x = torch.rand(1, 1, 32, 32, 32)
    monai_taps = _tapped_blocks(unetr.vit.blocks, [unetr.encoder2, unetr.encoder3, unetr.encoder4], lambda: unetr(x))
    enc = UnifiedEncoder(num_layers=12, hidden_size=48, num_heads=4, img_size_3d=(32, 32, 32), patch_size_3d=16)
    seg = UNETRStyleSegmenter(enc, out_channels=2, spatial_dims=3, feature_size=8).eval()
    ours = _tapped_blocks(enc.blocks, [seg.encoder2, seg.encoder3, seg.encoder4], lambda: seg(x))
    assert ours == monai_taps == (3, 6, 9)


def test_segmenter_3d_anisotropic(encoder: UnifiedEncoder) -> None:
    seg = UNETRStyleSegmenter(encoder, out_channels=2, spatial_dims=3, feature_size=8)
    assert seg.native and seg.decoder2.transp_conv.conv.stride == (2, 2, 1)  # patch (16, 16, 8): x1 along depth last
    assert seg(torch.rand(1, 1, 64, 64, 16)).shape == (1, 2, 64, 64, 16)


def test_segmenter_other_patch_falls_back_to_interpolation() -> None:
    enc = UnifiedEncoder(num_layers=2, img_size_2d=(48, 48), patch_size_2d=(12, 12))
    seg = UNETRStyleSegmenter(enc, out_channels=2, spatial_dims=2, feature_size=8)
    assert not seg.native
    assert seg(torch.rand(1, 3, 48, 48)).shape == (1, 2, 48, 48)
    with pytest.raises(ValueError, match="block indices"):
        UNETRStyleSegmenter(enc, out_channels=2, spatial_dims=2, hidden_layers=(0, 1, 5))


def test_paper_size_instantiates() -> None:
    model = MedCoSSModel(
        hidden_size=768, num_layers=12, num_heads=12, vocab_size=8192,
        img_size_2d=(224, 224), patch_size_2d=(16, 16), img_size_3d=(192, 192, 16), patch_size_3d=(16, 16, 16),
        decoder_hidden_size=512, decoder_layers=8, decoder_heads=16,
    )
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    stack = count(model.encoder.blocks) + count(model.encoder.norm)
    encoder = count(model.encoder)
    print(f"paper size: transformer {stack / 1e6:.1f}M, encoder with tokenizers {encoder / 1e6:.1f}M, "
          f"MAE decoder {count(model.mae_decoder) / 1e6:.1f}M, whole {count(model) / 1e6:.1f}M")
    assert 84e6 < stack < 86.5e6  # ViT-B/16: 85.1M in the 12 blocks
    # tokenizers: text embedding 8192 x 768, 2D and 3D patch projections, position tables
    tokenizers = 8192 * 768 + (16 * 16 * 3 + 1) * 768 + (16 * 16 * 16 + 1) * 768 + (112 + 196 + 144) * 768
    assert encoder - stack == tokenizers
    assert model.encoder.grid_size("2d") == (14, 14) and model.encoder.grid_size("3d") == (12, 12, 1)
