"""Rehearsal rate: the paper overlay rehearses each buffer item about once per epoch (the reference's rule);
the demo keeps its fixed share of the stage per earlier modality."""

from __future__ import annotations

import pytest
from stage_utils import BUNDLES

from medcoss_monai.layout import read_bundle

# mechanics: a stage of 100 current batches and two buffers of very different sizes, batches of 10
LOADERS = {
    "train#current_loader": "$torch.utils.data.DataLoader(list(range(1000)), batch_size=10)",
    "rehearsal_loaders": "${m: torch.utils.data.DataLoader(list(range(n)), batch_size=10) for m, n in (('report', 300), ('xray', 65))}",
}


def _rehearsal(files):
    parser = read_bundle([BUNDLES / f for f in files], {"output_dir": "/tmp/unused", **LOADERS})
    return parser, parser.get_parsed_content("train#dataloader")


@pytest.mark.parametrize("modality", ["report", "xray", "ct", "mri", "pathology"])
def test_paper_overlay_rehearses_every_buffer_item_about_once_per_epoch(modality):
    parser, loader = _rehearsal([f"stage_{modality}.json", "paper_scale.json"])
    assert parser.get_parsed_content("rehearsal_relative_to") == "buffer"
    assert parser.get_parsed_content("rehearsal_ratio") == 1.0
    # reference dataloader/Jointly_Dataset.py: len(buffer) // batch_size batches of each buffer per epoch
    counts = loader.buffer_counts()
    assert counts == {"report": 30, "xray": 7}
    for m, n in (("report", 300), ("xray", 65)):
        assert n <= counts[m] * 10 < n + 10  # each buffer item once per epoch (the last batch part full)
    assert len(loader) == 100 + 37


@pytest.mark.parametrize("modality", ["ct", "pathology"])
def test_demo_keeps_a_fixed_share_of_the_stage_per_earlier_modality(modality):
    parser, loader = _rehearsal([f"stage_{modality}.json"])
    assert parser.get_parsed_content("rehearsal_relative_to") == "current"
    assert loader.buffer_counts() == {"report": 20, "xray": 20}  # 0.2 x 100 current batches, whatever the buffer's size
