"""``python -m medcoss_monai.weights import --format FORMAT --checkpoint FILE --out DIR [--tokenizer NAME_OR_PATH]``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from medcoss_monai.errors import install_run_hooks


def build_parser() -> argparse.ArgumentParser:
    """The command line: one sub-command, ``import``."""
    from medcoss_monai.weights.importer import FORMATS

    parser = argparse.ArgumentParser(prog="python -m medcoss_monai.weights", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    imp = commands.add_parser("import", help="turn a released checkpoint into a stage folder")
    imp.add_argument("--format", required=True, choices=sorted(FORMATS), help="the checkpoint's format")
    imp.add_argument("--checkpoint", required=True, help="the released file")
    imp.add_argument("--out", required=True, help="the stage folder to write (new or empty)")
    imp.add_argument(
        "--tokenizer",
        default=None,
        help="Hugging Face tokenizer name or folder saved with a text model (MedCoSS: emilyalsentzer/Bio_ClinicalBERT)",
    )
    imp.add_argument("--num_heads", type=int, default=None, help="attention heads (MedCoSS: 12, the default)")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Run the command line."""
    install_run_hooks()
    args = build_parser().parse_args(argv)
    from medcoss_monai.weights.importer import FORMATS, import_checkpoint

    options = {"num_heads": args.num_heads} if args.num_heads is not None else {}
    out = import_checkpoint(args.format, args.checkpoint, args.out, args.tokenizer, options)
    print(f"imported {args.checkpoint} ({args.format}) into {out}")
    print(f"load it with medcoss_monai.load_pretrained({str(out)!r})")
    print(f"the weights' licence: {FORMATS[args.format].licence}")


if __name__ == "__main__":
    main()
