"""`python -m server ensemble`: a linear ensemble of checkpoints fitted on the val split, in one checkpoint."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from core.cli import add_data_arguments, add_shared_options, data_config_from_args
from core.stages.ensemble import EnsembleJob, build_ensemble


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register `ensemble` on the `python -m server` command line."""
    ensemble = commands.add_parser("ensemble", help="fit a linear ensemble of checkpoints on the val split")
    add_data_arguments(ensemble)
    ensemble.add_argument("--models", type=Path, nargs="+", required=True, help="member checkpoints (two or more)")
    ensemble.add_argument("--out", type=Path, required=True, help="ensemble checkpoint to write")
    ensemble.add_argument("--per-sex", action="store_true", help="one set of weights and intercept per sex")
    add_shared_options(ensemble, "device", "json")
    ensemble.set_defaults(handler=run_ensemble)


def run_ensemble(args: argparse.Namespace) -> int:
    report = build_ensemble(EnsembleJob(models=tuple(args.models), data=data_config_from_args(args), out=args.out,
                                        per_sex=args.per_sex, device=args.device))
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"{'model':<40} {'val MAD':>8} {'test MAD':>9}")
    for name in [*report["members"], "ensemble"]:
        print(f"{name:<40} {report['val'][name]:8.2f} {report['test'].get(name, float('nan')):9.2f}")
    for group, (weights, intercept) in enumerate(zip(report["weights"], report["intercepts"])):
        label = ("female", "male")[group] if report["per_sex"] else "all"
        print(f"weights ({label}): " + ", ".join(f"{w:+.3f}" for w in weights) + f"; intercept {intercept:+.2f} months")
    return 0
