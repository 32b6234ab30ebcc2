"""The site's audit log: one JSON line per reply, saying exactly what left the site."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import tomli

AUDIT_FILENAME = "audit.jsonl"
APP_DIR = Path(__file__).resolve().parents[1]  # the installed FAB ($FLWR_HOME/apps/...) in deployment


def app_identity(app_dir: Path = APP_DIR) -> dict[str, str]:
    """The Flower App that produced an update: FAB id and version from the app's pyproject.toml,
    and the FAB hash prefix Flower puts in the install folder name (`<publisher>.<name>.<version>.<hash>`;
    empty when the code runs from a source checkout)."""
    try:
        with open(app_dir / "pyproject.toml", "rb") as handle:
            config = tomli.load(handle)
        publisher, name = config["tool"]["flwr"]["app"]["publisher"], config["project"]["name"]
        version = str(config["project"]["version"])
    except (OSError, KeyError, tomli.TOMLDecodeError):
        return {"fab_id": "unknown", "fab_version": "", "fab_hash": ""}
    prefix = f"{publisher}.{name}.{version}."
    fab_hash = app_dir.name[len(prefix):] if app_dir.name.startswith(prefix) else ""
    return {"fab_id": f"{publisher}/{name}", "fab_version": version, "fab_hash": fab_hash}


def update_digest(arrays: dict[str, np.ndarray]) -> tuple[int, str]:
    """Byte count and SHA-256 over the arrays in key order (keys, dtypes, shapes and values)."""
    digest = hashlib.sha256()
    total = 0
    for key, value in arrays.items():
        data = np.ascontiguousarray(value)
        digest.update(f"{key}|{data.dtype.str}|{data.shape}".encode())
        digest.update(data.tobytes())
        total += data.nbytes
    return total, digest.hexdigest()


def append_audit(state_dir: Path, entry: dict[str, Any]) -> None:
    """Append one entry (with a UTC timestamp) and flush it to disk; the file is never rewritten."""
    state_dir.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **entry}, sort_keys=True)
    with open(state_dir / AUDIT_FILENAME, "a", encoding="utf-8") as handle:
        handle.write(line + "\n")
        handle.flush()
        os.fsync(handle.fileno())
