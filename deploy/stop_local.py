"""Stop the local SuperLink that `flwr run .` started for this user's Flower home, and what it started.

    python deploy/stop_local.py [--flwr-home DIR] [--dry-run]

With a local connection (no address in the federation's config), `flwr run` starts a detached
`flower-superlink --simulation` that keeps running after the run, with its SuperExec (and, after a
run, an unreaped child). This finds exactly that SuperLink: a process of the current user whose
command line is `flower-superlink ... --log-file <FLWR_HOME>/local-superlink/superlink.log`, the
file Flower gives the SuperLink it manages for that Flower home (default `~/.flwr`, or `$FLWR_HOME`).
It stops it and its descendants: SIGTERM, then SIGKILL after `--grace` seconds. SuperLinks of
other users or of other Flower homes are left alone (unlike `pkill -f flower-superlink`). Linux only.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from pathlib import Path

logger = logging.getLogger("ossifl.deploy")

LOG_FILE = Path("local-superlink") / "superlink.log"  # relative to FLWR_HOME (flwr/cli/local_superlink.py)


def flwr_home(explicit: Path | None = None) -> Path:
    """The Flower home as flwr resolves it: the option, else $FLWR_HOME, else ~/.flwr."""
    return explicit or Path(os.environ.get("FLWR_HOME") or Path.home() / ".flwr")


def _processes() -> dict[int, tuple[int, list[str]]]:
    """Parent and argv of every live process of the current user."""
    found: dict[int, tuple[int, list[str]]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid != os.getuid():
                continue
            state, parent = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:2]
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except (OSError, ValueError):
            continue
        if state != "Z":
            found[int(entry.name)] = (int(parent), [a for a in argv if a])
    return found


def _log_file_of(argv: list[str]) -> Path | None:
    for index, arg in enumerate(argv[:-1]):
        if arg == "--log-file":
            return Path(argv[index + 1]).resolve()
        if arg.startswith("--log-file="):
            return Path(arg.split("=", 1)[1]).resolve()
    return None


def local_superlink_tree(home: Path) -> dict[int, list[str]]:
    """The local SuperLink(s) of `home` and all their descendants, pid -> argv."""
    processes = _processes()
    wanted = (home / LOG_FILE).resolve()
    roots = {pid for pid, (_, argv) in processes.items()
             if any(Path(a).name == "flower-superlink" for a in argv[:2]) and _log_file_of(argv) == wanted}
    tree = set(roots)
    grew = True
    while grew:
        children = {pid for pid, (parent, _) in processes.items() if parent in tree} - tree
        tree |= children
        grew = bool(children)
    return {pid: processes[pid][1] for pid in sorted(tree)}


def stop(tree: dict[int, list[str]], grace: float) -> list[int]:
    """SIGTERM every process of `tree`, SIGKILL those still alive after `grace` seconds; the pids that were left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in tree:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and set(tree) & set(_processes()):
            time.sleep(0.2)
        if not set(tree) & set(_processes()):
            return []
    return sorted(set(tree) & set(_processes()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flwr-home", type=Path, default=None, help="Flower home (default: $FLWR_HOME or ~/.flwr)")
    parser.add_argument("--dry-run", action="store_true", help="list what would be stopped")
    parser.add_argument("--grace", type=float, default=10.0, help="seconds between SIGTERM and SIGKILL")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if not sys.platform.startswith("linux"):
        print("error: stop_local reads /proc and runs on Linux only", file=sys.stderr)
        return 2
    home = flwr_home(args.flwr_home)
    tree = local_superlink_tree(home)
    if not tree:
        logger.info("no local SuperLink of Flower home %s is running", home)
        return 0
    for pid, command in tree.items():
        logger.info("%s %d: %s", "would stop" if args.dry_run else "stopping", pid, " ".join(command)[:160])
    if args.dry_run:
        return 0
    left = stop(tree, args.grace)
    if left:
        print(f"error: processes {left} survived SIGKILL", file=sys.stderr)
        return 1
    logger.info("stopped %d process(es) of the local SuperLink of %s", len(tree), home)
    return 0


if __name__ == "__main__":
    sys.exit(main())
