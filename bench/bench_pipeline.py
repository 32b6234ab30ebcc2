"""Does the data pipeline keep up with training at the simulation defaults?

Usage:
    python -m bench.bench_pipeline [--n 300] [--size 96] [--reps 5] [--threads 1]

A phantom site (tongji preset, n images at the simulation's 96 px) is generated in a temporary folder and its
training split decoded with the training augmentation. One epoch of `core.train.training.train_epoch` on TJ-Net
(width 0.5, batch 32) is timed four ways, interleaved round-robin, median of `--reps`:
- `loader, 0 workers`: augmentation in the training process, as a site trains in a federated round;
- `loader, 1 worker`: augmentation in a worker process, overlapping the training step when a core is free;
- `prepared batches`: the same augmented batches built beforehand, so the epoch is pure model work;
- `pipeline only`: the 0-worker loader iterated without training (what the augmentation alone costs).
The pipeline keeps up when "pipeline only" produces images several times faster than training consumes them;
"data share" is the part of an epoch spent in the pipeline when it runs in the training process. Both
freezing settings are measured: blocks 1-3 frozen (a federated round's default) and none (pretraining).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from core.train.loss import make_loss
from core.data import AugmentConfig, SiteDataConfig, load_site, make_loader
from core.train.loss import JointLossConfig
from core.model.config import TJNetConfig
from core.model.freeze import freeze_blocks
from core.model.tjnet import TJNet
from core.train.training import TrainConfig, make_optimizer, train_epoch
from sim.phantom.writer import generate_site
from core.cli import add_shared_options

logger = logging.getLogger("bench.pipeline")
CPU = torch.device("cpu")


def epoch_fn(dataset, size: int, frozen: tuple[int, ...], batch_size: int, source: str) -> Callable[[], int]:
    """An untimed set-up, then a callable running one epoch from `source`; returns the images seen."""
    torch.manual_seed(0)
    model = TJNet(TJNetConfig(image_size=size, width=0.5))
    freeze_blocks(model, frozen)
    loss_fn = make_loss(model, JointLossConfig())
    optimizer = make_optimizer(model, TrainConfig(lr=1e-4))
    workers = 1 if source == "worker" else 0
    loader = make_loader(dataset, batch_size, shuffle=True, seed=0, num_workers=workers, drop_last=True)
    prepared = list(make_loader(dataset, batch_size, shuffle=True, seed=0, drop_last=True))

    def run() -> int:
        if source == "pipeline":
            return sum(len(batch["age"]) for batch in loader)
        batches = prepared if source == "prepared" else loader
        return train_epoch(model, batches, loss_fn, optimizer, CPU).examples

    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=300, help="phantom images (the simulation default per site: 300)")
    parser.add_argument("--image-size", "--size", dest="size", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", "--reps", dest="reps", type=int, default=5)
    add_shared_options(parser, "threads", threads_default=1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("core", "sim"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench_pipeline_") as tmp:
        root = generate_site("tongji", args.n, Path(tmp) / "tongji", seed=1, image_size=args.size)
        site = load_site(SiteDataConfig(root=root, label_unit="years"), args.size, AugmentConfig(), seed=0,
                         splits=("train",))
        sources = {"loader, 0 workers": "loader", "loader, 1 worker": "worker", "prepared batches": "prepared",
                   "pipeline only": "pipeline"}
        load_before = "/".join(f"{v:.1f}" for v in os.getloadavg())
        for frozen, label in (((1, 2, 3), "blocks 1-3 frozen"), ((), "nothing frozen")):
            runs = {name: epoch_fn(site.train, args.size, frozen, args.batch_size, source)
                    for name, source in sources.items()}
            times: dict[str, list[float]] = {name: [] for name in runs}
            for rep in range(args.reps + 1):
                for name, run in runs.items():
                    start = time.perf_counter()
                    images = run()
                    if rep > 0:  # the first pass warms up allocators and worker start-up paths
                        times[name].append(time.perf_counter() - start)
            med = {name: statistics.median(values) for name, values in times.items()}
            logger.info("\n%s, %d training images, batch %d, %d px, %d torch thread(s), load %s", label,
                        images, args.batch_size, args.size, args.threads, load_before)
            logger.info("| variant | s per epoch | img/s |")
            logger.info("|---|---|---|")
            for name, seconds in med.items():
                logger.info("| %s | %.3f | %.0f |", name, seconds, images / seconds)
            share = (med["loader, 0 workers"] - med["prepared batches"]) / med["loader, 0 workers"]
            logger.info("pipeline alone runs at %.1fx the rate training consumes; data share of an epoch with 0 "
                        "workers: %.0f %%; 1 worker / 0 workers epoch time: %.2fx",
                        med["prepared batches"] / med["pipeline only"], 100 * share,
                        med["loader, 1 worker"] / med["loader, 0 workers"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
