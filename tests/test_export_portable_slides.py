"""Exported pathology stage bundles read slide tiles with MONAI and PyTorch only, exactly as ``LoadSlideTiled`` does.

:data:`~medcoss_monai.bundle.export.portable.SLIDE_IDS` (MONAI ``WSIReader`` with OpenSlide for slides,
``PILReader`` for plain images, in a ``Lambda``) runs on real tiles of the sample ``.svs`` slide and PNG
images while ``import medcoss_monai`` fails: every tile must equal the package's. Then (``-m slow``) a
pathology stage is exported and its ``configs/inference.json`` run in a subprocess without the package
must write the trained network's features of those tiles, one row per tile.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from medcoss_monai.bundle.export import PRETRAIN_WEIGHTS, main
from medcoss_monai.bundle.export.portable import SLIDE_IDS, make_portable_transforms, needs_medcoss
from medcoss_monai.networks.checkpoint import load_state, state_dict_of
from medcoss_monai.transforms import LoadSlideTiled

sys.path.insert(0, str(Path(__file__).parent))
from stage_utils import bundle_section, run_stage  # noqa: E402
from test_export_zoo import read_csv_rows, trained_network_config  # noqa: E402

RUN_WITHOUT_MEDCOSS = """
import sys
sys.modules["medcoss_monai"] = None
from monai.bundle import run
run(config_file="configs/inference.json", meta_file="configs/metadata.json", logging_file=False,
    dataset_dir=sys.argv[1], output_dir=sys.argv[2], device="$torch.device('cpu')")
"""


def _tiles(datalist) -> list[dict]:
    """Three tiles of the sample slide (.svs), two of a PNG image, and a whole PNG image."""
    items = [i for s in ("test", "validation", "training") for i in datalist("pathology")[s]]
    svs = [i for i in items if i["image"].endswith(".svs")][:3]
    png = [i for i in items if i["image"].endswith(".png") and i.get("location")][:2]
    assert len(svs) == 3 and len(png) == 2
    whole = next(i["image"] for i in items if i["image"].endswith("ihc.png"))
    return [dict(i) for i in svs + png] + [{"image": whole}]


def _name(item: dict) -> str:
    if item.get("location") is None:
        return item["image"]
    return f"{item['image']}:level{item.get('level', 0)}:y{item['location'][0]}:x{item['location'][1]}"


def test_monai_only_tiles_equal_load_slide_tiled(datalist, monkeypatch: pytest.MonkeyPatch) -> None:
    from monai.bundle import ConfigParser

    items = _tiles(datalist)
    config = {"imports": ["$import numpy", "$import torch", "$import monai"], **SLIDE_IDS,
              "load": {"_target_": "Compose", "transforms": make_portable_transforms(
                  [{"_target_": "medcoss_monai.transforms.LoadSlideTiled", "keys": ["image"]}])}}
    assert not needs_medcoss(config)
    expected = [torch.as_tensor(LoadSlideTiled("image")(dict(i))["image"]) for i in items]
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "medcoss_monai", None)
        load = ConfigParser(config).get_parsed_content("load")
        got = [load(dict(i))["image"] for i in items]
    for item, g, e in zip(items, got, expected):
        assert g.dtype == torch.float32 and torch.equal(g.as_tensor(), e), item  # measured: bit-identical
        assert g.meta["filename_or_obj"] == _name(item)
    assert got[0].shape == (3, 224, 224) and got[-1].shape[1:] == (512, 512)  # the whole image, not a tile


@pytest.mark.slow  # 104 s on the loaded shared 2-core machine: stage, export, MONAI imported in a subprocess
def test_pathology_stage_bundle_reads_tiles_without_medcoss(datalist, sample_data: Path, tmp_path: Path) -> None:
    stage = run_stage("pathology", tmp_path / "run", rehearsal=False, select_buffer=False)
    bundle = main(["--stage_dir", str(stage), "--out", str(tmp_path / "medcoss_pathology")])
    inference = json.loads((bundle / "configs/inference.json").read_text())
    meta = json.loads((bundle / "configs/metadata.json").read_text())
    assert not needs_medcoss(inference) and "openslide-python" in meta["required_packages_version"]
    items = _tiles(datalist)[:5]
    (tmp_path / "tiles.json").write_text(json.dumps({"test": items}))
    proc = subprocess.run([sys.executable, "-c", RUN_WITHOUT_MEDCOSS, str(tmp_path / "tiles.json"), str(tmp_path / "eval")],
                          cwd=bundle, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_csv_rows(tmp_path / "eval/features.csv")
    assert [r[0] for r in rows] == [_name(i) for i in items]
    feats = torch.tensor([[float(v) for v in r[1:]] for r in rows])
    # in process: the stage's own evaluation chain (LoadSlideTiled...) and the trained stage network
    chain = bundle_section("pathology", "eval#preprocessing")
    net = trained_network_config(bundle).eval()
    net.load_state_dict(state_dict_of(load_state(bundle / PRETRAIN_WEIGHTS), bundle / PRETRAIN_WEIGHTS), strict=True)
    with torch.no_grad():
        expected = torch.cat([net(torch.as_tensor(chain(dict(i))["image"])[None].float()) for i in items])
    torch.testing.assert_close(feats, expected, rtol=1e-4, atol=1e-5)
