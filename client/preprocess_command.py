"""`python -m client preprocess --data DIR --out DIR`: canonical images and a qc.csv, the input left untouched."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from core.checkpoint import load_checkpoint
from core.cli import add_shared_options
from core.data import DataError
from core.inputs import InputSettings
from core.preprocess import PreprocessConfig, Preprocessor
from core.preprocess.folder import check_out, image_paths, preprocess_folder
from core.preprocess.site import describe_check, orientation_for_site
from core.preprocess.review import contact_sheet


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register `preprocess` on the `python -m client` command line."""
    parser = commands.add_parser("preprocess", help="write canonical images and qc.csv (id, flags, confidence)")
    parser.add_argument("--data", type=Path, required=True, help="site folder (with images/) or a folder of images")
    parser.add_argument("--out", type=Path, required=True, help="new, empty output folder")
    parser.add_argument("--model", type=Path, default=None,
                        help="use the preprocessing this checkpoint was trained with (overrides --preprocess)")
    parser.add_argument("--preprocess", default="default",
                        help="none, default or default,key=value,... (docs/preprocessing.md)")
    parser.add_argument("--contact-sheet", type=Path, default=None,
                        help="also write a before/after contact sheet PNG here")
    add_shared_options(parser, "json")
    parser.set_defaults(handler=run_preprocess)


def settings_from_args(model: Path | None, spec: str) -> PreprocessConfig:
    """The checkpoint's preprocessing when a model is given, else the spec; "none" is refused here."""
    if model is not None:
        config = InputSettings.of(load_checkpoint(model)).preprocess
        if config is None:
            raise DataError(f"{model} was trained without preprocessing: nothing to apply")
        return config
    config = PreprocessConfig.parse(spec)
    if config is None:
        raise DataError("--preprocess none: nothing to apply")
    return config


def run_preprocess(args: argparse.Namespace) -> int:
    # a model's recorded orientation model is checked on these images, never refitted (the model was trained so)
    check_out(args.data, args.out)
    config, site = orientation_for_site(settings_from_args(args.model, args.preprocess), image_paths(args.data),
                                        fit=args.model is None)
    tally = preprocess_folder(args.data, args.out, Preprocessor(config))
    summary = {**tally.summary(), "orientation_check": site}
    if args.contact_sheet is not None and tally.examples:
        summary["contact_sheet"] = str(contact_sheet(tally.examples, args.contact_sheet))
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"{summary['n']} images preprocessed into {args.out} ({summary['ms_per_image']:.1f} ms per image), "
          f"qc.csv written")
    print(describe_check(site))
    print("flags    " + (", ".join(f"{k} {v}" for k, v in summary["flags"].items()) or "none"))
    print("refused  " + (", ".join(f"{k} {v}" for k, v in summary["refused"].items()) or "none"))
    if "contact_sheet" in summary:
        print(f"contact sheet {summary['contact_sheet']}")
    return 0
