"""Cost of `python -m sim` as the number of hospital sites grows, and of the default run.

Usage:
    OMP_NUM_THREADS=1 python -m bench.bench_sim_scaling [--sites 2,4,8] [--rounds 2] [--reps 2] [--quick]
    python -m bench.bench_sim_scaling --default --out /tmp/simdefault --cache /tmp/simcache_default

Scaling mode: for each site count, one reduced experiment (smoke-sized sites at 64 px, width 0.25, one freeze
spec) runs in a fresh child process through `sim.run.run_experiment` (site counts interleaved, --reps times,
medians reported; the federation stage is timed separately from the log); the phantom source, sites and pretrained
model are built once in a shared cache before timing. Wall time covers the whole experiment (baselines and the
federation in Flower's simulation engine); memory is sampled every 0.5 s over the child's whole process tree
(Ray's GCS, raylet and workers included) from /proc: the sum of resident set sizes (RSS, which counts shared
library pages once per process) and of proportional set sizes (PSS, which splits them fairly).

Default mode: runs `/usr/bin/time -v python -m sim --out OUT --cache CACHE` once, samples the process tree the
same way, and prints wall time, max RSS of the main process, peak tree RSS/PSS and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` from /proc (all threads' children files)."""
    kids: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as handle:
                kids += [int(c) for c in handle.read().split()]
    except OSError:
        pass
    return kids


def process_tree(root: int, marker: str | None = None) -> set[int]:
    """``root`` and all its descendants, plus any process whose command line contains ``marker``.

    The marker (a private RAY_TMPDIR) catches Ray daemons that were re-parented away from the tree.
    """
    found, stack = set(), [root]
    while stack:
        pid = stack.pop()
        if pid not in found:
            found.add(pid)
            stack += _children(pid)
    if marker:
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) not in found:
                try:
                    with open(f"/proc/{entry}/cmdline", "rb") as handle:
                        if marker.encode() in handle.read():
                            found.add(int(entry))
                except OSError:
                    continue
    return found


def memory_kb(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process in kB, (0, 0) when it is gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            text = handle.read()
        rss = int(re.search(r"^Rss:\s+(\d+)", text, re.M).group(1))
        pss = int(re.search(r"^Pss:\s+(\d+)", text, re.M).group(1))
        return rss, pss
    except (OSError, AttributeError):
        try:
            with open(f"/proc/{pid}/statm") as handle:
                rss = int(handle.read().split()[1]) * PAGE_KB
            return rss, rss
        except OSError:
            return 0, 0


@dataclass
class TreeSampler:
    """Samples the summed RSS/PSS of a process tree in a background thread; keeps the peaks."""

    root: int
    marker: str | None = None
    interval: float = 0.5
    peak_rss_kb: int = 0
    peak_pss_kb: int = 0
    peak_processes: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def sample(self) -> None:
        pids = process_tree(self.root, self.marker)
        totals = [memory_kb(p) for p in pids]
        self.peak_rss_kb = max(self.peak_rss_kb, sum(t[0] for t in totals))
        self.peak_pss_kb = max(self.peak_pss_kb, sum(t[1] for t in totals))
        self.peak_processes = max(self.peak_processes, sum(1 for t in totals if t[0]))

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> "TreeSampler":
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def _env(ray_tmp: str) -> dict[str, str]:
    return {**os.environ, "RAY_TMPDIR": ray_tmp, "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0", "PYTHONUNBUFFERED": "1"}


def _load() -> str:
    return "/".join(f"{v:.1f}" for v in os.getloadavg())


def run_default(out: Path, cache: Path, log: Path) -> dict:
    """`/usr/bin/time -v python -m sim` once, with process-tree sampling."""
    ray_tmp = tempfile.mkdtemp(prefix="ray_bench_default_", dir="/tmp")
    command = ["/usr/bin/time", "-v", sys.executable, "-m", "sim", "--out", str(out), "--cache", str(cache)]
    load_before = _load()
    started = time.perf_counter()
    with open(log, "w") as handle:
        child = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=_env(ray_tmp))
        with TreeSampler(child.pid, marker=ray_tmp, interval=1.0) as sampler:
            loads = []
            while child.poll() is None:
                time.sleep(5)
                loads.append(os.getloadavg()[0])
    wall = time.perf_counter() - started
    text = log.read_text()
    max_rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    result = {"returncode": child.returncode, "wall_s": round(wall, 1), "load_before": load_before,
              "load_after": _load(), "load1_mean": round(sum(loads) / max(len(loads), 1), 2),
              "main_max_rss_mb": int(max_rss.group(1)) / 1024 if max_rss else None,
              "tree_peak_rss_mb": sampler.peak_rss_kb / 1024, "tree_peak_pss_mb": sampler.peak_pss_kb / 1024,
              "tree_peak_processes": sampler.peak_processes,
              "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "unset")}
    print(json.dumps(result, indent=2))
    (out / "bench_default.json").write_text(json.dumps(result, indent=2))
    return result


_SCALING_CHILD = """
import json, logging, sys, time
logging.basicConfig(level=logging.INFO, format="%(created).3f %(name)s %(message)s")
from pathlib import Path
from sim.config import SiteSpec, preset
from sim.run import run_experiment
n, rounds, out, cache, prepare = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]), sys.argv[5] == "1"
names = ("tongji", "eu_clinic", "rural_cr", "peds_referral")
sites = tuple(SiteSpec(names[i % 4], 60) for i in range(n))
config = preset("smoke", sites=sites, rounds=rounds, freeze_specs=("1-3",), out_dir=out, cache_dir=cache)
if prepare:
    from sim.sites import prepare_sites, pretrained_model
    source, prepared = prepare_sites(config)
    pretrained_model(config, source)
else:
    start = time.perf_counter()
    run_experiment(config)
    print("BENCH_WALL", time.perf_counter() - start)
"""


def run_scaling(site_counts: list[int], rounds: int, root: Path, reps: int = 1) -> list[dict]:
    """Reduced experiments per site count, each in a fresh child process sampled as a tree; counts interleaved."""
    cache = root / "cache"
    # build every site and the pretrained model once, untimed (sites with the same preset share a seed stream
    # per index, so the largest count covers the smaller ones)
    subprocess.run([sys.executable, "-c", _SCALING_CHILD, str(max(site_counts)), str(rounds), str(root / "prep"),
                    str(cache), "1"], check=True, env=_env(tempfile.mkdtemp(dir="/tmp")), capture_output=True)
    results = []
    for n in [count for _ in range(reps) for count in site_counts]:
        ray_tmp = tempfile.mkdtemp(prefix="ray_bench_scaling_", dir="/tmp")
        load_before = _load()
        started = time.perf_counter()
        child = subprocess.Popen([sys.executable, "-c", _SCALING_CHILD, str(n), str(rounds), str(root / f"out{n}_{len(results)}"),
                                  str(cache), "0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 env=_env(ray_tmp), text=True)
        with TreeSampler(child.pid, marker=ray_tmp) as sampler:
            output, _ = child.communicate()
        wall = time.perf_counter() - started
        if child.returncode != 0:
            print(output[-3000:])
            raise RuntimeError(f"{n} sites: exit code {child.returncode}")
        inner = float(re.search(r"BENCH_WALL ([\d.]+)", output).group(1))
        stage = {m.group(2): float(m.group(1)) for m in re.finditer(r"^([\d.]+) ossifl.sim \[(\d)/5\]", output, re.M)}
        federation_s = stage["5"] - stage["4"] if "4" in stage and "5" in stage else float("nan")
        row = {"sites": n, "wall_s": round(wall, 1), "experiment_s": round(inner, 1),
               "federation_s": round(federation_s, 1),
               "peak_tree_rss_mb": round(sampler.peak_rss_kb / 1024), "peak_tree_pss_mb": round(sampler.peak_pss_kb / 1024),
               "peak_processes": sampler.peak_processes, "load_before": load_before, "load_after": _load()}
        results.append(row)
        print(json.dumps(row), flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--default", action="store_true", help="time the default `python -m sim` once")
    parser.add_argument("--out", type=Path, default=Path("/tmp/simdefault"))
    parser.add_argument("--cache", type=Path, default=Path("/tmp/simcache_default"))
    parser.add_argument("--sites", default="2,4,8")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--repeats", "--reps", dest="reps", type=int, default=1, help="runs per site count (interleaved); medians reported")
    parser.add_argument("--quick", action="store_true", help="2 sites, 1 round")
    args = parser.parse_args(argv)
    if args.default:
        args.out.mkdir(parents=True, exist_ok=True)
        run_default(args.out, args.cache, args.out / "sim_stdout.log")
        return 0
    counts = [2] if args.quick else [int(s) for s in args.sites.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench_sim_scaling_") as root:
        print(f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, load before {_load()}")
        runs = run_scaling(counts, 1 if args.quick else args.rounds, Path(root), 1 if args.quick else args.reps)
    rows = []
    for n in counts:
        mine = [r for r in runs if r["sites"] == n]
        row = {k: statistics.median(r[k] for r in mine) for k in ("experiment_s", "federation_s", "peak_tree_rss_mb",
                                                                   "peak_tree_pss_mb", "peak_processes")}
        rows.append({**row, "sites": n, "load_before": mine[0]["load_before"]})
    print("\n| sites | experiment wall s | of which federation s | peak tree RSS MB | peak tree PSS MB | processes "
          "| load 1/5/15 before first run |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['sites']} | {r['experiment_s']:.1f} | {r['federation_s']:.1f} | {r['peak_tree_rss_mb']:.0f} | "
              f"{r['peak_tree_pss_mb']:.0f} | {r['peak_processes']:.0f} | {r['load_before']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
