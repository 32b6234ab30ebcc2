"""Where does training sit at the mean-age predictor? Val MAD and the spread of predictions every few steps.

Trains a model with `server pretrain`'s settings on a site folder for `--steps` optimiser steps and, every
`--every` steps, scores the first `--val-images` images of the val split: the val MAD, the standard deviation
of the predicted ages (near 0 months: the model gives every image the same age), their correlation with the
sex input (near 1: the model gives one age per sex, whatever the image), the spread of block 5's fused
features over the images (their standard deviation over the images relative to their mean magnitude, averaged
over the units; near 0: the image no longer reaches the head) and the MAD of the mean predictor on the same
images (the training split's mean age). One variant per run, so that the variants can be
compared step by step (docs/benchmarks.md, "Training recipe"):

    python -m bench.bench_plateau --data ../shared/data/rsna100 --steps 500 --alpha-rule loss --head-init uniform
    python -m bench.bench_plateau --data ../shared/data/rsna100 --steps 500 --alpha-rule mad --head-init prior

Nothing is written; one line per check goes to the log.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import replace

import cv2
import numpy as np
import torch

from core.checkpoint import build_model
from core.cli import add_data_arguments, add_shared_options, data_config_from_args, setup_logging
from core.data import AugmentConfig, load_site, make_loader
from core.data.dataset import BoneAgeDataset, DecodedSplit
from core.train.alpha import ALPHA_RULES
from core.train.loss import JointLossConfig, make_loss
from core.model.heads import HEAD_INITS, init_age_head
from core.train.training import TrainConfig, lr_factor, make_optimizer, predict, seed_everything

logger = logging.getLogger("bench.plateau")


def first_images(dataset: BoneAgeDataset, count: int) -> BoneAgeDataset:
    """The first `count` images of a decoded split, without decoding again."""
    count = min(count, len(dataset))
    decoded = DecodedSplit(dataset.records[:count], dataset.images[:count], [])
    return BoneAgeDataset([], dataset.image_size, None, dataset.seed, decoded=decoded)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_plateau", description=__doc__)
    add_data_arguments(parser)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--val-images", type=int, default=512)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--width", type=float, default=0.5)
    parser.add_argument("--epochs", type=int, default=3, help="length of the cosine schedule, in epochs")
    parser.add_argument("--lr", type=float, default=TrainConfig.lr)
    parser.add_argument("--warmup-steps", type=int, default=TrainConfig.warmup_steps)
    parser.add_argument("--alpha-rule", choices=ALPHA_RULES, default=JointLossConfig.alpha_rule)
    parser.add_argument("--alpha-final", type=float, default=None, help="1.5: alpha never rises")
    parser.add_argument("--head-init", choices=HEAD_INITS, default=HEAD_INITS[0])
    parser.add_argument("--norm", choices=("group", "batch"), default="group")
    parser.add_argument("--equalise", action="store_true", help="histogram-equalise every stored image first")
    add_shared_options(parser, "seed")
    args = parser.parse_args(argv)
    setup_logging()
    torch.set_num_threads(1)
    seed_everything(args.seed)
    model = build_model("tjnet", {"image_size": args.image_size, "width": args.width, "norm": args.norm})
    site = load_site(data_config_from_args(args), args.image_size, AugmentConfig(), args.seed, splits=("train", "val"))
    if args.equalise:
        for dataset in (site.train, site.val):
            dataset.images[:] = np.stack([cv2.equalizeHist(image) for image in dataset.images])
    train_ages = np.array([r.age_months for r in site.train.records], dtype=np.float32)
    init_age_head(model, args.head_init, train_ages)
    config = TrainConfig(epochs=args.epochs, lr=args.lr, warmup_steps=args.warmup_steps, seed=args.seed)
    loss_config = replace(JointLossConfig(), alpha_rule=args.alpha_rule, alpha_final=args.alpha_final)
    loss_fn = make_loss(model, loss_config)
    loader = make_loader(site.train, config.batch_size, shuffle=True, seed=args.seed, drop_last=True)
    val = first_images(site.val, args.val_images)
    val_loader = make_loader(val, 64, shuffle=False, seed=0)
    true = np.array([r.age_months for r in val.records], dtype=np.float32)
    mean_mad = float(np.mean(np.abs(true - train_ages.mean())))
    optimizer = make_optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(config, config.epochs * len(loader)))
    logger.info("variant: %s; mean predictor on these %d val images: %.2f months", vars(args), len(val), mean_mad)
    step, epoch, started = 0, 0, time.process_time()

    fused: list[torch.Tensor] = []
    model.block5.register_forward_hook(lambda module, inputs, output: fused.append(output[0].detach()))

    def check() -> None:
        fused.clear()
        result = predict(model, val_loader, torch.device("cpu"))
        predicted, features = result.predicted_months, torch.cat(fused)
        spread = float((features.std(0) / (features.abs().mean(0) + 1e-6)).mean())
        logger.info("step %4d  alpha %5.1f  val MAD %6.2f  pred sd %6.2f  corr(pred, male) %5.2f  block-5 spread %.3f"
                    "  (mean predictor %.2f)  cpu %.0f s", step, loss_fn.schedule.alpha,
                    float(np.mean(np.abs(predicted - true))), float(np.std(predicted)),
                    float(np.corrcoef(predicted, result.male)[0, 1]), spread, mean_mad, time.process_time() - started)

    check()
    while step < args.steps:
        epoch += 1
        site.train.set_epoch(epoch)
        model.train()
        for batch in loader:
            optimizer.zero_grad(set_to_none=True)
            parts = loss_fn(model(batch["image"], batch["male"]), batch["age"], batch["male"])
            parts.total.backward()
            optimizer.step()
            scheduler.step()
            loss_fn.after_step(parts)
            step += 1
            if step % args.every == 0:
                check()
                model.train()
            if step >= args.steps:
                break
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
