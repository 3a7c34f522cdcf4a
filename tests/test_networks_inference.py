"""Tensor-only inference networks (networks/inference.py): scriptable, same keys and same outputs as the trained ones."""

from __future__ import annotations

import pytest
import torch

from medcoss_monai.networks import EncoderClassifier, MedCoSSModel, UNETRStyleSegmenter
from medcoss_monai.networks.inference import (
    FeatureExtractor,
    InferenceClassifier,
    InferenceSegmenter,
    inference_network,
)

SMALL = {"hidden_size": 48, "num_layers": 4, "num_heads": 3, "vocab_size": 500, "max_text_len": 24,
         "img_size_2d": (32, 32), "patch_size_2d": (16, 16), "img_size_3d": (32, 32, 16), "patch_size_3d": (16, 16, 8),
         "decoder_hidden_size": 32, "decoder_layers": 1, "decoder_heads": 2}


def _model(**kw) -> MedCoSSModel:
    torch.manual_seed(0)
    return MedCoSSModel(**{**SMALL, **kw}).eval()


def _text() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(0, SMALL["vocab_size"], (3, 24), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[0, 10:] = 0  # one padded report, one full, one nearly empty
    mask[2, 2:] = 0
    return ids, mask


def _same(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind_embedding", [False, True])
def test_features_match_the_pretraining_network_and_script(kind_embedding: bool) -> None:
    model = _model(kind_embedding=kind_embedding)
    ids, mask = _text()
    cases = {
        "3d": ((torch.rand(2, 1, 32, 32, 16),), {}),
        "2d": ((torch.rand(2, 3, 32, 32),), {}),
        "text": ((ids,), {"attention_mask": mask}),
    }
    for kind, (args, kwargs) in cases.items():
        net = inference_network(model, kind).eval()
        assert isinstance(net, FeatureExtractor)
        scripted = torch.jit.script(net)
        with torch.no_grad():
            expected = model(*args, **kwargs)
            _same(net(*args, **kwargs), expected)
            _same(scripted(*args, **kwargs), expected)
        # the encoder's weights, under the keys a stage's model.pt gives them; no pretext head
        assert set(net.state_dict()) == set(model.encoder_state_dict())


def test_other_input_sizes_interpolate_positions_as_training() -> None:
    model = _model()
    net = torch.jit.script(inference_network(model, "3d").eval())
    x = torch.rand(1, 1, 48, 32, 24)  # another grid than the built (2, 2, 2)
    with torch.no_grad():
        _same(net(x), model(x))
    ids, mask = _text()
    text = torch.jit.script(inference_network(model, "text").eval())
    with torch.no_grad():  # shorter texts use the first positions
        _same(text(ids[:, :12], mask[:, :12]), model(ids[:, :12], attention_mask=mask[:, :12]))


def test_classifier_keys_and_outputs() -> None:
    clf = EncoderClassifier(_model(), num_classes=3, hidden=16).eval()
    net = inference_network(clf, "2d").eval()
    assert isinstance(net, InferenceClassifier)
    assert set(net.state_dict()) == set(clf.state_dict())  # a fine-tuned model_best.pt loads strictly
    net.load_state_dict(clf.state_dict(), strict=True)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        _same(torch.jit.script(net)(x), clf(x))
    ids, mask = _text()
    text = torch.jit.script(InferenceClassifier(clf, "text").eval())
    with torch.no_grad():
        _same(text(ids, mask), clf(ids, attention_mask=mask))


@pytest.mark.parametrize(
    "dims,patch,shape",
    [(3, (16, 16, 8), (1, 1, 32, 32, 16)), (2, (16, 16), (1, 3, 32, 64)), (2, (12, 12), (1, 3, 36, 24))],
)
def test_segmenter_keys_and_outputs(dims: int, patch: tuple, shape: tuple) -> None:
    size = {"patch_size_2d": patch, "img_size_2d": shape[2:]} if dims == 2 else {"patch_size_3d": patch}
    seg = UNETRStyleSegmenter(_model(**size), out_channels=4, spatial_dims=dims, feature_size=8).eval()
    net = inference_network(seg).eval()
    assert isinstance(net, InferenceSegmenter)
    assert set(net.state_dict()) == set(seg.state_dict())
    x = torch.rand(*shape)
    with torch.no_grad():
        expected = seg(x)
        assert expected.shape[2:] == x.shape[2:]
        _same(torch.jit.script(net)(x), expected)  # (12, 12) patches take the interpolating path


def test_scripted_inputs_are_checked() -> None:
    net = torch.jit.script(inference_network(_model(), "3d").eval())
    with pytest.raises(Exception, match="multiple of the patch"):
        net(torch.rand(1, 1, 30, 32, 16))
    with pytest.raises(Exception, match="image batch"):
        net(torch.rand(1, 3, 32, 32, 16))
    text = torch.jit.script(inference_network(_model(), "text").eval())
    with pytest.raises(Exception, match="token ids must be in"):
        text(torch.full((1, 8), SMALL["vocab_size"]))
    with pytest.raises(ValueError, match="kind"):
        inference_network(_model())


def test_position_table_of_another_grid_is_refused() -> None:
    net = inference_network(_model(), "3d")
    state = net.state_dict()
    state["encoder.pos_embed_3d.grid"] = torch.tensor([4, 1, 2])  # same length (8 tokens), another grid
    with pytest.raises(RuntimeError, match="made for grid"):
        net.load_state_dict(state)
