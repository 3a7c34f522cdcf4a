"""Test hook: a stage process that SIGKILLs itself at a chosen moment (``MEDCOSS_TEST_KILL_AT``).

Put this folder on ``PYTHONPATH`` of a child process. Moments:
``iteration:N`` (before the N-th training step), ``write:NAME`` (half-way through writing the file
NAME, e.g. ``model.pt`` or ``checkpoint_epoch=2.pt``), ``buffer`` (inside the k-means buffer choice).
The kill is a real ``SIGKILL``: no handler, ``finally`` or atexit code runs.
"""

import os
import signal

_MOMENT = os.environ.get("MEDCOSS_TEST_KILL_AT", "")


def _file_name(f) -> str:
    """Base name of the file behind a file object (``os.fdopen`` objects only know their descriptor)."""
    try:
        return os.path.basename(os.readlink(f"/proc/self/fd/{f.fileno()}"))
    except (AttributeError, OSError, ValueError):
        name = getattr(f, "name", "")
        return os.path.basename(name) if isinstance(name, str) else ""


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


if _MOMENT:
    import torch

    import medcoss_monai.buffer as buffer
    from medcoss_monai.engines.pretext_trainer import PretextTrainer

    kind, _, arg = _MOMENT.partition(":")
    if kind == "iteration":
        step = {"n": 0}
        original_iteration = PretextTrainer._iteration

        def _iteration(self, engine, batchdata):
            step["n"] += 1
            if step["n"] == int(arg):
                _die()
            return original_iteration(self, engine, batchdata)

        PretextTrainer._iteration = _iteration
    elif kind == "write":
        original_save = torch.save

        def _save(obj, f, *args, **kwargs):
            name = _file_name(f)
            if name.startswith(f".{arg}.") and hasattr(f, "write"):
                import io

                data = io.BytesIO()
                original_save(obj, data, *args, **kwargs)
                f.write(data.getvalue()[: len(data.getvalue()) // 2])
                f.flush()
                os.fsync(f.fileno())
                _die()
            return original_save(obj, f, *args, **kwargs)

        torch.save = _save
    elif kind == "buffer":
        original_choose = buffer.SAMPLERS["kmeans"]

        def _choose(*args, **kwargs):
            original_choose(*args, **kwargs)
            _die()

        buffer.SAMPLERS["kmeans"] = _choose
