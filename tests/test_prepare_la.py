"""Left Atrium converter: UA-MT's data/ folder (``2018LA_Seg_Training Set/<case>/mri_norm2.h5`` with
``train.list`` / ``test.list``) written from real brain-MRI blocks with their real lesion masks, converted,
and the datalist fine-tuned for one epoch through the MRI segmentation bundle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medcoss_monai.data.prepare import prepare
from medcoss_monai.data.prepare.mri_seg import LA_SPACING_MM
from medcoss_monai.errors import BadInputError

# UA-MT's case names (data/train.list, data/test.list); the last training case is listed but not downloaded
TRAIN = ["06SR5RBREL16DQ6M8LWS", "0RZDK210BSMWAA6467LU", "1D7CUD1955YZPGK8XHJX", "1GU15S0GJ6PFNARO469W",
         "1MHBF3G6DCPWHSKG7XCP", "23X6SY44VT9KFHR7S7OC", "2XL5HSFSE93RMOJDRGR4", "38CWS74285MFGZZXR09Z",
         "3C2QTUNI0852XV7ZH4Q1", "3DA0T2V6JJ2NLUAV6FWM", "4498CA6DZWELOXCBRYRF"]
TEST = ["UPT6DX9IQY9JAZ7HJKA7", "UTBUJIWZMKP64E3N73YC"]


@pytest.fixture(scope="module")
def blocks(sample_data: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """Real (image, mask) blocks, axes x, y, z as UA-MT stores them: both sample brains around their lesions."""
    import itk

    out = []
    for name, (z0, y0, x0) in (("brain1", (8, 80, 150)), ("brain2", (2, 110, 170))):
        image = itk.array_from_image(itk.imread(str(sample_data / "mri" / f"{name}_image.nrrd")))
        label = itk.array_from_image(itk.imread(str(sample_data / "mri" / f"{name}_label.nrrd")))
        for shift in range(0, 8 * 7, 8):  # seven overlapping blocks of each brain
            sl = (slice(z0, z0 + 16), slice(y0 + shift % 24, y0 + shift % 24 + 72), slice(x0 + shift // 3, x0 + shift // 3 + 64))
            out.append((np.transpose(image[sl], (2, 1, 0)).astype(np.float32), np.transpose(label[sl], (2, 1, 0)) > 0))
    return out


@pytest.fixture
def la_root(tmp_path: Path, blocks) -> Path:
    import h5py

    data = tmp_path / "UA-MT" / "data"
    for k, case in enumerate(TRAIN[:-1] + TEST):
        image, label = blocks[k % len(blocks)]
        (data / "2018LA_Seg_Training Set" / case).mkdir(parents=True)
        with h5py.File(data / "2018LA_Seg_Training Set" / case / "mri_norm2.h5", "w") as f:  # as UA-MT writes them
            f.create_dataset("image", data=(image - image.mean()) / image.std(), compression="gzip")
            f.create_dataset("label", data=label.astype(np.uint8), compression="gzip")
    (data / "train.list").write_text("\n".join(TRAIN) + "\n")
    (data / "test.list").write_text("\n".join(TEST) + "\n")
    return data


def test_h5_cases_become_nifti_pairs_with_ua_mt_lists(la_root: Path, tmp_path: Path, blocks):
    import nibabel as nib

    data = prepare("la", la_root.parent, tmp_path / "la.json", cache_dir=tmp_path / "cache", progress=False)
    assert [len(data[s]) for s in ("training", "validation", "test")] == [9, 1, 2]
    assert sorted(it["case"] for it in data["training"] + data["validation"]) == sorted(TRAIN[:-1])
    assert [it["case"] for it in data["test"]] == TEST and data["missing"] == [TRAIN[-1]]
    item = data["test"][1]  # the 12th case written: block 11
    image, label = nib.load(item["image"]), nib.load(item["label"])
    ref_image, ref_label = blocks[11 % len(blocks)]
    np.testing.assert_allclose(np.asarray(image.dataobj), (ref_image - ref_image.mean()) / ref_image.std(), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(label.dataobj), ref_label.astype(np.uint8))
    assert image.header.get_zooms() == (LA_SPACING_MM,) * 3
    again = prepare("la", la_root.parent, tmp_path / "la2.json", cache_dir=tmp_path / "cache", seed=0, progress=False)
    assert again["validation"] == data["validation"]


def test_bad_h5_listed_missing_list_and_wrong_root_refused(la_root: Path, tmp_path: Path):
    import h5py

    bad = la_root / "2018LA_Seg_Training Set" / TRAIN[2] / "mri_norm2.h5"
    with h5py.File(bad, "w") as f:
        f.create_dataset("image", data=np.zeros((4, 4, 4), np.float32))
    with pytest.raises(BadInputError, match=rf"{bad}: ValueError: no 'label' dataset"):
        prepare("la", la_root, tmp_path / "o.json", cache_dir=tmp_path / "cache", progress=False)
    (la_root / "test.list").unlink()
    with pytest.raises(BadInputError, match=r"test.list not found: UA-MT's data/ folder holds test.list beside"):
        prepare("la", la_root, tmp_path / "o.json", cache_dir=tmp_path / "cache", progress=False)
    with pytest.raises(BadInputError, match=r"2018LA_Seg_Training Set not found under .*: is this the Left Atrium"):
        prepare("la", tmp_path / "cache", tmp_path / "o.json", cache_dir=tmp_path / "c", progress=False)


@pytest.mark.slow
def test_converted_datalist_fine_tunes_one_epoch_through_the_mri_seg_bundle(la_root: Path, tmp_path: Path):
    """Issue 26: the converted datalist trains for one epoch through its task bundle (MedCoSS's ``la`` row)."""
    import json

    from monai.bundle import run

    from medcoss_monai.evaluation.downstream_suites import MEDCOSS

    datalist = tmp_path / "la.json"
    prepare("la", la_root, datalist, cache_dir=tmp_path / "cache", progress=False)
    row = MEDCOSS["la"]
    out = tmp_path / "ft"
    run(config_file=str(Path("bundles") / row.bundle), output_dir=str(out), dataset_dir=str(datalist),
        **row.overrides, **{"train#trainer#max_epochs": 1, "max_train_items": 2, "max_eval_items": 1, "crops_per_volume": 1})
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["max_epochs"] == 1 and 0.0 <= metrics["metrics"]["Dice"] <= 1.0
    assert metrics["split_sizes"] == {"training": 2, "validation": 1, "test": 1}
