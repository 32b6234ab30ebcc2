"""`deploy/stop_local.py` stops the local SuperLink of one Flower home and what it started, and nothing else:
two SuperLinks started as `flwr run` starts its local one, each with its own Flower home; one is stopped."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from deploy_harness import BIN, REPO, Processes, free_port, live_processes, port_open, process_tree, wait_until

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process tracking reads /proc")


def _local_superlink(home: Path) -> list[str]:
    """The command line flwr 1.41 uses for its managed local SuperLink (flwr/cli/local_superlink.py), on free ports."""
    return [str(BIN / "flower-superlink"), "--insecure", "--simulation", "--isolation", "subprocess",
            "--control-api-address", f"127.0.0.1:{free_port()}", "--fleet-api-address", f"127.0.0.1:{free_port()}",
            "--host", "127.0.0.1", "--port", str(free_port()),
            "--log-file", str(home / "local-superlink" / "superlink.log"), "--database", str(home / "state.db")]


def test_stops_exactly_the_local_superlink_of_one_flower_home(tmp_path: Path) -> None:
    processes = Processes(tmp_path)
    try:
        homes = {name: tmp_path / name for name in ("mine", "colleague")}
        for name, home in homes.items():
            (home / "local-superlink").mkdir(parents=True)
            processes.start(name, _local_superlink(home), home)
        ports = {name: int(processes.started[name].args[processes.started[name].args.index("--port") + 1])
                 for name in homes}
        for name, port in ports.items():
            wait_until(lambda: port_open(port), 60, f"the {name} SuperLink to listen")
        mine, colleague = (processes.started[name].pid for name in homes)
        wait_until(lambda: len(process_tree(mine)) > 1, 60, "the SuperLink to start its SuperExec")
        mine_tree, colleague_tree = process_tree(mine), process_tree(colleague)

        listed = subprocess.run([sys.executable, str(REPO / "deploy" / "stop_local.py"), "--flwr-home",
                                 str(homes["mine"]), "--dry-run"], capture_output=True, text=True, timeout=60)
        assert listed.returncode == 0 and process_tree(mine) == mine_tree
        assert {int(line.split()[3].rstrip(":")) for line in listed.stderr.splitlines() if "would stop" in line} \
            == mine_tree, listed.stderr

        result = subprocess.run([sys.executable, str(REPO / "deploy" / "stop_local.py"), "--flwr-home",
                                 str(homes["mine"]), "--grace", "5"], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        wait_until(lambda: not (mine_tree & set(live_processes())), 15, "the stopped processes to be gone")
        assert process_tree(colleague) == colleague_tree, "another Flower home's SuperLink was touched"
        assert port_open(ports["colleague"])

        again = subprocess.run([sys.executable, str(REPO / "deploy" / "stop_local.py"), "--flwr-home",
                                str(homes["mine"])], capture_output=True, text=True, timeout=60)
        assert again.returncode == 0 and "no local SuperLink" in again.stderr
    finally:
        processes.stop_all()
        assert not processes.ours(), "processes survived the teardown"
