"""The site approves the code it runs (docs/deployment.md), on loopback like the TLS test: one `flwr run` of this
repository's app reaches three SuperNodes. Flower's own `--trusted-entities` SuperNode refuses it (a locally built
FAB carries no signature in Flower 1.41: signatures come only from Flower Hub); `python -m client supernode` with
the app's SHA-256 on the site's approved list runs it; the same launcher with a list that lacks it refuses it in one
line. A refused site installs and runs nothing, sends nothing, and its audit log says why."""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from deploy_federation import Federation, metric_rows, running_federation
from deploy_harness import REPO
from flwr.cli.build import build_fab_from_disk

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process tracking reads /proc")

SITES = {"approved": ("rsna", "months", 1), "unlisted": ("rsna", "months", 2), "signed_only": ("rsna", "months", 3)}


def _launcher(approved_apps: Path) -> list[str]:
    return [sys.executable, "-m", "client", "supernode", "--approved-apps", str(approved_apps), "--"]


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    root = tmp_path_factory.mktemp("trusted")
    digest = hashlib.sha256(build_fab_from_disk(REPO)).hexdigest()  # the bytes `flwr run REPO` submits
    (root / "approved.txt").write_text(f"# reviewed 2026-12-06\n{digest}  ossifl 0.1.0\n")
    (root / "other.txt").write_text(f"{'0' * 64}  an older version\n")
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    openssh = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    (root / "trusted.yaml").write_text(f"fpk_site_reviewer: \"{openssh}\"\n")
    wraps = {"approved": lambda argv: [*_launcher(root / "approved.txt"), *argv[1:]],
             "unlisted": lambda argv: [*_launcher(root / "other.txt"), *argv[1:]],
             "signed_only": lambda argv: [*argv, "--trusted-entities", str(root / "trusted.yaml")]}
    env = {name: {"PYTHONPATH": str(REPO)} for name in SITES}
    with running_federation(root, SITES, site_argv=wraps, site_env=env) as fed:
        yield fed


def test_only_the_app_the_site_approved_runs(federation: Federation) -> None:
    root = federation.root
    config = federation.run_config("out", rounds=1, min_nodes=3, timeout=120.0)
    # the approval is under test, not the sites' evaluation or the interval: each would start more ClientApps
    config.write_text(config.read_text() + "fraction-evaluate = 0.0\ninterval = false\n")
    federation.flwr("flwr-run", "run", str(REPO), "ossifl", "--stream", "--run-config", str(config), timeout=300)
    logs = federation.processes.tails()
    rows = metric_rows(root / "out" / "metrics.csv")
    status = {row["site"]: row["status"] for row in rows if row["phase"] == "train" and row["site"]}
    assert status.get("1") == "ok", logs

    approved = [json.loads(line) for line in (root / "state" / "approved" / "audit.jsonl").read_text().splitlines()]
    assert approved[0]["event"] == "app_approved" and any(e.get("kind") == "train" for e in approved), approved
    assert "App approved by this site" in federation.processes.log("approved")

    unlisted = [json.loads(line) for line in (root / "state" / "unlisted" / "audit.jsonl").read_text().splitlines()]
    assert unlisted and {e.get("event") for e in unlisted} == {"app_refused"}, unlisted  # nothing trained, nothing sent
    assert unlisted[0]["fab_sha256"] == approved[0]["fab_sha256"]
    assert "is not in this site's approved apps" in federation.processes.log("unlisted")

    assert "The FAB could not be verified" in federation.processes.log("signed_only"), logs
    assert not (root / "state" / "signed_only" / "audit.jsonl").exists()
    for name in ("unlisted", "signed_only"):
        assert not list((root / f"home-{name}").glob("**/apps/*")), f"{name} installed the app it refused"
