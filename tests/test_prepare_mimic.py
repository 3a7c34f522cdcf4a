"""MIMIC-CXR converters: miniatures of the reports and JPG layouts built from real sample files.

Report texts are real chest X-ray reports (the Indiana corpus of the sample data) written as MIMIC-CXR
report files; images are real radiographs of the sample data saved as JPEG under MIMIC's folder names,
with the split and metadata CSVs in the publisher's columns.
"""

from __future__ import annotations

import csv
import gzip
import re
import textwrap
from pathlib import Path

import pytest
from PIL import Image

from medcoss_monai.data.prepare import prepare
from medcoss_monai.data.prepare.mimic import report_sections
from medcoss_monai.errors import BadInputError

SPLITS = ["train", "train", "validate", "test", "train", "train"]
VIEWS = ["PA", "AP", "PA", "AP", "LATERAL", "PA"]


@pytest.fixture(scope="module")
def reports(sample_data: Path) -> list[dict]:
    from medcoss_monai.data.reports import load_report_corpus

    items = load_report_corpus(sample_data / "report" / "NLMCXR_reports.tgz")
    # reports with both sections and no upper-case "WORD:" inside (that would read as a header)
    keep = [it for it in items if it["findings"] and it["impression"]
            and not re.search(r"\b[A-Z]{2,}:", it["findings"] + it["impression"])]
    return keep[:6]


def _ids(k: int) -> tuple[str, str, str]:
    subject = f"{10000032 + k * 1111}"
    return f"p{subject[:2]}", f"p{subject}", f"s{50414267 + k}"


def _report_file(item: dict) -> str:
    wrap = lambda t: textwrap.fill(t, 70, initial_indent=" ", subsequent_indent=" ")  # noqa: E731
    return (f"{' ' * 33}FINAL REPORT\n EXAMINATION:  CHEST (PA AND LAT)\n \n INDICATION:  ___ with cough\n \n"
            f" COMPARISON:  None.\n \n FINDINGS: \n \n{wrap(item['findings'])}\n \n IMPRESSION: \n \n{wrap(item['impression'])}\n")


def _write_csv_gz(path: Path, columns: list[str], rows: list[dict]) -> None:
    with gzip.open(path, "wt", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)


def _split_rows(n: int) -> list[dict]:
    rows = []
    for k in range(n):
        _, subject, study = _ids(k)
        rows.append({"dicom_id": f"dcm{k:02d}-bde0afdd-112c0b34", "study_id": study[1:], "subject_id": subject[1:],
                     "split": SPLITS[k]})
    return rows


def _write_tables(root: Path, n: int) -> None:
    rows = _split_rows(n)
    _write_csv_gz(root / "mimic-cxr-2.0.0-split.csv.gz", ["dicom_id", "study_id", "subject_id", "split"], rows)
    meta = [{"dicom_id": r["dicom_id"], "subject_id": r["subject_id"], "study_id": r["study_id"],
             "PerformedProcedureStepDescription": "CHEST (PA AND LAT)", "ViewPosition": VIEWS[k], "Rows": 256,
             "Columns": 256} for k, r in enumerate(rows)]
    _write_csv_gz(root / "mimic-cxr-2.0.0-metadata.csv.gz", list(meta[0]), meta)


@pytest.fixture
def reports_root(tmp_path: Path, reports: list[dict]) -> Path:
    root = tmp_path / "mimic-cxr-reports"
    for k, item in enumerate(reports):
        group, subject, study = _ids(k)
        (root / "files" / group / subject).mkdir(parents=True, exist_ok=True)
        (root / "files" / group / subject / f"{study}.txt").write_text(_report_file(item))
    return root


@pytest.fixture
def jpg_root(tmp_path: Path, sample_data: Path) -> Path:
    root = tmp_path / "mimic-cxr-jpg" / "2.0.0"
    pngs = sorted((sample_data / "muscle_mdmoco" / "images").glob("drr_chest_*.png"))[:6]
    for k, (png, row) in enumerate(zip(pngs, _split_rows(6))):
        group, subject, study = _ids(k)
        folder = root / "files" / group / subject / study
        folder.mkdir(parents=True)
        Image.open(png).convert("L").save(folder / f"{row['dicom_id']}.jpg", quality=95)
    _write_tables(root, 6)
    return root


def test_report_sections_give_findings_and_impression(reports: list[dict]):
    sections = report_sections(_report_file(reports[0]))
    assert sections["FINDINGS"] == reports[0]["findings"]
    assert sections["IMPRESSION"] == reports[0]["impression"]
    assert sections["EXAMINATION"] == "CHEST (PA AND LAT)"


def test_reports_official_split_and_frontal_studies(reports_root: Path, reports: list[dict], tmp_path: Path):
    _write_tables(reports_root, len(reports))
    (reports_root / "files" / "p10" / "p10000032" / "s59999999.txt").write_text(" FINAL REPORT\n WET READ: ___\n")
    data = prepare("mimic_cxr_reports", reports_root, tmp_path / "r.json", progress=False)
    by_id = {it["id"]: it for s in ("training", "validation", "test") for it in data[s]}
    # study 4 has only a lateral image: MGCA (and so MedCoSS) keeps studies with a frontal image
    assert sorted(by_id) == sorted(_ids(k)[2] for k in (0, 1, 2, 3, 5))
    assert data["filtered"] == {"no findings or impression": 1, "no frontal image": 1, "not in the split file": 0}
    assert [it["id"] for it in data["validation"]] == [_ids(2)[2]] and [it["id"] for it in data["test"]] == [_ids(3)[2]]
    item = by_id[_ids(0)[2]]
    assert item["text"] == f"{reports[0]['impression']} {reports[0]['findings']}"
    assert item["group"] == f"mimic:{_ids(0)[1]}"


def test_reports_seeded_split_is_reproducible_and_keeps_patients_together(reports_root: Path, tmp_path: Path):
    a = prepare("mimic_cxr_reports", reports_root, tmp_path / "a.json", seed=3, progress=False)
    b = prepare("mimic_cxr_reports", reports_root, tmp_path / "b.json", seed=3, progress=False)
    assert a["split"] == {"seed": 3, "fractions": {"validation": 0.1, "test": 0.1}, "rest": "training", "by": "group"}
    assert [[it["id"] for it in a[s]] for s in ("training", "validation", "test")] == \
           [[it["id"] for it in b[s]] for s in ("training", "validation", "test")]
    assert len(a["validation"]) == 1 and len(a["test"]) == 1 and len(a["training"]) == 4
    tests = {prepare("mimic_cxr_reports", reports_root, tmp_path / "c.json", seed=s, progress=False)["test"][0]["id"]
             for s in range(6)}
    assert len(tests) > 1  # the seed matters


def test_report_datalist_is_accepted_by_the_report_stage(reports_root: Path, tmp_path: Path):
    from medcoss_monai.bundle.stage import load_stage_datalist

    out = tmp_path / "report.json"
    prepare("mimic_cxr_reports", reports_root, out, progress=False)
    assert len(load_stage_datalist(out, "report", "training", check=True)) == 4


def test_jpg_official_split_every_view(jpg_root: Path, tmp_path: Path):
    data = prepare("mimic_cxr_jpg", jpg_root.parent, tmp_path / "x.json", progress=False)  # one folder up: found
    assert [len(data[s]) for s in ("training", "validation", "test")] == [4, 1, 1]
    assert sorted(it["view"] for s in ("training", "validation", "test") for it in data[s]) == sorted(VIEWS)
    assert data["test"][0]["id"] == "dcm03-bde0afdd-112c0b34" and data["split"]["official"] == "mimic-cxr-2.0.0-split.csv.gz"


def test_jpg_datalist_is_accepted_by_the_xray_stage(jpg_root: Path, tmp_path: Path):
    from medcoss_monai.bundle.stage import load_stage_datalist

    out = tmp_path / "xray.json"
    prepare("mimic_cxr_jpg", jpg_root, out, progress=False)
    assert len(load_stage_datalist(out, "xray", "training", check=True)) == 4


def test_jpg_bad_items_listed_together_and_dropped_only_when_asked(jpg_root: Path, tmp_path: Path):
    corrupt = next(jpg_root.glob("files/*/*/*/dcm01-*.jpg"))
    corrupt.write_bytes(b"\x00" * 64)
    stray = corrupt.parent / "not-in-split.jpg"
    Image.new("L", (8, 8)).save(stray)
    with pytest.raises(BadInputError) as err:
        prepare("mimic_cxr_jpg", jpg_root, tmp_path / "x.json", progress=False)
    msg = str(err.value)
    assert f"{corrupt}: unreadable" in msg and f"{stray}: its dicom_id is not in mimic-cxr-2.0.0-split.csv.gz" in msg
    assert not (tmp_path / "x.json").exists()
    data = prepare("mimic_cxr_jpg", jpg_root, tmp_path / "x.json", skip_bad_inputs=True, progress=False)
    assert len(data["training"]) == 3 and {r["file"] for r in data["rejected"]} == {str(corrupt), str(stray)}


def test_wrong_roots_name_the_expected_files(tmp_path: Path):
    with pytest.raises(BadInputError, match=r"mimic-cxr-2.0.0-split.csv.gz or mimic-cxr-2.0.0-split.csv not found under "
                                            r".*: is this the MIMIC-CXR-JPG folder\?"):
        prepare("mimic_cxr_jpg", tmp_path, tmp_path / "o.json", progress=False)
    with pytest.raises(BadInputError, match=r"files/p\*/p\*/s\*.txt not found under .*: is this the MIMIC-CXR reports folder\?"):
        prepare("mimic_cxr_reports", tmp_path, tmp_path / "o.json", progress=False)
