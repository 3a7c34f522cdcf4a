"""RICORD converter: TCIA's folder layout of DICOM series written from a real CT volume, converted with the
reference's split."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medcoss_monai.data.prepare import prepare
from medcoss_monai.data.prepare.ricord import reference_split
from medcoss_monai.errors import BadInputError

# six series of the reference's lists, two per split and one per class in each: (collection, patient, study
# folder, series folder); RICORD 1A is COVID-positive (label 1), 1B negative (0)
SERIES = [
    ("1A", "ID660042-000149", "10-19-2004-NA-CT CHEST WITHOUT CONTRAST-12345", "3.000000-NA-36469"),  # train, 1
    ("1A", "IDSITE2-000105", "03-30-2004-NA-CT CHEST-23456", "2.000000-NA-27512"),  # test, 1
    ("1B", "ID440808-000088", "03-07-2003-CTA CHEST-34567", "601.000000-THORAX-PE-ART-AXIAL-3X3-13018"),  # train, 0
    ("1A", "ID419639-000906", "10-23-2002-NA-CT CHEST-45678", "2.000000-ROUTINE-CHEST-NON-CON-46543"),  # val, 1
    ("1B", "ID660042-000186", "02-14-1998-NA-CT CHEST-56789", "2.000000-NA-46056"),  # val, 0
    ("1B", "ID660042-000228", "11-24-1999-NA-CT CHEST-67890", "2.000000-NA-55762"),  # test, 0
]


@pytest.fixture(scope="module")
def ct(sample_data: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    img = nib.load(str(sample_data / "ct" / "cranium_ct.nii.gz"))
    vol = np.rint(img.get_fdata()).astype(np.int16)[64:192, 64:192, 40:48]  # a real block, 8 slices
    return vol, tuple(float(z) for z in img.header.get_zooms()[:3])


def write_series(folder: Path, vol: np.ndarray, zooms: tuple[float, ...], patient: str) -> None:
    """One CT DICOM file per slice (pixels = ``vol[:, :, k]`` as rows x columns), as a scanner writes them."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True)
    study, series = generate_uid(), generate_uid()
    for k in range(vol.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.PatientID, ds.Modality = study, series, patient, "CT"
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [0.0, 0.0, float(k * zooms[2])]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = [zooms[0], zooms[1]], zooms[2]
        ds.Rows, ds.Columns = vol.shape[0], vol.shape[1]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.PixelData = np.ascontiguousarray(vol[:, :, k]).tobytes()
        ds.save_as(folder / f"1-{k + 1:03d}.dcm", enforce_file_format=True)


@pytest.fixture
def ricord_root(tmp_path: Path, ct) -> Path:
    root = tmp_path / "RICORD"
    for collection, patient, study, series in SERIES:
        write_series(root / f"MIDRC-RICORD-{collection}" / patient / study / series, *ct, patient)
    # a series of the download that the reference does not list
    write_series(root / "MIDRC-RICORD-1B" / "ID440808-000088" / "03-07-2003-CTA CHEST-34567" / "2.000000-SCOUT-11111",
                 ct[0][:, :, :2], ct[1], "ID440808-000088")
    return root


def test_series_become_volumes_with_the_reference_split(ricord_root: Path, tmp_path: Path, ct):
    import itk

    vol, zooms = ct
    data = prepare("ricord", ricord_root, tmp_path / "r.json", cache_dir=tmp_path / "cache", progress=False)
    assert [(it["series"], it["label"]) for it in data["training"]] == [
        ("ID660042-000149_date10-19-2004_3.000000-NA-36469", 1),
        ("ID440808-000088_date03-07-2003_601.000000-THORAX-PE-ART-AXIAL-3X3-13018", 0)]
    assert [(it["series"], it["label"]) for it in data["validation"]] == [
        ("ID419639-000906_date10-23-2002_2.000000-ROUTINE-CHEST-NON-CON-46543", 1),
        ("ID660042-000186_date02-14-1998_2.000000-NA-46056", 0)]
    assert [it["series"] for it in data["test"]] == ["IDSITE2-000105_date03-30-2004_2.000000-NA-27512",
                                                     "ID660042-000228_date11-24-1999_2.000000-NA-55762"]
    assert data["filtered"] == {"series not in the reference split": 1}
    assert len(data["missing"]) == len(reference_split()) - len(SERIES)
    image = itk.imread(data["test"][0]["image"])
    # ITK keeps (slice, row, column): the slices in position order, each as the scanner wrote it
    np.testing.assert_array_equal(itk.array_view_from_image(image), np.moveaxis(vol, 2, 0))
    np.testing.assert_allclose(tuple(image.GetSpacing()), (zooms[1], zooms[0], zooms[2]), rtol=1e-5)


def test_reference_split_sizes():
    splits = list(reference_split().values())
    assert [splits.count(s) for s in ("training", "validation", "test")] == [194, 52, 84]


def test_datalist_passes_the_ct_task_checks(ricord_root: Path, tmp_path: Path):
    from medcoss_monai.bundle.finetune import checked_items

    data = prepare("ricord", ricord_root, tmp_path / "r.json", cache_dir=tmp_path / "cache", workers=2, progress=False)
    assert len(checked_items(data["training"], 2, modality="ct")) == 2


def test_unreadable_series_is_listed_and_wrong_root_refused(ricord_root: Path, tmp_path: Path):
    broken = ricord_root / "MIDRC-RICORD-1A" / SERIES[1][1] / SERIES[1][2] / SERIES[1][3]
    for f in broken.iterdir():
        f.write_bytes(b"not dicom")
    with pytest.raises(BadInputError, match=f"{broken}: ValueError: holds 0 DICOM series"):
        prepare("ricord", ricord_root, tmp_path / "r.json", cache_dir=tmp_path / "cache", progress=False)
    with pytest.raises(BadInputError, match=r"MIDRC-RICORD-1A not found under .*: is this the MIDRC-RICORD-1A \+ 1B folder\?"):
        prepare("ricord", ricord_root / "MIDRC-RICORD-1B", tmp_path / "r.json", cache_dir=tmp_path / "c", progress=False)
