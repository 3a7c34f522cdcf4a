"""Problems a user can fix, and how a run reports them: the problem as the last lines, no traceback.

A stage bundle runs inside MONAI's config parser, so an error raised by a bundle expression reaches
the user wrapped in ``RuntimeError: Failed to evaluate ConfigExpression ...`` at the end of a long
traceback. Errors of the classes below are the user's to fix (a file, an item, a checkpoint, a run
folder); :func:`install_excepthook` makes an uncaught one print only its message, last, and exit 1.
Set ``MEDCOSS_TRACEBACK=1`` to see the full traceback (it is also logged at DEBUG).

Nothing is installed at import: the command lines and the bundles' ``initialize`` call
:func:`install_run_hooks`, as a program sets up its own output, so a library user keeps theirs.
"""

from __future__ import annotations

import logging
import os
import sys
from types import TracebackType

__all__ = [
    "MedcossError",
    "BadInputError",
    "CheckpointError",
    "ResumeError",
    "DivergenceError",
    "RunLockedError",
    "OutputWriteError",
    "find_user_error",
    "install_excepthook",
    "demote_probe_logs",
    "install_run_hooks",
]

TRACEBACK_ENV = "MEDCOSS_TRACEBACK"
"""Environment variable: a non-empty value other than ``0`` shows full tracebacks of user errors."""


class MedcossError(Exception):
    """A problem with the user's inputs, checkpoints or run folder, with what to do about it."""


class BadInputError(MedcossError, ValueError):
    """Raised when a datalist holds files that cannot be trained on; lists every file and reason."""


class CheckpointError(BadInputError):
    """A checkpoint cannot be read, or does not fit the network it is loaded into."""


class ResumeError(MedcossError, ValueError):
    """``--resume true`` was asked with settings the saved training state cannot continue under."""


class DivergenceError(MedcossError, RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint and ``model.pt`` are kept."""


class RunLockedError(MedcossError, RuntimeError):
    """Another live process is writing the same stage folder."""


class OutputWriteError(MedcossError, OSError):
    """An output could not be written (disk full, quota); the previous file is intact."""


def find_user_error(exc: BaseException | None) -> MedcossError | None:
    """The first :class:`MedcossError` in an exception's chain (``raise ... from``, or raised while handling).

    Args:
        exc: the exception that reached the top.

    Returns:
        The user error, or None when the chain holds none.
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, MedcossError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _show_traceback() -> bool:
    return os.environ.get(TRACEBACK_ENV, "").strip() not in ("", "0")


def install_excepthook() -> None:
    """Print uncaught user errors as their message only; leave every other error to the previous hook.

    Installed once, and only over Python's default hook (IPython and other tools that set their own
    are left alone). The process still exits with status 1.
    """
    previous = sys.excepthook
    if getattr(previous, "_medcoss", False) or previous is not sys.__excepthook__:
        return

    def hook(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        err = find_user_error(exc)
        if err is None or _show_traceback():
            previous(exc_type, exc, tb)
            return
        logging.getLogger("medcoss_monai").debug("traceback of the error below", exc_info=(exc_type, exc, tb))
        sys.stderr.flush()
        sys.stderr.write(
            f"\n(traceback hidden; set {TRACEBACK_ENV}=1 to show it)\n"
            f"medcoss_monai stopped: {type(err).__name__}\n{err}\n"
        )
        sys.stderr.flush()

    hook._medcoss = True  # type: ignore[attr-defined]
    sys.excepthook = hook


PROBE_LOGGERS = ("faiss.loader", "monai.data.nvimgcodec_pydicom_plugin")
"""Loggers of probes that read like failures on a CPU machine: faiss logs each failed import of its
AVX-512 builds ("ModuleNotFoundError ... swigfaiss_avx512") at INFO; MONAI warns on every DICOM read
that the optional GPU decoder nvImageCodec is absent."""


class _DemoteToDebug(logging.Filter):
    """Re-label a logger's records as DEBUG, and drop them unless DEBUG is enabled for it."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


def demote_probe_logs() -> None:
    """Show the expected probes of :data:`PROBE_LOGGERS` at DEBUG only (once per logger)."""
    for name in PROBE_LOGGERS:
        probe_logger = logging.getLogger(name)
        if not any(isinstance(f, _DemoteToDebug) for f in probe_logger.filters):
            probe_logger.addFilter(_DemoteToDebug())


def install_run_hooks() -> None:
    """What a command line or a bundle's ``initialize`` calls first: :func:`install_excepthook` and
    :func:`demote_probe_logs`."""
    install_excepthook()
    demote_probe_logs()
