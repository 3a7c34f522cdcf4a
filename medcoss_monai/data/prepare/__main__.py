"""``python -m medcoss_monai.data.prepare DATASET --root DIR --out FILE`` (or ``--list``)."""

from __future__ import annotations

import argparse
import logging
import sys

from medcoss_monai.data.prepare import DATASETS, catalogue, prepare
from medcoss_monai.errors import install_run_hooks


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m medcoss_monai.data.prepare",
        description="Convert a public data set, as its publisher distributes it, into a decathlon-style datalist.",
    )
    p.add_argument("dataset", nargs="?", choices=list(DATASETS), metavar="DATASET", help="data set name (see --list)")
    p.add_argument("--list", action="store_true", help="print every data set with its source, licence and download")
    p.add_argument("--root", help="the folder the publisher's download unpacks to")
    p.add_argument("--out", help="the datalist JSON to write")
    p.add_argument("--cache_dir", help="where converted files go (DeepLesion volumes, GlaS masks)")
    p.add_argument("--workers", type=int, default=1, help="processes for long conversions (default 1)")
    p.add_argument("--skip_bad_inputs", action="store_true", help="drop unreadable or inconsistent items instead of stopping")
    p.add_argument("--seed", type=int, default=0, help="seed of random splits (data sets without an official split)")
    p.add_argument("--no_progress", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    install_run_hooks()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = _parser()
    args = parser.parse_args(argv)
    if args.list:
        print(catalogue())
        return 0
    if not args.dataset or not args.root or not args.out:
        parser.error("give DATASET, --root and --out (or --list)")
    result = prepare(
        args.dataset, args.root, args.out, cache_dir=args.cache_dir, workers=args.workers,
        skip_bad_inputs=args.skip_bad_inputs, seed=args.seed, progress=not args.no_progress,
    )
    counts = ", ".join(f"{s} {len(result[s])}" for s in ("training", "validation", "test"))
    rejected = f", {len(result['rejected'])} rejected" if result.get("rejected") else ""
    print(f"{args.out}: {args.dataset}: {counts}{rejected}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
