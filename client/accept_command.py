"""`python -m client accept --model NEW.pt --data SITE [--against CURRENT.pt]`: the site's checks of a model before
it reads patients' images; the verdict and its figures go to the site's audit log. Exit 0: accepted; 1: rejected."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from client.acceptance import record_verdict, site_acceptance
from core.stages.acceptance import POSES, Verdict, judge_model
from core.cli import add_data_arguments, add_shared_options, data_config_from_args
from core.data import DataError

REJECTED = 1


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register `accept` on the `python -m client` command line."""
    parser = commands.add_parser("accept", help="check a model on the site's own labelled cases before using it")
    add_data_arguments(parser)
    parser.add_argument("--model", type=Path, required=True, help="the model to check (left unchanged)")
    parser.add_argument("--against", type=Path, help="the model the site uses now: the new one may not be worse "
                        "by more than the margin")
    parser.add_argument("--site-config", type=Path, help="the site's node config (site.toml): state-dir and the "
                        "accept-* thresholds")
    parser.add_argument("--state-dir", type=Path, help="where the site's audit log is (default: the site config's "
                        "state-dir, else the folder a SuperNode serving --data uses)")
    parser.add_argument("--margin", type=float, help="months the new model's MAD may exceed the current one's "
                        "(default: accept-margin-months of the site config, else 1.5)")
    add_shared_options(parser, "device", "json")
    parser.set_defaults(handler=run_accept)


def _describe(verdict: Verdict) -> list[str]:
    figures = verdict.to_dict()["figures"]
    lines = []
    accuracy = figures.get("accuracy")
    if accuracy:
        line = f"accuracy: MAD {accuracy['mad_months']:.1f} months ({accuracy['mad_low']:.1f}-{accuracy['mad_high']:.1f}) " \
               f"on {accuracy['n']} images"
        if accuracy.get("compared"):
            line += (f"; current model {accuracy['current_mad_months']:.1f}, difference "
                     f"{accuracy['difference_months']:+.2f} ({accuracy['difference_low']:+.2f} to "
                     f"{accuracy['difference_high']:+.2f}), margin {accuracy['margin_months']:g}")
        lines.append(line)
    interval = figures.get("interval")
    if interval and "covered" in interval:
        lines.append(f"interval: its {interval['target']:.0%} interval holds {interval['covered']:.1%} "
                     f"({interval['covered_low']:.1%}-{interval['covered_high']:.1%}) of {interval['n']} cases")
    gate = figures.get("quality_gate")
    if gate:
        lines.append(f"quality gate: refuses {gate['refused']} of {gate['n']} images ({gate['refused_share']:.1%})")
    poses = figures.get("poses")
    if poses and "images" in poses:
        lines.append(f"poses ({poses['images']} images; moved: read more than {poses['tolerance_months']:g} months "
                     f"off, at most {poses['max_moved_share']:.0%} per pose): " + ", ".join(
                         f"{name} {poses[name]['moved']} moved, {poses[name]['refused']} refused, median "
                         f"{poses[name]['median_change_months']:.1f} mo" for name in POSES))
    return lines


def run_accept(args: argparse.Namespace) -> int:
    if args.against is not None and args.against.resolve() == args.model.resolve():
        raise DataError("--against names the model under test; give the model the site uses now")
    site = site_acceptance(args.site_config, args.state_dir, args.data)
    policy = site.policy if args.margin is None else replace(site.policy, margin_months=args.margin)
    verdict = judge_model(args.model, data_config_from_args(args), args.against, policy, args.device)
    record_verdict(site.state_dir, verdict, args.model, args.data, args.against)
    if args.json:
        print(json.dumps({**verdict.to_dict(), "audit_log": str(site.state_dir / "audit.jsonl")}))
    else:
        for line in _describe(verdict):
            print(line)
        print(("ACCEPTED" if verdict.accepted else f"REJECTED: {verdict.reason}")
              + f" (sha256 {verdict.model_sha256[:12]}, recorded in {site.state_dir / 'audit.jsonl'})")
    return 0 if verdict.accepted else REJECTED
