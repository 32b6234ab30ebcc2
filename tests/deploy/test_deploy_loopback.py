"""End to end on loopback, as hospitals and the coordinator run it (docs/deployment.md):
a SuperLink with TLS and SuperNode authentication, two registered sites with their own data,
one federated round with `flwr run`; an unregistered key, a missing CA and an unreachable
SuperLink are refused with clear errors. Every process is torn down whatever happens."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections.abc import Iterator

import pytest
from deploy_federation import Federation, SiteData, running_federation
from deploy_harness import REPO, free_port, group_alive, wait_until

from core.checkpoint import load_checkpoint

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process tracking reads /proc")

SITES = {"siteA": ("rsna", "months", 1), "siteB": ("tongji", "years", 2)}
DATA = SiteData(images=40, image_size=64, width=0.25)


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    with running_federation(tmp_path_factory.mktemp("deploy"), SITES, DATA, extra_keys=("rogue",)) as fed:
        yield fed


def test_unregistered_key_is_refused(federation: Federation) -> None:
    argv = federation.supernode("siteA", key="rogue", extra=("--max-wait-time", "30"))
    result = federation.processes.run("rogue", argv, federation.root / "home-rogue", timeout=60)
    assert result.returncode != 0
    assert "Failed to activate SuperNode" in result.stdout, result.stdout
    assert "No SuperNode found with the given public key" in federation.processes.log("superlink")


def test_supernode_without_ca_fails_cleanly(federation: Federation) -> None:
    argv = federation.supernode("siteA", key="siteA", ca=False, extra=("--max-wait-time", "30"))
    result = federation.processes.run("no-ca", argv, federation.root / "home-no-ca", timeout=60)
    assert result.returncode != 0
    assert "CERTIFICATE_VERIFY_FAILED" in result.stdout, result.stdout
    group = federation.processes.started["no-ca"].pid
    wait_until(lambda: not group_alive(group), 15, "the SuperNode's helper processes to exit")


def test_unreachable_superlink_gives_up(federation: Federation) -> None:
    argv = federation.supernode("siteA", key="siteA", superlink_port=free_port(), extra=("--max-wait-time", "3"))
    result = federation.processes.run("unreachable", argv, federation.root / "home-unreachable", timeout=60)
    assert result.returncode != 0
    assert "Connection refused" in result.stdout, result.stdout


def test_nothing_installs_dependencies_at_run_time(federation: Federation) -> None:
    commands = federation.processes.command_lines()
    assert sum("flower-superexec" in command for command in commands) >= 1 + len(SITES), commands
    assert not any("--allow-runtime-dependency-installation" in command for command in commands)


def test_one_round_over_tls_with_two_authenticated_sites(federation: Federation) -> None:
    root = federation.root
    (root / "run.toml").write_text(
        f'num-rounds = 1\nmin-nodes = 2\nlocal-epochs = 1\nbatch-size = 8\ntimeout = 240.0\n'
        f'pretrained = "{root / "pretrained.pt"}"\nout-dir = "{root / "out"}"\n')
    federation.flwr("flwr-run", "run", str(REPO), "ossifl", "--stream", "--run-config", str(root / "run.toml"),
                    timeout=300)
    logs = federation.processes.tails()
    assert (root / "out" / "federated_final.pt").is_file(), logs
    assert load_checkpoint(root / "out" / "federated_final.pt").model.config.image_size == DATA.image_size

    for name in SITES:
        decoded = sorted((root / "state" / name / "decoded").iterdir())  # train+val and test, for the next rounds
        assert len(decoded) == 2 and all(p.stat().st_mode & 0o777 == 0o600 for p in decoded), decoded
        entries = [json.loads(line) for line in (root / "state" / name / "audit.jsonl").read_text().splitlines()]
        train = [e for e in entries if e["kind"] == "train"]
        assert len(train) == 1, (name, entries)
        assert train[0]["bytes"] > 0 and len(train[0]["sha256"]) == 64 and train[0]["array_keys"]
        assert train[0]["app"]["fab_id"] == "ossifl/ossifl" and train[0]["app"]["fab_hash"]
        assert train[0]["metrics"]["num-examples"] > 0 and train[0]["round"] == 1

    with open(root / "out" / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    trained = {row["site"] for row in rows if row["phase"] == "train" and row["status"] == "ok"}
    assert trained == {str(site_id) for _, _, site_id in SITES.values()}, logs

    report = subprocess.run([sys.executable, str(REPO / "deploy" / "site_report.py"), str(root / "out" / "metrics.csv"),
                             "--json"], capture_output=True, text=True, check=True, timeout=60)
    sites = json.loads(report.stdout)["sites"]
    assert {site: values["status"] for site, values in sites.items()} == {"1": "ok", "2": "ok"}
