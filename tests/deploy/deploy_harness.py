"""Start Flower's deployment processes on loopback and make sure none outlives a test.

Every process is started in its own session with a marker in its environment. Teardown kills the
process groups of everything started, of their descendants (the SuperLink starts its SuperExec in a
separate session) and of any process still carrying the marker (orphans re-parented to init). If the
test process itself is killed, the processes it started get SIGTERM from the kernel (PR_SET_PDEATHSIG)
and Flower's helpers exit with their parents.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]
MARKER_KEY = "OSSIFL_DEPLOY_TEST"
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM it when the test process dies, even by SIGKILL."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.3)


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def live_processes() -> dict[int, tuple[int, int]]:
    """Parent and process group of every live (not zombie) process."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                state, parent, group = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:3]
            except (OSError, ValueError):
                continue
            if state != "Z":
                found[int(entry.name)] = (int(parent), int(group))
    return found


def process_tree(root: int) -> set[int]:
    """`root` and all its live descendants."""
    processes = live_processes()
    tree, grew = {root} & set(processes), True
    while grew:
        children = {pid for pid, (parent, _) in processes.items() if parent in tree} - tree
        tree |= children
        grew = bool(children)
    return tree


def named_in_tree(root: int, name: str) -> list[int]:
    """Live processes under `root` (included) whose command line contains `name`."""
    found = []
    for pid in process_tree(root):
        try:
            if name.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except OSError:
            continue
    return found


def kill_tree(root: int) -> None:
    """SIGKILL `root` and all its descendants, as a power cut or the OOM killer would: stopped first, so that none
    starts a child that would escape as an orphan."""
    stopped: set[int] = set()
    while tree := process_tree(root) - stopped:
        for pid in tree:
            _signal(pid, signal.SIGSTOP)
        stopped |= tree
    for pid in stopped:
        _signal(pid, signal.SIGKILL)


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def group_alive(group: int) -> bool:
    return any(g == group for _, g in live_processes().values())


def _has_marker(pid: int, marker: bytes) -> bool:
    try:
        return marker in Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False


class Processes:
    """The processes of one test federation, with their logs in `log_dir`."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.marker = uuid.uuid4().hex
        self.started: dict[str, subprocess.Popen] = {}

    def env(self, flwr_home: Path) -> dict[str, str]:
        return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "FLWR_HOME": str(flwr_home),
                "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "PYTHONUNBUFFERED": "1",
                MARKER_KEY: self.marker}

    def start(self, name: str, argv: list[str], flwr_home: Path,
              extra_env: dict[str, str] | None = None) -> subprocess.Popen:
        flwr_home.mkdir(parents=True, exist_ok=True)
        with open(self.log_dir / f"{name}.log", "wb") as log:
            process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       env={**self.env(flwr_home), **(extra_env or {})}, cwd=self.log_dir,
                                       start_new_session=True,
                                       preexec_fn=_die_with_parent)
        self.started[name] = process
        return process

    def run(self, name: str, argv: list[str], flwr_home: Path, timeout: float) -> subprocess.CompletedProcess:
        """Run a command to completion (killed with its group on timeout); output goes to `<name>.log`."""
        process = self.start(name, argv, flwr_home)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._signal_group(process.pid, signal.SIGKILL)
            process.wait()
        return subprocess.CompletedProcess(argv, process.returncode, self.log(name), "")

    def wait_until(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        """`wait_until`, failing with the end of every log."""
        try:
            wait_until(condition, timeout, what)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n{self.tails()}") from None

    def wait(self, name: str, timeout: float) -> int:
        """Wait for the process `name` to exit; fail with the end of every log if it outlives `timeout` seconds."""
        try:
            return self.started[name].wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{name} still running after {timeout:.0f} s\n{self.tails()}") from None

    def log(self, name: str) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def tails(self, lines: int = 40) -> str:
        """The end of every log, to explain a failure."""
        return "\n".join(f"--- {name} ---\n" + "\n".join(self.log(name).splitlines()[-lines:])
                         for name in self.started)

    def ours(self) -> set[int]:
        """Live processes started here: their descendants and anything carrying the marker."""
        parents = {pid: parent for pid, (parent, _) in live_processes().items()}
        found = {p.pid for p in self.started.values() if p.poll() is None and p.pid in parents}
        marker = f"{MARKER_KEY}={self.marker}".encode()
        found |= {pid for pid in parents if pid != os.getpid() and _has_marker(pid, marker)}
        grew = True
        while grew:
            children = {pid for pid, parent in parents.items() if parent in found} - found
            found |= children
            grew = bool(children)
        return found

    def command_lines(self) -> list[str]:
        """Command lines of our live processes."""
        lines = []
        for pid in self.ours():
            try:
                lines.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
            except OSError:
                continue
        return lines

    def stop_all(self, grace: float = 5.0) -> None:
        """SIGTERM every process group of ours, SIGKILL what is left after `grace` seconds."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in self.ours():
                self._signal_group(pid, sig)
            deadline = time.monotonic() + grace
            while self.ours() and time.monotonic() < deadline:
                for process in self.started.values():
                    process.poll()
                time.sleep(0.2)
        for process in self.started.values():
            process.wait(timeout=grace)

    @staticmethod
    def _signal_group(pid: int, sig: signal.Signals) -> None:
        try:
            os.killpg(os.getpgid(pid), sig)
        except (ProcessLookupError, PermissionError):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
