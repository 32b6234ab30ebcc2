"""Checkpoints: a model's weights plus the metadata needed to rebuild and trust it."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import logging
import os
import platform
import threading
from collections import OrderedDict
from importlib import metadata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.predict.calibration import METADATA_KEY, CalibrationError, attach_calibration, calibration_from_dict
from core.errors import UserError
from core.model.baseline import ResNetConfig, ResNetRegressor
from core.model.combined import CombinedConfig, EnsembleModel, SexSpecificModel
from core.model.config import TJNetConfig
from core.model.freeze import freeze_blocks
from core.model.tjnet import BLOCK_NAMES, TJNet

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
ARCHITECTURES = ("tjnet", "resnet", "sex_specific", "ensemble")


class CheckpointError(UserError):
    """A checkpoint that is missing, unreadable or not an OssiFL checkpoint."""


def build_model(architecture: str, config: dict[str, Any]) -> nn.Module:
    """Instantiate a model from its architecture name and config dict (combinations build their members)."""
    if architecture == "tjnet":
        return TJNet(TJNetConfig.from_dict(config))
    if architecture == "resnet":
        return ResNetRegressor(ResNetConfig.from_dict(config))
    if architecture in ("sex_specific", "ensemble"):
        combined = CombinedConfig.from_dict(config)
        members = [build_model(m.architecture, m.model_config) for m in combined.members]
        return SexSpecificModel(combined, *members) if architecture == "sex_specific" else EnsembleModel(combined, members)
    raise CheckpointError(f"unknown architecture {architecture!r}; expected one of {ARCHITECTURES}")


_ARCHITECTURE_NAMES = {TJNet: "tjnet", ResNetRegressor: "resnet", SexSpecificModel: "sex_specific",
                       EnsembleModel: "ensemble"}


def architecture_of(model: nn.Module) -> str:
    return _ARCHITECTURE_NAMES[type(model)]


def package_versions() -> dict[str, str]:
    """Versions of the packages that determine a model's numbers (read from metadata, not imported)."""
    versions = {"python": platform.python_version(), "torch": str(torch.__version__)}
    for name in ("flwr", "opacus", "numpy", "albumentations"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


@dataclass
class Checkpoint:
    """A model and the metadata saved with it."""

    model: nn.Module
    metadata: dict[str, Any] = field(default_factory=dict)


def describe(model: nn.Module, **extra: Any) -> dict[str, Any]:
    """Standard metadata for `model`; `extra` (seed, data summary, metrics...) is merged in."""
    meta: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "architecture": architecture_of(model),
        "model_config": model.config.to_dict(),
        "frozen_blocks": list(getattr(model, "frozen_blocks", ())),
        "package_versions": package_versions(),
    }
    if isinstance(model, TJNet):
        meta["class_grid_months"] = model.class_centres_months.tolist()
        meta["block_names"] = list(BLOCK_NAMES)
    meta.update(extra)
    return meta


def check_output_path(path: Path) -> None:
    """Raise `CheckpointError` now, before any training, when a checkpoint cannot be written at `path`."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder; give the checkpoint file to write, e.g. {path / 'model.pt'}")
    parent = next((p for p in (path.parent, *path.parent.parents) if p.exists()), Path("."))
    if not parent.is_dir():
        raise CheckpointError(f"cannot write {path}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise CheckpointError(f"cannot write {path}: permission denied")


def save_checkpoint(path: Path, model: nn.Module, metadata: dict[str, Any]) -> Path:
    """Write atomically (temporary file then rename) so a crash never leaves a half file, nor the temporary one."""
    path = Path(path)
    check_output_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    plain_metadata = json.loads(json.dumps(metadata, default=str))  # loadable with weights_only=True
    try:
        torch.save({"state_dict": state, "metadata": plain_metadata}, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Rebuild the model saved at `path` (frozen blocks re-applied) with its metadata."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    return _rebuild(path, path, map_location)


def _rebuild(path: Path, source: Path | io.BytesIO, map_location: str | torch.device) -> Checkpoint:
    try:
        payload = torch.load(source, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types, with long advice, for a corrupt or foreign file
        raise CheckpointError(f"cannot read checkpoint {path}: not a PyTorch checkpoint, or a truncated or "
                              f"damaged one ({exc.__class__.__name__}); copy the file again") from None
    if not isinstance(payload, dict) or "state_dict" not in payload or "metadata" not in payload:
        raise CheckpointError(f"{path} is not an OssiFL checkpoint (no state_dict/metadata)")
    metadata, state = payload["metadata"], payload["state_dict"]
    if not isinstance(metadata, dict) or not isinstance(state, dict):
        raise CheckpointError(f"{path} is not an OssiFL checkpoint (state_dict/metadata of the wrong type)")
    try:  # shapes first, on the meta device: a config asking for a huge model allocates nothing before the check
        with torch.device("meta"):
            shape_only = build_model(metadata.get("architecture", "tjnet"), metadata.get("model_config", {}))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: its model config cannot build a model ({str(exc).splitlines()[0]})") from None
    mismatch = weights_mismatch(shape_only, state)
    if mismatch:
        raise CheckpointError(f"{path}: weights do not match the saved model config ({mismatch})")
    model = build_model(metadata.get("architecture", "tjnet"), metadata.get("model_config", {}))
    model.load_state_dict(state)
    frozen = metadata.get("frozen_blocks") or []
    if isinstance(model, TJNet) and frozen:
        if not isinstance(frozen, list) or not all(isinstance(b, int) and 1 <= b <= 6 for b in frozen):
            raise CheckpointError(f"{path}: its metadata lists frozen blocks {frozen!r}, but TJ-Net has blocks 1 to 6; "
                                  f"the checkpoint is damaged, copy it again")
        freeze_blocks(model, tuple(frozen))
    if METADATA_KEY in metadata:  # a site's own output calibration (`client export`): predictions pass through it
        try:
            attach_calibration(model, calibration_from_dict(metadata[METADATA_KEY]))
        except CalibrationError as exc:
            raise CheckpointError(f"{path}: {exc}; the checkpoint is damaged, export it again") from None
    return Checkpoint(model=model, metadata=metadata)


def weights_mismatch(model: nn.Module, state: dict[str, Any]) -> str:
    """One line saying how `state` differs from `model`'s own weights ("" when it fits)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(getattr(state[k], "shape", ())) != tuple(own[k].shape)]
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("of another shape", shapes)):
        if keys:
            example = keys[0] + (f" {tuple(state[keys[0]].shape)} vs {tuple(own[keys[0]].shape)}"
                                 if label == "of another shape" else "")
            parts.append(f"{len(keys)} array(s) {label}, e.g. {example}")
    return "; ".join(parts)


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class CheckpointCache:
    """Checkpoints read once per process; each use gets its own copy of the model.

    A site rebuilds the pretrained model for every message it answers. The cache keys a file by its
    resolved path, size, modification time and inode, so a rewritten or replaced file is read again; the
    SHA-256 is taken of the very bytes the model is loaded from. At most `max_entries` files are kept.
    """

    def __init__(self, max_entries: int = 4) -> None:
        self.max_entries = max_entries
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[tuple, tuple[Checkpoint, str]] = OrderedDict()
        self._lock = threading.Lock()

    def load(self, path: Path) -> tuple[Checkpoint, str]:
        """(a private copy of the checkpoint at `path`, the file's SHA-256)."""
        path = Path(path)
        try:
            stat = path.stat()
        except OSError:
            raise CheckpointError(f"checkpoint not found: {path}") from None
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino)
        with self._lock:
            cached = self._entries.get(key)
            if cached is None:
                self.misses += 1
                data = path.read_bytes()
                cached = (_rebuild(path, io.BytesIO(data), "cpu"), hashlib.sha256(data).hexdigest())
                self._entries[key] = cached
                while len(self._entries) > self.max_entries:
                    self._entries.popitem(last=False)
            else:
                self.hits += 1
                self._entries.move_to_end(key)
        checkpoint, digest = cached
        return Checkpoint(copy.deepcopy(checkpoint.model), copy.deepcopy(checkpoint.metadata)), digest
