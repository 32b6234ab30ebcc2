"""Argument and error handling shared by the command-line tools (`server`, `client`, `sim`)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from core.data import SiteDataConfig
from core.errors import USER_ERRORS


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """--data plus the declared layout of a site folder (columns, unit, file names)."""
    parser.add_argument("--data", type=Path, required=True, help="site folder (CSV + image folder)")
    parser.add_argument("--csv", default="labels.csv", help="manifest file in the site folder (default: labels.csv)")
    parser.add_argument("--image-dir", default="images", help="image folder in the site folder (default: images)")
    parser.add_argument("--id-column", default="id")
    parser.add_argument("--age-column", default="boneage")
    parser.add_argument("--sex-column", default="male")
    parser.add_argument("--label-unit", choices=("months", "years"), default="months",
                        help="unit of the age column (a Tongji-style site labels in whole years)")


def data_config_from_args(args: argparse.Namespace) -> SiteDataConfig:
    return SiteDataConfig(
        root=args.data, csv_name=args.csv, image_dir=args.image_dir, id_column=args.id_column,
        age_column=args.age_column, sex_column=args.sex_column, label_unit=args.label_unit,
    )


def run_command(handler: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a CLI handler; user errors become one line on stderr and exit code 2."""
    try:
        return handler(args)
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
