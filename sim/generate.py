"""``python -m sim generate``: write a phantom site in the RSNA layout."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from sim.phantom.profiles import PRESETS, ProfileError
from sim.phantom.writer import GenerateError, generate_site

logger = logging.getLogger(__name__)

__all__ = ["add_generate_parser", "generate_site", "run_generate"]


def add_generate_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the ``generate`` sub-command on ``subparsers``."""
    parser = subparsers.add_parser(
        "generate", help="write a synthetic hand-radiograph site (labels.csv + images/ + ground truth)",
        description=f"Presets: {', '.join(PRESETS)}. See docs/phantom.md.")
    parser.add_argument("--preset", required=True, help="site preset name")
    parser.add_argument("--n", type=int, required=True, help="number of images")
    parser.add_argument("--out", type=Path, required=True, help="output folder (must be empty)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--image-size", type=int, default=None, help="override the preset's image side (px)")
    parser.add_argument("--overwrite", action="store_true", help="replace the phantom files in a non-empty --out")
    parser.set_defaults(func=run_generate)
    return parser


def run_generate(args: argparse.Namespace) -> int:
    """Run the sub-command; return the process exit code (2 on bad input, one-line error)."""
    try:
        generate_site(args.preset, args.n, args.out, args.seed, args.image_size, args.overwrite)
    except (ProfileError, GenerateError) as exc:
        logger.error("error: %s", exc)
        return 2
    return 0
