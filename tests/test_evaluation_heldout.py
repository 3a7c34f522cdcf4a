"""Held-out pretext scores: crops of the test files cut as the stage cuts training crops, and the converters
that make the new sample volumes readable."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from stage_utils import run_stage

from medcoss_monai.layout import read_stage_bundle, stage_model
from medcoss_monai.evaluation import held_out_batches, held_out_mae_mse
from medcoss_monai.networks import MedCoSSModel
from medcoss_monai.networks.checkpoint import load_strict

torch.set_num_threads(2)


@pytest.mark.slow
def test_ct_crops_come_from_the_held_out_volume_only(sample_data, datalist):
    batches = list(held_out_batches("ct", batch_size=16, seed=0))
    crops = torch.cat(batches)
    # one held-out volume x test#repeats (4) x crops_per_volume (8), windowed to [0, 1] like training
    assert crops.shape == (32, 1, 64, 64, 16) and float(crops.min()) >= 0.0 and float(crops.max()) <= 1.0
    again = torch.cat(list(held_out_batches("ct", batch_size=16, seed=0)))
    assert torch.equal(crops, again)  # the same crops on every call: every network is scored alike
    other = torch.cat(list(held_out_batches("ct", batch_size=16, seed=1)))
    assert not torch.equal(crops, other)
    # the bundle's test list is the datalist's held-out file, not a training volume
    parser = read_stage_bundle("ct")
    assert [Path(i["image"]).name for i in parser.get_parsed_content("test#datalist")] == ["cxr.nii.gz"]


@pytest.mark.slow
def test_a_short_stage_lowers_the_held_out_mse(sample_data, tmp_path):
    """Real evidence at small scale: 54 steps of the pathology stage beat its initialisation on the held-out tile."""
    torch.manual_seed(0)
    network = MedCoSSModel()
    scratch = held_out_mae_mse(network, "pathology", seed=0)
    assert held_out_mae_mse(network, "pathology", seed=0) == scratch  # same crops, same masks
    run_stage("pathology", tmp_path / "run", epochs=2, previous_stage="", max_items=None, batch_size=16, **{"train#repeats": 10})
    trained = load_strict(MedCoSSModel(), stage_model(tmp_path / "run", "pathology"))
    score = held_out_mae_mse(trained, "pathology", seed=0)
    assert 0.0 < score < scratch - 0.1, (scratch, score)


def test_cranium_project_becomes_a_head_ct_in_hu(sample_data, tmp_path):
    from medcoss_monai.samples.converters import inv3_to_nifti

    inv3 = sample_data / "ct" / "Cranium.inv3"
    if not inv3.is_file():
        pytest.skip("the Debian sources are skipped on this machine")
    image = nib.load(inv3_to_nifti(inv3, tmp_path / "head.nii.gz"))
    assert image.shape == (256, 256, 108) and np.allclose(image.header.get_zooms(), (0.957031, 0.957031, 1.5), atol=1e-5)
    hu = np.asarray(image.dataobj)
    assert hu.min() == -1024 and np.percentile(hu, 5) <= -1000  # air around the head
    assert 0.02 < (hu > 700).mean() < 0.08  # skull
    # the vertex is at the top (z grows upwards): the top slices hold less tissue than the skull base
    assert (hu[..., -5:] > -500).mean() < (hu[..., :5] > -500).mean()
    np.testing.assert_array_equal(hu, np.asarray(nib.load(sample_data / "ct" / "cranium_ct.nii.gz").dataobj))
    with pytest.raises(ValueError, match="not an InVesalius project"):
        import tarfile

        bad = tmp_path / "bad.inv3"
        with tarfile.open(bad, "w:gz") as tar:
            tar.add(tmp_path / "head.nii.gz", arcname="volume.nii.gz")
        inv3_to_nifti(bad, tmp_path / "bad.nii.gz")


def test_first_volume_of_a_functional_run(sample_data, tmp_path):
    from medcoss_monai.samples.converters import first_volume

    source = nib.load(sample_data / "mri" / "example4d.nii.gz")
    out = nib.load(first_volume(sample_data / "mri" / "example4d.nii.gz", tmp_path / "vol0.nii.gz"))
    assert source.shape[:3] == out.shape and len(out.shape) == 3 and np.allclose(out.affine, source.affine)
    np.testing.assert_array_equal(np.asarray(out.dataobj), np.asarray(source.dataobj)[..., 0])
