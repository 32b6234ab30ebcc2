"""``python -m sim``: command-line entry point (only ``generate`` for now)."""

from __future__ import annotations

import argparse
import logging
import sys

from sim.generate import add_generate_parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen sub-command; return its exit code."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(prog="python -m sim")
    add_generate_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
