"""The phantom is deterministic across processes, not only inside one (hash seeds, thread pools, import order)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _generate(out: Path, hash_seed: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-m", "sim", "generate", "--preset", "eu_clinic", "--n", "3", "--out", str(out),
                    "--seed", "5", "--image-size", "64"], cwd=ROOT, env=env, check=True, capture_output=True)
    return _digests(out)


def test_two_processes_with_different_hash_seeds_write_byte_identical_sites(tmp_path: Path) -> None:
    first = _generate(tmp_path / "a", "1")
    second = _generate(tmp_path / "b", "2")
    assert first and first == second
    assert any(name.startswith("images") for name in first)
