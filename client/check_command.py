"""`python -m client check --data DIR`: validate a site folder before joining a federation."""

from __future__ import annotations

import argparse
from pathlib import Path

from client.check import TimingSettings, check_site, format_report, report_json
from core.cli import add_data_arguments, add_shared_options, data_config_from_args


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register `check` on the `python -m client` command line."""
    check = commands.add_parser("check", help="validate the manifest and images (read-only) and time training")
    add_data_arguments(check)
    check.add_argument("--image-size", type=int, default=128, help="model input side of the run (default: 128)")
    check.add_argument("--width", type=float, default=0.5, help="TJ-Net channel multiplier of the run")
    check.add_argument("--freeze", default=TimingSettings.freeze,
                       help=f"blocks frozen in the run (default: {TimingSettings.freeze})")
    check.add_argument("--batch-size", type=int, default=TimingSettings.batch_size)
    check.add_argument("--local-epochs", type=int, default=TimingSettings.local_epochs)
    check.add_argument("--steps", type=int, default=3, help="training steps to time (after one warm-up step)")
    add_shared_options(check, "device")
    check.add_argument("--pretrained", type=Path, default=None,
                       help="the run's pretrained checkpoint (its image size and width replace the two above)")
    check.add_argument("--preprocess", default="default",
                       help="preprocessing to check the images with when --pretrained records none: none, default "
                            "or default,key=value,... (docs/preprocessing.md)")
    check.add_argument("--contact-sheet", type=Path, default=Path("check_contact_sheet.png"),
                       help="before/after PNG of some images, flagged ones first (default: ./check_contact_sheet.png)")
    add_shared_options(check, "json")
    check.set_defaults(handler=run_check)


def run_check(args: argparse.Namespace) -> int:
    settings = TimingSettings(args.image_size, args.width, args.freeze, args.batch_size, args.local_epochs,
                              args.steps, args.device, args.pretrained, args.preprocess, args.contact_sheet)
    report = check_site(data_config_from_args(args), settings)
    print(report_json(report) if args.json else format_report(report))
    return 0 if report.usable else 1
