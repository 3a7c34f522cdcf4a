"""MONAI transforms of medcoss-monai, installed as ``medcoss_monai.transforms``.

One module per concern: report text (:mod:`.text`, its tokenizer in :mod:`.tokenizer`, the MLM
masking in :mod:`.masking`), X-ray loading (:mod:`.xray`), slide tiles (:mod:`.slides`, with tissue
detection in :mod:`.tissue`), crops (:mod:`.patches`) and token-level mixup of report batches for
rehearsal (:mod:`.mixup`; images blend with MONAI's ``MixUp``). Intensity scaling is MONAI's own
(``ScaleIntensityRanged`` and friends), set in the stage bundles.
"""

from .masking import WholeWordMask, WholeWordMaskd
from .mixup import TextMixup, TextMixupd
from .patches import RandResizedCrop, RandResizedCropd
from .slides import LoadSlideTile, LoadSlideTiled, RandLoadSlideTile, RandLoadSlideTiled
from .text import ReportTextd, TokenizeText, TokenizeTextd, clean_report_text, report_text
from .tissue import SLIDE_SUFFIXES
from .tokenizer import SPECIAL_TOKENS, load_or_train_tokenizer, load_tokenizer, train_bpe_tokenizer
from .xray import DICOM_SUFFIXES, LoadXRay, LoadXRayd

__all__ = [
    "DICOM_SUFFIXES",
    "SLIDE_SUFFIXES",
    "SPECIAL_TOKENS",
    "clean_report_text",
    "report_text",
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
