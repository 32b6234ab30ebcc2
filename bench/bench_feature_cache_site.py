"""`client finetune` with and without the frozen-block feature cache on a real site: time and a paired interval.

Usage:
    python -m bench.bench_feature_cache_site --pretrained MODEL.pt --data SITE [--label-unit years] [--freeze 1-3]
                                             [--seeds 0,1,2] [--epochs 8] [--views 4] [--feature-augment images,features]
                                             [--batch-sizes 16,32] [--no-warm] [--threads 1]
                                             [--arms off:16,images:16,features:32] [--extra-test HELDOUT]
                                             [--save-errors ERRORS.npz]

For each seed, the site fine-tunes the pretrained model as `python -m client finetune --freeze F` does
(`core.stages.site_finetune.finetune_site`: best epoch by val MAD, then the test split): once with
`--no-feature-cache`, once with the cache for each of `--feature-augment`'s modes (`images`: `--views` views of
augmented images; `features`: one un-augmented view augmented in feature space), one after the other in this
process; then once more with the first cached run's cache, every view already computed ("warm": what the command
costs when the frozen blocks cost nothing, the ceiling of any cache of them; `--no-warm` skips it). With several
`--batch-sizes` every arm runs at each (`features b32`: `--feature-augment features --batch-size 32`), and the
reference is the uncached run at the first. Prints each run's wall and CPU seconds, the speed-ups against the
reference, each test MAD, and per other arm the paired difference of absolute errors on the same test images (arm
minus reference) with a 95 % bootstrap interval pooled over seeds (`core.stats.bootstrap`): an arm is "no worse"
when the interval's upper end is small against the seed-to-seed spread. `--arms MODE:BATCH,...` names the arms
instead (the first is the reference; MODE off, images or features; no warm arm). `--extra-test FOLDER` scores every
arm's model on a second, larger held-out set as well (a folder in the site's layout whose images all fall in the
test split, e.g. `python -m bench.heldout_sites`), with its own paired intervals. Every model is scored with the
test-time augmentation it records, as the command scores it. `--save-errors` writes every run's absolute errors
(`<arm>/test/<seed>`, `<arm>/extra/<seed>`) to an .npz, to pool paired intervals over several sites.
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
from core.inputs import InputSettings
from core.data import SiteDataConfig, load_site, make_loader
from core.preprocess import preprocess_config_of
from core.data.dataset import BoneAgeDataset
from core.model.freeze import parse_freeze_spec
from core.model.split import cached_depth
from core.train.feature_cache import FeatureCache, feature_budget_from_env
from core.train.feature_scoring import ScoringFeatures
from core.stages.site_finetune import FinetuneConfig, finetune_site
from core.stats.bootstrap import paired_difference
from core.train.training import predict
from core.cli import add_data_arguments, add_shared_options, data_config_from_args


def test_errors(checkpoint: Path, data: SiteDataConfig, scoring: ScoringFeatures | None = None,
                splits: dict[tuple[str, ...], BoneAgeDataset] | None = None) -> np.ndarray:
    """Absolute errors (months) of `checkpoint` on the site's test split, in split order, scored with its TTA.
    `scoring`: frozen-block features shared by every arm (each model's frozen blocks checked by their SHA-256, the
    same predictions as the whole model's: `core.train.feature_scoring`); `splits`: test splits already decoded."""
    loaded = load_checkpoint(checkpoint)
    preprocess = preprocess_config_of(loaded.metadata)
    key = (str(data.root), data.label_unit, str(loaded.model.config.image_size), repr(preprocess))
    test = splits.get(key) if splits is not None else None
    if test is None:
        test = load_site(data, loaded.model.config.image_size, None, 0, splits=("test",), preprocess=preprocess).test
        if splits is not None:
            splits[key] = test
    tta = InputSettings.of(loaded).tta
    scored = scoring.score(loaded.model, test, torch.device("cpu"), tta) if scoring is not None else None
    if scored is None:
        scored = predict(loaded.model, make_loader(test, 64, shuffle=False, seed=0), torch.device("cpu"), tta=tta)
    return np.abs(scored.predicted_months - scored.true_months)


def parse_arms(text: str) -> list[tuple[str, str, int]]:
    """"off:16,features:32" -> [(name, mode, batch)]; the first arm is the reference."""
    arms = []
    for item in text.split(","):
        mode, _, batch = item.partition(":")
        if mode not in ("off", "images", "features") or not batch.isdigit():
            raise SystemExit(f"--arms: {item!r} is not MODE:BATCH with MODE off, images or features")
        arms.append((f"{mode} b{batch}", mode, int(batch)))
    return arms


def timed_finetune(pretrained: Path, data: SiteDataConfig, out: Path, config: FinetuneConfig,
                   features: FeatureCache | None = None) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one `finetune_site`."""
    wall, cpu = time.perf_counter(), time.process_time()
    finetune_site(pretrained, data, out, config, features=features)
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrained", type=Path, required=True)
    add_data_arguments(parser)  # --data and its layout (--label-unit years for a site labelled in whole years)
    parser.add_argument("--freeze", default="1-3")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=FinetuneConfig.epochs)
    parser.add_argument("--views", type=int, default=FinetuneConfig.feature_views)
    parser.add_argument("--feature-augment", default=FinetuneConfig.feature_augment,
                        help="comma-separated: where the cache augments, one cached arm each (images, features)")
    parser.add_argument("--batch-sizes", default=str(FinetuneConfig.batch_size),
                        help="comma-separated: every arm at each; the first one's uncached run is the reference")
    parser.add_argument("--no-warm", dest="warm", action="store_false", help="skip the warm arm")
    parser.add_argument("--arms", default=None, help="MODE:BATCH,... instead of the modes and batch sizes above")
    parser.add_argument("--extra-test", type=Path, default=None,
                        help="a second held-out set (site layout, test-split ids) every arm is also scored on")
    parser.add_argument("--save-errors", type=Path, default=None, help="write every run's absolute errors (.npz)")
    add_shared_options(parser, "threads", threads_default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    data = data_config_from_args(args)
    modes = args.feature_augment.split(",")
    batches = [int(b) for b in args.batch_sizes.split(",")]
    # (name, cache mode or "off", batch size); "warm": the first mode's cache again, every view already computed
    runs = [(arm, arm, batch) for batch in batches for arm in ("off", *modes)] + ([("warm", "warm", batches[0])]
                                                                                 if args.warm else [])
    runs = [(f"{arm} b{batch}" if len(batches) > 1 else arm, mode, batch) for arm, mode, batch in runs]
    if args.arms:
        runs = parse_arms(args.arms)
        modes, batches, args.warm = [m for _, m, _ in runs if m != "off"] or ["images"], [runs[0][2]], False
    arms = [arm for arm, _, _ in runs]
    extra = replace(data, root=args.extra_test) if args.extra_test is not None else None
    errors: dict[str, list[np.ndarray]] = {arm: [] for arm in arms}
    extra_errors: dict[str, list[np.ndarray]] = {arm: [] for arm in arms}
    print(f"client finetune --freeze {args.freeze} --epochs {args.epochs} on {args.data}, {args.threads} thread(s); "
          f"cache with {args.views} views; arms {', '.join(arms)}; reference {arms[0]}")
    print("| seed | cache | wall (s) | CPU (s) | test MAD (months) |")
    print("|---|---|---|---|---|")
    totals = {arm: [0.0, 0.0] for arm in arms}
    # scoring (untimed) shares the frozen blocks' features of each test set between arms and seeds
    scoring = ScoringFeatures(cached_depth(parse_freeze_spec(args.freeze)), feature_budget_from_env())
    splits: dict[tuple[str, ...], BoneAgeDataset] = {}
    with tempfile.TemporaryDirectory() as folder:
        for cached in (True, False):  # warm-up, untimed: a process's first training pays one-off costs
            finetune_site(args.pretrained, data, Path(folder) / "warm.pt",
                          FinetuneConfig(freeze=args.freeze, epochs=1, device="cpu", progress=False,
                                         feature_cache=cached))
        for seed in (int(s) for s in args.seeds.split(",")):
            caches = {(mode, batch): FeatureCache(views=args.views, augment_where=mode)
                      for _, mode, batch in runs if mode not in ("off", "warm")}  # fresh per run, as a new command's
            caches["warm", batches[0]] = caches.get((modes[0], batches[0]))
            for arm, kind, batch in runs:
                mode = modes[0] if kind in ("warm", "off") else kind
                config = FinetuneConfig(freeze=args.freeze, epochs=args.epochs, seed=seed, device="cpu", progress=False,
                                        feature_views=args.views, feature_cache=kind != "off", feature_augment=mode,
                                        batch_size=batch)
                out = Path(folder) / f"site_{seed}_{arm.replace(' ', '_')}.pt"
                wall, cpu = timed_finetune(args.pretrained, data, out, config, caches.get((kind, batch)))
                totals[arm][0] += wall
                totals[arm][1] += cpu
                errors[arm].append(test_errors(out, data, scoring=scoring, splits=splits))
                if extra is not None:
                    extra_errors[arm].append(test_errors(out, extra, scoring=scoring, splits=splits))
                print(f"| {seed} | {arm} | {wall:.1f} | {cpu:.1f} | {errors[arm][-1].mean():.2f} |"
                      + (f" held-out {extra_errors[arm][-1].mean():.2f} |" if extra is not None else ""), flush=True)
    if args.save_errors is not None:
        seeds = args.seeds.split(",")
        np.savez(args.save_errors, **{f"{arm}/{kind}/{seed}": values
                                      for kind, runs_errors in (("test", errors), ("extra", extra_errors))
                                      for arm in arms for seed, values in zip(seeds, runs_errors[arm])})
    reference = arms[0]
    off, count = totals[reference], len(errors[reference])
    print(f"\nCPU seconds per seed: {reference} {off[1] / count:.2f}, " + ", ".join(
        f"{arm} {totals[arm][1] / count:.2f}" for arm in arms[1:]))
    for arm in arms[1:]:
        difference = paired_difference(errors[arm], errors[reference])
        print(f"{arm}: speed-up of the whole command (wall, CPU) {off[0] / totals[arm][0]:.2f}x, "
              f"{off[1] / totals[arm][1]:.2f}x; test MAD {np.mean([e.mean() for e in errors[arm]]):.2f} months "
              f"({reference} {np.mean([e.mean() for e in errors[reference]]):.2f}); paired difference ({arm} - "
              f"{reference}) {difference} months, {sum(len(e) for e in errors[arm])} image-seed pairs")
        if extra is not None:
            print(f"{arm} on {args.extra_test}: held-out MAD {np.mean([e.mean() for e in extra_errors[arm]]):.2f} "
                  f"months ({reference} {np.mean([e.mean() for e in extra_errors[reference]]):.2f}); paired "
                  f"difference {paired_difference(extra_errors[arm], extra_errors[reference])} months, "
                  f"{sum(len(e) for e in extra_errors[arm])} image-seed pairs")
    if args.warm:
        first, warm = arms[1], arms[-1]
        same = all(np.array_equal(a, b) for a, b in zip(errors[first], errors[warm]))
        print(f"the warm runs' models are the {first} runs' ({'identical' if same else 'DIFFERENT'})")


if __name__ == "__main__":
    main()
