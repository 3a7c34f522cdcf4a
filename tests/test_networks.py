"""Mechanics of the unified encoder and the MedCoSS pre-training network (synthetic tensors)."""

from __future__ import annotations

import pytest
import torch

from medcoss_monai.losses import MaskedReconstructionLoss, MaskedTokenLoss
from medcoss_monai.networks import MedCoSSModel, UnifiedEncoder, patchify, unpatchify
from medcoss_monai.networks.encoder import PatchEmbed

B = 2


@pytest.fixture(scope="module")
def model() -> MedCoSSModel:
    torch.manual_seed(0)
    return MedCoSSModel().eval()


def _inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {
        "text": torch.randint(0, 8192, (B, 112), generator=g),
        "2d": torch.rand(B, 3, 96, 96, generator=g),
        "3d": torch.rand(B, 1, 64, 64, 16, generator=g),
    }


# grid tokens and patch values at the demo sizes: 96/16 = 6x6; (64,64,16)/(16,16,8) = 4x4x2
GRID = {"2d": ((6, 6), 16 * 16 * 3), "3d": ((4, 4, 2), 16 * 16 * 8)}


def test_kind_of_and_grids(model: MedCoSSModel) -> None:
    enc = model.encoder
    x = _inputs()
    assert [enc.kind_of(x[k]) for k in ("text", "2d", "3d")] == ["text", "2d", "3d"]
    assert enc.grid_size("2d") == (6, 6) and enc.grid_size("3d") == (4, 4, 2) and enc.grid_size("text") == (112,)
    assert enc.grid_size_of(torch.zeros(1, 3, 128, 64)) == (8, 4)
    with pytest.raises(ValueError, match="float input"):
        enc.kind_of(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="token ids"):
        enc.kind_of(torch.zeros(2, 3, 4, dtype=torch.long))


@pytest.mark.parametrize("kind", ["2d", "3d"])
def test_image_modes_shapes(model: MedCoSSModel, kind: str) -> None:
    x = _inputs()[kind]
    grid, patch_dim = GRID[kind]
    n = torch.tensor(grid).prod().item()
    keep = int(n * (1 - 0.75))
    with torch.no_grad():
        pooled = model(x)
        mae = model(x, pretext="mae")
        enc = model(x, pretext="encode")
        full = model.encoder(x)
    assert pooled.shape == (B, 192)
    assert mae["pred"].shape == mae["target"].shape == (B, n, patch_dim)
    assert mae["mask"].shape == mae["noise"].shape == (B, n)
    assert mae["latent"].shape == (B, keep, 192)
    assert enc["latent"].shape == (B, keep, 192)
    assert full["tokens"].shape == (B, n, 192) and len(full["hidden_states"]) == 4
    assert full["mask"].sum() == 0
    # values: pooled = mean of the unmasked final tokens; n - keep tokens removed per row; the same
    # noise gives "encode" the latent of "mae"
    torch.testing.assert_close(pooled, full["tokens"].mean(dim=1))
    assert mae["mask"].sum(dim=1).tolist() == [n - keep] * B
    with torch.no_grad():
        torch.testing.assert_close(model(x, pretext="encode", noise=mae["noise"])["latent"], mae["latent"])
    with pytest.raises(ValueError, match="mlm"):
        model(x, pretext="mlm")


def test_mlm_head_on_masked_positions_only(model: MedCoSSModel) -> None:
    ids = _inputs()["text"]
    attn = torch.ones_like(ids)
    labels = torch.full_like(ids, -100)
    labels[0, [3, 7, 50]] = ids[0, [3, 7, 50]]
    labels[1, 100] = ids[1, 100]
    with torch.no_grad():
        full = model(ids, attention_mask=attn, pretext="mlm")
        gathered = model(ids, attention_mask=attn, pretext="mlm", labels=labels)
    assert gathered["logits"].shape == (4, 8192) and gathered["labels"].tolist() == labels[labels != -100].tolist()
    torch.testing.assert_close(gathered["logits"], full["logits"][labels != -100], rtol=1e-4, atol=1e-5)
    loss = MaskedTokenLoss()
    torch.testing.assert_close(loss(gathered["logits"], gathered["labels"]), loss(full["logits"], labels))
    with pytest.raises(ValueError, match="labels"):
        model(ids, pretext="mlm", labels=labels[:, :10])


def test_text_embedding_not_drowned_by_positions() -> None:
    # at init, word embeddings must weigh about as much as the sine-cosine positions, or a random
    # encoder sees mostly positions (it did: a text probe of 0.62 against 0.84 for averaged words)
    enc = UnifiedEncoder()
    words = enc.text_embed.weight * enc.text_embed_scale
    positions = enc.pos_embed_text((112,))
    ratio = float(words.pow(2).mean().sqrt() / positions.pow(2).mean().sqrt())
    assert 0.7 < ratio < 2.0


def test_text_modes_shapes(model: MedCoSSModel) -> None:
    ids = _inputs()["text"]
    attn = torch.ones_like(ids)
    with torch.no_grad():
        pooled = model(ids, attention_mask=attn)
        mlm = model(ids, attention_mask=attn, pretext="mlm")
        enc = model(ids, attention_mask=attn, pretext="encode")  # default mask_ratio 0.75 must not drop text
    assert pooled.shape == (B, 192)
    assert mlm["logits"].shape == (B, 112, 8192) and mlm["latent"].shape == (B, 112, 192)
    assert enc["latent"].shape == (B, 112, 192)
    with pytest.raises(ValueError, match="mae"):
        model(ids, pretext="mae")
    with pytest.raises(ValueError, match="pretext must be"):
        model(ids, pretext="bert")


@pytest.mark.parametrize("kind", ["2d", "3d"])
def test_mask_ratio_exact_and_noise_reproducible(model: MedCoSSModel, kind: str) -> None:
    x = _inputs()[kind]
    n = int(torch.tensor(GRID[kind][0]).prod())
    noise = torch.rand(B, n, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        a = model(x, pretext="mae", mask_ratio=0.75, noise=noise)
        b = model(x, pretext="mae", mask_ratio=0.75, noise=noise.clone())
        c = model(x, pretext="mae", mask_ratio=0.75)
    keep = int(n * (1 - 0.75))
    assert torch.equal(a["mask"].sum(1), torch.full((B,), float(n - keep)))
    # the kept tokens are those of lowest noise
    kept_by_noise = torch.zeros(B, n)
    kept_by_noise.scatter_(1, noise.argsort(1)[:, :keep], 1.0)
    assert torch.equal(1 - a["mask"], kept_by_noise)
    assert torch.equal(a["mask"], b["mask"]) and torch.allclose(a["pred"], b["pred"])
    assert torch.equal(a["noise"], noise)
    assert not torch.equal(a["mask"], c["mask"])  # fresh noise, fresh mask
    with pytest.raises(ValueError, match="noise must have shape"):
        model(x, pretext="mae", noise=torch.rand(B, n + 1))


def test_text_padding_is_ignored(model: MedCoSSModel) -> None:
    ids = _inputs()["text"]
    attn = torch.ones_like(ids)
    attn[0, 40:] = 0
    attn[1, 90:] = 0
    other = ids.clone()
    other[0, 40:] = torch.randint(0, 8192, (72,))
    other[1, 90:] = 7
    with torch.no_grad():
        f1 = model(ids, attention_mask=attn)
        f2 = model(other, attention_mask=attn)
        l1 = model(ids, attention_mask=attn, pretext="mlm")["latent"]
        l2 = model(other, attention_mask=attn, pretext="mlm")["latent"]
        changed = ids.clone()
        changed[0, 5] = (changed[0, 5] + 1) % 8192
        f3 = model(changed, attention_mask=attn)
    assert torch.allclose(f1, f2, atol=1e-5)
    assert torch.allclose(l1[0, :40], l2[0, :40], atol=1e-5)
    assert not torch.allclose(f1[0], f3[0], atol=1e-5)  # a real token does change the features


def test_other_image_size_interpolates_pos_embed(model: MedCoSSModel) -> None:
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        out = model(x, pretext="mae", mask_ratio=0.75)
        pooled = model(x)
        vol = model(torch.rand(1, 1, 96, 64, 16), pretext="mae")
    assert out["pred"].shape == (1, 64, 768) and out["latent"].shape == (1, 16, 192)
    assert pooled.shape == (1, 192)
    assert vol["pred"].shape == (1, 6 * 4 * 2, 2048)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        model(torch.rand(1, 3, 100, 96))
    with pytest.raises(ValueError, match="longer than"):
        model(torch.zeros(1, 113, dtype=torch.long))
    short = model(torch.zeros(1, 20, dtype=torch.long), pretext="mlm")
    assert short["logits"].shape == (1, 20, 8192)


@pytest.mark.parametrize("shape,patch", [((2, 3, 32, 48), (16, 16)), ((2, 1, 32, 32, 16), (16, 16, 8))])
def test_patchify_roundtrip_and_token_order(shape: tuple, patch: tuple) -> None:
    x = torch.rand(shape)
    p = patchify(x, patch)
    grid = [s // q for s, q in zip(shape[2:], patch)]
    assert p.shape == (shape[0], int(torch.tensor(grid).prod()), int(torch.tensor(patch).prod()) * shape[1])
    assert torch.equal(unpatchify(p, grid, patch), x)
    # token 1 is the second patch along the last axis, flattened position-major, channel last
    second = x[0, :, :16, :16, 8:16] if len(patch) == 3 else x[0, :, :16, 16:32]
    assert torch.equal(p[0, 1], second.permute(*range(1, second.ndim), 0).flatten())
    # the patch order matches the tokens of the conv patch embedding, so targets line up with tokens
    dims = len(patch)
    enc = UnifiedEncoder(
        hidden_size=24, num_layers=1, num_heads=2, vocab_size=16, max_text_len=8, img_size_2d=(32, 32),
        img_size_3d=(32, 32, 16), in_channels_2d=shape[1], in_channels_3d=shape[1],
    )
    pe = enc.patch_embed_2d if dims == 2 else enc.patch_embed_3d
    tokens, _ = pe(x)
    w = pe.proj.weight  # (hidden, C, *patch) -> (hidden, *patch, C) flattened like patchify
    w = w.permute(0, *range(2, 2 + dims), 1).reshape(w.shape[0], -1)
    assert torch.allclose(tokens, p @ w.t() + pe.proj.bias, atol=1e-5)
    # and the patch embedding's matrix product is the strided convolution it stands for
    conv_fn = torch.nn.functional.conv2d if dims == 2 else torch.nn.functional.conv3d
    conv = conv_fn(x, pe.proj.weight, pe.proj.bias, stride=patch)
    assert torch.allclose(tokens, conv.flatten(2).transpose(1, 2), atol=1e-5)


def test_norm_pix_target(model: MedCoSSModel) -> None:
    x = _inputs()["2d"]
    t = model(x, pretext="mae")["target"]
    assert torch.allclose(t.mean(-1), torch.zeros(B, 36), atol=1e-4)
    assert torch.allclose(t.var(-1), torch.ones(B, 36), atol=1e-2)
    raw = MedCoSSModel(norm_pix_loss=False, num_layers=1)
    assert torch.equal(raw(x, pretext="mae")["target"], patchify(x, (16, 16)))


def test_gradients_reach_encoder_from_both_pretexts() -> None:
    torch.manual_seed(0)
    model = MedCoSSModel(num_layers=2).train()
    x = _inputs()
    out = model(x["2d"], pretext="mae")
    MaskedReconstructionLoss()(out["pred"], out["target"], out["mask"]).backward()
    enc = model.encoder
    assert enc.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert enc.patch_embed_2d.proj.weight.grad.abs().sum() > 0
    assert enc.text_embed.weight.grad is None
    model.zero_grad(set_to_none=True)
    labels = torch.full_like(x["text"], -100)
    labels[:, ::7] = x["text"][:, ::7]
    out = model(x["text"], attention_mask=torch.ones_like(x["text"]), pretext="mlm")
    MaskedTokenLoss()(out["logits"], labels).backward()
    assert enc.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert enc.text_embed.weight.grad.abs().sum() > 0
    assert enc.patch_embed_2d.proj.weight.grad is None


def test_config_roundtrip_and_encoder_state_dict(model: MedCoSSModel) -> None:
    rebuilt = MedCoSSModel.from_config({"_target_": "medcoss_monai.networks.MedCoSSModel", **model.config})
    assert sum(p.numel() for p in rebuilt.parameters()) == sum(p.numel() for p in model.parameters())
    assert model.config["img_size_2d"] == [96, 96]
    sd = model.encoder_state_dict()
    assert sd and all(k.startswith("encoder.") for k in sd)
    assert "encoder.pos_embed_2d.weight" in sd and "encoder.text_embed.weight" in sd
    assert not any("mae_decoder" in k or "mlm_head" in k for k in sd)
    # tied MLM output weights share the text embedding
    assert model.mlm_head.decoder.weight is model.encoder.text_embed.weight


def test_options_learnable_pos_and_kind_embedding() -> None:
    m = MedCoSSModel(num_layers=1, pos_embed_type="learnable", kind_embedding=True, use_flash_attention=False,
                     tie_mlm_weights=False)
    assert m.encoder.pos_embed_2d.weight.requires_grad and m.encoder.kind_embed is not None
    ids = torch.randint(0, 8192, (2, 16))
    attn = torch.ones_like(ids)
    attn[0, 8:] = 0
    other = ids.clone()
    other[0, 8:] = 3
    with torch.no_grad():  # the non-fused attention path masks padding too
        assert torch.allclose(m(ids, attention_mask=attn), m(other, attention_mask=attn), atol=1e-5)
    assert m(torch.rand(1, 3, 96, 96), pretext="mae")["pred"].shape == (1, 36, 768)
    with pytest.raises(ValueError, match="pos_embed_type"):
        MedCoSSModel(pos_embed_type="rope")


@pytest.mark.parametrize("spatial_dims, channels, size, patch", [(3, 1, (64, 48, 16), (16, 16, 8)), (2, 3, (96, 64), (16, 16))])
def test_patch_embedding_is_its_strided_convolution(spatial_dims, channels, size, patch):
    # the embedding runs as one matrix product over the cut patches; it must equal the convolution it stands for,
    # token for token in the convolution's order (mechanics: random weights and images)
    torch.manual_seed(0)
    embed = PatchEmbed(spatial_dims, channels, patch, 24)
    x = torch.rand(2, channels, *size)
    tokens, grid = embed(x)
    expected = embed.proj(x).flatten(2).transpose(1, 2)
    assert grid == tuple(s // p for s, p in zip(size, patch))
    torch.testing.assert_close(tokens, expected, rtol=1e-5, atol=1e-5)
