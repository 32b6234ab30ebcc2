"""`client finetune` with and without the frozen-block feature cache on a real site: time and a paired interval.

Usage:
    python -m bench.bench_feature_cache_site --pretrained MODEL.pt --data SITE [--freeze 1-3] [--seeds 0,1,2]
                                             [--epochs 8] [--views 4] [--feature-augment images,features]
                                             [--threads 1]

For each seed, the site fine-tunes the pretrained model as `python -m client finetune --freeze F` does
(`core.stages.site_finetune.finetune_site`: best epoch by val MAD, then the test split): once with
`--no-feature-cache`, once with the cache for each of `--feature-augment`'s modes (`images`: `--views` views of
augmented images; `features`: one un-augmented view augmented in feature space), one after the other in this
process; then once more with the first cached run's cache, every view already computed ("warm": what the command
costs when the frozen blocks cost nothing, the ceiling of any cache of them). Prints each run's wall and CPU
seconds, the speed-ups, each test MAD, and per cached arm the paired difference of absolute errors on the same
test images (cached minus uncached) with a 95 % bootstrap interval pooled over seeds (`core.stats.bootstrap`):
an arm is "no worse" when the interval's upper end is small against the seed-to-seed spread.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from core.checkpoint import load_checkpoint
from core.data import SiteDataConfig, load_site, make_loader
from core.preprocess import preprocess_config_of
from core.train.feature_cache import FeatureCache
from core.stages.site_finetune import FinetuneConfig, finetune_site
from core.stats.bootstrap import paired_difference
from core.train.training import predict
from core.cli import add_shared_options


def test_errors(checkpoint: Path, data: SiteDataConfig) -> np.ndarray:
    """Absolute errors (months) of `checkpoint` on the site's test split, in split order."""
    loaded = load_checkpoint(checkpoint)
    site = load_site(data, loaded.model.config.image_size, None, 0, splits=("test",),
                     preprocess=preprocess_config_of(loaded.metadata))
    result = predict(loaded.model, make_loader(site.test, 64, shuffle=False, seed=0), torch.device("cpu"))
    return np.abs(result.predicted_months - result.true_months)


def timed_finetune(pretrained: Path, data: SiteDataConfig, out: Path, config: FinetuneConfig,
                   features: FeatureCache | None = None) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one `finetune_site`."""
    wall, cpu = time.perf_counter(), time.process_time()
    finetune_site(pretrained, data, out, config, features=features)
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrained", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--freeze", default="1-3")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=FinetuneConfig.epochs)
    parser.add_argument("--views", type=int, default=FinetuneConfig.feature_views)
    parser.add_argument("--feature-augment", default=FinetuneConfig.feature_augment,
                        help="comma-separated: where the cache augments, one cached arm each (images, features)")
    add_shared_options(parser, "threads", threads_default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    data = SiteDataConfig(root=args.data)
    modes = args.feature_augment.split(",")
    arms = ("off", *modes, "warm")  # "warm": the first mode's cache again, every view already computed
    errors: dict[str, list[np.ndarray]] = {arm: [] for arm in arms}
    print(f"client finetune --freeze {args.freeze} --epochs {args.epochs} on {args.data}, {args.threads} thread(s); "
          f"cache with {args.views} views; arms {', '.join(arms)}")
    print("| seed | cache | wall (s) | CPU (s) | test MAD (months) |")
    print("|---|---|---|---|---|")
    totals = {arm: [0.0, 0.0] for arm in arms}
    with tempfile.TemporaryDirectory() as folder:
        for cached in (True, False):  # warm-up, untimed: a process's first training pays one-off costs
            finetune_site(args.pretrained, data, Path(folder) / "warm.pt",
                          FinetuneConfig(freeze=args.freeze, epochs=1, device="cpu", progress=False,
                                         feature_cache=cached))
        for seed in (int(s) for s in args.seeds.split(",")):
            caches = {mode: FeatureCache(views=args.views, augment_where=mode) for mode in modes}
            caches["warm"], caches["off"] = caches[modes[0]], None  # the first cached arm fills what "warm" finds
            for arm in arms:
                mode = modes[0] if arm in ("warm", "off") else arm
                config = FinetuneConfig(freeze=args.freeze, epochs=args.epochs, seed=seed, device="cpu", progress=False,
                                        feature_views=args.views, feature_cache=arm != "off", feature_augment=mode)
                out = Path(folder) / f"site_{seed}_{arm}.pt"
                wall, cpu = timed_finetune(args.pretrained, data, out, config, caches[arm])
                totals[arm][0] += wall
                totals[arm][1] += cpu
                errors[arm].append(test_errors(out, data))
                print(f"| {seed} | {arm} | {wall:.1f} | {cpu:.1f} | {errors[arm][-1].mean():.2f} |", flush=True)
    off, count = totals["off"], len(errors["off"])
    print(f"\nCPU seconds per seed: no cache {off[1] / count:.2f}, " + ", ".join(
        f"{arm} {totals[arm][1] / count:.2f}" for arm in arms[1:]))
    for arm in arms[1:]:
        difference = paired_difference(errors[arm], errors["off"])
        print(f"{arm}: speed-up of the whole command (wall, CPU) {off[0] / totals[arm][0]:.2f}x, "
              f"{off[1] / totals[arm][1]:.2f}x; test MAD {np.mean([e.mean() for e in errors[arm]]):.2f} months "
              f"(no cache {np.mean([e.mean() for e in errors['off']]):.2f}); paired difference ({arm} - no cache) "
              f"{difference} months, {sum(len(e) for e in errors[arm])} image-seed pairs")
    same = all(np.array_equal(a, b) for a, b in zip(errors[modes[0]], errors["warm"]))
    print(f"the warm runs' models are the {modes[0]} runs' ({'identical' if same else 'DIFFERENT'})")


if __name__ == "__main__":
    main()
