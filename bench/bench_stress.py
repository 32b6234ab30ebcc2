"""Stress benchmark: MAD on a site's test split, clean and under each stress transform, per model.

    python -m bench.bench_stress --model CKPT [--model CKPT ...] --data DIR [--json]

Each model is run the way it was trained: a checkpoint that records preprocessing (metadata["preprocess"]) gets
it, one that records none gets the raw image. Pass one model of each kind to compare "with" and "without". Every
test image is read once; each transform in `core.preprocess.stress.STRESS` is applied to it (random ones seeded by
(seed, image index)), then the model's preprocessing, then its input. Per model and transform: images scored,
share refused (with the reasons), MAD, and the change of MAD against the clean images (the same images, scored
both ways) with a 95 % bootstrap interval. Target (issue 11): the change stays within 1.5 months, or the affected
images are refused.

    python -m bench.bench_stress --model CKPT --preprocess default --data DIR

scores the models through those settings instead of their recorded ones (resolved on the split's clean images as
`python -m client preprocess` resolves them): what the defaults a new user gets do under each transform.

    python -m bench.bench_stress --preprocess default --data DIR

needs no model: the share of images each transform has refused by those settings, resolved on the split's clean
images as `python -m client preprocess` resolves them (the orientation self-check, and the fit when it fails).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from core.checkpoint import load_checkpoint
from core.cli import add_data_arguments, add_shared_options, data_config_from_args, run_command, setup_logging
from core.data import ImageError, load_manifest, make_loader, read_image
from core.data.dataset import BoneAgeDataset, DecodedSplit, fit_to_square, refusal_reason
from core.data.manifest import Record
from core.data.split import split_records
from core.errors import ConfigError
from core.preprocess import PreprocessConfig, Preprocessor, preprocess_config_of
from core.preprocess.site import describe_check, orientation_for_site
from core.preprocess.stress import STRESS
from core.stats.bootstrap import paired_difference
from core.train.training import predict

logger = logging.getLogger("bench.stress")

TARGET_MONTHS = 1.5
CLEAN = "clean"


@dataclass
class Cell:
    """One model under one transform."""

    errors: dict[str, float] = field(default_factory=dict)  # image id -> absolute error (months)
    refused: Counter = field(default_factory=Counter)
    n: int = 0
    preprocess_seconds: float = 0.0


def _records(args: argparse.Namespace) -> list[Record]:
    records = split_records(load_manifest(data_config_from_args(args)).records)[args.split]
    return records[:args.limit] if args.limit else records


def _images(args: argparse.Namespace) -> list[tuple[str, float, bool, np.ndarray]]:
    records = _records(args)
    images = []
    for record in records:
        try:
            images.append((record.image_id, record.age_months, record.male, read_image(record.path)))
        except ImageError as exc:
            logger.warning("skipped %s", exc)
    if not images:
        raise ConfigError(f"{args.data}: no readable image in the {args.split} split")
    return images


def _score(model: torch.nn.Module, preprocessor: Preprocessor | None, images: list, transform: str,
           seed: int) -> Cell:
    cell = Cell(n=len(images))
    size = model.config.image_size
    kept, pixels = [], []
    for index, (image_id, age, male, image) in enumerate(images):
        stressed = image if transform == CLEAN else STRESS[transform](image, np.random.default_rng([seed, index]))
        if preprocessor is not None:
            started = time.perf_counter()
            result = preprocessor(stressed)
            cell.preprocess_seconds += time.perf_counter() - started
            if result.refused is not None:
                cell.refused[refusal_reason(result.refused)] += 1
                continue
            stressed = result.image
        if stressed.max() <= stressed.min():
            cell.refused["constant image"] += 1
            continue
        kept.append((image_id, age, male))
        pixels.append(fit_to_square(stressed, size, size))
    if kept:
        records = [Record(i, Path(i), age, male) for i, age, male in kept]
        dataset = BoneAgeDataset(records, size, decoded=DecodedSplit(records, np.stack(pixels), []))
        predictions = predict(model, make_loader(dataset, 128, shuffle=False, seed=0), torch.device("cpu"))
        errors = np.abs(predictions.predicted_months - predictions.true_months)
        cell.errors = {record.image_id: float(e) for record, e in zip(records, errors)}
    return cell


def _row(model_name: str, transform: str, cell: Cell, clean: Cell) -> dict:
    common = [i for i in cell.errors if i in clean.errors]
    row = {"model": model_name, "transform": transform, "n": cell.n, "scored": len(cell.errors), "paired": len(common),
           "refused_share": 1.0 - len(cell.errors) / cell.n, "refused": dict(cell.refused),
           "mad_months": float(np.mean(list(cell.errors.values()))) if cell.errors else float("nan"),
           "ms_per_image": 1000.0 * cell.preprocess_seconds / cell.n}
    if transform != CLEAN and len(common) >= 2:
        delta = paired_difference(np.array([cell.errors[i] for i in common]),
                                  np.array([clean.errors[i] for i in common]))
        row.update(delta_months=delta.estimate, delta_low=delta.low, delta_high=delta.high,
                   meets_target=abs(delta.estimate) <= TARGET_MONTHS)
    return row


def _refusals_only(args: argparse.Namespace, images: list) -> int:
    """Share refused per transform by the --preprocess settings, resolved on the split's clean images as
    `client preprocess` resolves them for a folder (the orientation self-check, and the fit when it fails)."""
    settings = PreprocessConfig.parse(args.preprocess)
    if settings is None:
        raise ConfigError("--preprocess none refuses nothing; give default or default,key=value,...")
    config, site = orientation_for_site(settings, [record.path for record in _records(args)], seed=args.seed)
    preprocessor = Preprocessor(config)
    rows = []
    for transform in [CLEAN, *args.transforms]:
        refused: Counter = Counter()
        for index, (_, _, _, image) in enumerate(images):
            rng = np.random.default_rng([args.seed, index])
            result = preprocessor(image if transform == CLEAN else STRESS[transform](image, rng))
            if result.refused is not None:
                refused[refusal_reason(result.refused)] += 1
        rows.append({"transform": transform, "n": len(images), "refused_share": sum(refused.values()) / len(images),
                     "refused": dict(refused)})
    if args.json:
        print(json.dumps({"orientation_check": site, "rows": rows}))
        return 0
    print(describe_check(site))
    print("| transform | refused | reasons |\n|---|---|---|")
    for row in rows:
        reasons = ", ".join(f"{k} {v}" for k, v in row["refused"].items())
        print(f"| {row['transform']} | {100 * row['refused_share']:.1f} % of {row['n']} | {reasons} |")
    return 0


def _given_settings(args: argparse.Namespace) -> PreprocessConfig | None:
    """--preprocess with --model: these settings instead of what each model records, resolved on the split's clean
    images as `client preprocess` resolves them (what a new user's defaults do to a model's input)."""
    settings = PreprocessConfig.parse(args.preprocess) if args.preprocess else None
    if settings is None:
        return None
    config, site = orientation_for_site(settings, [record.path for record in _records(args)], seed=args.seed)
    logger.info("%s", describe_check(site))
    return config


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    unknown = [t for t in args.transforms if t not in STRESS]
    if unknown:
        raise ConfigError(f"unknown transform(s) {unknown}; known: {', '.join(STRESS)}")
    if not args.model and not args.preprocess:
        raise ConfigError("give --model (one or more) to score models, or --preprocess SPEC for refusals only")
    images = _images(args)
    if not args.model:
        return _refusals_only(args, images)
    given = _given_settings(args)
    rows, cleans = [], []
    for path in args.model:
        loaded = load_checkpoint(path)
        config = given or preprocess_config_of(loaded.metadata)
        preprocessor = None if config is None else Preprocessor(config)
        kind = f"--preprocess {args.preprocess}" if given else "preprocessed" if config else "raw"
        name = f"{Path(path).stem} ({kind})"
        clean = _score(loaded.model, preprocessor, images, CLEAN, args.seed)
        rows.append(_row(name, CLEAN, clean, clean))
        if cleans:  # clean MAD against the first model, on the images both scored
            rows[-1]["versus_first"] = _row(name, "clean vs first", clean, cleans[0])
        cleans.append(clean)
        for transform in args.transforms:
            rows.append(_row(name, transform, _score(loaded.model, preprocessor, images, transform, args.seed), clean))
            logger.info("%s %s: MAD %.2f, refused %.1f %%", name, transform, rows[-1]["mad_months"],
                        100 * rows[-1]["refused_share"])
    print(json.dumps(rows) if args.json else format_table(rows))
    return 0


def format_table(rows: list[dict]) -> str:
    lines = ["| model | transform | scored / n | refused | MAD (months) | change vs clean, 95 % CI | within 1.5 |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        change = (f"{r['delta_months']:+.2f} [{r['delta_low']:+.2f}, {r['delta_high']:+.2f}]"
                  if "delta_months" in r else "")
        meets = "" if "meets_target" not in r else ("yes" if r["meets_target"] else "**no**")
        lines.append(f"| {r['model']} | {r['transform']} | {r['scored']} / {r['n']} | {100 * r['refused_share']:.1f} % "
                     f"| {r['mad_months']:.2f} | {change} | {meets} |")
    for r in rows:
        if "versus_first" in r:
            v = r["versus_first"]
            lines.append(f"\nclean, {r['model']} minus {rows[0]['model']} on the {v['paired']} images both scored: "
                         f"{v['delta_months']:+.2f} months [{v['delta_low']:+.2f}, {v['delta_high']:+.2f}]")
    timed = [r for r in rows if r["transform"] == CLEAN and r["ms_per_image"] > 0]
    for r in timed:
        lines.append(f"\npreprocessing time, {r['model']}: {r['ms_per_image']:.1f} ms per clean image")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_stress", description=__doc__.split("\n\n")[0])
    add_data_arguments(parser)
    parser.add_argument("--model", type=Path, action="append", default=[], help="checkpoint (repeatable)")
    parser.add_argument("--preprocess", default="",
                        help="without --model: the share each transform has refused by these settings (e.g. default, "
                             "as a new user gets them); with --model: score the models through these settings instead "
                             "of the ones they record")
    parser.add_argument("--split", choices=("train", "val", "test"), default="test")
    parser.add_argument("--transforms", nargs="+", default=list(STRESS), help=f"subset of: {' '.join(STRESS)}")
    parser.add_argument("--limit", type=int, default=0, help="first N images of the split only (0: all)")
    add_shared_options(parser, "seed", "threads", "json", threads_default=1, json_help="print the rows as one JSON list")
    args = parser.parse_args(argv)
    setup_logging()
    return run_command(run, args)


if __name__ == "__main__":
    sys.exit(main())
