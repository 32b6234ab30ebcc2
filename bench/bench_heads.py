"""Table of saved models on one split of a site folder: mean over seeds, intervals, and each row against a baseline.

Checkpoints in `--runs` named `<row>_s<seed>.pt` form one row per `<row>`, one column entry per seed
(`<row>_s<seed>.<tag>.pt`, e.g. the `.raw.pt` beside a run with `--ema-decay`, forms the row `<row>.<tag>`).
For each row: the test MAD of each seed, their mean with a t interval over seeds, a bootstrap interval
over seeds and images (`core.stats.bootstrap.bootstrap_mean`), and the paired difference to the `--baseline` row
over the same seeds and images, in months and in percent of the baseline's MAD. Each model reads its own
preprocessing (a region model its crop); every row is scored on the images all models scored. Nothing is written: the
predictions stay in memory (never commit predictions on RSNA images).

Each checkpoint is scored with the test-time augmentation its metadata records (as `evaluate` does);
`--tta SHIFT,SCALE` also scores every checkpoint with that augmentation, as an extra row `<row>+tta`.
A second table gives each row's budget as its checkpoints record it: parameters, epochs trained (best epoch) and
training minutes per seed (an ensemble: its members' summed). `--pairs A:B ...` adds, for each pair of rows, the
paired difference A - B on each seed (bootstrap over that seed's images), its mean with a t interval over seeds,
and the seed-to-seed spread of both rows' MADs, to tell a difference from the noise between seeds.

    python -m bench.bench_heads --runs runs/h15/rsna --data ../shared/data/rsna100 --baseline resnet18
"""

from __future__ import annotations

import argparse
import logging
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from core.checkpoint import load_checkpoint
from core.cli import add_data_arguments, add_shared_options, data_config_from_args, setup_logging
from core.data import SiteDataConfig, make_loader
from core.data.dataset import BoneAgeDataset
from core.data.views import StackedViews, load_site_views
from core.preprocess import views_of
from core.errors import ConfigError
from core.stats.bootstrap import bootstrap_mean, combine_seeds, paired_difference
from core.train.training import predict
from core.predict.tta import TTAConfig, tta_config_of

logger = logging.getLogger("bench.heads")
_NAME = re.compile(r"^(?P<row>.+)_s(?P<seed>\d+)(?:\.(?P<tag>[a-z]+))?\.pt$")


def row_and_seed(name: str) -> tuple[str, int] | None:
    """(row, seed) of a checkpoint file name (`<row>_s<seed>.pt` or `<row>_s<seed>.<tag>.pt`); None otherwise."""
    match = _NAME.match(name)
    if match is None:
        return None
    return match["row"] + (f".{match['tag']}" if match["tag"] else ""), int(match["seed"])


Errors = dict[str, dict[int, dict[str, float]]]  # row -> seed -> image id -> signed error in months


def test_errors(paths: list[Path], data: SiteDataConfig, split: str, extra_tta: TTAConfig | None = None) -> Errors:
    """{row: {seed: {image id: signed error in months on `split`}}}, each model reading its own views (and
    `<row>+tta` rows scored with `extra_tta`)."""
    datasets: dict[tuple, BoneAgeDataset | StackedViews] = {}
    errors: Errors = defaultdict(dict)
    for path in paths:
        named = row_and_seed(path.name)
        if named is None:
            continue
        name, seed = named
        loaded = load_checkpoint(path)
        views = views_of(loaded.metadata)
        key = (loaded.model.config.image_size, tuple(None if v is None else str(v.to_dict()) for v in views))
        if key not in datasets:
            site = load_site_views(data, key[0], views, splits=(split,))
            datasets[key] = getattr(site, split)
        dataset = datasets[key]
        loader = make_loader(dataset, 128, shuffle=False, seed=0)
        scorings = [(name, tta_config_of(loaded.metadata))]
        if extra_tta is not None:
            scorings.append((name + "+tta", extra_tta))
        for row, tta in scorings:
            result = predict(loaded.model, loader, torch.device("cpu"), tta=tta)
            signed = result.predicted_months - result.true_months
            errors[row][seed] = dict(zip((r.image_id for r in dataset.records), signed.tolist()))
            logger.info("%s (%s): %s MAD %.2f months on %d images (%d skipped)", path.name, row, split,
                        float(np.mean(np.abs(signed))), len(signed), len(dataset.skipped))
    return errors


def on_common_images(errors: Errors) -> tuple[dict[str, dict[int, np.ndarray]], int]:
    """Every row and seed on the images all of them scored (a region model refuses an image whose registration
    failed), in one order, so rows and their paired differences are over the same images; and their number."""
    scored = [set(by_image) for by_seed in errors.values() for by_image in by_seed.values()]
    common = sorted(set.intersection(*scored)) if scored else []
    aligned = {row: {seed: np.array([by_image[i] for i in common]) for seed, by_image in by_seed.items()}
               for row, by_seed in errors.items()}
    return aligned, len(common)


def table(errors: dict[str, dict[int, np.ndarray]], baseline: str) -> list[str]:
    """Markdown rows: row, seeds, per-seed MAD, mean [t interval], bootstrap interval, difference to baseline."""
    lines = ["| model | seeds | MAD per seed | mean MAD [95 % t over seeds] | 95 % bootstrap (seeds x images) "
             f"| vs {baseline}: months [95 %] | vs {baseline}: % |",
             "|---|---|---|---|---|---|---|"]
    base = errors.get(baseline, {})
    for row, by_seed in sorted(errors.items()):
        seeds = sorted(by_seed)
        absolute = [np.abs(by_seed[s]) for s in seeds]
        per_seed = [float(a.mean()) for a in absolute]
        over_seeds = combine_seeds(per_seed)
        pooled = bootstrap_mean(absolute)
        common = [s for s in seeds if s in base]
        if row != baseline and common:
            diff = paired_difference([np.abs(by_seed[s]) for s in common], [np.abs(base[s]) for s in common])
            base_mad = float(np.mean([np.abs(base[s]).mean() for s in common]))
            versus, percent = str(diff), f"{100.0 * diff.estimate / base_mad:+.1f} %"
        else:
            versus, percent = "", ""
        lines.append(f"| {row} | {','.join(map(str, seeds))} | {', '.join(f'{m:.2f}' for m in per_seed)} | "
                     f"{over_seeds} | [{pooled.low:.2f}, {pooled.high:.2f}] | {versus} | {percent} |")
    return lines


def pair_table(errors: dict[str, dict[int, np.ndarray]], pairs: list[tuple[str, str]]) -> list[str]:
    """Markdown rows: for each pair (a, b), a - b in months on each seed both rows have (bootstrap over that seed's
    images), the mean over those seeds [t interval over seeds], and the spread (max - min) of each row's MAD."""
    lines = ["| a - b | seeds | a - b per seed [95 % bootstrap over images] | mean [95 % t over seeds] "
             "| spread of a's MAD over seeds | spread of b's MAD |", "|---|---|---|---|---|---|"]
    for a, b in pairs:
        seeds = sorted(set(errors.get(a, {})) & set(errors.get(b, {})))
        if not seeds:
            raise ConfigError(f"--pairs {a}:{b}: no seed has both rows (rows: {', '.join(sorted(errors))})")
        per_seed = [paired_difference(np.abs(errors[a][s]), np.abs(errors[b][s])) for s in seeds]
        spreads = [np.ptp([np.abs(errors[row][s]).mean() for s in seeds]) for row in (a, b)]
        lines.append(f"| {a} - {b} | {','.join(map(str, seeds))} | {'; '.join(map(str, per_seed))} | "
                     f"{combine_seeds([d.estimate for d in per_seed])} | {spreads[0]:.2f} | {spreads[1]:.2f} |")
    return lines


@dataclass(frozen=True)
class Budget:
    """What one checkpoint cost: parameters, epochs trained, the best epoch and the training time (an ensemble:
    its members' epochs and time summed; None where a member's file is gone)."""

    parameters: int
    epochs: int | None
    best_epoch: int | None
    train_minutes: float | None


def budget_of(path: Path) -> Budget:
    """The budget a checkpoint records (`core.stages.central.pretrain` writes `history` and `train_seconds`)."""
    loaded = load_checkpoint(path)
    metadata = loaded.metadata
    parameters = sum(p.numel() for p in loaded.model.parameters())
    members = metadata.get("member_checkpoints")
    if members:
        parts = [budget_of(Path(m["file"])) if Path(m["file"]).is_file() else None for m in members]
        if any(part is None or part.train_minutes is None for part in parts):
            return Budget(parameters, None, None, None)
        return Budget(parameters, sum(part.epochs or 0 for part in parts), None,
                      sum(part.train_minutes for part in parts))
    histories = [metadata.get("history") or []]
    histories += [member.get("history") or [] for member in (metadata.get("sex_specific") or {}).values()]
    seconds = metadata.get("train_seconds")
    return Budget(parameters, sum(len(h) for h in histories) or None, metadata.get("best_epoch"),
                  None if seconds is None else seconds / 60.0)


def budget_table(paths: list[Path]) -> list[str]:
    """Markdown rows: each row's parameters and, per seed, epochs trained (best epoch) and training minutes."""
    budgets: dict[str, dict[int, Budget]] = defaultdict(dict)
    for path in paths:
        named = row_and_seed(path.name)
        if named is not None:
            budgets[named[0]][named[1]] = budget_of(path)
    lines = ["| model | parameters | epochs trained (best) per seed | training minutes per seed | mean minutes |",
             "|---|---|---|---|---|"]
    for row, by_seed in sorted(budgets.items()):
        seeds = [by_seed[s] for s in sorted(by_seed)]
        epochs = ", ".join("n/a" if b.epochs is None else f"{b.epochs}" + ("" if b.best_epoch is None else
                                                                          f" ({b.best_epoch})") for b in seeds)
        minutes = [b.train_minutes for b in seeds]
        per_seed = ", ".join("n/a" if m is None else f"{m:.1f}" for m in minutes)
        known = [m for m in minutes if m is not None]
        mean = f"{np.mean(known):.1f}" if len(known) == len(minutes) else "n/a"
        lines.append(f"| {row} | {seeds[0].parameters:,} | {epochs} | {per_seed} | {mean} |")
    return lines


def _tta(text: str) -> TTAConfig:
    try:
        shift, scale = (float(value) for value in text.split(","))
        return TTAConfig(shift, scale)
    except (ValueError, ConfigError) as exc:
        raise argparse.ArgumentTypeError(f"expected SHIFT,SCALE (e.g. 0.04,0.05): {exc}") from None


def _pair(text: str) -> tuple[str, str]:
    a, sep, b = text.partition(":")
    if not (a and sep and b):
        raise argparse.ArgumentTypeError(f"expected ROW_A:ROW_B (e.g. tjnet:resnet18), got {text!r}")
    return a, b


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_heads", description=__doc__)
    add_data_arguments(parser)
    parser.add_argument("--runs", type=Path, required=True, help="folder of <row>_s<seed>.pt checkpoints")
    parser.add_argument("--baseline", default="resnet18", help="row the others are compared with")
    parser.add_argument("--split", choices=("val", "test"), default="test")
    add_shared_options(parser, "threads", threads_default=1)
    parser.add_argument("--tta", type=_tta, default=None, metavar="SHIFT,SCALE",
                        help="also score each checkpoint with this test-time augmentation (rows <row>+tta)")
    parser.add_argument("--pairs", type=_pair, nargs="*", default=[], metavar="A:B",
                        help="rows to compare seed by seed (e.g. tjnet:resnet18 tjnet:tjnet.raw tjnet+tta:tjnet)")
    args = parser.parse_args(argv)
    setup_logging()
    torch.set_num_threads(args.threads)
    paths = sorted(args.runs.glob("*.pt"))
    rows = {named[0] for named in map(row_and_seed, (p.name for p in paths)) if named is not None}
    rows |= {row + "+tta" for row in rows} if args.tta is not None else set()
    for a, b in args.pairs:
        if not {a, b} <= rows:
            parser.error(f"--pairs {a}:{b}: no such row in {args.runs} (rows: {', '.join(sorted(rows))})")
    errors = test_errors(paths, data_config_from_args(args), args.split, args.tta)
    aligned, n_common = on_common_images(errors)
    for row, by_seed in sorted(errors.items()):
        print(f"{row}: {', '.join(f's{seed} scored {len(by_image)}' for seed, by_image in sorted(by_seed.items()))}")
    print(f"rows compared on the {n_common} {args.split} images every model scored\n")
    print("\n".join(table(aligned, args.baseline)))
    if args.pairs:
        print("\nPaired differences seed by seed (negative: a is better; same images for a and b)\n")
        print("\n".join(pair_table(aligned, args.pairs)))
    print("\nBudget (training time as the checkpoint records it: wall time of the training loop; an ensemble sums "
          "its members')\n")
    print("\n".join(budget_table(paths)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
