"""`python -m sim`: simulate hospitals and compare freezing strategies; `python -m sim generate`: phantom sites;
`python -m sim interval`: the federated interval of an existing federated model."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from core.cli import add_shared_options, command_parser, run_command, setup_logging
from core.errors import ConfigError
from core.model.freeze import parse_freeze_spec_list
from sim.config import PRESETS, SIM_SCHEMA, RealSite, load_experiment, preset
from sim.sizes import parse_site_sizes
from strategies.options import parse_option_assignments


SIM_FLAGS = ("rounds", "local_epochs", "batch_size", "lr", "strategy", "seeds")  # flags from the simulation's schema
# One module per sub-command, as in `python -m client`; the default run keeps its flags on the root.
COMMAND_MODULES = ("sim.generate", "sim.partition", "sim.interval")


def build_parser() -> argparse.ArgumentParser:
    parser, _ = command_parser("python -m sim", __doc__, COMMAND_MODULES, required=False)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default",
                        help="default (~10 min on 2 CPU cores), smoke (CI, ~3 min), paper (500 px, GPU)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default runs/sim)")
    parser.add_argument("--cache", type=Path, default=None, help="cache of sites and pretrained models")
    add_shared_options(parser, "seed", seed_default=None,
                       seed_help="random seed (default: the experiment file's, else 0); --seeds N runs seed, seed + 1, ...")
    # not given: the experiment file's, else the preset's; a bad value is a one-line error (exit 2)
    SIM_SCHEMA.add_arguments(parser, SIM_FLAGS, inherit=True, check=False)
    parser.add_argument("--strategy-option", action="append", default=[], metavar="KEY=VALUE",
                        help="a strategy option, repeatable: server-momentum, server-learning-rate (fedavgm), eta, "
                             "beta-1, beta-2, tau (fedadam), trimmed-beta (fedtrimmedavg), proximal-mu (fedprox); "
                             "see docs/strategies.md")
    add_shared_options(parser, "device")  # every stage: pretraining, baselines, evaluation, the simulated sites
    parser.add_argument("--freeze", action="append", default=None, metavar="SPECS",
                        help="comma-separated freeze specs, e.g. '1-3,none' (repeatable); one spec freezing several "
                             "blocks is a range or joined with '+' (1-3, 1-2+4): '1,2,3' is refused as ambiguous")
    parser.add_argument("--dp", default=None,
                        help="comma-separated DP noise multipliers: adds one DP federation per value (freeze 1-3)")
    parser.add_argument("--dp-max-epsilon", type=float, default=None,
                        help="each DP site's privacy budget (default 10): a site refuses a round that would pass it")
    parser.add_argument("--pretrained", type=Path, default=None, help="start from this checkpoint (no pretraining)")
    parser.add_argument("--source", type=Path, default=None, help="pretrain on this RSNA-format folder instead")
    parser.add_argument("--site", action="append", default=[], metavar="DIR[:years]",
                        help="a real hospital folder (repeatable; ':years' for whole-year labels); replaces the phantom sites")
    parser.add_argument("--experiment", type=Path, default=None,
                        help="experiment file (TOML): source, sites with columns and units, freeze specs, rounds, seeds")
    parser.add_argument("--no-feature-cache", dest="feature_cache", action="store_const", const=False, default=None,
                        help="recompute the frozen blocks at every step (sites, baselines) instead of once per image")
    parser.add_argument("--site-sizes", default=None, metavar="N,N,...",
                        help="repeat the comparison with each site's training split cut to N images, e.g. "
                             "25,50,100,200,400 (test split fixed; see docs/federation.md)")
    parser.add_argument("--fedrep", action="store_true", help="also run FedRep (each site keeps its own head)")
    parser.add_argument("--leave-one-out", action="store_true",
                        help="also federate without each site in turn and score that model on the site left out")
    parser.add_argument("--wandb", action="store_true", help="also log to wandb (offline unless configured)")
    return parser


def run_sim(args: argparse.Namespace) -> int:
    from sim.run import run_experiment

    from_file = load_experiment(args.experiment) if args.experiment else {}
    name = from_file.pop("preset", args.preset)
    command_line = dict(
        pretrained=args.pretrained, source_dir=args.source, real_sites=tuple(RealSite.parse(t) for t in args.site) or None,
        out_dir=args.out, cache_dir=args.cache, seed=args.seed, wandb=args.wandb or None, **SIM_SCHEMA.from_args(args, SIM_FLAGS),
        freeze_specs=tuple(s for text in args.freeze for s in parse_freeze_spec_list(text)) if args.freeze else None,
        dp_noise_multipliers=_numbers("--dp", args.dp) if args.dp else None, dp_max_epsilon=args.dp_max_epsilon,
        strategy_options=tuple(sorted(parse_option_assignments(args.strategy_option).items())) or None,
        device=args.device, feature_cache=args.feature_cache,
        site_sizes=parse_site_sizes(args.site_sizes) if args.site_sizes else None,
        fedrep=args.fedrep or None, leave_one_out=args.leave_one_out or None,
    )
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


def _numbers(flag: str, text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"{flag} takes comma-separated numbers, got {text!r}") from None


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
