"""The classifier head of the fine-tuning bundles: ``--head linear | mlp`` (the reference's MLP), trained on
real tiles, recorded in metrics.json and exported to a Model Zoo bundle without repeating the override."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from medcoss_monai.layout import read_bundle

sys.path.insert(0, str(Path(__file__).parent))
from test_export_tasks import check_task_bundle

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = ROOT / "bundles"
CLS_TASKS = ("text_cls", "xray_cls", "ct_cls", "pathology_cls")


@pytest.mark.parametrize("task", CLS_TASKS)
def test_cls_bundles_take_the_head_option(task: str, tmp_path: Path) -> None:
    """Default linear (the demo figures); ``--head mlp`` builds the reference's MLP on the pooled tokens."""
    linear = read_bundle(BUNDLES / f"finetune_{task}.json", {"output_dir": str(tmp_path)})
    assert linear.get_parsed_content("head") == "linear"
    assert linear.get_parsed_content("model_def").head.kind == "linear"
    mlp = read_bundle(BUNDLES / f"finetune_{task}.json", {"output_dir": str(tmp_path), "head": "mlp"})
    head = mlp.get_parsed_content("model_def").head
    hidden = int(mlp.get_parsed_content("encoder_spec")["sizes"]["hidden_size"])
    assert head.kind == "mlp" and head.layers[2].weight.shape == (hidden, hidden)


@pytest.fixture(scope="module")
def mlp_run(tasks_ready: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """pathology_cls fine-tuned for one epoch with ``--head mlp`` on a few real tiles (its output_dir)."""
    from monai.bundle import run

    out = tmp_path_factory.mktemp("mlp_head") / "ft"
    run(config_file=str(BUNDLES / "finetune_pathology_cls.json"), output_dir=str(out), logging_file=False, head="mlp",
        max_train_items=16, max_eval_items=8, **{"train#trainer#max_epochs": 1})
    return out


def test_mlp_head_fine_tunes_on_real_tiles(mlp_run: Path) -> None:
    """model_best.pt holds the MLP's layers, its hidden LayerNorm moved from its initial ones (the gradient
    reached it), and metrics.json names the head."""
    state = torch.load(mlp_run / "model_best.pt", weights_only=True)
    hidden = state["head.layers.2.weight"].shape[0]
    assert state["head.layers.2.weight"].shape == (hidden, hidden)
    assert state["head.layers.3.weight"].shape == (hidden,)  # the MLP's own LayerNorm
    assert state["head.layers.6.weight"].shape[1] == hidden
    assert not torch.equal(state["head.layers.3.weight"], torch.ones(hidden))  # trained, not the initial scale
    metrics = json.loads((mlp_run / "metrics.json").read_text())
    assert metrics["head"] == "mlp" and 0.0 <= metrics["metrics"]["ACC"] <= 1.0


def test_mlp_head_exports(mlp_run: Path, tasks_ready: Path, tmp_path: Path) -> None:
    """The export, given no ``--head``, reads it from metrics.json and builds the same network: the Zoo's
    checks pass and the exported network gives the fine-tuned one's outputs."""
    from medcoss_monai.bundle.export import main

    bundle = main(["--finetune_dir", str(mlp_run), "--out", str(tmp_path / "zoo" / "medcoss_pathology_cls")])
    train = json.loads((bundle / "configs/train.json").read_text())
    assert train["model_def"]["head"] == "mlp"  # inference.json runs the TorchScript of this network
    scripted = torch.jit.load(str(bundle / "models/model.ts"), map_location="cpu")
    assert any(name.endswith("head.layers.2.weight") for name, _ in scripted.named_parameters())  # the MLP's hidden layer
    check_task_bundle(mlp_run, bundle, tmp_path, tasks_ready / "tasks" / "pathology_cls" / "datalist.json")


def test_an_unknown_head_or_crop_mode_is_the_users_error():
    from medcoss_monai.errors import BadInputError
    from medcoss_monai.networks.heads import ClassificationHead
    from medcoss_monai.transforms import RandResizedCropd

    with pytest.raises(BadInputError, match="head must be one of"):
        ClassificationHead(32, 2, head="mlpp")
    with pytest.raises(BadInputError, match="'bicubc' is not one of"):
        RandResizedCropd("image", (32, 32), mode="bicubc")
