"""`client finetune --compare` with the model's preprocessing against without: the cost of preprocessing once.

Usage:
    python -m bench.bench_finetune_once [--n 60] [--src-size 768] [--folds 3] [--specs 1-3,none] [--epochs 1]
    python -m bench.bench_finetune_once --data /path/to/site     # a real site (RSNA layout)

Two checkpoints with the same weights (a seeded, untrained TJ-Net at --image-size): one records the default
preprocessing (`PreprocessConfig()`: orientation model, decollimation, CLAHE), the other none. Each runs the whole
comparison (`compare_freeze_specs`, every fold of every spec) in this process, one after the other, so the ratio
is measured under one load. With each image preprocessed once per command (`core/data/pool.py`) the difference
is one pass of preprocessing over the site, printed beside it; before, every fold of every spec preprocessed its
images again, about 2 + specs x (folds - 1) passes, which the last line estimates from the measured pass.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import torch

from core.checkpoint import describe, save_checkpoint
from core.data import SiteDataConfig
from core.data.pool import DecodedPool
from core.model.config import TJNetConfig
from core.model.freeze import parse_freeze_spec_list
from core.preprocess import PreprocessConfig
from core.site_finetune import FinetuneConfig, compare_freeze_specs
from sim.phantom.writer import generate_site

logger = logging.getLogger("bench_finetune_once")


def checkpoints(root: Path, image_size: int) -> tuple[Path, Path]:
    from core.model.tjnet import TJNet

    torch.manual_seed(0)
    model = TJNet(TJNetConfig(image_size=image_size, width=0.5))
    plain = save_checkpoint(root / "plain.pt", model, describe(model))
    preprocessed = save_checkpoint(root / "preprocessed.pt", model,
                                   describe(model, preprocess=PreprocessConfig().resolved().to_dict()))
    return plain, preprocessed


def timed(label: str, work) -> float:
    start = time.perf_counter()
    work()
    seconds = time.perf_counter() - start
    logger.info("%s: %.1f s", label, seconds)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="a site folder (default: a phantom site written to a temp folder)")
    parser.add_argument("--n", type=int, default=60, help="phantom images")
    parser.add_argument("--src-size", type=int, default=768, help="phantom image side (full-size films: 2000+)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--specs", default="1-3,none")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2, help="alternated runs of each; the fastest is kept")
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
        pool = DecodedPool(data, args.image_size, PreprocessConfig().resolved())  # also warms the orientation model
        one_pass = timed("one preprocessing pass over the site",
                         lambda: DecodedPool(data, args.image_size, PreprocessConfig().resolved()))
        runs: dict[str, list[float]] = {"without": [], "with": []}
        sizes = {}
        for _ in range(args.repeats):  # alternated, so both see the same load; the fastest of each is kept
            for name, model in (("without", plain), ("with", preprocessed)):
                results: list = []
                runs[name].append(timed(f"finetune --compare {name} preprocessing",
                                        lambda: results.extend(compare_freeze_specs(model, data, config, specs))))
                sizes[name] = results[0].metrics["n"]
        without, with_pre = min(runs["without"]), min(runs["with"])
    passes = 2 + len(specs) * (args.folds - 1)
    print(f"site: {data.root if args.data else f'{args.n} phantom films at {args.src_size} px'}; {args.folds} folds, "
          f"specs {', '.join(specs)}, {args.epochs} epoch(s), {args.image_size} px model, {args.threads} thread(s)")
    print(f"with preprocessing {with_pre:.1f} s ({sizes['with']} images kept by the quality gate), without "
          f"{without:.1f} s ({sizes['without']} images): ratio {with_pre / without:.2f}; one preprocessing pass "
          f"{one_pass:.1f} s ({len(pool.records)} kept)")
    print(f"preprocessing per fold and spec, as before, would have added about {passes - 1} more passes "
          f"(~{(passes - 1) * one_pass:.0f} s, estimated from the measured pass)")


if __name__ == "__main__":
    main()
