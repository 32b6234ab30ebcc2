"""`python -m sim`: simulate hospitals and compare freezing strategies; `python -m sim generate`: phantom sites;
`python -m sim interval`: the federated interval of an existing federated model."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from core.cli import add_shared_options, command_parser, run_command, setup_logging
from core.errors import ConfigError
from sim.config import PRESETS, SIM_SCHEMA, load_experiment, preset


# Every flag of the default run comes from the simulation's schema but the shared ones (--seed, --device) and the two
# that choose where the settings start from (--preset, --experiment).
SIM_FLAGS = tuple(name for name in SIM_SCHEMA.settings if name != "seed")
# One module per sub-command, as in `python -m client`; the default run keeps its flags on the root.
COMMAND_MODULES = ("sim.generate", "sim.partition", "sim.interval")


def build_parser() -> argparse.ArgumentParser:
    parser, _ = command_parser("python -m sim", __doc__, COMMAND_MODULES, required=False)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default",
                        help="default (~10 min on 2 CPU cores), smoke (CI, ~3 min), paper (500 px, GPU)")
    parser.add_argument("--experiment", type=Path, default=None,
                        help="experiment file (TOML): source, sites with columns and units, freeze specs, rounds, seeds")
    add_shared_options(parser, "seed", seed_default=None,
                       seed_help="random seed (default: the experiment file's, else 0); --seeds N runs seed, seed + 1, ...")
    add_shared_options(parser, "device")  # every stage: pretraining, baselines, evaluation, the simulated sites
    # not given: the experiment file's, else the preset's; a bad value is a one-line error (exit 2)
    SIM_SCHEMA.add_arguments(parser, SIM_FLAGS, inherit=True, check=False)
    return parser


def run_sim(args: argparse.Namespace) -> int:
    from sim.run import run_experiment

    from_file = load_experiment(args.experiment) if args.experiment else {}
    name = from_file.pop("preset", args.preset)
    command_line = dict(seed=args.seed, device=args.device, **SIM_SCHEMA.from_args(args, SIM_FLAGS))
    config = preset(name, **{**from_file, **{k: v for k, v in command_line.items() if v is not None}})
    run_experiment(config)
    return 0


def root_flags_before(argv: list[str], command: str) -> list[str]:
    """The default run's flags given before `command` (other than -v): a sub-command does not use them."""
    head = argv[:argv.index(command)] if command in argv else []
    return [token.split("=", 1)[0] for token in head if token.startswith("-") and token not in ("-v", "--verbose")]


def _refuse_root_flags(flags: list[str], command: str) -> int:
    raise ConfigError(f"{' '.join(flags)} before '{command}' belong to the default run and would be ignored; "
                      f"give {command}'s own options after it (python -m sim {command} --help)")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    if args.command is None:
        return run_command(run_sim, args)
    ignored = root_flags_before(argv, args.command)
    if ignored:
        return run_command(lambda _: _refuse_root_flags(ignored, args.command), args)
    return run_command(args.handler, args)


if __name__ == "__main__":
    sys.exit(main())
