"""What a checkpoint's test-time augmentation costs where it is scored, and what it would add to `python -m sim`.

Run: ``OMP_NUM_THREADS=1 PYTHONPATH=. python -m bench.bench_tta [--n 400] [--repeats 2]``.

On ``--n`` phantom radiographs at the default simulation's input (96 px, TJ-Net width 0.5, untrained weights:
the cost does not depend on them), one thread, CPU seconds of this process (`time.process_time`), in one run:

- the conformal fit of the prediction interval (what `server pretrain` does before saving), per val image,
  without TTA and with `PRETRAIN_TTA` (seven views), best of ``--repeats``, and their ratio;
- one training pass (forward, backward, AdamW step; batch 32), per training image;
- from these, what recording TTA would add to the default simulation's pretraining (its source site's val
  images, scaled from this site's split) and that as a share of the pretraining (train images x epochs).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch

from core.intervals.conformal import fit_conformal
from core.data import AugmentConfig, SiteDataConfig, load_site, make_loader
from core.model.config import TJNetConfig
from core.model.tjnet import TJNet
from core.predict.tta import PRETRAIN_TTA, TTAConfig
from sim.config import SimConfig
from sim.phantom.writer import generate_site

logger = logging.getLogger("bench_tta")


def conformal_cpu_ms(model: TJNet, dataset, tta: TTAConfig | None, repeats: int) -> float:
    """Best CPU milliseconds per image of the conformal fit (sex given and sex from the head) on `dataset`."""
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        fit_conformal(model.eval(), dataset, torch.device("cpu"), coverage=0.5, tta=tta)
        best = min(best, (time.process_time() - start) / len(dataset) * 1000)
    return best


def train_cpu_ms(model: TJNet, dataset) -> float:
    """CPU milliseconds per image of one training pass over `dataset`."""
    optimiser = torch.optim.AdamW(model.parameters(), 3e-4)
    model.train()
    start, n = time.process_time(), 0
    for batch in make_loader(dataset, 32, shuffle=True, seed=0):
        loss = (model(batch["image"], batch["male"]).expected_months - batch["age"]).abs().mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        n += len(batch["age"])
    return (time.process_time() - start) / n * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=400, help="phantom images (split as the simulation splits them)")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    for noisy in ("sim", "core"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    torch.set_num_threads(1)
    sim = SimConfig()
    with tempfile.TemporaryDirectory() as tmp:
        site = generate_site("rsna", args.n, Path(tmp) / "site", seed=0, image_size=sim.image_size)
        data = load_site(SiteDataConfig(site), sim.image_size, AugmentConfig(), seed=0, splits=("train", "val"))
    torch.manual_seed(0)
    model = TJNet(TJNetConfig(image_size=sim.image_size, width=sim.width))
    plain = conformal_cpu_ms(model, data.val, None, args.repeats)
    views = conformal_cpu_ms(model, data.val, PRETRAIN_TTA, args.repeats)
    train = train_cpu_ms(model, data.train)
    scale = sim.source.n / args.n
    extra_s = (views - plain) * len(data.val) * scale / 1000
    pretrain_s = train * len(data.train) * scale * sim.pretrain_epochs / 1000
    logger.info("TJ-Net %d px, width %.2f, one thread; %d phantoms (%d train, %d val)", sim.image_size, sim.width,
                args.n, len(data.train), len(data.val))
    logger.info("conformal fit, CPU ms per image: %.1f without TTA, %.1f with %s: %.1fx", plain, views,
                PRETRAIN_TTA, views / plain)
    logger.info("training pass, CPU ms per image: %.1f", train)
    logger.info("default simulation (%d source images, %d epochs): TTA would add %.1f CPU s to a pretraining of "
                "%.0f CPU s (%.1f %%)", sim.source.n, sim.pretrain_epochs, extra_s, pretrain_s,
                100 * extra_s / pretrain_s)


if __name__ == "__main__":
    main()
