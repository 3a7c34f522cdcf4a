"""Model Zoo export of fine-tuned tasks: ``--finetune_dir``, the Zoo's checks, predictions in the user's format.

Default suite: ``ct_seg`` fine-tuned for one epoch on crops of the real CT slabs; its bundle segments a
held-out slab given as NIfTI (RAS) and as NRRD (LPS), and both label maps must lie on their input's
grid and agree voxel for voxel. Under ``-m slow``: every other image task (X-ray, pathology and MRI
segmentation on PNG/NIfTI, classification to a CSV). ``text_cls`` is in ``test_export_text.py``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from medcoss_monai.bundle.export import main

sys.path.insert(0, str(Path(__file__).parent))
from test_export_zoo import (
    check_layout_and_metadata,
    check_trained_network,
    check_zoo_network,
    read_csv_rows,
    run_inference,
)

ROOT = Path(__file__).resolve().parents[1]


def finetune_and_export(task: str, tmp: Path, **overrides) -> tuple[Path, Path]:
    """Run ``bundles/finetune_<task>.json`` for one epoch and export its output folder with ``--finetune_dir``."""
    from monai.bundle import run

    out = tmp / "ft"
    run(config_file=str(ROOT / "bundles" / f"finetune_{task}.json"), output_dir=str(out), logging_file=False,
        **{"train#trainer#max_epochs": 1}, **overrides)
    return out, main(["--finetune_dir", str(out), "--out", str(tmp / "zoo" / f"medcoss_{task}")])


def check_task_bundle(ft: Path, bundle: Path, tmp_path: Path, sample: str | Path) -> tuple[dict, torch.Tensor]:
    """The Zoo's checks, the exported network equal to the fine-tuned one, and the test metrics in the metadata."""
    meta = check_layout_and_metadata(bundle)
    metrics = json.loads((ft / "metrics.json").read_text())["metrics"]
    assert meta["eval_metrics"] == {k: v for k, v in metrics.items() if isinstance(v, float)}
    args, kwargs, expected = check_zoo_network(bundle, tmp_path, sample)
    check_trained_network(bundle, ft / "model_best.pt", args, kwargs, expected)
    return meta, expected


def _crop(image, start, size) -> tuple[np.ndarray, np.ndarray]:
    """A sub-volume of a NIfTI image and its affine."""
    data = np.asarray(image.dataobj, dtype=np.float32)[tuple(slice(a, a + s) for a, s in zip(start, size))]
    affine = image.affine.copy()
    affine[:3, 3] = image.affine[:3, :3] @ np.asarray(start) + image.affine[:3, 3]
    return data, affine


@pytest.fixture(scope="module")
def small_ct_seg(tasks_ready: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ct_seg datalist on 96 x 96 crops of the real slabs (all 16 slices): a short sliding-window run."""
    import nibabel as nib

    out = tmp_path_factory.mktemp("ct_seg_crops")
    data = json.loads((tasks_ready / "tasks" / "ct_seg" / "datalist.json").read_text())
    for split in ("training", "validation", "test"):
        for item in data[split]:
            image, label = nib.load(item["image"]), nib.load(item["label"])
            mask = np.asarray(label.dataobj)
            centre = np.argwhere(mask > 0).mean(axis=0).round().astype(int)
            start = [int(np.clip(c - 48, 0, n - 96)) if n > 96 else 0 for c, n in zip(centre, mask.shape)]
            start[2] = 0
            size = [min(96, n) for n in mask.shape[:2]] + [mask.shape[2]]
            name = Path(item["image"]).name
            for key, img, dtype in (("image", image, np.float32), ("label", label, np.uint8)):
                arr, affine = _crop(img, start, size)
                nib.save(nib.Nifti1Image(arr.astype(dtype), affine), out / f"{key}_{name}")
                item[key] = str(out / f"{key}_{name}")
    (out / "datalist.json").write_text(json.dumps(data))
    return out / "datalist.json"


@pytest.fixture(scope="module")
def tasks_ready(sample_data: Path) -> Path:
    from medcoss_monai.samples.tasks import prepare_tasks

    prepare_tasks(verbose=False)
    return sample_data


@pytest.fixture(scope="module")
def ct_seg(small_ct_seg: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return finetune_and_export("ct_seg", tmp_path_factory.mktemp("ct_seg"), dataset_dir=str(small_ct_seg))


def _write_nrrd(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """A volume (x, y, z) with a RAS affine as NRRD, through ITK (whose world is LPS)."""
    import itk

    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    image = itk.image_from_array(np.ascontiguousarray(array.transpose(2, 1, 0)))  # ITK arrays are (z, y, x)
    image.SetSpacing(spacing.tolist())
    image.SetOrigin(lps[:3, 3].tolist())
    image.SetDirection(itk.matrix_from_array(lps[:3, :3] / spacing))
    itk.imwrite(image, str(path))


def _nrrd_grid(path: Path) -> tuple[tuple[int, ...], np.ndarray]:
    """Shape (x, y, z) and RAS affine of a NRRD file, read with ITK."""
    import itk

    image = itk.imread(str(path))
    direction = np.asarray(image.GetDirection()) * np.asarray(image.GetSpacing())[None]
    lps = np.eye(4)
    lps[:3, :3], lps[:3, 3] = direction, np.asarray(image.GetOrigin())
    return tuple(int(s) for s in image.GetLargestPossibleRegion().GetSize()), np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


@pytest.mark.slow
def test_ct_seg_bundle_segments_on_the_input_grid(ct_seg: tuple[Path, Path], tasks_ready: Path, tmp_path: Path) -> None:
    import nibabel as nib

    ft, bundle = ct_seg
    held_out = json.loads((tasks_ready / "tasks" / "ct_seg" / "datalist.json").read_text())["test"][0]["image"]
    meta, _ = check_task_bundle(ft, bundle, tmp_path, held_out)
    pred = meta["network_data_format"]["outputs"]["pred"]
    assert pred["channel_def"] == {"0": "background", "1": "lung", "2": "heart", "3": "liver", "4": "bone"}
    assert pred["format"] == "segmentation" and pred["is_patch_data"] is True
    inference = json.loads((bundle / "configs/inference.json").read_text())
    assert inference["inferer"]["_target_"] == "SlidingWindowInferer"
    # the held-out slab, cut to a size that is not a multiple of the window (12 slices: padded, then cropped
    # back), as NIfTI in RAS and as NRRD in LPS (flipped axes, inverted by the preprocessing's inverse)
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    data, affine = _crop(nib.load(held_out), (60, 40, 2), (100, 90, 12))
    nib.save(nib.Nifti1Image(data, affine), inputs / "slab_ras.nii.gz")
    flip = np.array([[-1, 0, 0, data.shape[0] - 1], [0, -1, 0, data.shape[1] - 1], [0, 0, 1, 0], [0, 0, 0, 1]], float)
    _write_nrrd(data[::-1, ::-1, :], affine @ flip, inputs / "slab_lps.nrrd")
    run_inference(bundle, inputs, tmp_path / "eval")
    ras = nib.load(tmp_path / "eval/slab_ras_seg.nii.gz")
    assert ras.shape == data.shape and np.allclose(ras.affine, affine)
    lps = nib.load(tmp_path / "eval/slab_lps_seg.nii.gz")
    shape, lps_affine = _nrrd_grid(inputs / "slab_lps.nrrd")
    assert nib.aff2axcodes(lps_affine) == ("L", "P", "S")
    assert lps.shape == shape and np.allclose(lps.affine, lps_affine, atol=1e-4)
    labels_ras, labels_lps = np.asarray(ras.dataobj), np.asarray(lps.dataobj)
    assert set(np.unique(labels_ras)) <= set(range(5))
    np.testing.assert_array_equal(labels_lps, labels_ras[::-1, ::-1, :])  # the same voxels, whatever the orientation


def test_ct_seg_train_config_starts_from_exported_weights(ct_seg: tuple[Path, Path]) -> None:
    from monai.bundle import ConfigParser

    from medcoss_monai.networks.checkpoint import load_state

    bundle = ct_seg[1]
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs/train.json"))
    parser.update({"bundle_root": str(bundle), "device": "$torch.device('cpu')"})
    net = parser.get_parsed_content("network")
    exported = load_state(bundle / "models/model.pt")
    assert net.state_dict().keys() == exported.keys()
    assert all(torch.equal(net.state_dict()[k], v) for k, v in exported.items())


# ------------------------------------------------------------------------------------------------ slow


def _test_items(tasks_ready: Path, task: str) -> list[dict]:
    return json.loads((tasks_ready / "tasks" / task / "datalist.json").read_text())["test"]


@pytest.mark.slow
@pytest.mark.parametrize("task", ["xray_seg", "pathology_seg"])
def test_2d_segmentation_bundle_writes_png_masks_on_the_input_grid(task: str, tasks_ready: Path, tmp_path: Path) -> None:
    from PIL import Image

    ft, bundle = finetune_and_export(task, tmp_path)
    held_out = _test_items(tasks_ready, task)[0]["image"]
    meta, _ = check_task_bundle(ft, bundle, tmp_path, held_out)
    assert meta["network_data_format"]["outputs"]["pred"]["channel_def"]["1"] in ("bone", "nucleus")
    # a held-out tile at another, non-square size: the mask comes back at that size, in the task's 0/255 values
    (tmp_path / "in").mkdir()
    Image.open(held_out).resize((150, 110)).save(tmp_path / "in/tile.png")
    run_inference(bundle, tmp_path / "in", tmp_path / "eval")
    mask = Image.open(tmp_path / "eval/tile_seg.png")
    assert mask.size == (150, 110)
    assert set(np.unique(np.asarray(mask))) <= {0, 255}


@pytest.mark.slow
def test_mri_seg_bundle_segments_the_held_out_volume(tasks_ready: Path, tmp_path: Path) -> None:
    import nibabel as nib

    ft, bundle = finetune_and_export("mri_seg", tmp_path)
    held_out = _test_items(tasks_ready, "mri_seg")[0]["image"]
    check_task_bundle(ft, bundle, tmp_path, held_out)
    run_inference(bundle, held_out, tmp_path / "eval")
    source, out = nib.load(held_out), nib.load(tmp_path / "eval" / (Path(held_out).name.split(".")[0] + "_seg.nii.gz"))
    assert out.shape == source.shape and np.allclose(out.affine, source.affine)
    assert set(np.unique(np.asarray(out.dataobj))) <= set(range(5))


@pytest.mark.slow
@pytest.mark.parametrize("task", ["xray_cls", "ct_cls", "pathology_cls"])
def test_classification_bundle_writes_class_probabilities(task: str, tasks_ready: Path, tmp_path: Path) -> None:
    ft, bundle = finetune_and_export(task, tmp_path)
    datalist = tasks_ready / "tasks" / task / "datalist.json"
    meta, expected = check_task_bundle(ft, bundle, tmp_path, datalist)
    classes = json.loads(datalist.read_text())["classes"]
    assert list(meta["network_data_format"]["outputs"]["pred"]["channel_def"].values()) == classes
    run_inference(bundle, datalist, tmp_path / "eval")
    rows = read_csv_rows(tmp_path / "eval/predictions.csv")
    items = _test_items(tasks_ready, task)
    assert [r[0] for r in rows] == [i["image"] for i in items]
    probs = np.array([[float(v) for v in r[1:]] for r in rows])
    assert probs.shape[1] == len(classes)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    # the first row is the softmax of the network's logits on that (preprocessed) held-out file
    np.testing.assert_allclose(probs[0], torch.softmax(expected[0], 0).numpy(), atol=1e-5)


@pytest.mark.slow
def test_ct_seg_bundle_runs_and_evaluates_without_medcoss(ct_seg: tuple[Path, Path], small_ct_seg: Path,
                                                          tmp_path: Path) -> None:
    """inference.json and evaluate.json in a process where medcoss_monai cannot be imported: the same label map as
    in this process, and the test Dice that fine-tuning measured on the same split."""
    import nibabel as nib
    from test_export_apps import run_without_medcoss

    ft, bundle = ct_seg
    held_out = json.loads(small_ct_seg.read_text())["test"][0]["image"]
    run_inference(bundle, held_out, tmp_path / "here")
    run_without_medcoss(bundle, [("configs/inference.json", held_out, tmp_path / "pred"),
                                 ("configs/evaluate.json", small_ct_seg, tmp_path / "metrics")])
    name = Path(held_out).name.split(".")[0] + "_seg.nii.gz"
    np.testing.assert_array_equal(np.asarray(nib.load(tmp_path / "pred" / name).dataobj),
                                  np.asarray(nib.load(tmp_path / "here" / name).dataobj))
    measured = json.loads((ft / "metrics.json").read_text())["metrics"]
    dice = [v for k, v in measured.items() if "dice" in k.lower() and isinstance(v, float)]
    with open(tmp_path / "metrics/metrics.csv") as f:
        exported = float(dict(line.strip().split(",") for line in f if line.strip())["mean_dice"])
    assert dice and exported == pytest.approx(dice[0], abs=1e-4)
