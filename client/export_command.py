"""`python -m client export --model federated_final.pt --site-config site.toml --out site_model.pt`: the site's own
model as one checkpoint: the federated weights with the layers the site kept (FedBN's normalisation layers,
`core.local_layers`), its interval re-fitted on the site's own validation split. `predict`, `evaluate`, `calibrate`
and `accept` take it like any checkpoint; nothing leaves the site."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

from client.acceptance import read_site_config
from core.cli import add_shared_options
from client.config import SiteConfig, SiteConfigError
from core.checkpoint import CheckpointError, describe, file_sha256, load_checkpoint, save_checkpoint
from core.conformal import conformal_metadata
from core.data import load_site
from core.finetune import load_arrays
from core.inputs import InputSettings
from core.local_layers import load_local_layers

logger = logging.getLogger(__name__)


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register `export` on the `python -m client` command line."""
    parser = commands.add_parser("export", help="write this site's personalised model (federated weights + the "
                                 "layers the site kept) as one checkpoint")
    parser.add_argument("--model", type=Path, required=True, help="the federation's final model (left unchanged)")
    parser.add_argument("--site-config", type=Path, required=True,
                        help="the site's node config (site.toml): its data and state folder")
    parser.add_argument("--out", type=Path, required=True, help="checkpoint file to write")
    add_shared_options(parser, "json")
    parser.set_defaults(handler=run_export)


def export_site_model(model_path: Path, site: SiteConfig, out: Path) -> dict:
    """Write the personalised checkpoint; returns its metadata.

    Raises:
        CheckpointError: the site kept no layers, or kept them for another pretrained model, or they do not fit.
    """
    if Path(out).resolve() == Path(model_path).resolve():
        raise CheckpointError("--out must be a new file; the federated model is never overwritten")
    federated = load_checkpoint(model_path)
    kept = load_local_layers(site.state_dir)
    if kept is None:
        raise CheckpointError(f"{site.state_dir} holds no kept layers: this site trained in no FedBN run "
                              "(local-layers = norm), so its model is the federated model itself")
    recorded = federated.metadata.get("pretrained_sha256")
    if recorded and recorded != kept.pretrained_sha256:
        raise CheckpointError(f"the layers in {site.state_dir} were trained from another pretrained model than "
                              f"{model_path} (SHA-256 differs)")
    if "round" in federated.metadata and kept.round != int(federated.metadata["round"]):
        logger.warning("the site last trained in round %d; %s is the model of round %s: the site's layers are from "
                       "an earlier round", kept.round, model_path.name, federated.metadata["round"])
    model = federated.model
    try:
        load_arrays(model, kept.layers)
    except (KeyError, RuntimeError) as exc:
        raise CheckpointError(f"the kept layers do not fit {model_path}: {str(exc).splitlines()[0]}") from None
    metadata = {k: v for k, v in federated.metadata.items() if k not in ("conformal", "conformal_federated")}
    metadata.update(describe(model), provenance={
        **federated.metadata.get("provenance", {}), "personalised_for_site": site.site_id,
        "federated_model": Path(model_path).name, "federated_model_sha256": file_sha256(model_path),
        "local_layers": f"{len(kept.layers)} arrays kept by the site (run {kept.run_id}, round {kept.round})"})
    inputs = InputSettings.of(federated)
    val = load_site(site.data, inputs.image_size, None, seed=0, splits=("val",), preprocess=inputs.preprocess).val
    metadata.update(conformal_metadata(model, val, torch.device("cpu"), str(site.data.root)))
    save_checkpoint(out, model, metadata)
    return metadata


def run_export(args: argparse.Namespace) -> int:
    node = read_site_config(args.site_config)
    try:
        site = SiteConfig.from_node_config(node, str(args.model))
    except SiteConfigError as exc:
        raise SiteConfigError(f"{args.site_config}: {exc}") from None
    metadata = export_site_model(args.model, site, args.out)
    interval = metadata.get("conformal")
    if args.json:
        print(json.dumps({"out": str(args.out), "provenance": metadata["provenance"], "conformal": interval}))
        return 0
    print(f"saved {args.out}: {metadata['provenance']['local_layers']} on {args.model.name}"
          + (f"; its 90% interval from {interval['n']} of the site's val images: +-{interval['halfwidth_months']:.1f} "
             "months" if interval else "; no interval (too few val images)"))
    return 0
