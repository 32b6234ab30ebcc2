"""FedBN's site-kept layers on disk: the normalisation layers a site trained and never sent.

A site running with `local-layers = "norm"` keeps those layers in its node state between the messages
of a run; it also writes them to `<state-dir>/local_layers.pt` after every round it trains, so that

- a SuperNode restarted in the middle of a run picks them up again (same run id, same pretrained model), and so
  does the next run of a federation the server resumed (same federation id, same pretrained model);
- after the run, the site's own model is the federated model with these layers loaded on top
  (`python -m sim` evaluates FedBN that way).

The file is replaced atomically; it is derived from the site's images only through trained weights, like
any model the site returns.

A site with node config `calibrate = true` keeps its sex-specific output line the same way, in
`<state-dir>/calibration.json` (`save_site_calibration`), for `client export` to put into its model.
"""

from __future__ import annotations

import json
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from core.predict.calibration import CalibrationError, SexCalibration, calibration_from_dict, calibration_to_dict
from core.checkpoint import CheckpointError

LOCAL_LAYERS_FILE = "local_layers.pt"
CALIBRATION_FILE = "calibration.json"


@dataclass(frozen=True)
class LocalLayers:
    """A site's kept layers and where they come from.

    Attributes:
        layers: state key -> tensor (the normalisation layers of the blocks the site trained).
        run_id: the Flower run that trained them.
        round: the last server round the site trained in.
        pretrained_sha256: SHA-256 of the pretrained model the run started from.
        federation_id: the federation the run belongs to (the server keeps it across a resume; "" before).
    """

    layers: dict[str, torch.Tensor]
    run_id: int
    round: int
    pretrained_sha256: str
    federation_id: str = ""


def _write_atomically(path: Path, write: Callable[[Path], object]) -> Path:
    """Call `write` on `path` + ".partial" in `path`'s (created) folder, then rename it over `path`: a reader never
    sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    write(partial)
    os.replace(partial, path)
    return path


def save_local_layers(state_dir: Path, kept: LocalLayers) -> Path:
    """Write `kept` to `<state_dir>/local_layers.pt` (atomically: a reader never sees half a file)."""
    return _write_atomically(state_dir / LOCAL_LAYERS_FILE, lambda partial: torch.save(
        {"layers": {k: v.detach().cpu().clone() for k, v in kept.layers.items()}, "run_id": kept.run_id,
         "round": kept.round, "pretrained_sha256": kept.pretrained_sha256, "federation_id": kept.federation_id},
        partial))


def load_local_layers(state_dir: Path) -> LocalLayers | None:
    """The layers kept in `state_dir`, or None when the site has kept none there."""
    path = Path(state_dir) / LOCAL_LAYERS_FILE
    if not path.is_file():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        return LocalLayers(dict(saved["layers"]), int(saved["run_id"]), int(saved["round"]),
                           str(saved["pretrained_sha256"]), str(saved.get("federation_id", "")))
    except (RuntimeError, KeyError, TypeError, ValueError, EOFError, pickle.UnpicklingError) as exc:
        raise CheckpointError(f"{path} is not a file of kept layers ({exc.__class__.__name__}); "
                              "move it away to start the site's local layers afresh") from None


@dataclass(frozen=True)
class SiteCalibration:
    """A site's output line on the model it last evaluated, and which model that was.

    Attributes:
        line: the sex-specific line (`core.predict.calibration`).
        round: the server round whose model it was fitted on.
        pretrained_sha256: SHA-256 of the pretrained model the run started from.
        federation_id: the federation of that round.
        n_train: training images it was fitted on.
    """

    line: SexCalibration
    round: int
    pretrained_sha256: str
    federation_id: str = ""
    n_train: int = 0


def save_site_calibration(state_dir: Path, kept: SiteCalibration) -> Path:
    """Write `kept` to `<state_dir>/calibration.json` (atomically)."""
    text = json.dumps({"line": calibration_to_dict(kept.line), "round": kept.round,
                       "pretrained_sha256": kept.pretrained_sha256, "federation_id": kept.federation_id,
                       "n_train": kept.n_train}, indent=2)
    return _write_atomically(state_dir / CALIBRATION_FILE, lambda partial: partial.write_text(text, encoding="utf-8"))


def load_site_calibration(state_dir: Path) -> SiteCalibration | None:
    """The line kept in `state_dir`, or None when the site has fitted none there."""
    path = Path(state_dir) / CALIBRATION_FILE
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        return SiteCalibration(calibration_from_dict(saved["line"]), int(saved["round"]),
                               str(saved["pretrained_sha256"]), str(saved.get("federation_id", "")),
                               int(saved.get("n_train", 0)))
    except (OSError, KeyError, TypeError, ValueError, CalibrationError) as exc:
        raise CheckpointError(f"{path} is not a site calibration ({str(exc).splitlines()[0] or type(exc).__name__}); "
                              "move it away and evaluate again to fit a new one") from None
