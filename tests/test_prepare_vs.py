"""Vestibular-Schwannoma-SEG converter: TCIA's folder layout of MR DICOM series and RTSTRUCTs written from a real
contrast-enhanced brain MRI with its real tumour mask (contours traced from the mask, oblique slices of a real
scanner header), converted, and the rasterised masks compared with the mask they were traced from."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medcoss_monai.data.prepare import prepare
from medcoss_monai.data.prepare.mri_seg import vs_reference_split
from medcoss_monai.errors import BadInputError

CROP = (slice(8, 21), slice(72, 168), slice(136, 232))  # (slice, row, column) around the tumour
CASES = {"VS-SEG-001": "train", "VS-SEG-002": "train", "VS-SEG-003": "train", "VS-SEG-004": "val"}


@pytest.fixture(scope="module")
def mri(sample_data: Path) -> dict:
    """The real T1ce block and tumour mask (slice, row, column), its voxel size and a real scanner's orientation."""
    import itk
    import pydicom

    image = itk.imread(str(sample_data / "mri" / "brain1_image.nrrd"))
    label = itk.array_from_image(itk.imread(str(sample_data / "mri" / "brain1_label.nrrd")))[CROP].astype(np.uint8)
    header = pydicom.dcmread(sample_data / "mri" / "b0dwi_for_fmap+00001.dcm", stop_before_pixels=True)
    spacing = tuple(float(s) for s in image.GetSpacing())  # (column, row, slice)
    return {"image": itk.array_from_image(image)[CROP].astype(np.uint16), "label": label, "spacing": spacing,
            "orientation": [float(v) for v in header.ImageOrientationPatient]}


def _geometry(mri: dict, step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, float]:
    row_dir, col_dir = np.asarray(mri["orientation"][:3]), np.asarray(mri["orientation"][3:])
    normal = np.cross(row_dir, col_dir)
    return row_dir, col_dir, normal, mri["spacing"][0] * step, mri["spacing"][2]


def write_mr_series(folder: Path, mri: dict, description: str, study: str, step: int = 1) -> str:
    """One MR file per slice of ``mri["image"][:, ::step, ::step]``; returns the SeriesInstanceUID."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    folder.mkdir(parents=True)
    vol = mri["image"][:, ::step, ::step]
    row_dir, col_dir, normal, pixel, thickness = _geometry(mri, step)
    series = generate_uid()
    for k in range(vol.shape[0]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = MRImageStorage, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = study, series, "MR"
        ds.PatientID, ds.SeriesDescription, ds.InstanceNumber = folder.parts[-3], description, k + 1
        ds.FrameOfReferenceUID = generate_uid(entropy_srcs=[study])
        ds.ImagePositionPatient = [float(v) for v in np.array([-40.0, -30.0, 10.0]) + k * thickness * normal]
        ds.ImageOrientationPatient = mri["orientation"]
        ds.PixelSpacing, ds.SliceThickness = [pixel, pixel], thickness
        ds.Rows, ds.Columns = vol.shape[1], vol.shape[2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = np.ascontiguousarray(vol[k]).tobytes()
        ds.save_as(folder / f"1-{k + 1:03d}.dcm", enforce_file_format=True)
    return series


def tumour_contours(mri: dict) -> list[np.ndarray]:
    """The tumour's outlines traced on each slice of the full-resolution grid, in patient mm (x, y, z triplets)."""
    import contourpy

    row_dir, col_dir, normal, pixel, thickness = _geometry(mri, 1)
    out = []
    for k, plane in enumerate(mri["label"]):
        if not plane.any():
            continue
        for line in contourpy.contour_generator(z=plane.astype(float)).lines(0.5):  # (column, row) points
            origin = np.array([-40.0, -30.0, 10.0]) + k * thickness * normal
            out.append(origin + np.outer(line[:, 0] * pixel, row_dir) + np.outer(line[:, 1] * pixel, col_dir))
    return out


def write_rtstruct(folder: Path, series_uid: str, study: str, contours: list[np.ndarray]) -> None:
    """An RTSTRUCT drawn on ``series_uid``: a small 'cochlea' ROI first, then the tumour as 'TV'."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, RTStructureSetStorage, generate_uid

    folder.mkdir(parents=True)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = RTStructureSetStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = RTStructureSetStorage, meta.MediaStorageSOPInstanceUID, "RTSTRUCT"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, generate_uid()
    series = Dataset()
    series.SeriesInstanceUID = series_uid
    ref_study = Dataset()
    ref_study.RTReferencedSeriesSequence = Sequence([series])
    frame = Dataset()
    frame.FrameOfReferenceUID = generate_uid(entropy_srcs=[study])
    frame.RTReferencedStudySequence = Sequence([ref_study])
    ds.ReferencedFrameOfReferenceSequence = Sequence([frame])
    cochlea = [contours[0][:3] + np.array([5.0, 5.0, 0.0])]  # a small triangle on the same plane
    rois, roi_contours = [], []
    for number, (name, polygons) in enumerate((("cochlea", cochlea), ("TV", contours)), start=1):
        roi = Dataset()
        roi.ROINumber, roi.ROIName = number, name
        rois.append(roi)
        items = []
        for polygon in polygons:
            c = Dataset()
            c.ContourGeometricType, c.NumberOfContourPoints = "CLOSED_PLANAR", len(polygon)
            c.ContourData = [round(float(v), 4) for v in polygon.ravel()]
            items.append(c)
        rc = Dataset()
        rc.ReferencedROINumber, rc.ContourSequence = number, Sequence(items)
        roi_contours.append(rc)
    ds.StructureSetROISequence, ds.ROIContourSequence = Sequence(rois), Sequence(roi_contours)
    ds.save_as(folder / "1-1.dcm", enforce_file_format=True)


@pytest.fixture(scope="module")
def vs_root(tmp_path_factory, mri) -> Path:
    from pydicom.uid import generate_uid

    root = tmp_path_factory.mktemp("vs") / "manifest-1614264588831" / "Vestibular-Schwannoma-SEG"
    contours = tumour_contours(mri)
    for case in CASES:
        study_uid = generate_uid()
        study = root / case / f"03-17-2008-NA-MRI HEAD-{case[-3:]}56"
        t1 = write_mr_series(study / "1.000000-t1_mpr_sag_we_cor_p2_iso-11111", mri, "t1_mpr_sag_we_cor_p2_iso", study_uid)
        t2 = write_mr_series(study / "2.000000-t2_ci3d_tra_1mm_v3_448-22222", mri, "t2_ci3d_tra_1mm_v3_448", study_uid, 2)
        write_rtstruct(study / "1.000000-RTSTRUCT t1-33333", t1, study_uid, contours)
        write_rtstruct(study / "1.000000-RTSTRUCT t2-44444", t2, study_uid, contours)
    (root / "VS-SEG-999").mkdir()  # a case outside the reference's split
    return root


def test_cases_become_volumes_and_masks_with_the_reference_split(vs_root: Path, tmp_path: Path, mri):
    import itk

    data = prepare("vs", vs_root.parent, tmp_path / "vs.json", cache_dir=tmp_path / "cache", progress=False)
    assert [it["case"] for it in data["training"] + data["validation"]] == ["vs_gk_1", "vs_gk_2", "vs_gk_3"]
    assert [it["case"] for it in data["test"]] == ["vs_gk_4"]
    assert data["filtered"] == {"cases not in the reference split": 1}
    assert len(data["missing"]) == len(vs_reference_split()) - 4
    item = data["test"][0]
    assert item["structure"] == "TV" and item["group"] == "vs:VS-SEG-004"
    image, mask = itk.imread(item["image"]), itk.imread(item["label"])
    np.testing.assert_array_equal(itk.array_view_from_image(image), mri["image"])
    # the traced outlines fill back exactly the voxels they were traced from, on the oblique grid
    np.testing.assert_array_equal(itk.array_view_from_image(mask), mri["label"])
    np.testing.assert_allclose(tuple(mask.GetSpacing()), mri["spacing"], rtol=1e-4)
    np.testing.assert_allclose(itk.array_from_matrix(mask.GetDirection()), itk.array_from_matrix(image.GetDirection()))
    # the T2 grid (every other row and column): the same outlines land on its own voxels
    t2 = itk.array_view_from_image(itk.imread(item["mask_t2"]))
    np.testing.assert_array_equal(t2, mri["label"][:, ::2, ::2])


def test_datalist_passes_the_mri_task_checks(vs_root: Path, tmp_path: Path):
    from medcoss_monai.bundle.finetune import checked_items

    data = prepare("vs", vs_root.parent, tmp_path / "vs.json", cache_dir=tmp_path / "cache", workers=2, progress=False)
    assert [len(data[s]) for s in ("training", "validation", "test")] == [2, 1, 1]  # a small set still validates
    assert len(checked_items(data["training"] + data["validation"] + data["test"], 2, modality="mri")) == 4


def test_case_without_its_t1_structure_set_is_listed_and_wrong_root_refused(vs_root: Path, tmp_path: Path):
    import shutil

    broken = tmp_path / "VS"
    shutil.copytree(vs_root, broken)
    study = next((broken / "VS-SEG-002").iterdir())
    shutil.rmtree(study / "1.000000-RTSTRUCT t1-33333")
    with pytest.raises(BadInputError, match=r"VS-SEG-002: no RTSTRUCT drawn on the T1 series 1.000000-t1_mpr"):
        prepare("vs", broken, tmp_path / "o.json", cache_dir=tmp_path / "cache", progress=False)
    data = prepare("vs", broken, tmp_path / "o.json", cache_dir=tmp_path / "cache", skip_bad_inputs=True, progress=False)
    assert sorted(it["case"] for it in data["training"] + data["validation"]) == ["vs_gk_1", "vs_gk_3"]
    assert len(data["rejected"]) == 1
    with pytest.raises(BadInputError, match=r"VS-SEG-\* not found under .*: is this the Vestibular-Schwannoma-SEG folder\?"):
        prepare("vs", broken / "VS-SEG-001", tmp_path / "o.json", cache_dir=tmp_path / "c", progress=False)


def test_brainmvp_variant_writes_t2_studies(vs_root: Path, tmp_path: Path, mri):
    import itk

    from medcoss_monai.apps.brainmvp.studies import study_datalist

    out = tmp_path / "vs_brainmvp.json"
    data = prepare("vs_brainmvp", vs_root, out, cache_dir=tmp_path / "cache", progress=False)
    study = data["test"][0]
    assert list(study["image"]) == ["t2"] and study["study"] == "vs_gk_4"
    np.testing.assert_array_equal(itk.array_view_from_image(itk.imread(study["label"])), mri["label"][:, ::2, ::2])
    assert len(study_datalist(out, "training")) + len(study_datalist(out, "validation")) == 3 and data["filtered"]["cases without a T2 series and its RTSTRUCT"] == 0
