"""`python -m client export --model federated_final.pt --site-config site.toml --out site_model.pt`: the site's own
model as one checkpoint: the federated weights with the layers the site kept (FedBN's normalisation layers,
`core.stages.local_layers`) and its own output calibration (node config `calibrate = true`, `core.predict.calibration`), its
interval re-fitted on the site's own validation split. `predict`, `evaluate`, `calibrate`
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
from core.intervals.conformal import conformal_metadata
from core.data import load_site
from core.stages.finetune import load_arrays
from core.inputs import InputSettings
from core.predict.calibration import METADATA_KEY, attach_calibration, calibration_to_dict
from core.stages.local_layers import load_local_layers, load_site_calibration

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
        CheckpointError: the site kept neither layers nor a calibration, or kept them for another pretrained model, or
            the layers do not fit.
    """
    if Path(out).resolve() == Path(model_path).resolve():
        raise CheckpointError("--out must be a new file; the federated model is never overwritten")
    federated = load_checkpoint(model_path)
    kept, line = load_local_layers(site.state_dir), load_site_calibration(site.state_dir)
    if kept is None and line is None:
        raise CheckpointError(f"{site.state_dir} holds no kept layers and no calibration: this site trained in no "
                              "FedBN run (local-layers = norm) and evaluated with no calibrate = true, so its model is "
                              "the federated model itself")
    recorded = federated.metadata.get("pretrained_sha256")
    model, metadata = federated.model, {k: v for k, v in federated.metadata.items()
                                        if k not in ("conformal", "conformal_federated", METADATA_KEY)}
    provenance = {**federated.metadata.get("provenance", {}), "personalised_for_site": site.site_id,
                  "federated_model": Path(model_path).name, "federated_model_sha256": file_sha256(model_path)}
    for what, found in (("layers", kept), ("calibration", line)):
        if found is None:
            continue
        if recorded and recorded != found.pretrained_sha256:
            raise CheckpointError(f"the {what} in {site.state_dir} were made from another pretrained model than "
                                  f"{model_path} (SHA-256 differs)")
        if "round" in federated.metadata and found.round != int(federated.metadata["round"]):
            logger.warning("the site's %s are from round %d; %s is the model of round %s: they are from an earlier "
                           "round", what, found.round, model_path.name, federated.metadata["round"])
    if kept is not None:
        try:
            load_arrays(model, kept.layers)
        except (KeyError, RuntimeError) as exc:
            raise CheckpointError(f"the kept layers do not fit {model_path}: {str(exc).splitlines()[0]}") from None
        provenance["local_layers"] = f"{len(kept.layers)} arrays kept by the site (run {kept.run_id}, round {kept.round})"
    if line is not None:  # every later prediction of the exported model passes through the site's line
        attach_calibration(model, line.line)
        metadata[METADATA_KEY] = calibration_to_dict(line.line)
        provenance["site_calibration"] = f"fitted on {line.n_train} training images (round {line.round})"
    metadata.update(describe(model), provenance=provenance)
    inputs = InputSettings.of(federated)
    val = load_site(site.data, inputs.image_size, None, seed=0, splits=("val",), preprocess=inputs.preprocess).val
    metadata.update(conformal_metadata(model, val, torch.device("cpu"), str(site.data.root), tta=inputs.tta))
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
    made = [metadata["provenance"][k] for k in ("local_layers", "site_calibration") if k in metadata["provenance"]]
    print(f"saved {args.out}: {'; '.join(made)} on {args.model.name}"
          + (f"; its 90% interval from {interval['n']} of the site's val images: +-{interval['halfwidth_months']:.1f} "
             "months" if interval else "; no interval (too few val images)"))
    return 0
