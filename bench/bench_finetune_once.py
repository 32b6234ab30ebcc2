"""`client finetune --compare` with the model's preprocessing against without: the cost of preprocessing once.

Usage:
    python -m bench.bench_finetune_once [--n 60] [--src-size 768] [--folds 3] [--specs 1-3,none] [--epochs 1]
    python -m bench.bench_finetune_once --data /path/to/site     # a real site (RSNA layout)

Two checkpoints with the same weights (a seeded, untrained TJ-Net at --image-size): one records the default
preprocessing (`PreprocessConfig()`: orientation model, decollimation, CLAHE), the other none. The whole comparison
(`compare_freeze_specs`, every fold of every spec) runs three ways in this process, one after the other: without
preprocessing; with it, each image preprocessed once (`core/data/pool.py`, what the command does); and with it
preprocessed again for every dataset of every fold and spec, as before issue 26 (about 2 + specs x (folds - 1)
passes). Wall and CPU seconds are printed; on a loaded machine compare the CPU seconds.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import torch

from core.checkpoint import describe, save_checkpoint
from core.data import BoneAgeDataset, SiteDataConfig
from core.data.pool import DecodedPool
from core.model.config import TJNetConfig
from core.model.freeze import parse_freeze_spec_list
from core.preprocess import PreprocessConfig
from core.stages.freeze_compare import compare_freeze_specs
from core.stages.site_finetune import FinetuneConfig
from sim.phantom.writer import generate_site
from core.cli import add_shared_options

logger = logging.getLogger("bench_finetune_once")


def checkpoints(root: Path, image_size: int) -> tuple[Path, Path]:
    from core.model.tjnet import TJNet

    torch.manual_seed(0)
    model = TJNet(TJNetConfig(image_size=image_size, width=0.5))
    plain = save_checkpoint(root / "plain.pt", model, describe(model))
    preprocessed = save_checkpoint(root / "preprocessed.pt", model,
                                   describe(model, preprocess=PreprocessConfig().resolved().to_dict()))
    return plain, preprocessed


class DecodingEveryTime(DecodedPool):
    """The behaviour before issue 26: every dataset of every fold and spec read and preprocessed its images again."""

    def __init__(self, data: SiteDataConfig, image_size: int, preprocess: PreprocessConfig | None) -> None:
        super().__init__(data, image_size, preprocess)  # the site load that used to come first
        self.preprocess = preprocess

    def dataset(self, records, augment=None, seed=0, skipped=None) -> BoneAgeDataset:
        return BoneAgeDataset(list(records), self.image_size, augment, seed, preprocess=self.preprocess)


def timed(label: str, work) -> tuple[float, float]:
    """(wall, CPU) seconds of `work`; CPU time is this process's, which the machine's load does not inflate."""
    wall, cpu = time.perf_counter(), time.process_time()
    work()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    logger.info("%s: %.1f s wall, %.1f s CPU", label, wall, cpu)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="a site folder (default: a phantom site written to a temp folder)")
    parser.add_argument("--n", type=int, default=60, help="phantom images")
    parser.add_argument("--src-size", type=int, default=768, help="phantom image side (full-size films: 2000+)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--specs", default="1-3,none")
    parser.add_argument("--epochs", type=int, default=1)
    add_shared_options(parser, "threads", threads_default=1)
    parser.add_argument("--repeats", type=int, default=1, help="alternated runs of each; the fastest is kept")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("core").setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    specs = parse_freeze_spec_list(args.specs)
    config = FinetuneConfig(epochs=args.epochs, folds=args.folds, device="cpu", progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder = args.data or generate_site("rsna", args.n, root / "site", seed=7, image_size=args.src_size)
        data = SiteDataConfig(folder)
        plain, preprocessed = checkpoints(root, args.image_size)
        pre = PreprocessConfig().resolved()
        pool = DecodedPool(data, args.image_size, pre)  # also warms the orientation model
        one_pass = timed("one preprocessing pass over the site", lambda: DecodedPool(data, args.image_size, pre))
        variants = {"without preprocessing": lambda: compare_freeze_specs(plain, data, config, specs),
                    "with preprocessing, once": lambda: compare_freeze_specs(preprocessed, data, config, specs),
                    "with preprocessing, every fold and spec (before)": lambda: compare_freeze_specs(
                        preprocessed, data, config, specs, DecodingEveryTime(data, args.image_size, pre))}
        variants["without preprocessing"]()  # warm-up: torch's first passes are slower
        runs: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
        for _ in range(args.repeats):  # alternated, so all see the same load; the fastest of each is kept
            for name, work in variants.items():
                runs[name].append(timed(f"finetune --compare {name}", work))
    passes = 2 + len(specs) * (args.folds - 1)
    print(f"site: {data.root if args.data else f'{args.n} phantom films at {args.src_size} px'}; {args.folds} folds, "
          f"specs {', '.join(specs)}, {args.epochs} epoch(s), {args.image_size} px model, {args.threads} thread(s)")
    print(f"one preprocessing pass: {one_pass[0]:.1f} s wall, {one_pass[1]:.1f} s CPU ({len(pool.records)} of the "
          f"images kept by the quality gate); before, a comparison made about {passes} passes")
    base = min(runs["without preprocessing"], key=lambda r: r[1])
    for name, results in runs.items():
        wall, cpu = min(results, key=lambda r: r[1])
        print(f"{name:>50}: {wall:6.1f} s wall, {cpu:6.1f} s CPU, CPU ratio to without {cpu / base[1]:.2f}")


if __name__ == "__main__":
    main()
