"""MONAI transforms of medcoss-monai, installed as ``medcoss_monai.transforms``.

One module per concern: report text (:mod:`.text`), X-ray loading (:mod:`.xray`), slide tiles
(:mod:`.slides`, with tissue detection in :mod:`.tissue`), crops (:mod:`.patches`) and batch-level mixup for rehearsal (:mod:`.mixup`).
Intensity scaling is MONAI's own (``ScaleIntensityRanged`` and friends), set in the stage bundles.
"""

from .mixup import ImageMixup, ImageMixupd, TextMixup, TextMixupd
from .patches import RandResizedCrop, RandResizedCropd
from .slides import SLIDE_SUFFIXES, LoadSlideTile, LoadSlideTiled, RandLoadSlideTile, RandLoadSlideTiled
from .text import (
    SPECIAL_TOKENS,
    ReportTextd,
    TokenizeText,
    TokenizeTextd,
    WholeWordMask,
    WholeWordMaskd,
    clean_report_text,
    load_or_train_tokenizer,
    load_tokenizer,
    report_text,
    train_bpe_tokenizer,
)
from .xray import DICOM_SUFFIXES, LoadXRay, LoadXRayd

__all__ = [
    "DICOM_SUFFIXES",
    "SLIDE_SUFFIXES",
    "SPECIAL_TOKENS",
    "clean_report_text",
    "report_text",
    "ImageMixup",
    "ImageMixupd",
    "LoadSlideTile",
    "LoadSlideTiled",
    "LoadXRay",
    "LoadXRayd",
    "RandLoadSlideTile",
    "RandLoadSlideTiled",
    "RandResizedCrop",
    "RandResizedCropd",
    "ReportTextd",
    "TextMixup",
    "TextMixupd",
    "TokenizeText",
    "TokenizeTextd",
    "WholeWordMask",
    "WholeWordMaskd",
    "load_or_train_tokenizer",
    "load_tokenizer",
    "train_bpe_tokenizer",
]
