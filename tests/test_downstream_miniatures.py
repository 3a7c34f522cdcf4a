"""Issue 26's "done when" for the MedCoSS table: ``evaluation.downstream --suite medcoss`` on a root holding the
miniature of each of its nine data sets (the converters' test folders, in their publishers' layouts, of real sample
files) converts every one and fine-tunes every one for an epoch through its bundle, then writes the table."""

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
from test_prepare_sets import glas_root, lits_root, nct_root, pudmed20k_root, qata_root  # noqa: E402,F401
from test_prepare_vs import mri, vs_root  # noqa: E402,F401

from medcoss_monai.evaluation.downstream_suites import MEDCOSS  # noqa: E402


@pytest.mark.slow
@pytest.mark.long  # nine fine-tunings of one epoch, 3D ones with sliding-window tests: minutes on two cores
def test_the_medcoss_table_from_the_nine_miniatures(
    tmp_path: Path, sample_data: Path, nct_root: Path, glas_root: Path, lits_root: Path, qata_root: Path,
    ricord_root: Path, vs_root: Path, la_root: Path, capfd,
):
    from medcoss_monai.evaluation.downstream import main

    model = random_stage(tmp_path / "stage")
    root = tmp_path / "root"
    chestxr_root(root, sample_data, per_class=(3, 2))
    # each set's folder as its publisher's download unpacks (the converters' tests pass the same folders)
    folders = {"pudmed20k": pudmed20k_root(tmp_path, sample_data)[0].parent, "qata_cov19": qata_root,
               "ricord": ricord_root, "lits": lits_root, "vs": vs_root.parent, "la": la_root.parent,
               "nct_crc_he": nct_root, "glas": glas_root}
    for name, folder in folders.items():
        (root / name).symlink_to(folder, target_is_directory=True)
    assert sorted(p.name for p in root.iterdir()) == sorted(MEDCOSS)
    out = tmp_path / "out"
    code = main(["--pretrained", str(model), "--suite", "medcoss", "--data_root", str(root), "--seeds", "0",
                 "--max_epochs", "1", "--out", str(out), "--batch_size", "2"])
    printed = capfd.readouterr()
    assert code == 0, printed.out[-4000:] + printed.err[-4000:]
    with open(out / "downstream.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for name, spec in MEDCOSS.items():
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
    assert all(f"| {name} |" in table for name in MEDCOSS)
