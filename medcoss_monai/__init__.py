"""medcoss-monai: continual self-supervised pre-training on multi-modal medical data with MONAI."""

import logging as _logging

from medcoss_monai.errors import install_excepthook as _install_excepthook

__version__ = "0.1.0"

MODALITIES = ("report", "xray", "ct", "mri", "pathology")
"""The five pre-training modalities, in the default curriculum order."""


class _DemoteToDebug(_logging.Filter):
    """Re-label a logger's records as DEBUG, and drop them unless DEBUG is enabled for it."""

    def filter(self, record: _logging.LogRecord) -> bool:
        record.levelno, record.levelname = _logging.DEBUG, "DEBUG"
        return _logging.getLogger(record.name).isEnabledFor(_logging.DEBUG)


# Probes that read like failures: faiss tries to import its AVX-512 builds and logs each failed
# import ("ModuleNotFoundError ... swigfaiss_avx512") at INFO; MONAI warns on every DICOM read that
# the optional GPU decoder nvImageCodec is absent. Both are expected on a CPU machine.
for _name in ("faiss.loader", "monai.data.nvimgcodec_pydicom_plugin"):
    _probe_logger = _logging.getLogger(_name)
    if not any(isinstance(f, _DemoteToDebug) for f in _probe_logger.filters):
        _probe_logger.addFilter(_DemoteToDebug())

_install_excepthook()
