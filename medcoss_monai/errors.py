"""Problems a user can fix, and how a run reports them: the problem as the last lines, no traceback.

A stage bundle runs inside MONAI's config parser, so an error raised by a bundle expression reaches
the user wrapped in ``RuntimeError: Failed to evaluate ConfigExpression ...`` at the end of a long
traceback. Errors of the classes below are the user's to fix (a file, an item, a checkpoint, a run
folder); :func:`install_excepthook` makes an uncaught one print only its message, last, and exit 1.
Set ``MEDCOSS_TRACEBACK=1`` to see the full traceback (it is also logged at DEBUG).
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

    Installed once when ``medcoss_monai`` is imported, and only over Python's default hook (IPython
    and other tools that set their own are left alone). The process still exits with status 1.
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
