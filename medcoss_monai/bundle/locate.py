"""Where the bundles are, for ``python -m monai.bundle run`` outside the checkout.

``python -m medcoss_monai.bundle.locate`` prints the bundles folder (the installed package's, or the
checkout's); ``python -m medcoss_monai.bundle.locate stage_mri`` prints one bundle's path, so::

    python -m monai.bundle run --config_file "$(python -m medcoss_monai.bundle.locate stage_mri)"

runs from any working directory; ``--copy DIR`` copies the folder, to edit a recipe of one's own
(``MEDCOSS_BUNDLES=DIR`` makes the pipeline use it).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from medcoss_monai.errors import BadInputError, install_run_hooks
from medcoss_monai.layout import bundles_dir

__all__ = ["bundle_path", "main"]


def bundle_path(name: str) -> Path:
    """The path of a bundle of :func:`~medcoss_monai.layout.bundles_dir`.

    Args:
        name: the bundle's name, with or without ``.json`` (``stage_mri``, ``common/model.json``).

    Returns:
        The absolute path.

    Raises:
        BadInputError: there is no such bundle (the message lists those there are).
    """
    folder = bundles_dir().resolve()
    path = folder / (name if name.endswith(".json") else f"{name}.json")
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in folder.glob("*.json")))
        raise BadInputError(f"{path}: no such bundle; the bundles in {folder} are: {known}.")
    return path


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m medcoss_monai.bundle.locate [NAME] [--copy DIR]``."""
    install_run_hooks()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", nargs="?", default=None, help="a bundle (stage_mri, finetune_ct_seg...)")
    parser.add_argument("--copy", default=None, help="copy the bundles folder to this new folder")
    args = parser.parse_args(argv)
    if args.copy:
        target = Path(args.copy)
        if target.exists():
            raise BadInputError(f"{target}: exists; --copy writes a new folder.")
        shutil.copytree(bundles_dir(), target, ignore=shutil.ignore_patterns("__pycache__", "*.py"))
        print(target.resolve())
        return 0
    print(bundle_path(args.name) if args.name else bundles_dir().resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
