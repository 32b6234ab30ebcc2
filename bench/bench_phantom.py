"""Throughput of the hand-radiograph phantom on one core: images/s per preset, in memory and to disk.

Run: ``PYTHONPATH=. OMP_NUM_THREADS=1 python bench/bench_phantom.py [--size 256] [--n 300]``. Target: >= 200 images/s
in memory at 256 px. Numbers depend on the machine and its load; the first image of each preset is a
warm-up and is not timed.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import sys
import time
from pathlib import Path

from sim.phantom.profiles import PRESETS
from sim.phantom.synth import synthesize
from sim.phantom.writer import generate_site

logger = logging.getLogger("bench_phantom")


def images_per_second(preset: str, size: int, n: int) -> tuple[float, float]:
    """In-memory rate of ``synthesize`` (wall clock, and CPU time of this process)."""
    profile = PRESETS[preset].with_image_size(size)
    synthesize(profile, 0, n)
    wall, cpu = time.perf_counter(), time.process_time()
    for index in range(n):
        synthesize(profile, 0, index)
    return n / (time.perf_counter() - wall), n / (time.process_time() - cpu)


def written_per_second(preset: str, size: int, n: int) -> float:
    """End-to-end rate of ``generate_site`` (render, encode PNG/DICOM and mask, CSVs) into a temp folder."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        generate_site(preset, n, Path(tmp) / preset, seed=0, image_size=size)
        return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", "--size", dest="size", type=int, default=256)
    parser.add_argument("--n", type=int, default=300)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    logging.getLogger("sim").setLevel(logging.WARNING)
    logger.info("%-14s %10s %10s %10s", "preset", "wall img/s", "cpu img/s", "disk img/s")
    for preset in PRESETS:
        wall, cpu = images_per_second(preset, args.size, args.n)
        disk = written_per_second(preset, args.size, args.n)
        logger.info("%-14s %10.0f %10.0f %10.0f", preset, wall, cpu, disk)


if __name__ == "__main__":
    main()
