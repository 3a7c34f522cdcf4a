"""Mechanisms every data-set converter shares: root checks, bad-item collection, seeded splits, a
resumable parallel map into the cache, and the atomic datalist writer.

A converter is a function ``convert(ctx: PrepareContext) -> dict`` returning the datalist
(``training`` / ``validation`` / ``test`` and any extra keys); it reports unusable items with
:meth:`PrepareContext.bad` instead of raising, so all of them are listed together by :func:`finish`.
"""

from __future__ import annotations

import gzip
import logging
import os
from collections.abc import Callable, Hashable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medcoss_monai.errors import BadInputError

__all__ = [
    "SPLITS",
    "DEFAULT_FRACTIONS",
    "PrepareContext",
    "find_file",
    "seeded_split",
    "head_tail",
    "class_folder_items",
    "cached_map",
    "save_nifti_atomic",
    "write_itk_atomic",
    "finish",
]

SPLITS = ("training", "validation", "test")
STALE_PATTERNS = (".*.tmp", ".*.part.nii.gz")
"""Temporary files a killed writer leaves beside its output (the atomic writers', ITK's); removed on resume."""
DEFAULT_FRACTIONS = {"validation": 0.1, "test": 0.1}
"""Shares of the groups in a seeded split, for data sets without an official one (the rest trains)."""
logger = logging.getLogger(__name__)


@dataclass
class PrepareContext:
    """What a converter is given: the publisher's folder, the cache, the options, and where to report bad items.

    Args:
        name: the data set's registry name.
        title: its human name, used in messages (``"DeepLesion"``).
        root: the folder the publisher's download unpacks to.
        cache_dir: where converted files go (volumes stacked from slices...), or None.
        workers: processes for long conversions (1: in this process).
        seed: seed of every random split.
        progress: show progress bars.
    """

    name: str
    title: str
    root: Path
    cache_dir: Path | None = None
    workers: int = 1
    seed: int = 0
    progress: bool = True
    problems: list[tuple[str, str]] = field(default_factory=list)

    def bad(self, path: str | os.PathLike, reason: str) -> None:
        """Record an unreadable or inconsistent item (listed, with the others, by :func:`finish`)."""
        self.problems.append((str(path), reason))

    def cache(self) -> Path:
        """The cache folder, created; a converter that writes files cannot run without it.

        Raises:
            BadInputError: ``--cache_dir`` was not given.
        """
        if self.cache_dir is None:
            raise BadInputError(f"{self.name} writes converted files: give --cache_dir DIR (the datalist points into it).")
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        return self.cache_dir


def find_file(root: Path, names: str | Sequence[str], title: str, depth: int = 1) -> Path:
    """The first of ``names`` (file names or glob patterns) under ``root``, at most ``depth`` folders down.

    Publishers' archives often unpack into one more folder than the user expects, hence the depth.

    Args:
        root: the user's ``--root``.
        names: what the data set's folder must hold, in order of preference.
        title: the data set's name, for the message.
        depth: how many sub-folder levels to search.

    Returns:
        The path found (the shallowest match of the first name that matches).

    Raises:
        BadInputError: ``root`` is not a folder, or holds none of ``names``.
    """
    names = [names] if isinstance(names, str) else list(names)
    if not root.is_dir():
        raise BadInputError(f"--root {root} is not a folder: give the folder the {title} download unpacks to.")
    for name in names:
        for level in range(depth + 1):
            hits = sorted(root.glob("/".join(["*"] * level + [name])))
            if hits:
                return hits[0]
    expected = " or ".join(names)
    raise BadInputError(f"{expected} not found under {root}: is this the {title} folder?")


def paired_item(
    ctx: PrepareContext, image: Path, label: Path, size_of: Callable[[Path], Any], item_id: str, unit: str = "size"
) -> dict[str, str] | None:
    """The ``{"image", "label", "id"}`` item of an image and its label map, when both read and agree in size.

    Args:
        ctx: the run's context; an unreadable file or a size mismatch is reported on it.
        image: the image file.
        label: its label file (known to exist).
        size_of: reads a file's size (a header read, not the whole file).
        item_id: the item's ``id``.
        unit: what ``size_of`` gives, for the message (``"shape"``, ``"size"``).

    Returns:
        The item, or None when the pair was reported.
    """
    try:
        sizes = size_of(image), size_of(label)
    except Exception as e:  # the readers (PIL, nibabel) raise several types for broken files
        ctx.bad(image, f"unreadable ({e.__class__.__name__}: {e})")
        return None
    if sizes[0] != sizes[1]:
        ctx.bad(label, f"{unit} {sizes[1]} differs from the image's {unit} {sizes[0]} ({image.name})")
        return None
    return {"image": str(image), "label": str(label), "id": item_id}


def seeded_split(
    items: Sequence[dict[str, Any]],
    fractions: dict[str, float],
    seed: int,
    group: Callable[[dict[str, Any]], Hashable] | None = None,
    rest: str = "training",
    stratify: Callable[[dict[str, Any]], Hashable] | None = None,
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any]]:
    """Split items at random by group (a patient never straddles two splits), reproducibly.

    Groups are sorted, shuffled with ``seed``, and dealt to the splits of ``fractions`` in order until
    each holds its share of the groups (rounded; at least one while more than one group is left, so a set of a
    few cases still has a validation split); the remaining groups go to ``rest``. With ``stratify`` this is done
    for the groups of each class apart, so every split holds each class in its share (a classification set's
    validation split then has both classes to compute the AUC that picks the epoch).

    Args:
        items: the items to split.
        fractions: split name -> share of the groups (e.g. ``{"validation": 0.1, "test": 0.2}``).
        seed: the shuffling seed.
        group: item -> group key (default: each item alone).
        rest: the split of the remaining groups.
        stratify: item -> class (a group's class is that of its first item); None: one class.

    Returns:
        ``(splits, record)``: split name -> items (every name of ``fractions`` and ``rest``, each in the
        input order), and what to write into the datalist so the split can be redone.
    """
    # without groups each item is its own group, keyed by its position (the input order is the contract)
    item_keys = [group(it) if group else i for i, it in enumerate(items)]
    keys = sorted(set(item_keys), key=str)
    class_of: dict[Hashable, Hashable] = {}
    for it, k in zip(items, item_keys):
        class_of.setdefault(k, stratify(it) if stratify else None)
    rng = np.random.default_rng(seed)
    target: dict[Hashable, str] = {}
    for cls in sorted(set(class_of.values()), key=str):
        members = [k for k in keys if class_of[k] == cls]
        order = rng.permutation(len(members))
        start = 0
        for name, share in fractions.items():
            n = int(round(share * len(members)))
            if share > 0 and n == 0 and len(members) - start > 1:
                n = 1  # a small set still validates (a bundle refuses an empty validation split), one group left to train
            target.update({members[i]: name for i in order[start:start + n]})
            start += n
    splits: dict[str, list[dict[str, Any]]] = {name: [] for name in [*fractions, rest]}
    for it, k in zip(items, item_keys):
        splits[target.get(k, rest)].append(it)
    record = {"seed": int(seed), "fractions": dict(fractions), "rest": rest, "by": "group" if group else "item"}
    if stratify:
        record["stratified"] = True
    return splits, record


def head_tail(items: Sequence[Any], share: float) -> tuple[list[Any], list[Any]]:
    """The first ``int(share * len(items))`` items and the rest (the MedCoSS reference's per-class split)."""
    n = int(share * len(items))
    return list(items[:n]), list(items[n:])


def class_folder_items(
    folder: Path, classes: Sequence[str], ctx: PrepareContext, suffixes: Sequence[str]
) -> dict[str, list[dict[str, Any]]]:
    """Class name -> items ``{"image", "label": index}`` of ``folder/<class>/<file>``, files sorted by name.

    A sub-folder that is not a class, and an empty file, are reported as bad items.

    Args:
        folder: the release folder holding one folder per class.
        classes: the class names in label order.
        ctx: the run's context.
        suffixes: image file suffixes (lower case).

    Returns:
        One list per class (empty when the class folder is missing).
    """
    out: dict[str, list[dict[str, Any]]] = {c: [] for c in classes}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        if sub.name not in out:
            ctx.bad(sub, f"not one of the classes {list(classes)}")
            continue
        for f in sorted(sub.iterdir()):
            if f.suffix.lower() not in suffixes:
                continue
            if f.stat().st_size == 0:
                ctx.bad(f, "file is empty")
                continue
            out[sub.name].append({"image": str(f), "label": list(classes).index(sub.name)})
    return out


def class_folders_datalist(
    train_dir: Path, test_dir: Path, classes: Sequence[str], ctx: PrepareContext, suffixes: Sequence[str],
    share: float, reference: str,
) -> dict[str, Any]:
    """The datalist of a release with class folders for training and for testing (NCT-CRC-HE, ChestXR).

    The first ``share`` of each class's sorted training files train, the rest validate (the MedCoSS
    reference's split); the test folder tests.

    Args:
        train_dir: the release's training folder (one folder per class).
        test_dir: its test folder, the same way.
        classes: class names in label order.
        ctx: the run's context.
        suffixes: image file suffixes (lower case).
        share: the training share of each class.
        reference: where the split comes from, recorded under ``split``.

    Returns:
        The datalist with ``classes`` and ``split``.
    """
    datalist: dict[str, Any] = {"classes": list(classes), "training": [], "validation": [], "test": []}
    for items in class_folder_items(train_dir, classes, ctx, suffixes).values():
        head, tail = head_tail(items, share)
        datalist["training"] += head
        datalist["validation"] += tail
    for items in class_folder_items(test_dir, classes, ctx, suffixes).values():
        datalist["test"] += items
    datalist["split"] = {"reference": reference}
    return datalist


def _run_job(job: tuple[Callable[..., Any], tuple, Path]) -> tuple[Path, str | None]:
    fn, args, out = job
    try:
        fn(*args, out)
        return out, None
    except Exception as e:  # one bad item must not stop the others: it is listed by finish()
        return out, f"{e.__class__.__name__}: {e}"


def cached_map(
    fn: Callable[..., Any],
    jobs: Iterable[tuple[tuple, Path]],
    workers: int = 1,
    desc: str = "converting",
    progress: bool = True,
) -> tuple[dict[Path, str], int]:
    """Run ``fn(*args, out)`` for every job whose ``out`` does not exist yet, in parallel, with a progress bar.

    ``fn`` must write ``out`` atomically (e.g. :func:`save_nifti_atomic`): after a kill, a finished
    item's file is complete and is not redone; an unfinished one has no file and is, and the temporary
    files of the killed writers (:data:`STALE_PATTERNS`) are removed first. One run at a time per cache.

    Args:
        fn: a module-level function (picklable, for the worker processes).
        jobs: ``(args, out)`` pairs.
        workers: worker processes; 1 runs in this process.
        desc: progress-bar label.
        progress: show the bar.

    Returns:
        ``(failures, done)``: output path -> reason for each job that raised, and how many ran.
    """
    from tqdm.auto import tqdm

    jobs = [(args, Path(out)) for args, out in jobs]
    for folder in {out.parent for _, out in jobs}:
        for stale in (p for pattern in STALE_PATTERNS for p in folder.glob(pattern)):
            stale.unlink(missing_ok=True)
    todo = [(fn, args, out) for args, out in jobs if not out.exists()]
    failures: dict[Path, str] = {}
    bar = tqdm(total=len(todo), desc=desc, unit="item", disable=not progress or not todo)
    if workers <= 1:
        results: Iterable[tuple[Path, str | None]] = map(_run_job, todo)
        pool = None
    else:
        pool = ProcessPoolExecutor(max_workers=workers)
        results = pool.map(_run_job, todo, chunksize=max(1, min(16, len(todo) // (4 * workers) or 1)))
    try:
        for out, err in results:
            if err is not None:
                failures[out] = err
            bar.update(1)
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return failures, len(todo)


def save_nifti_atomic(data: np.ndarray, affine: np.ndarray, path: str | os.PathLike) -> Path:
    """Save a NIfTI volume so that a killed writer leaves no partial file (``.nii`` or ``.nii.gz``).

    Args:
        data: the voxels.
        affine: the 4 x 4 voxel-to-world matrix (its column norms are the spacing).
        path: destination.

    Returns:
        The destination path.
    """
    import nibabel as nib

    from medcoss_monai.utils import atomic_write_bytes  # imports torch: only when something is written

    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm")
    raw = img.to_bytes()
    # level 1: the volumes are cache files written by the thousand; size matters less than time
    blob = gzip.compress(raw, compresslevel=1) if str(path).endswith(".gz") else raw
    return atomic_write_bytes(blob, path)


def finish(
    datalist: dict[str, Any], ctx: PrepareContext, out: str | os.PathLike, skip_bad_inputs: bool = False
) -> dict[str, Any]:
    """Write the datalist atomically, or refuse when items were bad and ``skip_bad_inputs`` is off.

    Args:
        datalist: the converter's result (the three splits and extra keys).
        ctx: the converter's context (its bad items).
        out: the datalist JSON to write.
        skip_bad_inputs: drop the bad items (listed in the datalist under ``rejected``) instead of stopping.

    Returns:
        The datalist written.

    Raises:
        BadInputError: bad items without ``skip_bad_inputs`` (every file and reason; nothing written),
            or no item at all.
    """
    from medcoss_monai.utils import atomic_write_json

    if ctx.problems:
        lines = "\n".join(f"  {path}: {reason}" for path, reason in ctx.problems)
        summary = f"{len(ctx.problems)} {ctx.title} item(s) under {ctx.root} cannot be used:\n{lines}"
        if not skip_bad_inputs:
            raise BadInputError(summary + "\nFix or remove them, or rerun with --skip_bad_inputs to drop them.")
        logger.warning(summary + "\nDropped them (--skip_bad_inputs).")
    for split in SPLITS:
        datalist.setdefault(split, [])
    # MONAI's dictionary transforms (Spacingd, ...) take an item's "image_*" / "label_*" entries for the meta data of
    # "image" / "label" and update them: a converter's extra field named so breaks training (a bug, not bad input)
    clashing = sorted({k for s in SPLITS for it in datalist[s] if isinstance(it, dict) for k in it
                       if k.startswith(("image_", "label_"))})
    if clashing:
        raise RuntimeError(f"the {ctx.name} converter writes item fields {clashing}, which MONAI reads as meta data")
    if not any(datalist[s] for s in SPLITS):
        raise BadInputError(f"No usable {ctx.title} item was found under {ctx.root}.")
    header = {
        "name": ctx.name,
        "description": f"{ctx.title}, converted by `python -m medcoss_monai.data.prepare {ctx.name}` from {ctx.root}.",
        "root": str(ctx.root),
        **{f"num{s.capitalize()}": len(datalist[s]) for s in SPLITS},
    }
    result = {**header, **datalist}
    if ctx.problems:
        result["rejected"] = [{"file": p, "reason": r} for p, r in ctx.problems]
    atomic_write_json(result, out)
    return result


def write_itk_atomic(image: Any, out: Path) -> None:
    """Write an ITK image (``.nii.gz``) so that a killed writer leaves no partial file."""
    import itk

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name[:-7]}.{os.getpid()}.part.nii.gz")  # ITK picks the format by the suffix
    try:
        itk.imwrite(image, str(tmp), compression=True)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
