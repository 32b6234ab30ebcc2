"""The GPU fast path: bf16 autocast, channels-last, torch.compile, pinned memory, achieved vs peak FLOP/s.

Usage:
    python -m bench.bench_gpu [--size 500] [--width 1.0] [--batch 16] [--steps 20] [--quick]

Needs CUDA; without it the script prints one line and exits with status 0 (nothing to measure).

What it measures, each variant interleaved with the others and the median taken:
- a large bf16 matmul (8192 x 8192 by default): achieved TFLOP/s, and the ratio to the peak given with
  --peak-tflops (dense bf16 of the card, e.g. 989 for an H100 SXM) when given;
- TJ-Net training steps (forward, joint loss, backward, AdamW) at the paper's size by default, in images/s, for
  fp32, bf16 autocast, bf16 + channels-last, and bf16 + torch.compile (compile time reported separately);
  also their achieved TFLOP/s from the model's counted forward FLOPs (x3 for a training step);
- host-to-device copy of one batch from pageable vs pinned memory, with non_blocking=True.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import torch


def cuda_time(call: Callable[[], None]) -> float:
    """Seconds one call takes on the GPU (synchronised)."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    call()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def interleaved(variants: dict[str, Callable[[], None]], reps: int, warmup: int = 2) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in variants}
    for rep in range(warmup + reps):
        for name, call in variants.items():
            seconds = cuda_time(call)
            if rep >= warmup:
                times[name].append(seconds)
    return {name: statistics.median(values) for name, values in times.items()}


def matmul_tflops(n: int, reps: int) -> float:
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    seconds = interleaved({"mm": lambda: a @ b}, reps)["mm"]
    return 2 * n**3 / seconds / 1e12


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", "--size", dest="size", type=int, default=500)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--batch-size", "--batch", dest="batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per variant (median taken)")
    parser.add_argument("--matmul", type=int, default=8192)
    parser.add_argument("--peak-tflops", type=float, default=None, help="the card's dense bf16 peak, for the ratio")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    parser.add_argument("--quick", action="store_true", help="small model and matmul, 3 steps: a sanity run")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_gpu: no CUDA device available (torch %s); nothing to measure." % torch.__version__)
        return 0

    from bench.bench_model import count_flops
    from core.train.loss import make_loss
    from core.train.loss import JointLossConfig
    from core.model.config import TJNetConfig
    from core.model.tjnet import TJNet

    if args.quick:
        args.size, args.width, args.batch, args.steps, args.matmul = 128, 0.5, 8, 3, 2048
    device = torch.device("cuda")
    print(f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}; "
          f"TJ-Net {args.size} px width {args.width}, batch {args.batch}, {args.steps} steps")

    tflops = matmul_tflops(args.matmul, args.steps)
    ratio = f", {tflops / args.peak_tflops:.1%} of the given peak {args.peak_tflops}" if args.peak_tflops else ""
    print(f"bf16 matmul {args.matmul}^2: {tflops:.1f} TFLOP/s achieved{ratio}")

    gen = torch.Generator().manual_seed(0)
    image = torch.rand(args.batch, 1, args.size, args.size, generator=gen)
    male = torch.randint(0, 2, (args.batch,), generator=gen).float()
    age = torch.randint(1, 228, (args.batch,), generator=gen).float()
    flops_per_image = count_flops(TJNet(TJNetConfig(image_size=args.size, width=args.width)).eval(),
                                  (image[:1], male[:1]))

    def train_variant(bf16: bool, channels_last: bool, compiled: bool) -> Callable[[], None]:
        model = TJNet(TJNetConfig(image_size=args.size, width=args.width)).to(device)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        model = model.to(memory_format=memory_format)
        forward = torch.compile(model) if compiled else model
        loss_fn = make_loss(model, JointLossConfig())
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        x = image.to(device).contiguous(memory_format=memory_format)
        m, y = male.to(device), age.to(device)

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
                output = forward(x, m)
            loss_fn(output, y, m).total.backward()
            optimizer.step()

        return step

    variants = {"fp32": train_variant(False, False, False), "bf16": train_variant(True, False, False),
                "bf16 + channels-last": train_variant(True, True, False)}
    if not args.no_compile:
        compiled = train_variant(True, True, True)
        compile_s = cuda_time(compiled)  # the first call compiles
        print(f"torch.compile (bf16 + channels-last): first step {compile_s:.1f} s including compilation")
        variants["bf16 + channels-last + compile"] = compiled
    secs = interleaved(variants, args.steps)
    print("| variant | s/step | img/s | vs fp32 | achieved TFLOP/s (3x counted forward) |")
    print("|---|---|---|---|---|")
    for name, seconds in secs.items():
        achieved = 3 * flops_per_image * args.batch / seconds / 1e12
        print(f"| {name} | {seconds:.4f} | {args.batch / seconds:.1f} | {secs['fp32'] / seconds:.2f}x | "
              f"{achieved:.2f} |")

    pageable, pinned = image.clone(), image.clone().pin_memory()
    copies = interleaved({"pageable": lambda: pageable.to(device, non_blocking=True),
                          "pinned": lambda: pinned.to(device, non_blocking=True)}, args.steps)
    mb = image.numel() * image.element_size() / 1e6
    print(f"host-to-device copy of one batch ({mb:.1f} MB): pageable {copies['pageable'] * 1e3:.2f} ms, "
          f"pinned {copies['pinned'] * 1e3:.2f} ms ({copies['pageable'] / copies['pinned']:.2f}x)")
    print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
