"""The loaded-once cache the three small preprocessing networks share (core/preprocess/small_nets.py)."""

from __future__ import annotations

from pathlib import Path

from core.preprocess.small_nets import load_once


def test_a_file_is_loaded_once_per_loader_and_content(tmp_path: Path) -> None:
    calls: list[tuple[str, Path]] = []

    def load_a(path: Path) -> object:
        calls.append(("a", path))
        return object()

    def load_b(path: Path) -> object:
        calls.append(("b", path))
        return object()

    path = tmp_path / "weights.pt"
    first = load_once(load_a, path, "sha-1")
    assert load_once(load_a, str(path), "sha-1") is first  # the same file and content: the same object
    assert load_once(load_a, path, "sha-2") is not first  # the file changed: loaded again
    assert load_once(load_b, path, "sha-1") is not first  # another kind of model never gets this one
    assert calls == [("a", path), ("a", path), ("b", path)]
