"""``python -m sim generate``: write a phantom site in the RSNA layout."""

from __future__ import annotations

import argparse
from pathlib import Path

from core.cli import add_shared_options
from sim.phantom.profiles import PRESETS
from sim.phantom.writer import generate_site


__all__ = ["add_parser", "generate_site", "run_generate"]


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the ``generate`` sub-command on ``subparsers``."""
    parser = subparsers.add_parser(
        "generate", help="write a synthetic hand-radiograph site (labels.csv + images/ + ground truth)",
        description=f"Presets: {', '.join(PRESETS)}. See docs/phantom.md.")
    parser.add_argument("--preset", required=True, help="site preset name")
    parser.add_argument("--n", type=int, required=True, help="number of images")
    parser.add_argument("--out", type=Path, required=True, help="output folder (must be empty)")
    add_shared_options(parser, "seed")
    parser.add_argument("--image-size", type=int, default=None, help="override the preset's image side (px)")
    parser.add_argument("--overwrite", action="store_true", help="replace the phantom files in a non-empty --out")
    parser.set_defaults(handler=run_generate)
    return parser


def run_generate(args: argparse.Namespace) -> int:
    """Write the site; a bad preset, count or folder raises a one-line error (`core.cli.run_command` prints it)."""
    generate_site(args.preset, args.n, args.out, args.seed, args.image_size, args.overwrite)
    return 0
