"""The public data sets of the papers: name -> where to get it, its licence, what to download, its converter.

Facts come from the papers' repositories (``yeerwen/MedCoSS`` README, ``Preprocess/``, ``Downstream/``;
``shaohao011/BrainMVP`` ``jsons/``) and the publishers' pages. A converter is named as
``"module:function"`` inside this package and imported only when used, so ``--list`` stays instant.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from medcoss_monai.errors import BadInputError

__all__ = ["DatasetSpec", "DATASETS", "get_spec", "converter_of"]


@dataclass(frozen=True)
class DatasetSpec:
    """One data set of the registry.

    Args:
        name: the name on the command line (lower case).
        title: its usual name.
        use: which paper uses it and how (``"MedCoSS pre-training, report stage"``).
        source: publisher and URL.
        licence: the licence or access terms, in short.
        download: what the user downloads and unpacks into ``--root``.
        converter: ``"module:function"`` in this package, or ``""`` while not implemented.
        todo: what a converter still needs, for a data set without one.
    """

    name: str
    title: str
    use: str
    source: str
    licence: str
    download: str
    converter: str = ""
    todo: str = ""


_PHYSIONET = "PhysioNet Credentialed Health Data License 1.5.0 (credentialed access, data use agreement)"
_TCIA = "TCIA: CC BY 4.0 (see the collection page)"

_SPECS = [
    # MedCoSS pre-training
    DatasetSpec("mimic_cxr_reports", "MIMIC-CXR reports", "MedCoSS pre-training, report stage",
                "PhysioNet, https://physionet.org/content/mimic-cxr/2.0.0/", _PHYSIONET,
                "mimic-cxr-reports.zip (files/pXX/pNNNNNNNN/sNNNNNNNN.txt); optionally mimic-cxr-2.0.0-split.csv.gz "
                "and mimic-cxr-2.0.0-metadata.csv.gz from MIMIC-CXR-JPG beside it for the official split",
                "mimic:convert_reports"),
    DatasetSpec("mimic_cxr_jpg", "MIMIC-CXR-JPG", "MedCoSS pre-training, X-ray stage",
                "PhysioNet, https://physionet.org/content/mimic-cxr-jpg/2.0.0/", _PHYSIONET,
                "files/pXX/pNNNNNNNN/sNNNNNNNN/*.jpg with mimic-cxr-2.0.0-split.csv.gz and mimic-cxr-2.0.0-metadata.csv.gz",
                "mimic:convert_jpg"),
    DatasetSpec("deeplesion", "DeepLesion", "MedCoSS pre-training, CT stage",
                "NIH Clinical Center, https://nihcc.app.box.com/v/DeepLesion",
                "NIH terms of use: free for research, cite the paper",
                "Images_png_*.zip unpacked into Images_png/, and DL_info.csv",
                "deeplesion:convert"),
    DatasetSpec("adni", "ADNI", "MedCoSS pre-training, MRI stage", "ADNI / LONI IDA, https://adni.loni.usc.edu/",
                "ADNI Data Use Agreement (application required; no redistribution)",
                "NIfTI images as the IDA exports them: ADNI/<subject>/<description>/<date>/<image id>/*.nii",
                "volumes:convert_adni"),
    DatasetSpec("tcga", "TCGA (7 projects)", "MedCoSS pre-training, pathology stage",
                "NCI GDC, https://portal.gdc.cancer.gov/ (TCGA-THYM, -THCA, -BRCA, -UCEC, -UVM, -OV, -MESO)",
                "NIH GDC open access, GDC data use terms",
                "diagnostic slides (.svs) via gdc-client (<uuid>/<slide>.svs), in TCGA-<PROJECT>/ folders or with the "
                "gdc_sample_sheet*.tsv in --root", "slides:convert_tcga"),
    # MedCoSS downstream
    DatasetSpec("pudmed20k", "PubMed 20k RCT", "MedCoSS downstream, text classification",
                "https://github.com/Franck-Dernoncourt/pubmed-rct (PubMed_20k_RCT)", "see the repository (research use)",
                "PubMed_20k_RCT/{train,dev,test}.txt", "text:convert_pudmed20k"),
    DatasetSpec("chestxr", "ChestXR (COVID-19)", "MedCoSS downstream, X-ray classification",
                "https://cxr-covid19.grand-challenge.org/Download/", "grand-challenge terms (research use)",
                "train/ and validation/, each with covid/, normal/, pneumonia/", "xray:convert_chestxr"),
    DatasetSpec("qata_cov19", "QaTa-COV19 v2", "MedCoSS downstream, X-ray segmentation",
                "Kaggle, https://www.kaggle.com/datasets/aysendegerli/qatacov19-dataset", "see the Kaggle page (research use)",
                "QaTa-COV19-v2/{Train Set,Test Set}/{Images,Ground-truths}", "xray:convert_qata_cov19"),
    DatasetSpec("ricord", "MIDRC-RICORD-1A + 1B", "MedCoSS downstream, CT classification (COVID vs not)",
                "TCIA, https://www.cancerimagingarchive.net/collection/midrc-ricord-1a/ and .../midrc-ricord-1b/", _TCIA,
                "MIDRC-RICORD-1A/ and MIDRC-RICORD-1B/ as TCIA's downloader writes them (descriptive folder names)",
                "ricord:convert"),
    DatasetSpec("lits", "LiTS", "MedCoSS downstream, liver and tumour CT segmentation",
                "CodaLab LiTS, https://competitions.codalab.org/competitions/17094", "CC BY-NC-ND 4.0",
                "the training batches: volume-N.nii and segmentation-N.nii, N = 0..130, in sub-folders or not",
                "volumes:convert_lits"),
    DatasetSpec("vs", "Vestibular-Schwannoma-SEG", "MedCoSS and BrainMVP downstream, MRI segmentation",
                "TCIA, https://www.cancerimagingarchive.net/collection/vestibular-schwannoma-seg/", _TCIA,
                "Vestibular-Schwannoma-SEG/VS-SEG-NNN/<study>/<series>/*.dcm as TCIA's downloader writes them (descriptive "
                "folder names): T1 and T2 MR series, one RTSTRUCT per series", "mri_seg:convert_vs"),
    DatasetSpec("vs_brainmvp", "Vestibular-Schwannoma-SEG (T2 studies)", "BrainMVP downstream, MRI segmentation (T2 input)",
                "TCIA, https://www.cancerimagingarchive.net/collection/vestibular-schwannoma-seg/", _TCIA,
                "as for vs", "mri_seg:convert_vs_brainmvp"),
    DatasetSpec("la", "Left Atrium (2018 challenge, UA-MT h5)", "MedCoSS downstream, MRI segmentation",
                "https://github.com/yulequan/UA-MT (data/2018LA_Seg_Training Set)", "see the repository (research use)",
                "UA-MT's data/ folder: 2018LA_Seg_Training Set/<case>/mri_norm2.h5 with train.list and test.list",
                "mri_seg:convert_la"),
    DatasetSpec("nct_crc_he", "NCT-CRC-HE-100K + CRC-VAL-HE-7K", "MedCoSS downstream, pathology classification",
                "Zenodo, https://zenodo.org/records/1214456", "CC BY 4.0",
                "NCT-CRC-HE-100K.zip and CRC-VAL-HE-7K.zip unpacked side by side (9 class folders of .tif tiles each)",
                "tiles:convert_nct_crc_he"),
    DatasetSpec("glas", "GlaS (MICCAI 2015)", "MedCoSS downstream, pathology segmentation",
                "Kaggle mirror, https://www.kaggle.com/datasets/sani84/glasmiccai2015-gland-segmentation",
                "Warwick GlaS terms (research use)",
                "Warwick QU Dataset (Released 2016_07_08)/: train_N.bmp, train_N_anno.bmp, testA_*, testB_*, Grade.csv",
                "tiles:convert_glas"),
    # BrainMVP pre-training
    DatasetSpec("brats2021", "BraTS 2021", "BrainMVP pre-training",
                "Synapse / RSNA-ASNR-MICCAI, https://www.synapse.org/brats2021", "BraTS data terms (research use, cite)",
                "BraTS2021_Training_Data/BraTS2021_XXXXX/BraTS2021_XXXXX_{t1,t1ce,t2,flair,seg}.nii.gz",
                "brain:convert_brats2021"),
    DatasetSpec("brats2023_ssa", "BraTS 2023 Sub-Saharan Africa", "BrainMVP pre-training",
                "Synapse, https://www.synapse.org/brats2023", "BraTS data terms (research use, cite)",
                "BraTS-SSA-XXXXX-000/BraTS-SSA-XXXXX-000-{t1c,t1n,t2f,t2w,seg}.nii.gz", "brain:convert_brats2023"),
    DatasetSpec("brats2023_men", "BraTS 2023 Meningioma", "BrainMVP pre-training",
                "Synapse, https://www.synapse.org/brats2023", "BraTS data terms (research use, cite)",
                "BraTS-MEN-XXXXX-000/BraTS-MEN-XXXXX-000-{t1c,t1n,t2f,t2w,seg}.nii.gz", "brain:convert_brats2023"),
    DatasetSpec("ucsf_pdgm", "UCSF-PDGM", "BrainMVP pre-training",
                "TCIA, https://www.cancerimagingarchive.net/collection/ucsf-pdgm/", _TCIA,
                "UCSF-PDGM-XXXX_nifti/UCSF-PDGM-XXXX_{T1,T1c,T2,FLAIR,ADC,DWI,...}.nii.gz", "brain:convert_ucsf_pdgm"),
    DatasetSpec("brain_atlas", "Registered atlas set (IXI and others)", "BrainMVP pre-training",
                "IXI, https://brain-development.org/ixi-dataset/ (BrainMVP registers it to an atlas)", "IXI: CC BY-SA 3.0",
                "<subject>/<subject>-{T1,T2,PD,MRA}.nii.gz, already registered",
                todo="BrainMVP's registration of each IXI subject's T1, T2, PD and MRA onto one atlas grid (its "
                     "jsons/dataset_BrainAtlas_registration_sir24.json names only the registered files, "
                     "IXI<nnn>-<site>-<id>/<same>-{MRA,PD,T1,T2}.nii.gz; the registered volumes, the atlas and the "
                     "registration tool and parameters are not published, and its views swap voxels between "
                     "contrasts, so unregistered IXI scans cannot stand in). Register them yourself and give the "
                     "folder of <subject>/ folders, each holding t1.nii.gz, t2.nii.gz, pd.nii.gz and mra.nii.gz, to the "
                     "BrainMVP bundles' dataset_dir (a folder per study)"),
    # BrainMVP downstream (the paper's ten tasks; vs and adni are shared with MedCoSS above)
    DatasetSpec("brats2023_ped", "BraTS 2023 Pediatric", "BrainMVP downstream, segmentation",
                "Synapse, https://www.synapse.org/brats2023", "BraTS data terms (research use, cite)",
                "BraTS-PED-XXXXX-000/BraTS-PED-XXXXX-000-{t1c,t1n,t2f,t2w,seg}.nii.gz", "brain:convert_brats2023"),
    DatasetSpec("brats2023_met", "BraTS 2023 Metastases", "BrainMVP downstream, segmentation",
                "Synapse, https://www.synapse.org/brats2023", "BraTS data terms (research use, cite)",
                "BraTS-MET-XXXXX-000/BraTS-MET-XXXXX-000-{t1c,t1n,t2f,t2w,seg}.nii.gz", "brain:convert_brats2023"),
    DatasetSpec("isles22", "ISLES 2022", "BrainMVP downstream, stroke-lesion segmentation",
                "https://isles22.grand-challenge.org/ (Zenodo)", "CC BY-SA 4.0",
                "the BIDS folder: rawdata/sub-strokecaseXXXX/ses-0001/{anat,dwi}/ and derivatives/ masks",
                "brain:convert_isles22"),
    DatasetSpec("mrbrains13", "MRBrainS13", "BrainMVP downstream, tissue segmentation",
                "https://mrbrains13.isi.uu.nl/", "challenge terms (research use)",
                "TrainingData/<n>/{T1,T1_IR,T2_FLAIR}.nii with LabelsForTesting.nii (CSF, grey and white matter) and "
                "LabelsForTraining.nii", "brain:convert_mrbrains13"),
    DatasetSpec("upenn_gbm", "UPENN-GBM", "BrainMVP downstream, segmentation",
                "TCIA, https://www.cancerimagingarchive.net/collection/upenn-gbm/", _TCIA,
                "NIfTI-files/images_structural/UPENN-GBM-XXXXX_11/*_{T1,T1GD,T2,FLAIR}.nii.gz and images_segm/",
                "brain:convert_upenn_gbm"),
    DatasetSpec("brats2018", "BraTS 2018 (HGG vs LGG)", "BrainMVP downstream, classification",
                "CBICA, https://www.med.upenn.edu/sbia/brats2018.html", "BraTS data terms (research use, cite)",
                "MICCAI_BraTS_2018_Data_Training/{HGG,LGG}/<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz",
                "brain:convert_brats2018"),
    DatasetSpec("adhd200", "ADHD-200", "BrainMVP downstream, classification",
                "NITRC, http://fcon_1000.projects.nitrc.org/indi/adhd200/", "CC BY-NC-SA (INDI terms)",
                "the raw release per site: <Site>/<ScanDir ID>/session_1/anat_1/mprage.nii.gz with "
                "<Site>/<Site>_phenotypic.csv", "indi:convert_adhd200"),
    DatasetSpec("adni_cls", "ADNI (AD vs CN)", "BrainMVP downstream, classification",
                "ADNI / LONI IDA, https://adni.loni.usc.edu/",
                "ADNI Data Use Agreement (application required; no redistribution)",
                "the IDA export (ADNI/<subject>/<description>/<date>/<image id>/*.nii) with the collection's CSV "
                "(Image Data ID, Subject, Group) beside it", "volumes:convert_adni_cls"),
    DatasetSpec("abide", "ABIDE-I", "BrainMVP downstream, classification",
                "NITRC, http://fcon_1000.projects.nitrc.org/indi/abide/", "CC BY-NC-SA (INDI terms)",
                "Phenotypic_V1_0b.csv beside the raw site folders: <SITE>/<SUB_ID>/session_1/anat_1/mprage.nii.gz",
                "indi:convert_abide"),
]

DATASETS: dict[str, DatasetSpec] = {s.name: s for s in _SPECS}
"""Every data set of the papers, by command-line name."""


def get_spec(name: str) -> DatasetSpec:
    """The registry entry of ``name``.

    Raises:
        BadInputError: an unknown name (the message lists the known ones).
    """
    if name not in DATASETS:
        raise BadInputError(f"Unknown data set '{name}'; known: {', '.join(DATASETS)} (see --list).")
    return DATASETS[name]


def converter_of(spec: DatasetSpec) -> Callable[..., dict[str, Any]]:
    """Import the converter of ``spec``.

    Raises:
        BadInputError: the data set has no converter yet.
    """
    if not spec.converter:
        raise BadInputError(
            f"{spec.name} ({spec.title}) is registered but its converter is not implemented yet (it needs "
            f"{spec.todo or 'writing'}): write its datalist by hand for now (see --list for its source and layout)."
        )
    module, function = spec.converter.split(":")
    return getattr(importlib.import_module(f"{__package__}.{module}"), function)
