"""End to end on loopback, as hospitals and the coordinator run it (docs/deployment.md):
a SuperLink with TLS and SuperNode authentication, two registered sites with their own data,
one federated round with `flwr run`; an unregistered key, a missing CA and an unreachable
SuperLink are refused with clear errors. Every process is torn down whatever happens."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from deploy_harness import BIN, REPO, Processes, free_port, group_alive, port_open, wait_until

from core.checkpoint import describe, load_checkpoint, save_checkpoint
from core.model.config import TJNetConfig
from core.model.tjnet import TJNet
from sim.phantom.writer import generate_site

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process tracking reads /proc")

SITES = {"siteA": ("rsna", "months", 1), "siteB": ("tongji", "years", 2)}


@dataclass
class Federation:
    root: Path
    port: int
    processes: Processes

    @property
    def ca(self) -> Path:
        return self.root / "certs" / "ca.crt"

    def supernode(self, name: str, key: str | None, ca: bool = True, superlink_port: int | None = None,
                  extra: tuple[str, ...] = ()) -> list[str]:
        argv = [str(BIN / "flower-supernode"), "--superlink", f"127.0.0.1:{superlink_port or self.port}",
                "--port", str(free_port()), "--node-config", str(self.root / f"{name}.toml"), *extra]
        if ca:
            argv += ["--root-certificates", str(self.ca)]
        if key:
            argv += ["--auth-supernode-private-key", str(self.root / "keys" / key)]
        return argv

    def flwr(self, name: str, *args: str, timeout: float = 60) -> str:
        result = self.processes.run(name, [str(BIN / "flwr"), *args], self.root / "home-cli", timeout)
        assert result.returncode == 0, f"flwr {' '.join(args)} failed:\n{result.stdout}\n{self.processes.tails()}"
        return result.stdout


def _script(processes: Processes, root: Path, script: str, *args: str) -> None:
    name = f"{Path(script).stem}-{Path(args[-1]).name}"
    result = processes.run(name, [sys.executable, str(REPO / "deploy" / script), *args], root, timeout=60)
    assert result.returncode == 0, result.stdout


def _prepare_sites(root: Path, sites: dict[str, tuple[str, str, int]] = SITES) -> None:
    """Phantom hospitals, each with its own copy of the pretrained model, and the coordinator's copy."""
    model = TJNet(TJNetConfig(image_size=64, width=0.25))
    save_checkpoint(root / "pretrained.pt", model, describe(model))
    for name, (preset, unit, site_id) in sites.items():
        generate_site(preset, 40, root / "data" / name, seed=site_id, image_size=64)
        shutil.copy(root / "pretrained.pt", root / "data" / f"{name}-pretrained.pt")
        (root / f"{name}.toml").write_text(
            f'data-path = "{root / "data" / name}"\nlabel-unit = "{unit}"\nsite-id = {site_id}\ndevice = "cpu"\n'
            f'state-dir = "{root / "state" / name}"\npretrained = "{root / "data" / f"{name}-pretrained.pt"}"\n')


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("deploy")
    (root / "logs").mkdir()
    processes = Processes(root / "logs")
    try:
        _prepare_sites(root)
        _script(processes, root, "make_certs.py", "--out", str(root / "certs"))
        for key in (*SITES, "rogue"):
            _script(processes, root, "make_site_keys.py", "--out", str(root / "keys"), "--name", key)
        port = free_port()
        certs = root / "certs"
        processes.start("superlink", [
            str(BIN / "flower-superlink"), "--ssl-ca-certfile", str(certs / "ca.crt"),
            "--ssl-certfile", str(certs / "server.pem"), "--ssl-keyfile", str(certs / "server.key"),
            "--enable-supernode-auth", "--disable-runtime-dependency-installation",
            "--host", "127.0.0.1", "--port", str(port)], root / "home-superlink")
        wait_until(lambda: port_open(port), 60, "the SuperLink to listen")
        (root / "home-cli").mkdir()
        (root / "home-cli" / "config.toml").write_text(
            f'[superlink]\ndefault = "ossifl"\n\n[superlink.ossifl]\naddress = "127.0.0.1:{port}"\n'
            f'root-certificates = "{certs / "ca.crt"}"\n')
        fed = Federation(root, port, processes)
        for name in SITES:
            fed.flwr(f"register-{name}", "supernode", "register", str(root / "keys" / f"{name}.pub"), "ossifl")
            processes.start(name, fed.supernode(name, key=name), root / f"home-{name}")
        for name in SITES:
            wait_until(lambda: "SuperNode ID" in processes.log(name), 60, f"{name} to connect")
        yield fed
    finally:
        processes.stop_all()
        assert not processes.ours(), "processes survived the teardown"


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
    assert load_checkpoint(root / "out" / "federated_final.pt").model.config.image_size == 64

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
