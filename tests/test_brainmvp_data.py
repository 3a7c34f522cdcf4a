"""BrainMVP study datalists: BraTS and folder-per-study converters on real files, held-out sample studies, the real
two-contrast sample study (co-registered, trained only, its views), the slab task."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from medcoss_monai.apps.brainmvp.studies import (
    brats_studies,
    folder_studies,
    icbm_slab_task,
    sample_studies,
    sample_task_datalist,
    study_datalist,
)
from medcoss_monai.errors import BadInputError


def _mri(sample_data: Path, name: str) -> Path:
    return sample_data / "mri" / name


def _brats_folder(tmp_path: Path, sample_data: Path) -> Path:
    """Two BraTS cases from real sample files: 2018-2021 names and the 2023 names."""
    root = tmp_path / "brats"
    for case, names in (("BraTS_001", ("t1", "t1ce", "seg")), ("BraTS-GLI-002", ("t1n", "t2w"))):
        (root / case).mkdir(parents=True)
        for name, src in zip(names, ("ch2.nii.gz", "ch2.nii.gz", "ch2.nii.gz")):
            sep = "-" if case.startswith("BraTS-") else "_"
            shutil.copy(_mri(sample_data, src), root / case / f"{case}{sep}{name}.nii.gz")
    return root


def test_brats_converter_on_a_folder_of_sample_files(tmp_path, sample_data):
    root = _brats_folder(tmp_path, sample_data)
    studies = brats_studies(root)
    assert [s["study"] for s in studies] == ["BraTS-GLI-002", "BraTS_001"]
    assert sorted(studies[1]["image"]) == ["t1", "t1ce"] and studies[1]["label"].endswith("BraTS_001_seg.nii.gz")
    assert sorted(studies[0]["image"]) == ["t1", "t2"] and "label" not in studies[0]
    # the bundles' entry point recognises the layout
    assert study_datalist(root) == studies

    # the stage's loading chain stacks a BraTS case into one channel per contrast
    from monai.transforms import Compose

    from tests.stage_utils import bundle_section

    d = Compose(bundle_section("brainmvp", "train#deterministic_transforms"))(studies[1])
    assert d["image"].shape[0] == 2 and d["contrasts"] == ["t1", "t1ce"]
    assert float(d["image"].min()) >= 0.0 and float(d["image"].max()) <= 1.0


def test_brats_converter_names_the_bad_file(tmp_path, sample_data):
    root = _brats_folder(tmp_path, sample_data)
    shutil.copy(_mri(sample_data, "ch2.nii.gz"), root / "BraTS_001" / "BraTS_001_dti.nii.gz")
    with pytest.raises(BadInputError, match=r"BraTS_001_dti\.nii\.gz: unknown BraTS suffix 'dti'"):
        brats_studies(root)


def test_folder_per_study_converter(tmp_path, sample_data):
    root = tmp_path / "studies"
    (root / "subj1").mkdir(parents=True)
    shutil.copy(_mri(sample_data, "ch2.nii.gz"), root / "subj1" / "T1.nii.gz")
    shutil.copy(_mri(sample_data, "mean_reg2mean.nii.gz"), root / "subj1" / "pd.nii.gz")
    studies = study_datalist(root)
    assert studies == [{"image": {"t1": str(root / "subj1" / "T1.nii.gz"), "pd": str(root / "subj1" / "pd.nii.gz")}, "study": "subj1"}]
    shutil.copy(_mri(sample_data, "ch2.nii.gz"), root / "subj1" / "notes.nii.gz")
    with pytest.raises(BadInputError, match="notes.nii.gz: name it after its contrast"):
        folder_studies(root)


def test_study_datalist_json_refuses_missing_files_and_unknown_contrasts(tmp_path, sample_data):
    path = tmp_path / "studies.json"
    path.write_text(json.dumps({"training": [
        {"image": {"t1": str(_mri(sample_data, "ch2.nii.gz"))}, "study": "ok"},
        {"image": {"t1": "gone.nii.gz", "swi": str(_mri(sample_data, "ch2.nii.gz"))}, "study": "bad"},
    ]}))
    with pytest.raises(BadInputError) as err:
        study_datalist(path)
    assert "gone.nii.gz does not exist" in str(err.value) and "unknown contrast 'swi'" in str(err.value)
    assert str(path) in str(err.value)


def test_sample_studies_leave_the_evaluation_files_out(datalist):
    studies = sample_studies()["training"]
    files = {f for s in studies for f in s["image"].values()}
    mri = datalist("mri")
    held = {it[k] for split in ("validation", "test") for it in mri[split] for k in ("image", "t2", "mask", "regions", "gm", "wm", "label") if k in it}
    assert files and not files & held
    assert all("icbm" not in Path(f).name.lower() and "mni" not in Path(f).name.lower() for f in files)
    # the single-contrast MRI training files, and the diffusion series' b=0 (as t2) and b=1500 (dwi)
    assert {c for s in studies for c in s["image"]} == {"t1", "t1ce", "t2", "dwi"}


def _dmri_study(datalist) -> dict:
    studies = [s for s in sample_studies()["training"] if len(s["image"]) >= 2]
    assert len(studies) == 1 and studies[0]["study"] == "heudiconv:dmri"
    return studies[0]


def test_two_contrast_sample_study_is_trained_only_never_evaluated(datalist, tasks_ready):
    """The b=0 / b=1500 study: in BrainMVP's training studies, in no evaluation split, task or MedCoSS stage."""
    study = _dmri_study(datalist)
    assert sorted(study["image"]) == ["dwi", "t2"]
    files = {str(Path(f).resolve()) for f in study["image"].values()}
    assert all(Path(f).is_file() for f in files)
    from medcoss_monai import MODALITIES
    from medcoss_monai.samples.tasks import TASKS, load_task_datalist

    def paths(item):
        for v in item.values():
            if isinstance(v, dict):
                yield from paths(v)
            elif isinstance(v, str) and Path(v).suffix in (".gz", ".nii", ".dcm", ".nrrd"):
                yield str(Path(v).resolve())

    for modality in MODALITIES:
        data = datalist(modality)
        for split in ("training", "validation", "test"):  # MedCoSS stages train on 'training' only
            assert not files & {p for it in data[split] for p in paths(it)}, (modality, split)
            assert "heudiconv:dmri" not in {it.get("group") for it in data[split]}
    for name in TASKS:
        task = load_task_datalist(name, prepare=False)
        assert not files & {p for split in ("training", "validation", "test") for it in task.get(split, []) for p in paths(it)}, name
    slab = json.loads(Path(sample_task_datalist()).read_text())
    assert not files & {p for split in ("training", "validation", "test") for it in slab.get(split, []) for p in paths(it)}


def test_two_contrast_sample_study_is_co_registered(datalist):
    """Both contrasts are one grid of one acquisition, and the stage's loading chain stacks them unresampled."""
    import nibabel as nib
    from monai.transforms import Compose

    from tests.stage_utils import bundle_section

    study = _dmri_study(datalist)
    b0, dwi = (nib.load(study["image"][c]) for c in ("t2", "dwi"))
    assert b0.shape == dwi.shape == (152, 150, 81) and np.allclose(b0.affine, dwi.affine)
    assert np.allclose(b0.header.get_zooms(), 1.5)
    d = Compose(bundle_section("brainmvp", "train#deterministic_transforms"))(study)
    assert d["contrasts"] == ["t2", "dwi"] and d["image"].shape[0] == 2
    t2, dw = (np.asarray(d["image"][k]) for k in (0, 1))
    assert 0.0 <= t2.min() and t2.max() <= 1.0 and 0.0 <= dw.min() and dw.max() <= 1.0
    assert not np.allclose(t2, dw)  # two contrasts, not one image twice
    # the same head in both, in place: their foregrounds overlap, and less so when one is moved by 6 mm
    def dice(a, b):
        return 2 * (a & b).sum() / (a.sum() + b.sum())

    fg_t2, fg_dw = t2 > 0.2, dw > 0.2
    aligned = dice(fg_t2, fg_dw)
    assert aligned > 0.8
    assert all(dice(fg_t2, np.roll(fg_dw, 3, axis=a)) < aligned - 0.05 for a in range(3))


def test_views_of_the_sample_study_take_the_other_contrast(datalist):
    """View B's masked blocks hold the other contrast of the real study; view A's the template."""
    import torch
    from monai.transforms import Compose

    from medcoss_monai.apps.brainmvp.pretext import masked_views
    from medcoss_monai.apps.brainmvp.templates import ModalityTemplates
    from medcoss_monai.apps.brainmvp.multicontrast import RandBlockMaskd, RandContrastPaird
    from tests.stage_utils import bundle_section

    d = Compose(bundle_section("brainmvp", "train#deterministic_transforms"))(_dmri_study(datalist))
    contrasts = ["t1", "t2", "dwi"]
    centre = [s // 2 - 16 for s in d["image"].shape[1:]]
    crop = d["image"][:, centre[0] : centre[0] + 32, centre[1] : centre[1] + 32, centre[2] : centre[2] + 32]
    crop.affine = torch.as_tensor(d["image"].affine).clone()
    crop.affine[:3, 3] += torch.as_tensor(d["image"].affine[:3, :3]).double() @ torch.tensor(centre, dtype=torch.float64)
    seen = set()
    for seed in range(6):
        pair, masker = RandContrastPaird(contrasts), RandBlockMaskd("image", block=8, ratio=0.8)
        pair.set_random_state(seed)
        masker.set_random_state(seed)
        v = masker(pair({"image": crop, "contrasts": d["contrasts"], "study": "dmri"}))
        m = d["contrasts"].index(contrasts[int(v["contrast"])])
        seen.add(m)
        assert bool(v["has_other"])
        torch.testing.assert_close(torch.as_tensor(v["other"]), torch.as_tensor(crop[1 - m : 2 - m]))
    assert seen == {0, 1}  # either contrast is the input, the other fills view B

    templates = ModalityTemplates(contrasts, (96, 116, 96), (2.0, 2.0, 2.0), (-96.0, -132.0, -78.0))
    with torch.no_grad():
        for k, name in enumerate(contrasts):
            templates.templates[name].fill_(2.0 + k)  # outside [0, 1]: never an image value
    batch = {k: torch.as_tensor(v[k])[None] for k in ("image", "mask", "contrast", "other", "has_other", "affine")}
    image, mask, other = batch["image"].float(), batch["mask"].bool(), batch["other"].float()
    view_a, view_b = masked_views(templates, image, mask, batch["contrast"], other, batch["has_other"], batch["affine"])
    assert torch.equal(view_a[~mask], image[~mask]) and torch.equal(view_b[~mask], image[~mask])
    assert torch.equal(view_b[mask], other[mask]) and not torch.equal(other[mask], image[mask])
    # the study's crop is oblique to the template grid: trilinear reads of a constant template agree to rounding
    torch.testing.assert_close(view_a[mask], torch.full_like(view_a[mask], 2.0 + int(batch["contrast"])))


def test_slab_task_splits_the_volume_with_gaps(tmp_path, sample_data):
    import nibabel as nib

    task = icbm_slab_task(tmp_path / "slabs")
    assert len(task["training"]) >= 2 and len(task["test"]) >= 2

    def z_range(study):
        img = nib.load(study["image"]["t1"])
        z0 = img.affine[2, 3]
        return z0, z0 + img.affine[2, 2] * (img.shape[2] - 1)

    ranges = sorted((z_range(s), split) for split in ("training", "test") for s in task[split])
    for ((_, hi), a), ((lo, _), b) in zip(ranges, ranges[1:]):
        assert lo - hi >= 8.0 and a != b  # neighbours alternate between the splits, 8 mm apart
    labels = np.asarray(nib.load(task["test"][0]["label"]).dataobj)
    assert set(np.unique(labels)) <= set(range(5)) and len(np.unique(labels)) >= 3
