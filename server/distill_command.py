"""`python -m server distill-targets`: an ensemble's per-image targets for `server pretrain --teacher`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from core.cli import add_data_arguments, add_shared_options, data_config_from_args
from core.stages.teacher import TEACHER_TTA, TeacherJob, make_teacher_targets


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register `distill-targets` on the `python -m server` command line."""
    targets = commands.add_parser("distill-targets",
                                  help="the mean class probabilities of class-head models per image, for --teacher")
    add_data_arguments(targets)
    targets.add_argument("--models", type=Path, nargs="+", required=True,
                         help="the teacher's members (class heads on one grid, same input side and preprocessing)")
    targets.add_argument("--out", type=Path, required=True, help="teacher-targets file to write (e.g. teacher.npz)")
    targets.add_argument("--splits", nargs="+", default=["train", "val", "test"],
                         help="splits to cover (the student needs train; val and test give the teacher's MAD there)")
    targets.add_argument("--tta", choices=TEACHER_TTA, default="members",
                         help="views averaged per member: the members' recorded test-time augmentation, the default "
                              "one of server pretrain (7 views: 7x the time), or one plain pass")
    add_shared_options(targets, "device", "threads", "json")
    targets.set_defaults(handler=run_distill_targets)


def run_distill_targets(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    report = make_teacher_targets(TeacherJob(models=tuple(args.models), data=data_config_from_args(args), out=args.out,
                                             splits=tuple(args.splits), tta=args.tta, device=args.device))
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"teacher of {len(report['members'])} members, views {report['tta']}: {args.out}")
    for split in args.splits:
        print(f"{split:<6} {report[split]['n_images']:6d} images  teacher MAD {report[split]['teacher_mad_months']:6.2f} months")
    return 0
