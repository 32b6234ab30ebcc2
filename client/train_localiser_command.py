"""`python -m client train-localiser --data DIR --boxes boxes.csv --out FILE`: the key-point localiser.

Trains on the boxes annotated ``train`` and measures the result on the images read twice (``eval-expert`` and
``eval-nonexpert``) against the readers' own spread (docs/preprocessing.md). The images are only read.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from core.cli import add_shared_options
from core.errors import ConfigError
from core.preprocess.landmarks_train import LocaliserTrainConfig, train_localiser


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register `train-localiser` on the `python -m client` command line."""
    defaults = LocaliserTrainConfig()
    parser = commands.add_parser("train-localiser", help="train the heat-map localiser of the reading regions")
    parser.add_argument("--data", type=Path, required=True, help="folder of images (or a site folder with images/)")
    parser.add_argument("--boxes", type=Path, required=True,
                        help="boxes.csv: id, annotation, label, width, height, x0, y0, x1, y1 (fractions)")
    parser.add_argument("--out", type=Path, required=True, help="weights file to write (.pt)")
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    add_shared_options(parser, "seed", "threads")
    parser.set_defaults(handler=run_train_localiser)


def run_train_localiser(args: argparse.Namespace) -> int:
    if args.steps < 1 or args.batch_size < 1:
        raise ConfigError("--steps and --batch-size must be >= 1")
    config = LocaliserTrainConfig(steps=args.steps, batch_size=args.batch_size, seed=args.seed, threads=args.threads)
    metadata = train_localiser(args.data, args.boxes, args.out, config)
    print(json.dumps({"out": str(args.out), "n_images": metadata["n_images"],
                      "train_seconds": metadata["train_seconds"], "held_out": metadata.get("held_out")}))
    return 0
