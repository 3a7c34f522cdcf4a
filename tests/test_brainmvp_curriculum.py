"""BrainMVP as a stage of the MedCoSS curriculum (unified encoder): batch routing, the head on a real study, the chain."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ignite.engine import Events

from medcoss_monai import layout
from medcoss_monai.buffer.manifest import missing_files
from medcoss_monai.apps.brainmvp.pretext import BrainMVPPretext
from medcoss_monai.engines.pretext_trainer import pretext_of_batch
from medcoss_monai.layout import read_bundle
from medcoss_monai.networks.checkpoint import load_state
from tests.ddp_utils import in_process_group
from tests.stage_utils import BUNDLES, REPO

CURRICULUM = str(BUNDLES / "curriculum_brainmvp.json")
SMALL = {"hidden_size": 48, "num_layers": 1, "num_heads": 2, "decoder_hidden_size": 32, "decoder_layers": 1, "decoder_heads": 2,
         "batch_size": 4, "crops_per_volume": 2, "progress_bar": False}


def test_the_pipeline_takes_the_curriculum_form_of_brainmvp():
    assert layout.stage_bundle("brainmvp").name == "curriculum_brainmvp.json"  # not the UniFormer stage_brainmvp.json
    assert layout.stage_bundle("mri").name == "stage_mri.json"


def test_batches_are_routed_to_brainmvp_only_where_the_trainer_has_its_head():
    image = torch.zeros(2, 1, 8, 8, 8)
    two_view = {"image": image, "mask": image.bool(), "contrast": torch.zeros(2), "other": image,
                "has_other": torch.zeros(2, dtype=torch.bool), "affine": torch.eye(4).expand(2, 4, 4), "mask_b": image.bool(),
                "study_id": torch.arange(2)}
    heads = {"brainmvp": BrainMVPPretext(["t1"], (8, 8, 8), feature_channels=8)}
    assert pretext_of_batch(two_view, heads) == "brainmvp"
    assert pretext_of_batch(two_view) == "mae"  # a later stage rehearsing the BrainMVP stage's buffer
    assert pretext_of_batch({"image": image}, heads) == "mae"  # a rehearsed MRI buffer batch
    assert pretext_of_batch({k: v for k, v in two_view.items() if k != "affine"}, heads) == "mae"  # every key is needed
    assert pretext_of_batch({"input_ids": torch.zeros(2, 4, dtype=torch.long)}, heads) == "mlm"


def test_missing_files_of_a_study_buffer_item(tmp_path, sample_data):
    present = str(sample_data / "mri" / "ch2.nii.gz")
    gone = str(tmp_path / "flair.nii.gz")
    assert missing_files([{"image": {"t1": present, "flair": gone}, "study": "s"}]) == [gone]


def test_head_on_a_real_study_trains_network_and_templates(tmp_path, sample_data):
    parser = read_bundle(CURRICULUM, {"output_dir": str(tmp_path), "previous_stage": "", **SMALL})
    parser.parse()
    parser.get_parsed_content("initialize")
    dataset = parser.get_parsed_content("train#dataset")
    network, heads = parser.get_parsed_content("network"), parser.get_parsed_content("pretext_heads")
    trainer = parser.get_parsed_content("train#trainer")
    crops = dataset[0]  # one study, crop_per_volume crops with both views' inputs
    batch = {k: torch.stack([torch.as_tensor(c[k]) for c in crops]) for k in crops[0]}
    assert pretext_of_batch(batch, heads) == "brainmvp"
    trainer.state.epoch = 2  # past view B's warm-up and the contrastive term's start
    inputs = {"x": batch["image"], **{k: batch[k] for k in ("mask", "contrast", "other", "has_other", "affine")}}
    pred = trainer.forward_pretext(inputs, "brainmvp", 1.0)
    mask = batch["mask"].bool()
    # view A differs from the input at most inside the replaced blocks; the model reconstructs every patch
    assert torch.equal(pred["view_a"][~mask], batch["image"][~mask])
    size, patch = parser.get_parsed_content("img_size_3d"), parser.get_parsed_content("patch_size_3d")
    n_patches = int(torch.prod(torch.tensor(size) // torch.tensor(patch)))
    assert pred["pred_a"].shape == pred["target"].shape == (2, n_patches, int(torch.prod(torch.tensor(patch))))
    loss = trainer.pretext_loss(pred, batch, "brainmvp")
    assert set(pred["loss_components"]) == {"recon_a_loss", "recon_b_loss", "contrastive_loss"}
    assert torch.isfinite(loss)
    loss.backward()
    contrast = heads["brainmvp"].templates.contrasts[int(batch["contrast"][0])]
    assert heads["brainmvp"].templates.templates[contrast].grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in network.encoder.blocks.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in network.mae_decoder.parameters())


def _run(cmd: list[str]) -> str:
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


def _rows(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_brainmvp_stage_in_the_curriculum_rehearses_distils_resumes_and_is_rehearsed(tmp_path, sample_data):
    out = tmp_path / "run"
    overrides = []
    for k, v in SMALL.items():
        overrides += [f"--{k}", json.dumps(v) if not isinstance(v, bool) else str(v).lower()]
    overrides += ["--train#repeats", "1", "--rehearsal_ratio", "0.5"]  # a buffer batch in every short epoch
    # xray, then BrainMVP on the unified encoder (the xray buffer gets mixup + distillation), one epoch each
    _run([sys.executable, "-m", "medcoss_monai.bundle.pipeline", "--stages", "xray,brainmvp", "--output_dir", str(out),
          "--max_epochs", "1", "--forgetting", "false", *overrides])
    stage = out / "stage_brainmvp"
    record = json.loads((stage / "stage.json").read_text())
    assert record["previous_stage"] == "xray"
    rows = _rows(stage / "loss_history.csv")
    assert float(rows[0]["distill_loss"]) > 0 and float(rows[0]["recon_a_loss"]) > 0
    saved = load_state(stage / "checkpoint_epoch=1.pt")
    trained = {k: v for k, v in saved["pretext_heads"].items() if k.startswith("brainmvp.templates.templates.") and v.abs().sum() > 0}
    assert trained  # the sample studies' contrasts moved their templates away from zero
    assert (stage / "templates" / "t1.nii.gz").is_file() and (stage / "recon_0.png").is_file()
    # the stage's model.pt is a MedCoSS network: the next stage and the teacher load it strictly
    assert any(k.startswith("encoder.") for k in load_state(stage / "model.pt"))
    buffer = json.loads((stage / "buffer.json").read_text())
    assert buffer["items"] and isinstance(buffer["items"][0]["image"], dict)  # whole studies

    # resume: the second epoch starts from the checkpoint's templates (the reference code restarted them at zero)
    parser = read_bundle(CURRICULUM, {"output_dir": str(out), "previous_stage": "xray", "resume": True, "train#repeats": 1,
                                      "rehearsal_ratio": 0.5, "train#trainer#max_epochs": 2, **SMALL})
    parser.parse()
    parser.get_parsed_content("initialize")
    trainer, heads = parser.get_parsed_content("train#trainer"), parser.get_parsed_content("pretext_heads")
    seen = {}

    @trainer.on(Events.STARTED)
    def capture(engine):  # runs after the checkpoint loader, which registered first
        seen["epoch"] = engine.state.epoch
        seen["heads"] = {k: v.detach().clone() for k, v in heads.state_dict().items()}

    trainer.run()
    assert seen["epoch"] == 1 and seen["heads"].keys() == saved["pretext_heads"].keys()
    for key, value in saved["pretext_heads"].items():
        assert torch.equal(seen["heads"][key], value), key
    assert [r["epoch"] for r in _rows(stage / "loss_history.csv")] == ["1", "2"]

    # a later stage rehearses the BrainMVP stage's buffer (as MAE on its crops) and distils from it
    log = _run([sys.executable, "-m", "monai.bundle", "run", "--config_file", str(BUNDLES / "stage_ct.json"), "--output_dir", str(out),
                "--previous_stage", "brainmvp", "--train#trainer#max_epochs", "1", *overrides])
    assert "'brainmvp' buffer items" in log
    assert float(_rows(out / "stage_ct" / "loss_history.csv")[0]["distill_loss"]) > 0


def _train_one_epoch_and_compare_heads(rank: int, out: str) -> None:
    import torch.distributed as dist

    overrides = {"output_dir": out, "previous_stage": "", "train#repeats": 1, "train#trainer#max_epochs": 1, **SMALL}
    parser = read_bundle([CURRICULUM, str(BUNDLES / "multi_gpu.json")], overrides)
    parser.parse()
    parser.get_parsed_content("initialize")
    trainer, heads = parser.get_parsed_content("train#trainer"), parser.get_parsed_content("pretext_heads")
    steps = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: steps.append(sorted(e.state.output["loss_terms"])))
    trainer.run()
    # every rank ends with the same templates and projection head although each saw its own crops
    gathered = {}
    for key, value in heads.state_dict().items():
        copies = [torch.zeros_like(value) for _ in range(2)]
        dist.all_gather(copies, value.contiguous())
        gathered[key] = bool(torch.equal(copies[0], copies[1]))
    moved = bool(any(v.abs().sum() > 0 for k, v in heads.state_dict().items() if ".templates.templates." in k))
    Path(out, f"rank{rank}.json").write_text(json.dumps({"same": gathered, "moved": moved, "terms": steps}))


@pytest.mark.slow
def test_two_processes_keep_one_set_of_templates(tmp_path, sample_data):
    """Under the multi-GPU overlay (gloo, CPU) the head outside the DDP wrapper gets averaged gradients."""
    import torch.multiprocessing as mp

    mp.spawn(in_process_group, args=(2, str(tmp_path / "init"), _train_one_epoch_and_compare_heads, str(tmp_path)),
             nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for r in ranks:
        assert r["moved"] and all(r["same"].values()), r["same"]
        assert all("contrastive_loss" in t for t in r["terms"])  # InfoNCE over the gathered batch on every step
