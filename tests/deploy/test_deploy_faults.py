"""Faults in Flower's deployment engine on loopback (TLS, authenticated SuperNodes, as test_deploy_loopback):
three sites, two rounds. In round 1 one site's SuperNode is killed while its ClientApp trains, and another
site sends NaN in every round (its optimiser is sabotaged from outside the app, through a `sitecustomize` on
that SuperNode's PYTHONPATH: no fault hook exists in OssiFL's code). Flower notices the dead SuperNode when it
misses two heartbeats (30 s each in flwr 1.41) and answers for it with a "Node Unavailable" error; round 1 is
aggregated from the healthy site, the NaN update is rejected and recorded, the killed site's SuperNode is
started again with the same key once round 1 has ended (its key is refused while the dead session is still
counted as online) and trains again in round 2; the run ends with a finite model."""

from __future__ import annotations

import csv
import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest
import torch
from deploy_harness import BIN, REPO, Processes, free_port, port_open, process_tree, wait_until
from test_deploy_loopback import Federation, _prepare_sites, _script

from core.checkpoint import load_checkpoint

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process tracking reads /proc")

# site ids other than 1: Flower sends the "Node Unavailable" reply of a dead node as coming from node 1 (the SuperLink)
SITES = {"siteA": ("rsna", "months", 11), "siteB": ("tongji", "years", 12), "siteN": ("rsna", "months", 13)}
KILLED, POISONED = "siteB", "siteN"
# seconds the server waits for a round's replies (run config `timeout`); a reply later than this is dropped without
# a row in metrics.csv, which on the loaded 2-core machine happened to a healthy site at 60 s
REPLY_TIMEOUT = 240.0

SABOTAGE = '''"""Test-only fault: every AdamW step of this site's ClientApp leaves NaN weights."""
import math, os
if os.environ.get("OSSIFL_TEST_FAULT") == "nan":
    import torch
    _step = torch.optim.AdamW.step
    def _nan_step(self, *args, **kwargs):
        result = _step(self, *args, **kwargs)
        with torch.no_grad():
            for group in self.param_groups:
                for parameter in group["params"]:
                    parameter.fill_(math.nan)
        return result
    torch.optim.AdamW.step = _nan_step
'''


def _clientapp_running(root: int) -> bool:
    for pid in process_tree(root):
        try:
            if b"flwr-clientapp" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return True
        except OSError:
            continue
    return False


def _kill_tree(root: int) -> None:
    for pid in process_tree(root):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _start_federation(root: Path, processes: Processes, sites: dict[str, tuple[str, str, int]],
                      poisoned: str | None = None) -> Federation:
    """Sites, certificates, keys, a TLS SuperLink with SuperNode authentication and one SuperNode per site."""
    (root / "sabotage").mkdir()
    (root / "sabotage" / "sitecustomize.py").write_text(SABOTAGE)
    _prepare_sites(root, sites)
    _script(processes, root, "make_certs.py", "--out", str(root / "certs"))
    for key in sites:
        _script(processes, root, "make_site_keys.py", "--out", str(root / "keys"), "--name", key)
    port, certs = free_port(), root / "certs"
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
    poisoned_env = {"PYTHONPATH": os.pathsep.join([str(root / "sabotage"), os.environ.get("PYTHONPATH", "")]),
                    "OSSIFL_TEST_FAULT": "nan"}
    for name in sites:
        fed.flwr(f"register-{name}", "supernode", "register", str(root / "keys" / f"{name}.pub"), "ossifl")
        processes.start(name, fed.supernode(name, key=name), root / f"home-{name}",
                        extra_env=poisoned_env if name == poisoned else None)
    for name in sites:
        wait_until(lambda: "SuperNode ID" in processes.log(name), 60, f"{name} to connect")
    return fed


def _run_config(root: Path, out: str, rounds: int, resume: bool = False) -> Path:
    path = root / f"{out}-{'resume' if resume else 'run'}.toml"
    path.write_text(f'num-rounds = {rounds}\nmin-nodes = 2\nlocal-epochs = 1\nbatch-size = 8\n'
                    f'timeout = {REPLY_TIMEOUT}\nresume = {str(resume).lower()}\n'
                    f'pretrained = "{root / "pretrained.pt"}"\nout-dir = "{root / out}"\n')
    return path


def test_a_killed_supernode_and_a_nan_site_do_not_stop_the_federation(tmp_path: Path) -> None:
    root = tmp_path
    (root / "logs").mkdir()
    processes = Processes(root / "logs")
    started = time.monotonic()
    try:
        fed = _start_federation(root, processes, SITES, poisoned=POISONED)

        run = processes.start("flwr-run", [str(BIN / "flwr"), "run", str(REPO), "ossifl", "--stream",
                                           "--run-config", str(_run_config(root, "out", 2))], root / "home-cli")
        victim = processes.started[KILLED].pid
        wait_until(lambda: _clientapp_running(victim), 120, f"{KILLED}'s ClientApp to start training")
        time.sleep(1.0)
        _kill_tree(victim)  # the SuperNode, its SuperExec and the ClientApp, mid-round
        wait_until(lambda: not process_tree(victim), 15, f"{KILLED}'s processes to die")
        metrics = root / "out" / "metrics.csv"
        wait_until(lambda: metrics.exists() and any(r["phase"] == "train" for r in _rows(metrics)), 240,
                   "round 1 to end without the killed site")
        processes.start(f"{KILLED}-again", fed.supernode(KILLED, key=KILLED), root / f"home-{KILLED}")
        run.wait(timeout=420)
        logs = processes.tails()
        assert run.returncode == 0, logs
    finally:
        processes.stop_all()
        assert not processes.ours(), "processes survived the teardown"
    print(f"fault federation: {time.monotonic() - started:.0f} s", file=sys.stderr)  # for docs/deployment.md

    final = load_checkpoint(root / "out" / "federated_final.pt")
    assert all(torch.isfinite(v).all() for v in final.model.state_dict().values() if v.is_floating_point())
    assert load_checkpoint(root / "out" / "federated_latest.pt").metadata["round"] == 2
    rows = _rows(root / "out" / "metrics.csv")

    def train_status(round_: int, site: int) -> set[str]:
        return {r["status"] + ":" + r["reason"] for r in rows if r["phase"] == "train" and r["round"] == str(round_)
                and r["site"] == str(site)}

    healthy, killed, poisoned = (SITES[name][2] for name in ("siteA", KILLED, POISONED))
    assert all(train_status(n, healthy) == {"ok:"} for n in (1, 2)), rows
    assert all(any("non-finite values" in s for s in train_status(n, poisoned)) for n in (1, 2)), logs
    assert "ok:" not in train_status(1, killed)
    assert any("Node Unavailable" in r["reason"] for r in rows if r["round"] == "1" and r["phase"] == "train")
    assert train_status(2, killed) == {"ok:"}, (rows, logs)  # rejoined the next round
    audit = [json.loads(line) for line in (root / "state" / KILLED / "audit.jsonl").read_text().splitlines()]
    assert [e["round"] for e in audit if e["kind"] == "train"] == [2], audit  # nothing from the killed round


def _serverapps(superlink: int) -> list[int]:
    return [pid for pid in process_tree(superlink) if b"flwr-serverapp" in _cmdline(pid)]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


@pytest.mark.skipif(os.environ.get("OSSIFL_SLOW_DEPLOY_TESTS") != "1",
                    reason="four deployment rounds (about 10 min on the loaded 2-core machine): OSSIFL_SLOW_DEPLOY_TESTS=1")
def test_a_serverapp_killed_after_round_one_resumes_to_the_uninterrupted_model(tmp_path: Path) -> None:
    root = tmp_path
    (root / "logs").mkdir()
    processes = Processes(root / "logs")
    sites = {name: SITES[name] for name in ("siteA", KILLED)}
    started = time.monotonic()
    try:
        fed = _start_federation(root, processes, sites)
        fed.flwr("uninterrupted", "run", str(REPO), "ossifl", "--stream", "--run-config",
                 str(_run_config(root, "whole", 2)), timeout=420)
        superlink = processes.started["superlink"].pid
        interrupted = processes.start("interrupted", [str(BIN / "flwr"), "run", str(REPO), "ossifl", "--stream",
                                                      "--run-config", str(_run_config(root, "cut", 2))],
                                      root / "home-cli")
        latest = root / "cut" / "federated_latest.pt"
        wait_until(lambda: latest.exists(), 240, "the first round's checkpoint")
        serverapps = _serverapps(superlink)
        assert serverapps, "no flwr-serverapp process found"
        for pid in serverapps:
            _kill_tree(pid)  # the ServerApp dies after round 1
        interrupted.kill()  # the `flwr run --stream` of the dead ServerApp only streams its log
        interrupted.wait()
        assert load_checkpoint(latest).metadata["round"] == 1 and not (root / "cut" / "federated_final.pt").exists()
        fed.flwr("resumed", "run", str(REPO), "ossifl", "--stream", "--run-config",
                 str(_run_config(root, "cut", 2, resume=True)), timeout=420)
        logs = processes.tails()
    finally:
        processes.stop_all()
        assert not processes.ours(), "processes survived the teardown"
    print(f"resume federation: {time.monotonic() - started:.0f} s", file=sys.stderr)  # for docs/deployment.md

    whole = load_checkpoint(root / "whole" / "federated_final.pt").model.state_dict()
    resumed = load_checkpoint(root / "cut" / "federated_final.pt")
    assert resumed.metadata["round"] == 2, logs
    worst = max(float((whole[k].double() - v.double()).abs().max()) for k, v in resumed.model.state_dict().items()
                if v.is_floating_point())
    print(f"largest difference to the uninterrupted model: {worst:.3g}", file=sys.stderr)
    assert worst <= 1e-6, logs
