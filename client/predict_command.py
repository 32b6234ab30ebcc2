"""`python -m client predict --model CKPT IMAGE|DIR|CSV ...`: bone age of new radiographs."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from client.acceptance import site_acceptance
from client.predict import FIELDS, PredictSettings, Predictor
from client.reading import ReadingConfig
from client.worklist import PatientFacts, collect, parse_date, parse_sex
from core.cli import add_shared_options
from core.data import DataError
from core.predict.explain import METHODS


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register `predict` on the `python -m client` command line."""
    parser = commands.add_parser("predict", help="bone age of new images, a folder or a worklist CSV")
    parser.add_argument("inputs", nargs="+", type=Path, help="image files (PNG, JPEG, DICOM), folders or worklist CSVs")
    parser.add_argument("--model", type=Path, required=True, help="checkpoint file")
    parser.add_argument("--sex", help="M or F for every image (wins over worklist and DICOM)")
    parser.add_argument("--sex-sure", type=float, default=ReadingConfig.sex_sure,
                        help="with the sex not given, the sex head's probability needed to use its sex; below it the "
                             f"bone age is given for both sexes (default: {ReadingConfig.sex_sure})")
    parser.add_argument("--chronological-age", type=float, help="chronological age in years for every image")
    parser.add_argument("--birth-date", help="YYYY-MM-DD, with --study-date gives the chronological age")
    parser.add_argument("--study-date", help="YYYY-MM-DD")
    parser.add_argument("--out", type=Path, help="folder for predictions.csv / .jsonl, heat maps and reports")
    add_shared_options(parser, "json", json_help="JSON lines (one object per image) instead of CSV")
    parser.add_argument("--heatmap", action="store_true", help="write a heat-map overlay PNG per image under --out")
    parser.add_argument("--heatmap-method", choices=METHODS, default="gradcam")
    parser.add_argument("--report", action="store_true", help="write one HTML report per patient under --out")
    parser.add_argument("--batch-size", type=int, default=16)
    add_shared_options(parser, "device", "threads")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--site-config", type=Path, help="the site's node config (site.toml): where its acceptance "
                        "verdicts are (state-dir) and whether the model must have been accepted (require-acceptance)")
    parser.add_argument("--state-dir", type=Path, help="the site's state folder (wins over the site config's)")
    parser.add_argument("--interval", choices=("model", "site"), default="model",
                        help="model (default): the checkpoint's interval (a federated model's is pooled over the "
                             "sites); site: the interval this site fitted on its own validation images when the "
                             "federation fitted the model's (needs --site-config or --state-dir)")
    parser.set_defaults(handler=run_predict)


def facts_from_args(args: argparse.Namespace) -> PatientFacts:
    if args.chronological_age is not None and not 0 <= args.chronological_age <= 30:
        raise DataError(f"--chronological-age {args.chronological_age} is not an age in years (0-30)")
    return PatientFacts(
        male=parse_sex(args.sex, "--sex") if args.sex else None,
        birth_date=parse_date(args.birth_date, "--birth-date") if args.birth_date else None,
        study_date=parse_date(args.study_date, "--study-date") if args.study_date else None,
        age_months=args.chronological_age * 12.0 if args.chronological_age is not None else None,
    )


def check_out_folder(out: Path | None, inputs: list[Path], needs_out: bool) -> None:
    """--out is needed for heat maps and reports, and may not lie inside an input folder."""
    if out is None:
        if needs_out:
            raise DataError("--heatmap and --report write files: give --out DIR")
        return
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} is an existing file; --out is a folder (predictions, heat maps, reports)")
    resolved = out.resolve()
    for entry in inputs:
        folder = entry.resolve() if entry.is_dir() else entry.resolve().parent
        if resolved == folder or folder in resolved.parents:
            raise DataError(f"--out {out} lies inside the input folder {folder}; inputs are never written to")


def _cell(value: Any) -> Any:
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else value


MIN_SPREAD_IMAGES = 5  # readings needed before their spread says anything about the model
MIN_SPREAD_MONTHS = 3.0  # one of TJ-Net's age classes: different radiographs read within it all read alike


def blind_model_warning(months: list[float]) -> str:
    """A warning when the model gave (nearly) the same age to every image: it does not read the image ("" if not)."""
    if len(months) < MIN_SPREAD_IMAGES:
        return ""
    spread = float(np.std(months))
    if spread >= MIN_SPREAD_MONTHS:
        return ""
    return (f"warning: the model read all {len(months)} images as {np.mean(months):.1f} months (standard deviation "
            f"{spread:.2f} months): a model that gives every radiograph the same age does not read the image; "
            f"do not use these readings")


def write_rows(rows: Any, stream: TextIO, as_json: bool, copy: TextIO | None,
               months: list[float] | None = None) -> tuple[int, int]:
    """Write rows to `stream` (and `copy`) as JSON lines or CSV; returns (predicted, refused).

    The bone ages of the predicted rows are appended to `months` when given."""
    writers = [csv.DictWriter(s, fieldnames=FIELDS) for s in (stream, copy) if s is not None] if not as_json else []
    for writer in writers:
        writer.writeheader()
    counts = [0, 0]
    for row in rows:
        counts[row["status"] != "ok"] += 1
        if months is not None and row["status"] == "ok" and row.get("bone_age_months") not in (None, ""):
            months.append(float(row["bone_age_months"]))
        for target in (stream, copy):
            if target is not None and as_json:
                target.write(json.dumps({k: (None if v == "" else v) for k, v in row.items()}) + "\n")
        for writer in writers:
            writer.writerow({k: _cell(v) for k, v in row.items()})
        stream.flush()
    return counts[0], counts[1]


def run_predict(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise DataError("--batch-size must be at least 1")
    if not 0.5 <= args.sex_sure <= 1.0:
        raise DataError(f"--sex-sure {args.sex_sure} is not a probability in 0.5-1.0")
    check_out_folder(args.out, args.inputs, args.heatmap or args.report)
    settings = PredictSettings(model=args.model, facts=facts_from_args(args), out=args.out, heatmap=args.heatmap,
                               report=args.report, heatmap_method=args.heatmap_method, batch_size=args.batch_size,
                               device=args.device, progress=not args.no_progress,
                               reading=ReadingConfig(sex_sure=args.sex_sure),
                               site=site_acceptance(args.site_config, args.state_dir), interval=args.interval)
    items = collect(args.inputs)
    predictor = Predictor(settings)
    copy = None
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        copy = open(args.out / ("predictions.jsonl" if args.json else "predictions.csv"), "w", newline="",
                    encoding="utf-8")
    months: list[float] = []
    try:
        predicted, refused = write_rows(predictor.run(items), sys.stdout, args.json, copy, months)
    finally:
        if copy is not None:
            copy.close()
    print(f"{predicted} image(s) predicted, {refused} refused", file=sys.stderr)
    blind = blind_model_warning(months)
    if blind:
        print(blind, file=sys.stderr)
        return 1
    return 0
