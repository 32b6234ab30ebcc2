"""`python -m sim interval`: fit the federated prediction interval of an existing federated model on simulated sites.

The same step a federation ends with (`server.interval`), run alone from the federation's final model
(`interval-from`): every site scores its validation and test splits with the model as the run left it (FedBN sites
with their own layers, read from the state folders `python -m sim` kept beside the model) and releases only score
counts, noisy and accounted in its ledger when it is private (`--dp`). The model is written again with the interval
to `--out`; the input is never changed. `flwr run . --run-config "interval-from='...'"` does the same on deployed
sites (docs/prediction.md).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from client.config import state_folder_name
from core.checkpoint import load_checkpoint
from core.cli import add_shared_options
from core.errors import ConfigError, FederationFailed
from server.config import FederationConfig
from server.federation import FINAL
from server.interval import IntervalRefit
from sim.config import RealSite
from sim.federation import SimulatedRun, manifest_keys, run_federations, site_node_config

logger = logging.getLogger("ossifl.sim")
DEFAULT_DP_MAX_EPSILON = 10.0  # as `python -m sim --dp`


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `interval` on `python -m sim`."""
    parser = subparsers.add_parser(
        "interval", help="fit the federated 90 %% interval of an existing federated model on simulated sites",
        description="No round is trained: the sites send score counts for the model's interval (docs/prediction.md).")
    parser.add_argument("--model", type=Path, required=True, help="a federation's final model (federated_final.pt)")
    parser.add_argument("--pretrained", type=Path, required=True, help="the pretrained model it was federated from")
    parser.add_argument("--site", action="append", default=[], metavar="DIR[:years]",
                        help="a site folder, in the order of the federation (repeatable; ':years' for whole-year labels)")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder of the model with its interval (default: MODEL's folder/interval)")
    parser.add_argument("--state-dir", type=Path, default=None,
                        help="the sites' state folders (ledgers, FedBN layers; default: MODEL's folder/site-state, "
                             "where `python -m sim` keeps them)")
    parser.add_argument("--dp", type=float, default=None, metavar="SIGMA",
                        help="the sites are private (the DP-SGD noise multiplier they trained with): their counts "
                             "carry noise and the release is accounted in their ledgers")
    parser.add_argument("--dp-max-epsilon", type=float, default=DEFAULT_DP_MAX_EPSILON,
                        help="each private site's budget (default 10): a site refuses a release that would pass it")
    parser.add_argument("--dp-interval-noise", type=float, default=None,
                        help="std of the noise on each released count (default: the sites' own, 5)")
    add_shared_options(parser, "device", "seed", "json")
    parser.set_defaults(handler=run_interval)
    return parser


def run_interval(args: argparse.Namespace) -> int:
    """One simulated run that only fits the interval; prints its figures."""
    if not args.site:
        raise ConfigError("give the federation's sites with --site DIR (repeatable)")
    sites = [RealSite.parse(text) for text in args.site]
    for site in sites:
        if not site.path.is_dir():
            raise ConfigError(f"site folder not found: {site.path}")
    private = None if args.dp is None else _private(args)
    run = refit_run(args.model, args.pretrained, sites, args.out, args.state_dir, args.device, private)
    IntervalRefit.of(run.config, FINAL)  # a wrong model or out-dir is refused before the engine starts
    outcome, = run_federations([run])
    if outcome.failure:
        raise FederationFailed(outcome.failure)
    summary = load_checkpoint(outcome.final_checkpoint).metadata
    if args.json:
        print(json.dumps({"model": str(outcome.final_checkpoint), "conformal": summary["conformal"],
                          "conformal_federated": summary["conformal_federated"]}, indent=2))
    else:
        print("\n".join(summary_lines(outcome.final_checkpoint, summary, [s.path.name for s in sites])))
    return 0


def refit_run(model: Path, pretrained: Path, sites: list[RealSite], out: Path | None = None,
              state_dir: Path | None = None, device: str = "cpu", private: dict[str, Any] | None = None) -> SimulatedRun:
    """The run that fits `model`'s interval on `sites` (site ids: their order), each with its state folder under
    `state_dir` (default: the model's folder's `site-state`, named as `python -m sim` names them) and the
    node config keys `private` adds (dp-*)."""
    config = FederationConfig(pretrained=pretrained, out_dir=out or model.parent / "interval", min_nodes=len(sites),
                              device=device, interval_from=model)
    state = state_dir or model.parent / "site-state"
    nodes = tuple(site_node_config(site.path, index, state / state_folder_name(site.path), pretrained,
                                   site.label_unit, device, **manifest_keys(site.data), **(private or {}))
                  for index, site in enumerate(sites))
    return SimulatedRun(config, nodes)


def _private(args: argparse.Namespace) -> dict[str, Any]:
    noise = {} if args.dp_interval_noise is None else {"dp-interval-noise": args.dp_interval_noise}
    return {"dp-noise-multiplier": args.dp, "dp-max-epsilon": args.dp_max_epsilon, "dp-seed": args.seed, **noise}


def summary_lines(path: Path, metadata: dict[str, Any], names: list[str]) -> list[str]:
    """The interval, how it was fitted, and per site its coverage on its test split (site ids are indices); when
    privacy noise sets the interval, a warning instead of coverages read from counts that noisy."""
    interval, how = metadata["conformal"], metadata["conformal_federated"]
    head = interval.get("halfwidth_months_sex_from_head")
    images = (f"about {how['calibration_images']} (sd {how['calibration_images_sd']:.0f})"
              if how["private_sites"] else str(how["calibration_images"]))
    lines = [f"{path}: {interval['coverage']:.0%} interval +-{interval['halfwidth_months']:g} months (sex given)"
             + ("" if head is None else f", +-{head:g} (sex from the head)")
             + f", from {images} calibration images of {how['sites']} sites"
             + (f" ({how['private_sites']} private)" if how["private_sites"] else "")]
    if how.get("noise_dominated"):
        lines.append(f"warning: the privacy noise adds about {how['noise_counts_added']:.0f} counts, more than the "
                     f"{1 - interval['coverage']:.0%} tail of the calibration scores: the interval is set by the noise, "
                     "not by the model (it covers, but says little); coverage cannot be read from counts this noisy: "
                     "each site measures it with `python -m client accept`, and keeps its own interval "
                     "(`predict --interval site`)")
    else:
        lines.append(f"held-out coverage, all sites: {how['pooled_test_coverage']:.1%} of {how['test_images']} test "
                     "images" + (" (from noisy counts)" if how["private_sites"] else ""))
    for site_id, figures in [] if how.get("noise_dominated") else sorted(how["per_site"].items()):
        name = names[int(site_id)] if site_id.isdigit() and int(site_id) < len(names) else site_id
        own = figures["own_halfwidth_months"]
        lines.append(f"  {name}: {figures['pooled_test_coverage']:.1%} of {figures['test_images']} test images; "
                     + ("too few calibration images for its own interval" if own is None else
                        f"its own interval +-{own:g} months covers {figures['own_test_coverage']:.1%}"))
    for node, reason in how.get("refused", {}).items():
        lines.append(f"  node {node} sent nothing: {reason}")
    return lines
