"""Data code that runs during training: datalist checks, dataset caching, report corpora, users' folder
layouts and the downstream-task registry (``tasks``). The offline sample-data tooling is
:mod:`medcoss_monai.samples`; the rehearsal loader is in :mod:`medcoss_monai.buffer`.
"""
