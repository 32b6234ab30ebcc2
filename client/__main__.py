"""`python -m client COMMAND`: a hospital's own tools (each command lives in its own module)."""

from __future__ import annotations

import argparse
import importlib
import sys

from core.cli import run_command, setup_logging

# One module per command; each defines `add_parser(commands)`, which sets `handler` on its sub-parser.
COMMAND_MODULES = (
    "client.check_command",
    "client.predict_command",
    "client.calibrate_command",
    "client.accept_command",
    "client.supernode_command",
    "client.finetune_command",
    "client.preprocess_command",
    "client.train_orientation_command",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m client", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    commands = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    return run_command(args.handler, args)


if __name__ == "__main__":
    sys.exit(main())
