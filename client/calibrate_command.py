"""`python -m client calibrate --model CKPT --data DIR --out CKPT2`: the prediction interval on a site's own data."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from core.cli import add_data_arguments, add_shared_options, data_config_from_args
from core.intervals.conformal import ConformalError, CoverageReport, calibrate_checkpoint
from core.intervals.conformal_bands import MIN_BANDS, BandConfig


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register `calibrate` on the `python -m client` command line."""
    parser = commands.add_parser("calibrate", help="re-calibrate a model's prediction interval on labelled site data")
    add_data_arguments(parser)
    parser.add_argument("--model", type=Path, required=True, help="checkpoint to calibrate (left unchanged)")
    parser.add_argument("--out", type=Path, required=True, help="checkpoint file to write, with the new interval")
    parser.add_argument("--split", choices=("val", "test", "all"), default="val",
                        help="images to calibrate on; 'all' only for images the model never trained on (default: val)")
    parser.add_argument("--coverage", type=float, default=0.9, help="target coverage of the interval (default: 0.9)")
    parser.add_argument("--bands", type=int, default=BandConfig.n_bands,
                        help=f"predicted-age bands of the interval (default: {BandConfig.n_bands}; 3 at least)")
    parser.add_argument("--min-per-band", type=int, default=BandConfig.min_per_band,
                        help="fewest calibration images per band; fewer bands are made when images are few "
                             f"(default: {BandConfig.min_per_band})")
    add_shared_options(parser, "device", "json")
    parser.set_defaults(handler=run_calibrate)


def _share(report: CoverageReport) -> str:
    return (f"{report.covered:.1%} of {report.n} ({report.covered_low:.1%}-{report.covered_high:.1%})")


def run_calibrate(args: argparse.Namespace) -> int:
    if args.bands < MIN_BANDS or args.min_per_band < 1:
        raise ConformalError(f"--bands must be at least {MIN_BANDS} and --min-per-band at least 1")
    interval, tests = calibrate_checkpoint(args.model, data_config_from_args(args), args.out, args.split,
                                          args.coverage, args.device, BandConfig(args.bands, args.min_per_band))
    if args.json:
        print(json.dumps({"conformal": interval.to_dict(), "test": {k: asdict(v) for k, v in tests.items()},
                          "out": str(args.out)}))
        return 0
    head = interval.halfwidth_months_sex_from_head
    print(f"{interval.coverage:.0%} interval from {interval.n} {interval.split} images of {args.data}: "
          f"+-{interval.halfwidth_months:.1f} months (sex given)"
          + ("" if head is None else f", +-{head:.1f} months (sex from the model's sex head)"))
    if interval.bands:
        print("per band of the predicted age (the interval predict uses):")
        for band in interval.bands:
            print(f"  {band.label:>16}: +-{band.halfwidth_months:.1f} months (sex given)"
                  + ("" if head is None else f", +-{band.halfwidth_months_sex_from_head:.1f} (sex from head)")
                  + f", {band.n} images, true minus read {band.bias_months:+.1f} months on average")
    else:
        print("too few calibration images for per-band intervals: one interval for every age")
    for name, test in tests.items():
        print(f"{name}: covers {test.covered:.1%} of the {test.n} test images "
              f"(95% CI {test.covered_low:.1%}-{test.covered_high:.1%}), mean width {test.mean_width_months:.1f} months")
        for band in test.bands:
            print(f"  read {band.band:>16}: covers {_share(band.used)}, mean width "
                  f"{band.used.mean_width_months:.1f} months; one interval for all ages would cover {_share(band.single)}")
    print(f"saved {args.out}")
    return 0
