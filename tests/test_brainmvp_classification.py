"""BrainMVP classification fine-tuning: the reference's head on a stage's encoder, the study checks, and the bundle
end to end on the ABIDE miniature (real T1 scans in INDI's layout, labels from its phenotypic sheet) and the ADNI one
(the IDA export with its collection CSV)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from medcoss_monai.apps.brainmvp.brain_tasks import checked_classification_task
from medcoss_monai.apps.brainmvp.classifier import classification_network
from medcoss_monai.apps.brainmvp.model import load_pretrained_backbone
from medcoss_monai.data.prepare import prepare
from medcoss_monai.errors import BadInputError, CheckpointError
from tests.stage_utils import BUNDLES
from tests.test_brainmvp_finetune import TINY, stage_model  # noqa: F401  (fixture)

sys.path.insert(0, str(Path(__file__).parent))
from test_prepare_abide import abide_root  # noqa: E402,F401  (fixture)
from test_prepare_pretraining import adni_cls_root, adni_root  # noqa: E402,F401  (fixtures)

BUNDLE = BUNDLES / "finetune_brainmvp_cls.json"
BACKBONE = json.loads((BUNDLES / "common" / "brainmvp.json").read_text())["backbone"]


def _abide_datalist(abide_root: Path, tmp_path: Path) -> Path:
    """The converted miniature: two studies per split, one of each class (the converter splits per class)."""
    datalist = tmp_path / "abide.json"
    prepare("abide", abide_root.parent, datalist, progress=False)
    return datalist


def test_the_classifier_takes_every_encoder_tensor_of_a_stage_and_a_fresh_head(stage_model):
    path, model = stage_model
    net = classification_network(BACKBONE, 2, 3)
    head = net.head.weight.detach().clone()
    load_pretrained_backbone(net, path)
    stage = model.backbone.encoder.state_dict()
    for key, value in net.encoder.state_dict().items():
        expected = stage[key]
        if key == "embeddings.0.0.weight":  # one pre-trained input channel shared by both contrasts
            expected = expected.repeat(1, 2, 1, 1, 1) / 2
        torch.testing.assert_close(value, expected, msg=key)
    torch.testing.assert_close(net.head.weight, head)  # the head is the task's own
    assert net.head.in_features == BACKBONE["widths"][-1]
    # the reference's head: the deepest map averaged over space, then one linear layer
    x = torch.rand(2, 2, 32, 32, 32)
    with torch.no_grad():
        deepest = net.encoder(x)[-1]
        torch.testing.assert_close(net(x), net.head(deepest.mean(dim=(2, 3, 4))))
    with pytest.raises(CheckpointError, match="does not fit"):
        load_pretrained_backbone(classification_network(TINY, 1, 2), path)


def test_labels_and_contrasts_are_checked_before_training(abide_root: Path, tmp_path: Path):
    datalist = _abide_datalist(abide_root, tmp_path)
    task = checked_classification_task(datalist, ["t1"], 2)
    assert [len(task[k]) for k in ("training", "validation", "test")] == [2, 2, 2]
    data = json.loads(datalist.read_text())
    data["training"][0]["label"], data["test"][0]["label"] = 2, -1
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(BadInputError) as err:
        checked_classification_task(bad, ["t1", "t2"], 2)
    message = str(err.value)
    assert f"{data['training'][0]['study']} (training): label 2 is not a class index 0 .. 1" in message
    assert f"{data['test'][0]['study']} (test): label -1 is not a class index" in message
    assert message.count("no t2 image") == 6  # every study, named
    data = json.loads(datalist.read_text())
    data["training"].append(data["validation"].pop())  # one class left in validation: no AUC to choose the epoch by
    bad.write_text(json.dumps(data))
    with pytest.raises(BadInputError, match=r"validation: every study has label \[\d\]; .* needs studies of two classes"):
        checked_classification_task(bad, ["t1"], 2)
    with pytest.raises(BadInputError, match="needs --dataset_dir"):
        checked_classification_task("", ["t1"], 2)


@pytest.mark.slow
def test_abide_miniature_fine_tunes_from_a_stage_and_is_tested_on_its_best_epoch(abide_root: Path, stage_model, tmp_path: Path):
    """The converted ABIDE datalist through the bundle (the BrainMVP suite's row): 2 epochs from a stage's weights."""
    from monai.bundle import run

    path, _ = stage_model
    datalist = _abide_datalist(abide_root, tmp_path)
    out = tmp_path / "ft"
    run(config_file=str(BUNDLE), output_dir=str(out), dataset_dir=str(datalist), pretrained_ckpt=str(path),
        roi_size=[32, 32, 32], **{"train#trainer#max_epochs": 2})
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["split_sizes"] == {"training": 2, "validation": 2, "test": 2}
    assert metrics["pretrained_ckpt"] == str(path) and metrics["input_contrasts"] == ["t1"]
    assert metrics["best_validation"]["epoch"] in (1, 2)
    assert {"ACC", "AUC", "F1"} <= set(metrics["metrics"]) and metrics["metrics"]["ACC"] in (0.0, 0.5, 1.0)  # two studies
    best = torch.load(out / "model_best.pt", weights_only=True)
    assert set(best) == set(classification_network(BACKBONE, 1, 2).state_dict())
    check_zoo_export(out, datalist, tmp_path)


@pytest.mark.slow
def test_adni_miniature_fine_tunes_ad_against_cn(adni_cls_root: Path, stage_model, tmp_path: Path):
    """The converted ADNI datalist (IDA export and collection CSV) through the bundle, as the BrainMVP suite's adni row
    runs it: one epoch from a stage's weights, tested on its held-out subjects of both groups."""
    from monai.bundle import run

    path, _ = stage_model
    datalist = tmp_path / "adni_cls.json"
    data = prepare("adni_cls", adni_cls_root, datalist, progress=False)
    out = tmp_path / "ft"
    run(config_file=str(BUNDLE), output_dir=str(out), dataset_dir=str(datalist), pretrained_ckpt=str(path),
        roi_size=[32, 32, 32], **{"train#trainer#max_epochs": 1})
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["split_sizes"] == {s: len(data[s]) for s in ("training", "validation", "test")}
    assert metrics["studies"]["test"] == [s["study"] for s in data["test"]]
    assert 0.0 <= metrics["metrics"]["AUC"] <= 1.0 and metrics["num_classes"] == 2


def check_zoo_export(out: Path, datalist: Path, tmp_path: Path) -> None:
    """The fine-tuned classifier exported to the Model Zoo: its checks pass; inference.json (MONAI and PyTorch only)
    gives the trained network's probabilities on the bundle's own test chain, evaluate.json the tested accuracy."""
    import numpy as np
    from monai.transforms import Compose

    from medcoss_monai.bundle.export import main as export
    from medcoss_monai.layout import read_bundle
    from test_export_apps import check_zoo, read_rows, run_without_medcoss

    bundle = export(["--finetune_dir", str(out), "--out", str(tmp_path / "zoo")])
    meta = check_zoo(bundle, tmp_path)
    assert meta["network_data_format"]["outputs"]["pred"]["num_channels"] == 2
    assert "medcoss-monai" not in meta["required_packages_version"]
    run_without_medcoss(bundle, [("configs/inference.json", datalist, tmp_path / "pred"),
                                 ("configs/evaluate.json", datalist, tmp_path / "metrics")])
    metrics = json.loads((out / "metrics.json").read_text())
    net = classification_network(metrics["network_backbone"], 1, 2)
    net.load_state_dict(torch.load(out / "model_best.pt", weights_only=True))
    parser = read_bundle(BUNDLE, {"output_dir": str(tmp_path / "x"), "dataset_dir": str(datalist), "roi_size": [32, 32, 32]})
    study = json.loads(datalist.read_text())["test"][0]
    x = Compose(parser.get_parsed_content("eval_transforms"))(dict(study))["image"][None]
    with torch.no_grad():
        expected = torch.softmax(net.eval()(x)[0], 0).numpy()
    rows = read_rows(tmp_path / "pred/predictions.csv")
    assert len(rows) == 2 and rows[0][0].endswith(Path(study["image"]["t1"]).name)
    np.testing.assert_allclose([float(v) for v in rows[0][1:]], expected, atol=1e-5)
    accuracy = float(dict(read_rows(tmp_path / "metrics/metrics.csv"))["accuracy"])
    assert accuracy == metrics["metrics"]["ACC"]
