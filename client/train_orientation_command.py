"""`python -m client train-orientation --data DIR --out FILE`: train the orientation model on unlabelled images.

The images are read, never written. A phantom folder (`python -m sim generate`) is turned into the canonical pose by
its key points first; any other folder is taken as mostly canonical (left hands, fingers up, bone bright).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from core.cli import add_shared_options
from core.errors import ConfigError
from core.preprocess.orientation_train import OrientationTrainConfig, train_orientation


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register `train-orientation` on the `python -m client` command line."""
    defaults = OrientationTrainConfig()
    parser = commands.add_parser("train-orientation",
                                 help="train the model that undoes turned, mirrored and inverted radiographs")
    parser.add_argument("--data", type=Path, required=True, action="append",
                        help="a folder of images, or a site folder with images/ (only its training split is used); "
                             "repeat for several folders")
    parser.add_argument("--out", type=Path, required=True, help="weights file to write (.pt)")
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--max-images", type=int, default=defaults.max_images, help="at most this many per folder")
    add_shared_options(parser, "seed", "threads")
    parser.set_defaults(handler=run_train_orientation)


def run_train_orientation(args: argparse.Namespace) -> int:
    if args.steps < 1 or args.batch_size < 1 or args.max_images < 8:
        raise ConfigError("--steps and --batch-size must be >= 1 and --max-images >= 8")
    config = OrientationTrainConfig(steps=args.steps, batch_size=args.batch_size, max_images=args.max_images,
                                    seed=args.seed, threads=args.threads)
    metadata = train_orientation(args.data, args.out, config)
    print(json.dumps({"out": str(args.out), "held_out_accuracy": metadata["held_out_accuracy"],
                      "n_images": metadata["n_images"], "train_seconds": metadata["train_seconds"]}))
    return 0
