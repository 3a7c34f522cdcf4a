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
