"""Which model produced a result: file, SHA-256, architecture and how it was trained (from its metadata).

The provenance shown is the checkpoint's own record: metadata["provenance"] (pretrained model, freeze
spec, sites and rounds) where the training step wrote one, else what older checkpoints carry (the
pretraining folder and its image counts, or a federation's rounds and strategy).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _pretraining(metadata: dict[str, Any]) -> dict[str, Any]:
    data = metadata.get("data")
    if not isinstance(data, dict):
        return {}
    summary = data.get("summary") or {}
    return {"pretrained_on": data.get("root"), "images": summary.get("n_usable"),
            "split_sizes": summary.get("split_sizes"), "best_epoch": metadata.get("best_epoch")}


def provenance_of(metadata: dict[str, Any]) -> dict[str, Any]:
    """The training history recorded in a checkpoint (empty values left out)."""
    recorded = metadata.get("provenance")
    provenance: dict[str, Any] = dict(recorded) if isinstance(recorded, dict) else {}
    if "round" in metadata:
        provenance.setdefault("rounds", metadata["round"])
        provenance.setdefault("strategy", metadata.get("strategy"))
        provenance.setdefault("pretrained", metadata.get("pretrained"))
    for key, value in _pretraining(metadata).items():
        provenance.setdefault(key, value)
    conformal = metadata.get("conformal")
    if isinstance(conformal, dict):
        source = f" of {conformal['source']}" if conformal.get("source") else ""
        provenance["interval_calibrated_on"] = f"{conformal.get('n')} images, {conformal.get('split')} split{source}"
    return {k: v for k, v in provenance.items() if v not in (None, "", {}, [])}


def model_identity(path: Path, metadata: dict[str, Any], sha256: str) -> dict[str, Any]:
    """File, digest, architecture and provenance of a checkpoint, for outputs and reports."""
    config = metadata.get("model_config", {})
    return {
        "file": Path(path).name,
        "sha256": sha256,
        "architecture": metadata.get("architecture", "tjnet"),
        "image_size": config.get("image_size"),
        "width": config.get("width"),
        "frozen_blocks": metadata.get("frozen_blocks", []),
        "provenance": provenance_of(metadata),
    }
