"""Cost of DP-SGD: time per private training step over time per non-private step, TJ-Net on CPU.

Usage:
    python -m bench.bench_dp [--size 128] [--width 0.5] [--batch 32] [--steps 5] [--threads 1]

Both steps are what a site runs: forward, per-sample joint loss, backward, AdamW update; the
private one adds Opacus' per-sample gradients (hooks), flat clipping and Gaussian noise. Fixed
batches of `--batch` random images (no Poisson sampling, no accounting), private and non-private
steps alternated and medians taken, so both see the same load on a shared machine. Prints one
line per freeze setting.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable

import torch
from opacus import PrivacyEngine
from torch.utils.data import DataLoader, TensorDataset

from core.train.loss import JointLoss, JointLossConfig
from core.model.config import TJNetConfig
from core.model.freeze import freeze_blocks, parse_freeze_spec
from core.model.tjnet import TJNet
from core.train.training import TrainConfig, make_optimizer
from core.cli import add_shared_options


def make_step(model: TJNet, loss_fn: JointLoss, batch: tuple[torch.Tensor, ...], private: bool) -> Callable[[], None]:
    """One training step of `model` on `batch`, through Opacus when `private`."""
    optimizer = make_optimizer(model, TrainConfig())
    if private:
        loader = DataLoader(TensorDataset(*batch), batch_size=len(batch[0]))
        _, optimizer, _ = PrivacyEngine(accountant="rdp").make_private(
            module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=1.0, max_grad_norm=1.0,
            poisson_sampling=False, grad_sample_mode="hooks", wrap_model=False)
    image, male, age = batch
    model.train()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(image, male), age, male).total.backward()
        optimizer.step()

    return step


def median_seconds(steps: dict[bool, Callable[[], None]], repeats: int, warmup: int) -> dict[bool, float]:
    """Median seconds per step of each stepper, run alternately so both see the same machine load."""
    durations: dict[bool, list[float]] = {key: [] for key in steps}
    for repeat in range(warmup + repeats):
        for key, step in steps.items():
            start = time.perf_counter()
            step()
            if repeat >= warmup:
                durations[key].append(time.perf_counter() - start)
    return {key: statistics.median(values) for key, values in durations.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", "--size", dest="size", type=int, default=128)
    parser.add_argument("--width", type=float, default=0.5)
    parser.add_argument("--batch-size", "--batch", dest="batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    add_shared_options(parser, "threads", threads_default=1)
    parser.add_argument("--freeze", nargs="+", default=["1-3", "none"])
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="(Secure RNG|Full backward hook)")
    torch.set_num_threads(args.threads)
    config = TJNetConfig(image_size=args.size, width=args.width)
    generator = torch.Generator().manual_seed(0)
    batch = (torch.randn(args.batch, 1, args.size, args.size, generator=generator),
             (torch.rand(args.batch, generator=generator) > 0.5).float(),
             torch.rand(args.batch, generator=generator) * 220.0)
    loss_fn = JointLoss(config.num_classes, config.class_step_months, JointLossConfig(per_sample=True))
    print(f"TJ-Net {args.size} px, width {args.width}, batch {args.batch}, {args.threads} thread(s), "
          f"median of {args.steps} alternating steps after {args.warmup} warm-up")
    for spec in args.freeze:
        steppers = {}
        for private in (False, True):
            torch.manual_seed(0)
            model = TJNet(config)
            freeze_blocks(model, parse_freeze_spec(spec))
            steppers[private] = make_step(model, loss_fn, batch, private)
        seconds = median_seconds(steppers, args.steps, args.warmup)
        print(f"frozen {spec:>5}: non-private {seconds[False]:.3f} s/step, DP {seconds[True]:.3f} s/step, "
              f"ratio {seconds[True] / seconds[False]:.2f}x")


if __name__ == "__main__":
    main()
