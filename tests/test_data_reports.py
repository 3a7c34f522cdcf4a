"""Report-corpus helpers on the real Indiana University reports, plus txt/csv corpora."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from medcoss_monai.data.reports import load_report_corpus, parse_indiana_report
from medcoss_monai.transforms import report_text


@pytest.fixture(scope="module")
def indiana_xml(sample_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding a few real Indiana XML reports, extracted from the fetched archive."""
    folder = tmp_path_factory.mktemp("indiana") / "ecgen-radiology"
    folder.mkdir()
    with tarfile.open(sample_data / "report/NLMCXR_reports.tgz") as tar:
        for n in (1, 2, 10, 1023):
            (folder / f"{n}.xml").write_bytes(tar.extractfile(f"ecgen-radiology/{n}.xml").read())
    return folder


def test_parse_known_reports(indiana_xml: Path) -> None:
    r1 = parse_indiana_report(indiana_xml / "1.xml")
    assert r1["id"] == "CXR1"
    assert r1["mesh"] == ["normal"] and r1["normal"] is True
    assert r1["findings"].startswith("The cardiac silhouette and mediastinum size are within normal limits.")
    assert r1["impression"] == "Normal chest x-XXXX."
    assert r1["text"] == f"{r1['findings']} {r1['impression']}"

    r2 = parse_indiana_report(indiana_xml / "2.xml")
    # "Cardiomegaly/borderline", "Pulmonary Artery/enlarged": main headings, lower-cased
    assert r2["id"] == "CXR2" and r2["mesh"] == ["cardiomegaly", "pulmonary artery"] and r2["normal"] is False


def test_folder_matches_archive_and_datalist(indiana_xml: Path, sample_data: Path, datalist) -> None:
    from_folder = load_report_corpus(indiana_xml)
    assert [r["id"] for r in from_folder] == ["CXR1", "CXR2", "CXR10", "CXR1023"]  # numeric, not text, order

    corpus = load_report_corpus(sample_data / "report/NLMCXR_reports.tgz")
    assert len(corpus) == 3927  # 28 of the 3,955 reports have neither findings nor impression
    assert sum(r["normal"] for r in corpus) == 1363
    by_id = {r["id"]: r for r in corpus}
    for r in from_folder:
        assert by_id[r["id"]] == r
    items = [it for split in ("training", "validation", "test") for it in datalist("report")[split]]
    assert {i["id"]: i["text"] for i in items} == {r["id"]: r["text"] for r in corpus}


def test_txt_corpus(tmp_path: Path) -> None:
    path = tmp_path / "reports.txt"
    path.write_text("No acute cardiopulmonary abnormality.\n\n   \nMild cardiomegaly.  Small left effusion.\n")
    corpus = load_report_corpus(path)
    texts = [r["text"] for r in corpus]
    assert texts == ["No acute cardiopulmonary abnormality.", "Mild cardiomegaly. Small left effusion."]
    assert [r["id"] for r in corpus] == ["reports:1", "reports:4"]


@pytest.mark.parametrize(
    "header,row,expected",
    [
        ("id,Text", "a7,Heart size normal.", ("a7", "Heart size normal.")),
        ("report", "Lungs are clear.", ("r:1", "Lungs are clear.")),
        ("findings,impression", "Lungs are clear.,No acute disease.", ("r:1", "Lungs are clear. No acute disease.")),
        ("findings,impression", ",No acute disease.", ("r:1", "No acute disease.")),
    ],
)
def test_csv_corpus(tmp_path: Path, header: str, row: str, expected: tuple[str, str]) -> None:
    path = tmp_path / "r.csv"
    path.write_text(f"{header}\n{row}\n")
    assert [(r["id"], r["text"]) for r in load_report_corpus(path)] == [expected]


def test_bad_corpora_name_the_file(tmp_path: Path) -> None:
    csv_path = tmp_path / "notes.csv"
    csv_path.write_text("patient,age\nA,3\n")
    with pytest.raises(ValueError, match=r"notes\.csv.*no column named 'text'"):
        load_report_corpus(csv_path)

    xml_path = tmp_path / "broken.xml"
    xml_path.write_text("<eCitation><uId id='CXR9'/><Abstract>")
    with pytest.raises(ValueError, match=r"broken\.xml"):
        parse_indiana_report(xml_path)
    with pytest.raises(ValueError, match=r"broken\.xml"):
        load_report_corpus(tmp_path)  # a folder with a broken report fails on that report

    with pytest.raises(ValueError, match=r"scan\.png.*Unsupported|Unsupported.*scan\.png"):
        (tmp_path / "scan.png").write_bytes(b"\x89PNG")
        load_report_corpus(tmp_path / "scan.png")
    with pytest.raises(FileNotFoundError, match="nowhere.txt"):
        load_report_corpus(tmp_path / "nowhere.txt")


def test_report_text(tmp_path: Path) -> None:
    assert report_text({"text": "  Heart size\n normal. "}) == "Heart size normal."
    f = tmp_path / "r1.txt"
    f.write_text("Lungs are clear.\n")
    assert report_text({"text_file": str(f)}) == "Lungs are clear."
    with pytest.raises(FileNotFoundError, match="r2.txt"):
        report_text({"text_file": str(tmp_path / "r2.txt")})
    with pytest.raises(ValueError, match="neither 'text' nor 'text_file'"):
        report_text({"image": "x.png"})
