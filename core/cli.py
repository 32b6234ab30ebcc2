"""The command-line pattern shared by `python -m client`, `python -m server` and `python -m sim`.

It lives in `core` because core is the one package all three command packages (and `bench/`) depend on; it
holds only argparse and the error handler, nothing of Flower. Each command lives in its own module with
`add_parser(commands)`, which registers the sub-parser and sets its `handler`; `dispatch` builds the
command line from those modules and runs the chosen handler through `run_command`.

Shared options have one meaning and one default in every command (`add_shared_options`):
`--device` (auto: a CUDA GPU when present, else the CPU), `--threads` (CPU threads for torch; default:
torch's own choice), `--seed` (0), `--json` (one JSON document on stdout instead of the text) and
`-v/--verbose` (debug logging, accepted before or after the command name).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from core.data import SiteDataConfig
from core.data.config import LAYOUT_SCHEMA
from core.errors import USER_ERRORS

DEVICE_DEFAULT = "auto"
DEVICE_HELP = "auto (default: a CUDA GPU when present, else the CPU), cpu, cuda or cuda:N"
THREADS_HELP = "CPU threads for torch (default: torch's own choice, all cores)"
SEED_DEFAULT = 0
SEED_HELP = "random seed (default 0); the same seed gives the same numbers twice on one machine"
JSON_HELP = "print one JSON document on stdout instead of the text (logs stay on stderr)"
SHARED_OPTIONS = ("device", "threads", "seed", "json")


def setup_logging(verbose: bool = False) -> None:
    """One line per message: our handler on the root logger, at DEBUG only with -v.

    Flower logs through its own console handler and, by propagation, through ours as well (every Flower line
    twice, its DEBUG lines included): its logger stops propagating and keeps its one handler, at our level.
    """
    level = logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    flower = logging.getLogger("flwr")
    flower.propagate = False
    for handler in flower.handlers:
        handler.setLevel(level)


def add_verbose_option(parser: argparse.ArgumentParser, root: bool = False) -> None:
    """`-v/--verbose`: on the root parser (default off) and on each command (so it may follow the command name)."""
    parser.add_argument("-v", "--verbose", action="store_true", default=False if root else argparse.SUPPRESS,
                        help="debug logging")


def add_shared_options(parser: argparse.ArgumentParser, *names: str, json_help: str = JSON_HELP,
                       seed_help: str = SEED_HELP, seed_default: int | None = SEED_DEFAULT,
                       threads_default: int | None = None) -> None:
    """Add the shared options `names` (of `SHARED_OPTIONS`) with their one meaning and default.

    `seed_default=None` is for a command whose seed may come from a file it reads (its help says so); the
    value the run uses is still 0 when nothing sets it. `threads_default` is for the benchmarks, whose timings
    are taken on a fixed number of threads (their help says so); every command leaves it to torch.
    """
    unknown = set(names) - set(SHARED_OPTIONS)
    if unknown:
        raise ValueError(f"unknown shared options {sorted(unknown)}")
    if "device" in names:
        parser.add_argument("--device", default=DEVICE_DEFAULT, help=DEVICE_HELP)
    if "threads" in names:
        shown = THREADS_HELP if threads_default is None else \
            f"CPU threads for torch (default {threads_default}: the benchmark's timings are taken on that many)"
        parser.add_argument("--threads", type=_positive_int, default=threads_default, help=shown)
    if "seed" in names:
        parser.add_argument("--seed", type=int, default=seed_default, help=seed_help)
    if "json" in names:
        parser.add_argument("--json", action="store_true", help=json_help)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """--data plus the declared layout of a site folder (columns, unit, file names)."""
    parser.add_argument("--data", type=Path, required=True, help="site folder (CSV + image folder)")
    LAYOUT_SCHEMA.add_arguments(parser, LAYOUT_SCHEMA.settings)


def data_config_from_args(args: argparse.Namespace) -> SiteDataConfig:
    """The site folder `--data` with the layout its flags declare."""
    return SiteDataConfig(root=args.data, **LAYOUT_SCHEMA.from_args(args, LAYOUT_SCHEMA.settings))


def apply_threads(args: argparse.Namespace) -> None:
    """`--threads N`: torch uses N CPU threads in this process (a command may also pass it to its workers)."""
    threads = getattr(args, "threads", None)
    if threads:
        import torch  # only commands that take --threads pay for it

        torch.set_num_threads(threads)


def run_command(handler: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a CLI handler; user errors become one line on stderr and exit code 2."""
    try:
        apply_threads(args)
        return handler(args)
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def command_parser(prog: str, description: str | None, modules: Sequence[str],
                   required: bool = True) -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    """The root parser of `prog` with one sub-command per module of `modules` (each has `add_parser`)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_verbose_option(parser, root=True)
    commands = parser.add_subparsers(dest="command", required=required)
    for name in modules:
        importlib.import_module(name).add_parser(commands)
    for sub in commands.choices.values():
        add_verbose_option(sub)
    return parser, commands


def dispatch(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> int:
    """Parse `argv`, set up logging and run the chosen command's `handler` through `run_command`."""
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    return run_command(args.handler, args)
