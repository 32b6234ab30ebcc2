"""Speed of `python -m client predict` as a user runs it: start-up, images/s for a folder, what --report adds.

Run: ``PYTHONPATH=. python bench/bench_predict.py [--n 64] [--size 1024] [--threads 2] [--repeats 3]``.
Each figure is the median over ``--repeats`` runs of the real command in a fresh process (wall clock):

- start-up: one image, from launching Python to the result (imports, checkpoint, decode, one forward pass);
  CPU seconds (user + system of the process) are printed beside wall seconds: they depend less on load;
- folder rate: (n - 1) / (time for the folder - time for one image), the steady images/s (per CPU second too);
- report: (time with ``--report --out`` - time without) / n, seconds per image for heat map and page.

The model is the default TJ-Net (128 px, width 0.5) with untrained weights (the cost does not depend on
them); the images are phantom radiographs saved as 8-bit PNG at ``--size`` px (RSNA originals are about
1,500-2,000 px). Numbers depend on the machine and its load; the load average is printed with them.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from core.checkpoint import describe, save_checkpoint
from core.model.config import TJNetConfig
from core.model.tjnet import TJNet
from sim.phantom.writer import generate_site
from core.cli import add_shared_options

logger = logging.getLogger("bench_predict")


def timed(command: list[str], threads: int, repeats: int) -> tuple[float, float]:
    """Median wall-clock and CPU seconds (user + system) of `command` over `repeats` runs."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=os.getcwd())
    walls, cpus = [], []
    for _ in range(repeats):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        walls.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64, help="images in the folder")
    parser.add_argument("--image-size", "--size", dest="size", type=int, default=1024, help="side of the phantom images in pixels")
    add_shared_options(parser, "threads", threads_default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    logging.getLogger("sim").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        site = generate_site("rsna", args.n, root / "site", seed=0, image_size=args.size)
        torch.manual_seed(0)
        model = TJNet(TJNetConfig())
        checkpoint = save_checkpoint(root / "model.pt", model, describe(model))
        images = sorted((site / "images").glob("*.png"))
        base = [sys.executable, "-m", "client", "predict", "--model", str(checkpoint), "--sex", "F", "--no-progress",
                "--threads", str(args.threads)]
        one = timed(base + [str(images[0])], args.threads, args.repeats)
        folder = timed(base + [str(site / "images")], args.threads, args.repeats)
        report = timed(base + ["--report", "--out", str(root / "out"), str(site / "images")], args.threads,
                       args.repeats)
    load = os.getloadavg()[0]
    logger.info("TJ-Net %d px, width %.2f; %d phantom PNGs of %d px; %d thread(s); load average %.1f",
                model.config.image_size, model.config.width, args.n, args.size, args.threads, load)
    logger.info("%-30s %10s %10s", "", "wall", "CPU")
    logger.info("%-30s %9.2fs %9.2fs", "start-up (one image)", *one)
    logger.info("%-30s %9.2fs %9.2fs", f"folder of {args.n} images", *folder)
    logger.info("%-30s %10.1f %10.1f", "images/s after start-up",
                *((args.n - 1) / (f - o) for f, o in zip(folder, one)))
    logger.info("%-30s %9.3fs %9.3fs", "--report adds, per image", *((r - f) / args.n for r, f in zip(report, folder)))

if __name__ == "__main__":
    main()
