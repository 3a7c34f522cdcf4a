"""Keep the bundles self-contained while their shared recipe is written once, in ``bundles/common/``.

MONAI reads the file of a ``%file#id`` macro from the working directory, so a bundle holding
``"%bundles/common/pretrain.json#train#optimizer"`` runs only from the folder above ``bundles/``.
The bundles therefore hold the shared values themselves, and ``bundles/common/links.json`` records
which of their ids are copies of which entry of another file of the folder::

    {"links": {"stage_ct.json": {"train#optimizer": "common/pretrain.json#train#optimizer", ...}, ...}}

``python -m medcoss_monai.bundle.render`` brings every copy up to date after an edit of a common
file, and turns any ``%bundles/<file>#<id>`` macro written into a bundle into its value and a link
(so a bundle can still be written with macros, as before). ``--check`` changes nothing and fails
when a bundle differs from what its links say (a test runs it).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from medcoss_monai.layout import MACRO_PREFIX, bundles_dir
from medcoss_monai.utils import atomic_write_text

__all__ = ["LINKS_FILE", "COMMON_DIR", "format_json", "render_bundles", "main"]

COMMON_DIR = "common"
LINKS_FILE = "links.json"
MAX_PASSES = 5
INLINE_WIDTH = 100
"""A list of plain values is written on one line when that line is at most this wide (as people write them)."""


def format_json(obj: Any, indent: int = 4) -> str:
    """JSON as the bundles are written: 4-space indent, short lists of plain values on one line.

    Args:
        obj: a JSON value.
        indent: spaces per level.

    Returns:
        The text, ending with a newline.
    """

    def fmt(value: Any, level: int) -> str:
        pad, inner = " " * (indent * level), " " * (indent * (level + 1))
        if isinstance(value, dict) and value:
            items = [f"{inner}{json.dumps(k, ensure_ascii=False)}: {fmt(v, level + 1)}" for k, v in value.items()]
            return "{\n" + ",\n".join(items) + "\n" + pad + "}"
        if isinstance(value, list) and value:
            if not any(isinstance(v, (dict, list)) for v in value):
                line = json.dumps(value, ensure_ascii=False)
                if len(inner) + len(line) <= INLINE_WIDTH:
                    return line
            return "[\n" + ",\n".join(inner + fmt(v, level + 1) for v in value) + "\n" + pad + "]"
        return json.dumps(value, ensure_ascii=False)

    return fmt(obj, 0) + "\n"


def _walk(config: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``(id, value)`` of every node below ``config``, ids joined with ``#`` as MONAI writes them."""
    items = config.items() if isinstance(config, dict) else enumerate(config) if isinstance(config, list) else ()
    for key, value in items:
        node_id = f"{prefix}#{key}" if prefix else str(key)
        yield node_id, value
        yield from _walk(value, node_id)


def _get(config: Any, node_id: str, where: str) -> Any:
    node = config
    for key in node_id.split("#"):
        try:
            node = node[int(key)] if isinstance(node, list) else node[key]
        except (KeyError, IndexError, ValueError, TypeError):
            raise KeyError(f"{where}: no id '{node_id}'") from None
    return node


def _set(config: Any, node_id: str, value: Any, where: str) -> None:
    parent_id, _, key = node_id.rpartition("#")
    parent = _get(config, parent_id, where) if parent_id else config
    if isinstance(parent, list):
        parent[int(key)] = value
    elif isinstance(parent, dict) and key in parent:
        parent[key] = value
    else:
        raise KeyError(f"{where}: no id '{node_id}'")


def _read(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _render_once(folder: Path, links: dict[str, dict[str, str]], check: bool) -> dict[str, tuple[Any, list[str]]]:
    """One pass over the bundles: ``{file name: (config, changed ids)}`` of those that differ from their links."""
    sources: dict[str, Any] = {}
    changed_files = {}
    for path in sorted(folder.glob("*.json")):
        config = _read(path)
        own = dict(links.get(path.name, {}))
        for node_id, value in list(_walk(config)):
            if isinstance(value, str) and value.startswith(MACRO_PREFIX):
                own[node_id] = value[len(MACRO_PREFIX) :]  # a macro written into the bundle becomes a link
        changed = []
        for node_id, target in own.items():
            file_name, _, target_id = target.partition("#")
            if file_name not in sources:
                sources[file_name] = _read(folder / file_name)
            value = _get(sources[file_name], target_id, str(folder / file_name))
            if _get(config, node_id, str(path)) != value:
                _set(config, node_id, copy.deepcopy(value), str(path))
                changed.append(node_id)
        if own:
            links[path.name] = own
        if changed:
            changed_files[path.name] = (config, changed)
            if not check:
                atomic_write_text(format_json(config), path)
    return changed_files


def render_bundles(folder: str | os.PathLike | None = None, check: bool = False) -> list[str]:
    """Bring the bundles of ``folder`` in line with ``common/`` and ``common/links.json``.

    Args:
        folder: the bundles folder (default :func:`~medcoss_monai.layout.bundles_dir`).
        check: only compare; write nothing.

    Returns:
        The messages: one per bundle that was (or, with ``check``, would be) changed, naming the ids.

    Raises:
        KeyError: a link or macro names an id that does not exist.
    """
    folder = Path(folder or bundles_dir())
    links_path = folder / COMMON_DIR / LINKS_FILE
    links: dict[str, dict[str, str]] = _read(links_path)["links"] if links_path.is_file() else {}
    messages: list[str] = []
    changed: dict[str, list[str]] = {}
    for _ in range(MAX_PASSES):  # a bundle may link to a bundle that links on: repeat until nothing moves
        this_pass = _render_once(folder, links, check)
        for name, (_, ids) in this_pass.items():
            changed.setdefault(name, []).extend(i for i in ids if i not in changed.get(name, []))
        if check or not this_pass:
            break
    for name, ids in sorted(changed.items()):
        shown = ", ".join(ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")
        messages.append(f"{folder / name}: {shown} {'differ from their links' if check else 'updated from their links'}")
    record = {
        "_description": "Written by 'python -m medcoss_monai.bundle.render': which ids of each bundle are copies of "
        "which entry of another file of the folder (file#id). Edit the common file, then run the command; a bundle's own "
        "value for a linked id is overwritten.",
        "links": dict(sorted(links.items())),
    }
    if not links_path.is_file() or _read(links_path) != record:
        messages.append(f"{links_path}: {'out of date' if check else 'updated'}")
        if not check:
            atomic_write_text(format_json(record), links_path)
    return messages


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m medcoss_monai.bundle.render [--bundles_dir DIR] [--check]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundles_dir", default=None, help="the bundles folder (default: the package's)")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 when a bundle is out of date")
    args = parser.parse_args(argv)
    messages = render_bundles(args.bundles_dir, check=args.check)
    for message in messages:
        print(message)
    if args.check and messages:
        print("Run 'python -m medcoss_monai.bundle.render' to bring the bundles up to date.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
