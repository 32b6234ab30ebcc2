"""`python -m client COMMAND`: a hospital's own tools (each command lives in its own module)."""

from __future__ import annotations

import argparse
import sys

from core.cli import command_parser, dispatch

# One module per command; each defines `add_parser(commands)`, which sets `handler` on its sub-parser.
COMMAND_MODULES = (
    "client.check_command",
    "client.predict_command",
    "client.calibrate_command",
    "client.accept_command",
    "client.supernode_command",
    "client.export_command",
    "client.finetune_command",
    "client.preprocess_command",
    "client.train_orientation_command",
    "client.train_localiser_command",
    "client.train_mask_command",
)


def build_parser() -> argparse.ArgumentParser:
    return command_parser("python -m client", __doc__, COMMAND_MODULES)[0]


def main(argv: list[str] | None = None) -> int:
    return dispatch(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
