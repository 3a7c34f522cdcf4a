"""Model Zoo export of BrainMVP and MUSCLE models: the Zoo's checks, and inference with MONAI and PyTorch only.

Each model is trained for one tiny epoch on the real sample tasks, exported with
``python -m medcoss_monai.bundle.export``, checked as the Zoo checks a bundle (layout, ``verify_metadata``,
``verify_net_in_out``, ``ckpt_export`` of ``network_def``), and its ``configs/inference.json`` (and
``configs/evaluate.json``) run in a subprocess where ``import medcoss_monai`` fails. Its outputs must be
those of the trained network run in this process on the trained bundle's own preprocessing.
Default suite: MUSCLE classification. Under ``-m slow``: MUSCLE segmentation and detection, the BrainMVP
stage and BrainMVP segmentation.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from medcoss_monai.bundle.export import main
from medcoss_monai.bundle.export.portable import needs_medcoss
from medcoss_monai.layout import read_bundle
from medcoss_monai.networks.checkpoint import load_state

sys.path.insert(0, str(Path(__file__).parent))
from test_export_zoo import check_layout_and_metadata, metadata  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY_MUSCLE = {"batch_size": 4, "max_train_items": 8, "max_eval_items": 4}
WITHOUT_MEDCOSS = """
import json, sys
sys.modules["medcoss_monai"] = None  # importing medcoss_monai (or any of its modules) now fails
from monai.bundle import run
for config, dataset_dir, output_dir in json.loads(sys.argv[1]):
    run(config_file=config, meta_file="configs/metadata.json", logging_file=False, dataset_dir=dataset_dir,
        output_dir=output_dir, device="$torch.device('cpu')")
"""


def run_without_medcoss(bundle: Path, runs: list[tuple[str, str, Path]]) -> None:
    """Run bundle configs (``(config, dataset_dir, output_dir)``) from the bundle folder, medcoss_monai unimportable."""
    jobs = json.dumps([[c, str(d), str(o)] for c, d, o in runs])
    proc = subprocess.run([sys.executable, "-c", WITHOUT_MEDCOSS, jobs], cwd=bundle, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rel in ("configs/inference.json", "configs/evaluate.json"):
        if (bundle / rel).is_file():
            assert not needs_medcoss(json.loads((bundle / rel).read_text())), rel


def check_zoo(bundle: Path, tmp_path: Path) -> dict:
    """Layout, metadata, ``verify_net_in_out`` and ``ckpt_export`` of ``network_def``, as the Zoo's CI runs them."""
    from monai.bundle import ckpt_export, verify_net_in_out

    meta = check_layout_and_metadata(bundle)
    for rel in ("configs/multi_gpu_train.json", "models/trained_model.pt"):
        assert (bundle / rel).is_file(), rel
    files = {"meta_file": str(bundle / "configs/metadata.json"), "config_file": str(bundle / "configs/inference.json"),
             "bundle_root": str(bundle)}
    verify_net_in_out(net_id="network_def", device="cpu", **files)
    ckpt_export(net_id="network_def", filepath=str(tmp_path / "model.ts"), ckpt_file=str(bundle / "models/model.pt"),
                use_trace=False, **files)
    assert isinstance(torch.jit.load(str(tmp_path / "model.ts")), torch.jit.ScriptModule)
    return meta


def trained(folder: Path, bundle_file: str, weights: str, **overrides):
    """The trained network (the training class) with its weights, and its bundle."""
    parser = read_bundle(ROOT / "bundles" / bundle_file, {"output_dir": str(folder), "pretrained_ckpt": "", **overrides})
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(load_state(folder / weights), strict=True)
    return net.eval(), parser


def read_rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return [row for row in csv.reader(f) if row]


def finetune_muscle(kind: str, out: Path) -> Path:
    from monai.bundle import run

    run(config_file=str(ROOT / "bundles" / f"finetune_muscle_{kind}.json"), output_dir=str(out), logging_file=False,
        **TINY_MUSCLE, **{"train#trainer#max_epochs": 1})
    return out


def test_detection_wrapper_keeps_datalist_labels() -> None:
    """The exported detector returns (N, 6) rows of box, score and the datalist's label (background removed)."""
    from medcoss_monai.bundle.export.app_networks import MuscleDetector

    class Fake(torch.nn.Module):
        def forward(self, images):
            return [{"boxes": torch.tensor([[1.0, 2.0, 3.0, 4.0]]), "scores": torch.tensor([0.9]), "labels": torch.tensor([3])}]

    out = MuscleDetector(Fake())(torch.zeros(1, 3, 8, 8))
    assert out.tolist() == [[1.0, 2.0, 3.0, 4.0, pytest.approx(0.9), 2.0]]


def test_exported_detection_map_is_the_fine_tuning_map() -> None:
    """evaluate.json's mAP@0.5 (ignite's metric, MONAI-only bundle) equals the fine-tuning's (MONAI's COCOMetric) on
    the same boxes: jittered true boxes, missed ones and false alarms of three classes, one class absent."""
    from ignite.engine import Engine
    from monai.bundle import ConfigParser

    from medcoss_monai.apps.muscle.task_evaluation import detection_metrics
    from medcoss_monai.bundle.export.evaluate_config import DETECTION_MAP50

    g = torch.Generator().manual_seed(0)
    predictions, targets, outputs = [], [], []
    for _ in range(12):
        n = int(torch.randint(0, 4, (1,), generator=g))
        xy = torch.rand(n, 2, generator=g) * 80
        truth = torch.cat([xy, xy + 10 + torch.rand(n, 2, generator=g) * 20], 1)
        labels = torch.randint(0, 2, (n,), generator=g)  # class 2 has no ground truth
        keep = torch.rand(n, generator=g) > 0.25
        found = truth[keep] + torch.randn(int(keep.sum()), 4, generator=g) * 3
        corner = torch.rand(2, 2, generator=g) * 80
        alarms = torch.cat([corner, corner + 15], 1)
        boxes = torch.cat([found, alarms])
        scores = torch.rand(len(boxes), generator=g)
        pred_labels = torch.cat([labels[keep], torch.randint(0, 3, (2,), generator=g)])
        predictions.append({"boxes": boxes, "scores": scores, "labels": pred_labels})
        targets.append({"boxes": truth, "labels": labels})
        outputs.append({"pred": torch.cat([boxes, scores[:, None], pred_labels[:, None].float()], 1),
                        "true_boxes": truth[None], "true_labels": labels[None]})
    expected = detection_metrics(predictions, targets, ["a", "b", "c"])["map50"]
    metric = ConfigParser({"num_classes": 3, "metric": DETECTION_MAP50}).get_parsed_content("metric")[0]
    engine = Engine(lambda e, batch: batch)
    metric.attach(engine, "map50")
    engine.run(outputs)
    assert 0.1 < expected < 0.95
    assert engine.state.metrics["map50"] == pytest.approx(expected, abs=1e-6)


@pytest.fixture(scope="module")
def muscle_cls(sample_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("muscle_cls")
    ft = finetune_muscle("cls", tmp / "ft")
    return ft, main(["--finetune_dir", str(ft), "--out", str(tmp / "zoo")])


@pytest.mark.slow
def test_muscle_cls_bundle_passes_zoo_checks_and_runs_without_medcoss(muscle_cls, tasks_ready: Path, tmp_path: Path) -> None:
    from monai.transforms import Compose

    ft, bundle = muscle_cls
    meta = check_zoo(bundle, tmp_path)
    assert list(meta["network_data_format"]["outputs"]["pred"]["channel_def"].values()) == ["other", "chest"]
    assert "medcoss-monai" not in meta["required_packages_version"]
    datalist = tasks_ready / "tasks/muscle_bodypart_cls/datalist.json"
    test_items = json.loads(datalist.read_text())["test"]
    run_without_medcoss(bundle, [("configs/inference.json", datalist, tmp_path / "pred"),
                                 ("configs/evaluate.json", datalist, tmp_path / "metrics")])
    rows = read_rows(tmp_path / "pred/predictions.csv")
    assert [r[0] for r in rows] == [i["image"] for i in test_items]
    probs = np.array([[float(v) for v in r[1:]] for r in rows])
    # the trained network on the trained bundle's own preprocessing (LoadXRayd...) of the same files
    net, parser = trained(ft, "finetune_muscle_cls.json", "model.pt")
    chain = Compose(parser.get_parsed_content("eval_transforms")["classification"])
    with torch.no_grad():
        for item, p in zip(test_items[:4], probs):
            x = chain({"image": item["image"], "label": item["label"]})["image"][None]
            np.testing.assert_allclose(p, torch.softmax(net(x)[0], 0).numpy(), atol=1e-5)
    # evaluate.json: MONAI's accuracy of the labelled test split, as the predictions give it
    accuracy = float(dict(read_rows(tmp_path / "metrics/metrics.csv"))["accuracy"])
    expected = np.mean(probs.argmax(1) == np.array([i["label"] for i in test_items]))
    assert accuracy == pytest.approx(expected, abs=1e-6)


# ------------------------------------------------------------------------------------------------ slow


@pytest.mark.slow
def test_muscle_seg_and_det_bundles_run_without_medcoss(sample_data: Path, tasks_ready: Path, tmp_path: Path) -> None:
    from monai.transforms import Compose
    from PIL import Image

    for kind, task in (("seg", "muscle_lung_seg"), ("det", "muscle_chest_det")):
        ft = finetune_muscle(kind, tmp_path / kind / "ft")
        bundle = main(["--finetune_dir", str(ft), "--out", str(tmp_path / kind / "zoo")])
        check_zoo(bundle, tmp_path / kind)
        item = json.loads((tasks_ready / f"tasks/{task}/datalist.json").read_text())["test"][0]
        run_without_medcoss(bundle, [("configs/inference.json", item["image"], tmp_path / kind / "pred")])
        net, parser = trained(ft, f"finetune_muscle_{kind}.json", "model.pt")
        kinds = {"seg": "segmentation", "det": "detection"}
        chain = Compose(parser.get_parsed_content("eval_transforms")[kinds[kind]])
        loaded = chain({k: item[k] for k in ("image", "label") if k in item})
        x = loaded["image"][None]
        with torch.no_grad():
            out = net(x)
        if kind == "seg":  # the mask written on the input's grid, in the task's 0/255 values
            mask = np.asarray(Image.open(tmp_path / kind / "pred" / (Path(item["image"]).stem + "_seg.png")))
            expected = out[0].argmax(0).numpy().astype(np.uint8) * 255
            assert mask.shape == expected.shape and np.mean(mask == expected) > 0.999
        else:  # one row per image: x1, y1, x2, y2, score, label of each box, as the trained head gives them
            row = [float(v) for v in read_rows(tmp_path / kind / "pred/detections.csv")[0][1:]]
            d = out[0]
            boxes = torch.cat([d["boxes"], d["scores"][:, None], d["labels"][:, None].float()], 1).flatten()
            np.testing.assert_allclose(row, boxes.numpy(), rtol=1e-4, atol=1e-3)
            check_detection_evaluate(bundle, net, chain, tasks_ready / f"tasks/{task}/datalist.json", tmp_path / kind)


def check_detection_evaluate(bundle: Path, net: torch.nn.Module, chain, datalist: Path, tmp_path: Path) -> None:
    """evaluate.json (MONAI-only) gives the mAP@0.5 the package's own metric gives the trained network's boxes."""
    from medcoss_monai.apps.muscle.task_evaluation import detection_metrics

    run_without_medcoss(bundle, [("configs/evaluate.json", datalist, tmp_path / "metrics")])
    exported = float(dict(read_rows(tmp_path / "metrics/metrics.csv"))["map50"])
    data = json.loads(datalist.read_text())
    items = data["test"]
    with torch.no_grad():
        predictions = [net(chain({"image": i["image"]})["image"][None])[0] for i in items]
    targets = [{"boxes": torch.tensor(i["boxes"], dtype=torch.float32).reshape(-1, 4), "labels": torch.tensor(i["labels"])}
               for i in items]
    classes = [f"class_{c}" for c in range(int(data["classes"]) if isinstance(data["classes"], int) else len(data["classes"]))]
    assert exported == pytest.approx(detection_metrics(predictions, targets, classes)["map50"], abs=1e-3)


@pytest.mark.slow
def test_brainmvp_bundles_run_without_medcoss(sample_data: Path, tasks_ready: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The stage (features of a held-out MRI) and the segmentation (label map on the first contrast's grid; its
    evaluate.json gives the test Dice the fine-tuning bundle measured, with the crop and overlap it was trained with)."""
    import nibabel as nib
    from monai.bundle import run

    stage_dir = tmp_path / "stage"
    run(config_file=str(ROOT / "bundles/stage_brainmvp.json"), output_dir=str(stage_dir), roi_size=[16, 16, 16],
        crops_per_study=2, batch_size=4, repeats=1, progress_bar=False, logging_file=False, **{"train#trainer#max_epochs": 1})
    stage = main(["--stage_dir", str(stage_dir / "stage_brainmvp"), "--out", str(tmp_path / "zoo_stage")])
    check_zoo(stage, tmp_path)
    mri = json.loads((sample_data / "datalists/mri.json").read_text())["test"][0]["image"]
    ft = tmp_path / "ft"
    # a crop other than the bundle's default: the export reads the one the fine-tuning recorded
    run(config_file=str(ROOT / "bundles/finetune_brainmvp_seg.json"), output_dir=str(ft), repeats=1, crops_per_study=2,
        batch_size=2, roi_size=[32, 32, 16], sw_overlap=0.5, logging_file=False, **{"train#trainer#max_epochs": 1})
    seg = main(["--finetune_dir", str(ft), "--out", str(tmp_path / "zoo_seg")])
    check_zoo(seg, tmp_path)
    inferer = json.loads((seg / "configs/inference.json").read_text())["inferer"]
    assert (inferer["roi_size"], inferer["overlap"]) == ([32, 32, 16], 0.5)
    datalist = tasks_ready / "tasks/brainmvp_seg/datalist.json"
    run_without_medcoss(stage, [("configs/inference.json", mri, tmp_path / "features")])
    run_without_medcoss(seg, [("configs/inference.json", datalist, tmp_path / "pred"),
                              ("configs/evaluate.json", datalist, tmp_path / "metrics")])
    feats = read_rows(tmp_path / "features/features.csv")
    assert feats[0][0] == mri and len(feats[0]) - 1 == metadata(stage)["network_data_format"]["outputs"]["pred"]["num_channels"]
    study = json.loads(datalist.read_text())["test"][0]
    t1 = nib.load(study["image"]["t1"])
    out = nib.load(tmp_path / "pred" / (Path(study["image"]["t1"]).name.split(".")[0] + "_seg.nii.gz"))
    assert out.shape == t1.shape and np.allclose(out.affine, t1.affine)
    exported = float(dict(read_rows(tmp_path / "metrics/metrics.csv"))["mean_dice"])
    assert exported == pytest.approx(json.loads((ft / "metrics.json").read_text())["metrics"]["mean_dice"], abs=1e-4)
    # multi_gpu_train.json (the Zoo's form): a DDP-wrapped network and a sharded training loader
    (trainer,) = merged_training(seg, monkeypatch, ["train#trainer"])
    assert isinstance(trainer.network, torch.nn.parallel.DistributedDataParallel)
    assert isinstance(trainer.data_loader.sampler, torch.utils.data.DistributedSampler)


def merged_training(bundle: Path, monkeypatch: pytest.MonkeyPatch, ids: list[str]) -> list:
    """``train.json`` merged with ``multi_gpu_train.json`` as torchrun would run it (one gloo process here): the
    overlay's ``initialize``, then the parsed ``ids``."""
    import torch.distributed as dist
    from monai.bundle import ConfigParser

    for key, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29561", "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(key, value)
    parser = ConfigParser()
    parser.read_config([str(bundle / "configs/train.json"), str(bundle / "configs/multi_gpu_train.json")])
    parser.update({"bundle_root": str(bundle), "output_dir": str(bundle / "runs")})
    try:
        parser.get_parsed_content("initialize")
        assert dist.is_initialized() and dist.get_backend() == "gloo"
        return [parser.get_parsed_content(i) for i in ids]
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_muscle_multi_gpu_train_shards_batches(muscle_cls, monkeypatch: pytest.MonkeyPatch) -> None:
    """multi_gpu_train.json: the training loader of the task is sampled by a DistributedSampler, from the exported
    weights."""
    bundle = muscle_cls[1]
    loaders, network = merged_training(bundle, monkeypatch, ["train#loaders", "network"])
    assert isinstance(loaders["muscle_bodypart_cls"].sampler, torch.utils.data.DistributedSampler)
    exported = load_state(bundle / "models/trained_model.pt")
    assert all(torch.equal(network.state_dict()[k], v) for k, v in exported.items())
