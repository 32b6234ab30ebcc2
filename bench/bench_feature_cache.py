"""Cost of a local epoch with and without the frozen-block feature cache (`core.train.feature_cache`), CPU.

Usage:
    python -m bench.bench_feature_cache [--images 256] [--size 96] [--width 0.5] [--batch 32]
                                        [--freeze 1-2,1-3,1-4] [--reps 3] [--threads 1]

A site's local epoch as `core.stages.finetune.train_site_round` runs it: augmented images (crop, rotation, scale,
contrast), the joint loss, AdamW, the frozen blocks in eval mode. `uncached` is the whole forward pass at
every step (channels-last, the default); `cached` trains the model's trainable tail on features already
computed for this epoch's view (every epoch after the first `views`); `view` is the one-off cost of
computing one view's features (frozen forward, no gradients); `maps` is what augmenting the cached maps in feature
space costs per epoch (`--feature-augment features`: a cached epoch plus this, no view after the first). Times are CPU seconds of this process (one
thread, no loader workers: on a shared machine they do not count the time other jobs hold the cores); cached
and uncached epochs alternate and medians are taken; the ratios are measured in one run.
Images are random 8-bit canvases: the cost does not depend on their content.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from core.train.loss import make_loss
from core.data.dataset import AugmentConfig, BoneAgeDataset, DecodedSplit, canvas_size, make_loader
from core.data.manifest import Record
from core.train.feature_cache import FeatureCache
from core.train.loss import JointLossConfig
from core.model.config import TJNetConfig
from core.model.freeze import freeze_blocks, parse_freeze_spec
from core.model.tjnet import TJNet
from core.train.training import TrainConfig, make_optimizer, train_epoch
from core.cli import add_shared_options


def synthetic_split(images: int, size: int, seed: int = 0) -> BoneAgeDataset:
    """`images` random canvases with ages and sexes, augmented as a site's training split."""
    rng = np.random.default_rng(seed)
    augment = AugmentConfig()
    side = canvas_size(size, augment)
    records = [Record(str(i), f"{i}.png", float(rng.uniform(12, 216)), bool(i % 2)) for i in range(images)]
    decoded = DecodedSplit(records, rng.integers(0, 256, (images, side, side), dtype=np.uint8), [])
    return BoneAgeDataset(records, size, augment, seed, decoded=decoded)


def epoch_seconds(model: torch.nn.Module, loss_fn: torch.nn.Module, dataset, batch: int, channels_last: bool,
                  epoch: int) -> float:
    """Seconds of one training epoch of `model` over `dataset` (its view set by `epoch`)."""
    optimizer = make_optimizer(model, TrainConfig())
    dataset.set_epoch(epoch)
    loader = make_loader(dataset, batch, shuffle=True, seed=epoch, drop_last=True)
    start = time.process_time()
    train_epoch(model, loader, loss_fn, optimizer, torch.device("cpu"), channels_last=channels_last)
    return time.process_time() - start


def measure(spec: str, args: argparse.Namespace) -> dict[str, float]:
    """Median epoch seconds without and with the cache, and the seconds of computing one view."""
    torch.manual_seed(0)
    model = TJNet(TJNetConfig(image_size=args.size, width=args.width))
    freeze_blocks(model, parse_freeze_spec(spec))
    dataset = synthetic_split(args.images, args.size)
    tail, cached = FeatureCache(views=1).prepare(model, dataset, torch.device("cpu"))
    start = time.process_time()
    cached._compute(0)  # one view again, timed (prepare computed the first)
    view = time.process_time() - start
    loss_fn = make_loss(model, JointLossConfig())
    loss_fn.schedule.raised = True
    epoch_seconds(model, loss_fn, dataset, args.batch, True, 0)  # warm-up of both paths
    epoch_seconds(tail, loss_fn, cached, args.batch, False, 0)
    plain, fast = [], []
    for _ in range(args.reps):
        plain.append(epoch_seconds(model, loss_fn, dataset, args.batch, True, 0))
        fast.append(epoch_seconds(tail, loss_fn, cached, args.batch, False, 0))
    _, in_space = FeatureCache(views=1, augment_where="features").prepare(model, dataset, torch.device("cpu"))
    in_space.set_epoch(0)  # computes the un-augmented view
    start = time.process_time()
    for epoch in range(1, args.reps + 1):
        in_space.set_epoch(epoch)
    maps = (time.process_time() - start) / args.reps
    return {"uncached": statistics.median(plain), "cached": statistics.median(fast), "view": view, "maps": maps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--width", type=float, default=0.5)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--freeze", default="1-2,1-3,1-4")
    parser.add_argument("--reps", type=int, default=3)
    add_shared_options(parser, "threads", threads_default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"local epoch of {args.images} images at {args.size} px, width {args.width}, batch {args.batch}, "
          f"{args.threads} thread(s), median of {args.reps}")
    print("| frozen | uncached epoch (CPU s) | cached epoch (CPU s) | speed-up | one view's features (CPU s) "
          "| speed-up with a new view every epoch | augmenting the maps (CPU s) | speed-up in feature space |")
    print("|---|---|---|---|---|---|---|---|")
    for spec in args.freeze.split(","):
        t = measure(spec.strip(), args)
        print(f"| {spec} | {t['uncached']:.2f} | {t['cached']:.2f} | {t['uncached'] / t['cached']:.2f}x "
              f"| {t['view']:.2f} | {t['uncached'] / (t['cached'] + t['view']):.2f}x | {t['maps']:.3f} "
              f"| {t['uncached'] / (t['cached'] + t['maps']):.2f}x |", flush=True)


if __name__ == "__main__":
    main()
