"""`python -m client finetune`: adapt the pretrained model to one hospital's images, no federation needed."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from core.cli import add_data_arguments, add_shared_options, data_config_from_args
from core.errors import ConfigError
from core.model.freeze import FREEZE_CHOICES, parse_freeze_spec_list
from core.stages.freeze_compare import compare_freeze_specs, format_table, site_pool
from core.stages.site_finetune import FINETUNE_SCHEMA, FinetuneConfig, finetune_site

# the settings with a flag of their own (seed and device are shared options, the feature cache a switch)
FLAGS = ("freeze", "folds", "epochs", "lr", "batch_size", "weight_decay", "feature_views", "feature_augment")


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register `finetune` on the `python -m client` command line."""
    parser = commands.add_parser(
        "finetune", help="fine-tune the unfrozen blocks of the pretrained model on this site's images",
        description="Writes a checkpoint that `python -m server evaluate` and the ClientApp accept, with its "
                    "provenance. --compare runs every freeze spec with k-fold cross-validation instead and prints "
                    "the paper's Table 2 for this site with 95 % intervals (then --out gets the best spec).")
    parser.add_argument("--pretrained", type=Path, required=True, help="the pretrained checkpoint")
    add_data_arguments(parser)
    FINETUNE_SCHEMA.add_arguments(parser, ("freeze",), check=False)
    parser.add_argument("--out", type=Path, default=None, help="the site's fine-tuned checkpoint (SITE.pt)")
    parser.add_argument("--compare", action="store_true", help="compare every freeze spec by cross-validation")
    parser.add_argument("--specs", default=",".join(FREEZE_CHOICES),
                        help="comma-separated freeze specs --compare runs (default: all of them); one spec freezing "
                             "several blocks is a range or joined with '+' (1-3, 1-2+4)")
    FINETUNE_SCHEMA.add_arguments(parser, FLAGS[1:], check=False)
    add_shared_options(parser, "seed", "device", "json")
    parser.add_argument("--no-feature-cache", dest="feature_cache", action="store_false",
                        default=FINETUNE_SCHEMA.default("feature_cache"),
                        help="recompute the frozen blocks at every step instead of once per image and view")
    parser.set_defaults(handler=run_finetune)


def run_finetune(args: argparse.Namespace) -> int:
    if not args.compare and args.out is None:
        raise ConfigError("--out is required (where to write the fine-tuned checkpoint), unless --compare")
    if args.out is not None and args.out.resolve() == args.pretrained.resolve():
        raise ConfigError("--out must not overwrite the pretrained checkpoint")
    config = FinetuneConfig(**FINETUNE_SCHEMA.from_args(args, FLAGS), seed=args.seed, device=args.device,
                            progress=not args.json, feature_cache=args.feature_cache)
    data = data_config_from_args(args)
    if not args.compare:
        metadata = finetune_site(args.pretrained, data, args.out, config)
        tests = metadata["test_metrics"]
        summary = {"out": str(args.out), "freeze": metadata["provenance"]["freeze"],
                   "test_mad_months": {k: v["mad_months"] for k, v in tests.items()}, "test_n": tests["finetuned"]["n"]}
        print(json.dumps(summary) if args.json else
              f"test MAD {tests['pretrained']['mad_months']:.2f} months before, {tests['finetuned']['mad_months']:.2f} "
              f"after fine-tuning (freeze {summary['freeze']}, {summary['test_n']} test images); wrote {args.out}")
        return 0
    specs = parse_freeze_spec_list(args.specs)
    pool = site_pool(args.pretrained, data, config.progress)  # every image read and preprocessed once
    results = compare_freeze_specs(args.pretrained, data, config, specs, pool)
    best = min((r for r in results if r.spec in specs), key=lambda r: r.mad.estimate)
    if args.json:
        print(json.dumps([{"freeze": r.spec, "mad_months": r.mad.estimate, "mad_ci_low": r.mad.low,
                           "mad_ci_high": r.mad.high, "n": r.metrics["n"],
                           "diff_vs_pretrained": None if r.versus_pretrained is None else
                           [r.versus_pretrained.estimate, r.versus_pretrained.low, r.versus_pretrained.high]}
                          for r in results]))
    else:
        print(format_table(results, str(args.data)))
    if args.out is not None:
        finetune_site(args.pretrained, data, args.out, FinetuneConfig(**{**config.__dict__, "freeze": best.spec}), pool)
        if not args.json:
            print(f"wrote {args.out} (freeze {best.spec}, the best by cross-validation)")
    return 0
