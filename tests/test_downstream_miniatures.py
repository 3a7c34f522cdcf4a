"""Issue 26's "done when" for the papers' tables: ``evaluation.downstream --suite medcoss`` (and ``--suite brainmvp``) on
a root holding the miniature of each of the suite's data sets (nine and ten) (the converters' test folders, in their
publishers' layouts, of real sample files) converts every one, fine-tunes every one for an epoch through its bundle,
and writes the table."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
# the miniatures of the converters' tests (fixtures imported here become this module's fixtures)
from test_downstream import chestxr_root, random_stage  # noqa: E402
from test_prepare_la import blocks, la_root  # noqa: E402,F401
from test_prepare_ricord import ct, ricord_root  # noqa: E402,F401
from test_prepare_sets import _crop as crop, brain, glas_root, lits_root, make_cases, nct_root  # noqa: E402,F401
from test_prepare_sets import pudmed20k_root, qata_root  # noqa: E402,F401
from test_prepare_vs import mri, vs_root  # noqa: E402,F401
from test_brainmvp_finetune import stage_model  # noqa: E402,F401
from test_prepare_abide import abide_root  # noqa: E402,F401
from test_prepare_pretraining import adni_cls_root, adni_root  # noqa: E402,F401
from test_prepare_adhd200 import adhd_root  # noqa: E402,F401
from test_prepare_mrbrains13 import mrbrains_root  # noqa: E402,F401
from test_prepare_stages import BRATS_2023  # noqa: E402



@pytest.mark.slow
@pytest.mark.long  # nine fine-tunings of one epoch, 3D ones with sliding-window tests: minutes on two cores
def test_the_medcoss_table_from_the_nine_miniatures(
    tmp_path: Path, sample_data: Path, nct_root: Path, glas_root: Path, lits_root: Path, qata_root: Path,
    ricord_root: Path, vs_root: Path, la_root: Path, capfd,
):
    model = random_stage(tmp_path / "stage")
    root = tmp_path / "root"
    chestxr_root(root, sample_data, per_class=(3, 2))
    # each set's folder as its publisher's download unpacks (the converters' tests pass the same folders)
    folders = {"pudmed20k": pudmed20k_root(tmp_path, sample_data)[0].parent, "qata_cov19": qata_root,
               "ricord": ricord_root, "lits": lits_root, "vs": vs_root.parent, "la": la_root.parent,
               "nct_crc_he": nct_root, "glas": glas_root}
    run_table("medcoss", model, root, folders, tmp_path / "out", capfd)


def brain_downstream_sets(root: Path, brain: dict) -> dict[str, Path]:
    """The BrainMVP downstream sets without a converter-test fixture, six cases each in their publishers' layouts."""
    import nibabel as nib
    import numpy as np

    seg = np.asarray(brain["seg"].dataobj)
    relabelled = {  # the sample's BraTS 2018-2021 labels (1, 2, 4) as BraTS 2023 numbers them (1, 2, 3); a lesion mask
        "brats2023": np.where(seg == 4, 3, seg).astype(np.uint8), "binary": (seg > 0).astype(np.uint8)}
    brain = {**brain, **{k: nib.Nifti1Image(v, brain["seg"].affine) for k, v in relabelled.items()}}
    brats = {"t1": "t1", "t1ce": "t1", "t2": "t2", "flair": "t2", "seg": "seg"}
    for code in ("PED", "MET"):
        make_cases(root / f"brats2023_{code.lower()}", brain, [f"BraTS-{code}-{p:05d}-000" for p in range(6)],
                   {**BRATS_2023, "seg": "brats2023"}, "-")
    base = root / "brats2018" / "MICCAI_BraTS_2018_Data_Training"
    make_cases(base / "HGG", brain, [f"Brats18_CBICA_A{i:02d}_1" for i in range(4)], brats, "_")
    make_cases(base / "LGG", brain, [f"Brats18_TCIA10_{i:03d}_1" for i in range(4)], brats, "_")
    nifti = root / "upenn_gbm" / "NIfTI-files"
    names = [f"UPENN-GBM-{k + 1:05d}_11" for k in range(6)]
    make_cases(nifti / "images_structural", brain, names, {"T1": "t1", "T1GD": "t1", "T2": "t2", "FLAIR": "t2"}, "_")
    (nifti / "images_segm").mkdir()
    for k, name in enumerate(names):
        nib.save(crop(brain["seg"], k), str(nifti / "images_segm" / f"{name}_segm.nii.gz"))
    for k in range(6):
        case = f"sub-strokecase{k + 1:04d}"
        session = root / "isles22" / "ISLES-2022" / "rawdata" / case / "ses-0001"
        masks = root / "isles22" / "ISLES-2022" / "derivatives" / case / "ses-0001"
        for folder in (session / "dwi", session / "anat", masks):
            folder.mkdir(parents=True)
        for sub, contrast, source in (("dwi", "adc", "t2"), ("dwi", "dwi", "t1"), ("anat", "FLAIR", "t2")):
            nib.save(crop(brain[source], k), str(session / sub / f"{case}_ses-0001_{contrast}.nii.gz"))
        nib.save(crop(brain["binary"], k), str(masks / f"{case}_ses-0001_msk.nii.gz"))  # ISLES: lesion 1, else 0
    return {name: root / name for name in ("brats2023_ped", "brats2023_met", "brats2018", "upenn_gbm", "isles22")}


@pytest.mark.slow
@pytest.mark.long  # ten BrainMVP fine-tunings of one epoch with sliding-window tests
def test_the_brainmvp_table_from_the_ten_miniatures(
    tmp_path: Path, stage_model, brain, vs_root: Path, mrbrains_root: Path, abide_root: Path, adhd_root: Path,
    adni_cls_root: Path, capfd,
):
    path, _ = stage_model
    root = tmp_path / "root"
    folders = {**brain_downstream_sets(tmp_path / "made", brain), "vs": vs_root.parent,
               "mrbrains13": mrbrains_root.parent, "abide": abide_root.parent, "adhd200": adhd_root, "adni": adni_cls_root}
    root.mkdir()
    run_table("brainmvp", path, root, folders, tmp_path / "out", capfd)


def run_table(suite: str, pretrained: Path, root: Path, folders: dict[str, Path], out: Path, capfd) -> None:
    """Link each set's folder under ``root/<name>`` (as the user lays out ``--data_root``), run the command for one
    seed and one epoch, and check its table."""
    from medcoss_monai.evaluation.downstream import main
    from medcoss_monai.evaluation.downstream_suites import SUITES

    for name, folder in folders.items():
        (root / name).symlink_to(folder, target_is_directory=True)
    assert sorted(p.name for p in root.iterdir()) == sorted(SUITES[suite])
    code = main(["--pretrained", str(pretrained), "--suite", suite, "--data_root", str(root), "--seeds", "0",
                 "--max_epochs", "1", "--out", str(out), "--batch_size", "2"])
    printed = capfd.readouterr()
    assert code == 0, printed.out[-4000:] + printed.err[-4000:]
    check_table(out, SUITES[suite])


def check_table(out: Path, suite: dict) -> None:
    """Every set of ``suite`` fine-tuned one epoch; its scores in the table's CSV (n = 1) and a row in its markdown."""
    with open(out / "downstream.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for name, spec in suite.items():
        metrics = json.loads((out / name / "s0" / "metrics.json").read_text())
        assert metrics["max_epochs"] == 1, name
        written = {r["metric"]: r for r in rows if r["dataset"] == name}
        scored = 0
        for metric, key in spec.metrics.items():
            value = metrics["metrics"]
            for part in key.split("#"):
                value = value.get(part) if isinstance(value, dict) else None
            if value is None:  # e.g. AUC of a one-class test split: no score, and the table says n = 0
                assert metric not in written or written[metric]["n"] == "0", (name, metric)
                continue
            scored += 1
            assert written[metric]["n"] == "1" and float(written[metric]["mean"]) == pytest.approx(value), (name, metric)
        assert scored, f"{name}: none of {sorted(spec.metrics)} scored"
    table = (out / "downstream.md").read_text()
    assert all(f"| {name} |" in table for name in suite)
