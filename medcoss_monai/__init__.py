"""medcoss-monai: continual self-supervised pre-training on multi-modal medical data with MONAI.

Importing the package changes nothing outside it: the command lines and the bundles' ``initialize``
call :func:`medcoss_monai.errors.install_run_hooks` (user errors as their message, library probes at
DEBUG).
"""

__version__ = "0.1.0"

MODALITIES = ("report", "xray", "ct", "mri", "pathology")
"""The default curriculum, in order: the modalities of the sample data and of the paper.

Any modality whose stage bundle declares it can be trained (:func:`medcoss_monai.layout.stage_modalities`);
this tuple is only the default order, not the list of what is allowed.
"""

__all__ = ["MODALITIES", "load_pretrained"]


def __getattr__(name: str):
    """``medcoss_monai.load_pretrained``, imported on first use (importing the package stays light)."""
    if name == "load_pretrained":
        from medcoss_monai.weights.pretrained import load_pretrained

        return load_pretrained
    raise AttributeError(f"module 'medcoss_monai' has no attribute {name!r}")
