"""FedBN's kept layers on disk: written whole, read back with their provenance, a damaged file refused in one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from core.checkpoint import CheckpointError
from core.stages.local_layers import LOCAL_LAYERS_FILE, LocalLayers, load_local_layers, save_local_layers


def test_kept_layers_round_trip_with_their_run_round_and_pretrained_model(tmp_path: Path) -> None:
    assert load_local_layers(tmp_path / "nothing") is None
    layers = {"block4.0.norm.weight": torch.arange(4.0), "block4.0.norm.bias": torch.ones(4)}
    path = save_local_layers(tmp_path / "state", LocalLayers(layers, run_id=12, round=3, pretrained_sha256="ab"))
    assert path == tmp_path / "state" / LOCAL_LAYERS_FILE and [p.name for p in path.parent.iterdir()] == [path.name]
    kept = load_local_layers(tmp_path / "state")
    assert (kept.run_id, kept.round, kept.pretrained_sha256) == (12, 3, "ab")
    assert set(kept.layers) == set(layers) and all(torch.equal(kept.layers[k], v) for k, v in layers.items())


def test_a_damaged_file_of_kept_layers_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / LOCAL_LAYERS_FILE).write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="not a file of kept layers") as caught:
        load_local_layers(tmp_path)
    assert "\n" not in str(caught.value)
