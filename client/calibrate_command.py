"""`python -m client calibrate --model CKPT --data DIR --out CKPT2`: the prediction interval on a site's own data."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from core.cli import add_data_arguments, data_config_from_args
from core.conformal import calibrate_checkpoint


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register `calibrate` on the `python -m client` command line."""
    parser = commands.add_parser("calibrate", help="re-calibrate a model's prediction interval on labelled site data")
    add_data_arguments(parser)
    parser.add_argument("--model", type=Path, required=True, help="checkpoint to calibrate (left unchanged)")
    parser.add_argument("--out", type=Path, required=True, help="checkpoint file to write, with the new interval")
    parser.add_argument("--split", choices=("val", "test", "all"), default="val",
                        help="images to calibrate on; 'all' only for images the model never trained on (default: val)")
    parser.add_argument("--coverage", type=float, default=0.9, help="target coverage of the interval (default: 0.9)")
    parser.add_argument("--device", default="cpu", help="cpu, auto, cuda or cuda:N")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(handler=run_calibrate)


def run_calibrate(args: argparse.Namespace) -> int:
    interval, tests = calibrate_checkpoint(args.model, data_config_from_args(args), args.out, args.split,
                                          args.coverage, args.device)
    if args.json:
        print(json.dumps({"conformal": interval.to_dict(), "test": {k: vars(v) for k, v in tests.items()},
                          "out": str(args.out)}))
        return 0
    head = interval.halfwidth_months_sex_from_head
    print(f"{interval.coverage:.0%} interval from {interval.n} {interval.split} images of {args.data}: "
          f"+-{interval.halfwidth_months:.1f} months (sex given)"
          + ("" if head is None else f", +-{head:.1f} months (sex from the model's sex head)"))
    for name, test in tests.items():
        print(f"{name}: covers {test.covered:.1%} of the {test.n} test images "
              f"(95% CI {test.covered_low:.1%}-{test.covered_high:.1%}), mean width {test.mean_width_months:.1f} months")
    print(f"saved {args.out}")
    return 0
