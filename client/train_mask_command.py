"""`python -m client train-mask --data PHANTOM_DIR [--data ...] --out FILE`: the hand mask U-Net.

Trains on phantom folders written by `python -m sim generate` (their images and true masks, under randomised
acquisitions: `core.preprocess.handmask_train`); the command and seed are recorded in the weights. The packaged
`core/preprocess/weights/hand_mask_phantom.pt` was made this way (docs/preprocessing.md). The images are only read.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from core.cli import add_shared_options
from core.errors import ConfigError
from core.preprocess.handmask_train import MaskTrainConfig, train_hand_mask


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register `train-mask` on the `python -m client` command line."""
    defaults = MaskTrainConfig()
    parser = commands.add_parser("train-mask", help="train the U-Net that masks the hand on phantom images")
    parser.add_argument("--data", type=Path, required=True, action="append",
                        help="a phantom folder with images/ and masks/ (python -m sim generate); repeat for several")
    parser.add_argument("--out", type=Path, required=True, help="weights file to write (.pt)")
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--max-images", type=int, default=defaults.max_images, help="at most this many per folder")
    add_shared_options(parser, "seed", "threads")
    parser.set_defaults(handler=run_train_mask)


def run_train_mask(args: argparse.Namespace) -> int:
    if args.steps < 1 or args.batch_size < 1 or args.max_images < 8:
        raise ConfigError("--steps and --batch-size must be >= 1 and --max-images >= 8")
    config = MaskTrainConfig(steps=args.steps, batch_size=args.batch_size, max_images=args.max_images,
                             seed=args.seed, threads=args.threads)
    command = "python -m client " + shlex.join(sys.argv[1:]) if sys.argv[1:2] == ["train-mask"] else ""
    metadata = train_hand_mask(args.data, args.out, config, command=command)
    print(json.dumps({"out": str(args.out), "held_out_iou": metadata["held_out_iou"],
                      "n_images": metadata["n_images"], "train_seconds": metadata["train_seconds"]}))
    return 0
