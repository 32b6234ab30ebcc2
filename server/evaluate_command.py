"""`python -m server evaluate`: MAD, RMSE, accuracy, bias and MAD per age group of a checkpoint on a site folder."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from core.stages.central import evaluate_checkpoint
from core.cli import add_data_arguments, add_shared_options, data_config_from_args
from core.predict.tta import TTAConfig


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register `evaluate` on the `python -m server` command line."""
    evaluate = commands.add_parser("evaluate", help="evaluate a checkpoint on a site folder")
    add_data_arguments(evaluate)
    evaluate.add_argument("--model", type=Path, required=True, help="checkpoint file")
    evaluate.add_argument("--split", choices=("train", "val", "test", "all"), default="test")
    evaluate.add_argument("--no-tta", action="store_true",
                          help="one forward pass per image, without the test-time augmentation the checkpoint records "
                               "(server pretrain's default), e.g. to compare it with a model that records none")
    add_shared_options(evaluate, "device", "json")
    evaluate.set_defaults(handler=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    metrics = evaluate_checkpoint(args.model, data_config_from_args(args), args.split, args.device,
                                  one_pass=args.no_tta)
    if args.json:
        print(json.dumps(metrics))
        return 0
    print(f"{args.split} split of {args.data}: n={metrics['n']} (skipped {metrics['skipped']})")
    print(f"  MAD {metrics['mad_months']:.2f} months   RMSE {metrics['rmse_months']:.2f} months   "
          f"bias {metrics['bias_months']:+.2f} months")
    print(f"  accuracy {metrics['accuracy']:.3f}   within 1 year {metrics['accuracy_1y']:.3f}")
    tta = TTAConfig(**metrics["tta"])
    if tta.enabled:
        print(f"  test-time augmentation recorded by the model: shift {tta.shift}, scale {tta.scale} "
              "(--no-tta for one pass)")
    for group, mad in metrics["mad_by_age_group"].items():
        print(f"  MAD {group:>7}: {mad:6.2f} months")
    return 0
