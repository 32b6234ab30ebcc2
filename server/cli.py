"""`python -m server COMMAND`: the coordinating side's tools (each command lives in its own module)."""

from __future__ import annotations

import argparse

from core.cli import command_parser, dispatch

# One module per command; each defines `add_parser(commands)`, which sets `handler` on its sub-parser.
COMMAND_MODULES = (
    "server.pretrain_command",
    "server.evaluate_command",
    "server.ensemble_command",
    "server.distill_command",
)


def build_parser() -> argparse.ArgumentParser:
    return command_parser("python -m server", __doc__, COMMAND_MODULES)[0]


def main(argv: list[str] | None = None) -> int:
    return dispatch(build_parser(), argv)
