"""A deployed federation on loopback, as docs/deployment.md sets one up: phantom hospitals with their own copy of
a tiny pretrained TJ-Net, the CA and server certificate from `deploy/make_certs.py`, one key pair per site from
`deploy/make_site_keys.py`, a SuperLink with TLS and SuperNode authentication, registered keys, one SuperNode per
site. The processes are the caller's `Processes`, which tears them down."""

from __future__ import annotations

import csv
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from deploy_harness import BIN, REPO, Processes, free_port, port_open

from core.checkpoint import describe, save_checkpoint
from core.model.config import TJNetConfig
from core.model.tjnet import TJNet
from sim.phantom.writer import generate_site

# name -> (phantom preset, label unit, site id)
Sites = dict[str, tuple[str, str, int]]
CONNECT_S = 180.0  # a SuperLink or SuperNode starting on a loaded 2-core machine (seconds)


@dataclass(frozen=True)
class SiteData:
    """How big each phantom site and the model are (the smallest that still train, validate and test)."""

    images: int = 12  # ids 1-12: 9 train, 1 validation, 2 test images (core.data.split)
    image_size: int = 32
    width: float = 0.125


@dataclass
class Federation:
    root: Path
    port: int
    processes: Processes
    superlink_argv: list[str] = field(default_factory=list)
    superlink_name: str = "superlink"  # the `Processes` name of the SuperLink started last

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

    def start_superlink(self, name: str = "superlink") -> None:
        """Start the SuperLink (again, after a crash: same port, certificates and database) and wait for its port."""
        self.processes.start(name, self.superlink_argv, self.root / "home-superlink")
        self.superlink_name = name
        self.processes.wait_until(lambda: port_open(self.port), CONNECT_S, f"{name} to listen")

    def run_config(self, out: str, rounds: int, min_nodes: int, timeout: float, resume: bool = False) -> Path:
        """A run config file for `flwr run --run-config`: one local epoch, batch 8, output in `root/out`."""
        path = self.root / f"{out}-{'resume' if resume else 'run'}.toml"
        path.write_text(f'num-rounds = {rounds}\nmin-nodes = {min_nodes}\nlocal-epochs = 1\nbatch-size = 8\n'
                        f'timeout = {timeout}\nresume = {str(resume).lower()}\n'
                        f'pretrained = "{self.root / "pretrained.pt"}"\nout-dir = "{self.root / out}"\n')
        return path

    def flwr_run(self, config: Path) -> list[str]:
        """The command line of `flwr run --stream` of this repository's app on this federation."""
        return [str(BIN / "flwr"), "run", str(REPO), "ossifl", "--stream", "--run-config", str(config)]


def script(processes: Processes, root: Path, name: str, *args: str) -> None:
    """Run one of the `deploy/` scripts to completion."""
    log = f"{Path(name).stem}-{Path(args[-1]).name}"
    result = processes.run(log, [sys.executable, str(REPO / "deploy" / name), *args], root, timeout=120)
    assert result.returncode == 0, result.stdout


def prepare_sites(root: Path, sites: Sites, data: SiteData = SiteData()) -> None:
    """Phantom hospitals, each with its own copy of the pretrained model and a node config; the coordinator's copy."""
    torch.manual_seed(0)
    model = TJNet(TJNetConfig(image_size=data.image_size, width=data.width))
    save_checkpoint(root / "pretrained.pt", model, describe(model))
    for name, (preset, unit, site_id) in sites.items():
        generate_site(preset, data.images, root / "data" / name, seed=site_id, image_size=data.image_size)
        shutil.copy(root / "pretrained.pt", root / "data" / f"{name}-pretrained.pt")
        (root / f"{name}.toml").write_text(
            f'data-path = "{root / "data" / name}"\nlabel-unit = "{unit}"\nsite-id = {site_id}\ndevice = "cpu"\n'
            f'state-dir = "{root / "state" / name}"\npretrained = "{root / "data" / f"{name}-pretrained.pt"}"\n')


def start_federation(root: Path, processes: Processes, sites: Sites, data: SiteData = SiteData(),
                     extra_keys: tuple[str, ...] = (), database: bool = False,
                     site_env: dict[str, dict[str, str]] | None = None,
                     site_argv: dict[str, Callable[[list[str]], list[str]]] | None = None) -> Federation:
    """Sites, certificates, keys (one per site and per `extra_keys`), a TLS SuperLink with SuperNode
    authentication (keeping its state in `root/superlink.db` if `database`), and one connected SuperNode per site
    (`site_env[name]` added to that SuperNode's environment, its command line passed through `site_argv[name]`)."""
    prepare_sites(root, sites, data)
    script(processes, root, "make_certs.py", "--out", str(root / "certs"))
    for key in (*sites, *extra_keys):
        script(processes, root, "make_site_keys.py", "--out", str(root / "keys"), "--name", key)
    port, certs = free_port(), root / "certs"
    argv = [str(BIN / "flower-superlink"), "--ssl-ca-certfile", str(certs / "ca.crt"),
            "--ssl-certfile", str(certs / "server.pem"), "--ssl-keyfile", str(certs / "server.key"),
            "--enable-supernode-auth", "--disable-runtime-dependency-installation",
            "--host", "127.0.0.1", "--port", str(port)]
    fed = Federation(root, port, processes, argv + (["--database", str(root / "superlink.db")] if database else []))
    fed.start_superlink()
    (root / "home-cli").mkdir()
    (root / "home-cli" / "config.toml").write_text(
        f'[superlink]\ndefault = "ossifl"\n\n[superlink.ossifl]\naddress = "127.0.0.1:{port}"\n'
        f'root-certificates = "{certs / "ca.crt"}"\n')
    for name in sites:
        fed.flwr(f"register-{name}", "supernode", "register", str(root / "keys" / f"{name}.pub"), "ossifl")
        argv = fed.supernode(name, key=name)
        processes.start(name, (site_argv or {}).get(name, list)(argv), root / f"home-{name}",
                        extra_env=(site_env or {}).get(name))
    for name in sites:
        processes.wait_until(lambda: "SuperNode ID" in processes.log(name), CONNECT_S, f"{name} to connect")
    return fed


@contextmanager
def running_federation(root: Path, sites: Sites, data: SiteData = SiteData(), **options) -> Iterator[Federation]:
    """`start_federation` in `root` (process logs in `root/logs`); on exit every process it started is stopped,
    and checked gone."""
    (root / "logs").mkdir()
    processes = Processes(root / "logs")
    try:
        yield start_federation(root, processes, sites, data, **options)
    finally:
        processes.stop_all()
        assert not processes.ours(), "processes survived the teardown"


def metric_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a run's metrics.csv (none if it does not exist yet)."""
    if not path.exists():
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))
