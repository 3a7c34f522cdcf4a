"""Paper-scale recipe: the learning rate follows the global batch, gradients accumulate, batches count samples."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Events
from stage_utils import BUNDLES

from medcoss_monai.engines import PretextTrainer
from medcoss_monai.engines.pretext_trainer import PretextEvents
from medcoss_monai.errors import BadInputError
from medcoss_monai.layout import read_bundle
from medcoss_monai.networks import MedCoSSModel


def _lr(files, monkeypatch, world_size: int, **overrides) -> float:
    monkeypatch.setenv("WORLD_SIZE", str(world_size))
    parser = read_bundle([BUNDLES / f for f in files], {"output_dir": "/tmp/unused", **overrides})
    return float(parser.get_parsed_content("lr"))


def test_lr_follows_the_global_batch(monkeypatch):
    # the paper: 1.5e-4 x 512 / 256 = 3e-4, reached by 4 processes x 64 samples x 2 accumulated micro-batches
    lr = _lr(["stage_xray.json", "paper_scale.json"], monkeypatch, 4, accumulation_steps=2)
    assert lr == pytest.approx(3e-4)
    # one process, no accumulation: the same recipe gives a quarter of a half
    assert _lr(["stage_xray.json", "paper_scale.json"], monkeypatch, 1) == pytest.approx(3e-4 / 8)
    # a 3D stage counts crops as samples, like every other stage: the same lr for the same global batch
    assert _lr(["stage_ct.json", "paper_scale.json"], monkeypatch, 4, accumulation_steps=2) == pytest.approx(3e-4)


def test_batch_size_counts_samples_in_every_modality():
    ct = read_bundle(BUNDLES / "stage_ct.json", {"output_dir": "/tmp/unused", "train#dataset": "$list(range(4))"})
    assert ct.get_parsed_content("train#current_loader").batch_size == ct.get("batch_size") // ct.get("crops_per_volume")
    paper = read_bundle([BUNDLES / "stage_mri.json", BUNDLES / "paper_scale.json"],
                        {"output_dir": "/tmp/unused", "train#dataset": "$list(range(4))"})
    assert paper.get_parsed_content("train#current_loader").batch_size * paper.get("crops_per_volume") == 64
    xray = read_bundle([BUNDLES / "stage_xray.json", BUNDLES / "paper_scale.json"],
                       {"output_dir": "/tmp/unused", "train#dataset": "$list(range(4))"})
    assert xray.get_parsed_content("train#current_loader").batch_size == 64
    bad = read_bundle(BUNDLES / "stage_ct.json", {"output_dir": "/tmp/unused", "batch_size": 12})
    with pytest.raises(RuntimeError) as failure:  # MONAI wraps what an expression raises
        bad.get_parsed_content("items_per_batch")
    assert isinstance(failure.value.__cause__, BadInputError) and "multiple of crops_per_volume" in str(failure.value.__cause__)


def _tiny_trainer(accumulation_steps: int, n_batches: int, epochs: int = 2) -> tuple[PretextTrainer, list[int]]:
    torch.manual_seed(0)
    net = MedCoSSModel(hidden_size=32, num_layers=1, num_heads=2, vocab_size=64, max_text_len=8,
                       img_size_2d=(32, 32), patch_size_2d=(16, 16), img_size_3d=(16, 16, 16), patch_size_3d=(8, 8, 8),
                       decoder_hidden_size=16, decoder_layers=1, decoder_heads=2)
    batches = [{"image": torch.rand(2, 3, 32, 32)} for _ in range(n_batches)]  # mechanics only
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    trainer = PretextTrainer("cpu", epochs, batches, net, optimizer, accumulation_steps=accumulation_steps)
    steps: list[int] = []
    original = optimizer.step

    def counted_step(*args, **kwargs):
        steps.append(trainer.state.iteration)
        return original(*args, **kwargs)

    optimizer.step = counted_step
    return trainer, steps


def test_gradient_accumulation_steps_once_per_window_and_at_epoch_end():
    trainer, steps = _tiny_trainer(accumulation_steps=2, n_batches=5)
    trainer.run()
    # the first step waits for a full window (not after one micro-batch); a short window ends each epoch
    assert steps == [2, 4, 5, 7, 9, 10]
    plain, plain_steps = _tiny_trainer(accumulation_steps=1, n_batches=5)
    plain.run()
    assert plain_steps == list(range(1, 11))


def test_accumulated_gradient_is_the_mean_of_the_micro_batches():
    torch.manual_seed(0)
    trainer, _ = _tiny_trainer(accumulation_steps=2, n_batches=2, epochs=1)
    net = trainer.network
    noise = [torch.rand(2, 4) for _ in range(2)]  # fixed masking, so both ways see the same masks
    captured = []

    def fixed_noise(engine):
        engine.state.output["inputs"]["noise"] = noise[(engine.state.iteration - 1) % 2]

    trainer.add_event_handler(PretextEvents.INPUTS_PREPARED, fixed_noise)
    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=2), lambda e: captured.append(
        {n: p.grad.clone() for n, p in e.network.named_parameters() if p.grad is not None}))
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    trainer.run()
    # the same two micro-batches by hand: mean of their losses
    for n, p in net.named_parameters():
        p.data.copy_(before[n])
    net.zero_grad()
    loss = 0.0
    for i, batch in enumerate(trainer.data_loader):
        out = net(batch["image"], pretext="mae", mask_ratio=trainer.mask_ratio, noise=noise[i])
        loss = loss + trainer.pretext_losses["mae"](out["pred"], out["target"], out["mask"]) / 2
    loss.backward()
    name, grad = next((n, g) for n, g in captured[0].items() if g.abs().sum() > 0)
    assert torch.allclose(grad, dict(net.named_parameters())[name].grad, atol=1e-6)


def _stage_network(tmp_path, **overrides):
    parser = read_bundle(BUNDLES / "stage_xray.json", {"output_dir": str(tmp_path), "previous_stage": "ct", **overrides})
    return parser


@pytest.mark.parametrize("inherit", [False, True])
def test_a_stage_takes_over_the_encoder_and_starts_fresh_pretext_heads(tmp_path, inherit):
    from medcoss_monai.layout import stage_model

    # the previous stage's weights: the same architecture, other values (mechanics: no training needed)
    torch.manual_seed(1)
    previous = _stage_network(tmp_path).get_parsed_content("network_def")
    for p in previous.parameters():
        p.data.add_(1.0)
    stage_model(tmp_path, "ct").parent.mkdir(parents=True)
    torch.save(previous.state_dict(), stage_model(tmp_path, "ct"))
    torch.manual_seed(2)
    fresh = _stage_network(tmp_path).get_parsed_content("network_def").state_dict()
    torch.manual_seed(2)
    network = _stage_network(tmp_path, inherit_pretext_heads=inherit).get_parsed_content("network")
    state, old = network.state_dict(), previous.state_dict()
    assert all(torch.equal(state[k], old[k]) for k in state if k.startswith("encoder."))
    heads = [k for k in state if k.startswith(("mae_decoder.", "mlm_head.")) and not torch.equal(old[k], fresh[k])]
    assert heads  # the two initialisations differ, so the check below can tell them apart
    # tied to the text embedding, the MLM output weight is encoder: it always follows the previous stage
    heads = [k for k in heads if k != "mlm_head.decoder.weight"]
    expected = old if inherit else fresh
    assert all(torch.equal(state[k], expected[k]) for k in heads), "pretext heads taken from the wrong source"


def test_weight_decay_spares_biases_norms_and_embeddings(tmp_path):
    parser = _stage_network(tmp_path, previous_stage="")
    optimizer = parser.get_parsed_content("train#optimizer")
    network = parser.get_parsed_content("network")
    names = {id(p): n for n, p in network.named_parameters()}
    decayed, spared = ([names[id(p)] for p in g["params"]] for g in optimizer.param_groups)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [parser.get("weight_decay"), 0.0]
    assert len(decayed) + len(spared) == len([p for p in network.parameters() if p.requires_grad])
    assert all(network.get_parameter(n).ndim >= 2 for n in decayed)
    assert not any(("pos_embed" in n or "text_embed" in n or "mask_token" in n) for n in decayed)
    assert "encoder.blocks.0.attn.qkv.weight" in decayed or any(n.startswith("encoder.blocks.0") for n in decayed)
    assert any(n.endswith("norm.weight") or "norm" in n for n in spared) and any(n.endswith(".bias") for n in spared)


def test_pathology_tiles_crop_bicubic_at_paper_scale():
    # reference (MedCoSS dataloader/TCGA_dataset.py): RandomResizedCrop(224, scale=(0.2, 1.0), bicubic)
    from medcoss_monai.transforms import RandResizedCropd

    def crop(files):
        parser = read_bundle([BUNDLES / f for f in files], {"output_dir": "/tmp/unused"})
        parser.parse()
        return next(t for t in parser.get_parsed_content("train#random_transforms") if isinstance(t, RandResizedCropd))

    paper = crop(["stage_pathology.json", "paper_scale.json"])
    assert paper.mode == ("bicubic",) and paper.cropper.scale == (0.2, 1.0) and paper.cropper.spatial_size == (224, 224)
    assert crop(["stage_pathology.json"]).mode == ("bilinear",)  # the demo keeps its own
