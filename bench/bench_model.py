"""TJ-Net cost on CPU: parameters, FLOPs, throughput, memory, and the CPU settings that matter.

Usage:
    python -m bench.bench_model [--reps 5] [--quick]

What it measures (random inputs, no data loader: `bench.bench_data` covers the data pipeline):
- parameters and forward FLOPs per image of TJ-Net at each `python -m sim` preset's size, and of the
  ResNet-50-style baseline (ResNetRegressor depth 50, width 1.0) at the default size. FLOPs are counted with
  forward hooks on Conv2d and Linear (2 x multiply-adds), cross-checked with torch.utils.flop_counter.
- training step (forward, loss, backward, AdamW) and inference throughput in images/s for both networks at the
  default size, in channels-last and standard layout; their ratio per GFLOP ("TJ-Net seconds per GFLOP /
  ResNet-50-style seconds per GFLOP").
- peak memory: growth of the kernel's peak resident set size (VmHWM, reset through /proc/self/clear_refs) over
  the RSS after model and inputs are built, for one inference pass and for two training steps, in a fresh child
  process per network (so allocator caches of one network do not hide the other's).
- torch.set_num_threads 1 vs 2, torch.inference_mode vs torch.no_grad, training batch 16/32/64, input side 64/96/128.

The machine is shared: variants are interleaved round-robin within one process, and medians are reported with
the load average they ran under; in each turn a variant runs one untimed call before its timed one. Compare
ratios, not absolute images/s, across runs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
from torch import nn

from core.train.loss import make_loss
from core.train.loss import JointLossConfig
from core.model.baseline import ResNetConfig, ResNetRegressor
from core.model.config import TJNetConfig
from core.model.tjnet import TJNet
from core.cli import add_shared_options

PRESET_SIZES = {"smoke": (64, 0.25), "default": (96, 0.5), "paper": (500, 1.0)}
DEFAULT_SIZE, DEFAULT_WIDTH = PRESET_SIZES["default"]


def count_flops(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> int:
    """Forward FLOPs (2 x multiply-adds) of the Conv2d and Linear layers for one call on `inputs`.

    Conv2d: 2 * output elements * (in_channels / groups) * kernel area; Linear: 2 * rows * in * out.
    Bias additions, normalisation, activations, pooling and attention gating are not counted.
    """
    total = 0

    def conv_hook(module: nn.Conv2d, args: tuple, output: torch.Tensor) -> None:
        nonlocal total
        kh, kw = module.kernel_size
        total += 2 * output.numel() * (module.in_channels // module.groups) * kh * kw

    def linear_hook(module: nn.Linear, args: tuple, output: torch.Tensor) -> None:
        nonlocal total
        total += 2 * output.numel() * module.in_features

    handles = []
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(conv_hook))
        elif isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(linear_hook))
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    return total


def flop_counter_mode(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> int | None:
    """The same count from torch.utils.flop_counter (None when it fails on this build)."""
    try:
        from torch.utils.flop_counter import FlopCounterMode

        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(*inputs)
        return int(counter.get_total_flops())
    except Exception:  # noqa: BLE001 - report the cross-check as unavailable, not crash the bench
        return None


def build(kind: str, size: int = DEFAULT_SIZE, width: float = DEFAULT_WIDTH) -> nn.Module:
    if kind == "tjnet":
        return TJNet(TJNetConfig(image_size=size, width=width))
    if kind == "resnet50":
        return ResNetRegressor(ResNetConfig(image_size=size, width=1.0, depth=50))
    raise ValueError(kind)


def batch(n: int, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(n, 1, size, size, generator=gen)
    male = torch.randint(0, 2, (n,), generator=gen).float()
    age = torch.randint(1, 228, (n,), generator=gen).float()
    return image, male, age


def train_step_fn(model: nn.Module, n: int, size: int, channels_last: bool = True) -> Callable[[], None]:
    """One full training step (forward, loss, backward, AdamW) on a fixed random batch, in the layout the
    training loops use (channels-last, `core.train.training.channels_last_layout`) or the standard one."""
    model.train()
    loss_fn = make_loss(model, JointLossConfig())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    image, male, age = batch(n, size)
    if channels_last:
        model.to(memory_format=torch.channels_last)
        image = image.contiguous(memory_format=torch.channels_last)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(image, male), age, male).total.backward()
        optimizer.step()

    return step


def infer_fn(model: nn.Module, n: int, size: int, mode: str = "inference",
             channels_last: bool = True) -> Callable[[], None]:
    """One evaluation forward pass under torch.inference_mode or torch.no_grad."""
    model.eval()
    image, male, _ = batch(n, size)
    if channels_last:
        model.to(memory_format=torch.channels_last)
        image = image.contiguous(memory_format=torch.channels_last)
    context = torch.inference_mode if mode == "inference" else torch.no_grad

    def step() -> None:
        with context():
            model(image, male)

    return step


def interleaved(variants: dict[str, tuple[Callable[[], None], Callable[[], None] | None]], reps: int,
                warmup: int = 1, settle: int = 1) -> dict[str, float]:
    """Median seconds per call of each variant, run round-robin. A variant is (call, set-up before each turn).

    In each turn a variant first runs `settle` untimed calls, so that the allocator and thread-pool state left by
    the previous variant (a large network frees hundreds of MB) is not charged to it.
    """
    times: dict[str, list[float]] = {name: [] for name in variants}
    for rep in range(warmup + reps):
        for name, (call, setup) in variants.items():
            if setup is not None:
                setup()
            for _ in range(settle):
                call()
            start = time.perf_counter()
            call()
            if rep >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def threads(n: int) -> Callable[[], None]:
    return lambda: torch.set_num_threads(n)


def load() -> str:
    return "/".join(f"{v:.1f}" for v in os.getloadavg())


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_peak() -> None:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def memory_child(kind: str, n: int, size: int, n_threads: int) -> None:
    """Child process: peak RSS (VmHWM) growth in MB over the built state, for inference and for training."""
    torch.set_num_threads(n_threads)
    model = build(kind, size)
    step = train_step_fn(model, n, size)
    infer = infer_fn(build(kind, size), n, size)
    _reset_peak()
    base = _status_kb("VmRSS")
    infer()
    after_infer = _status_kb("VmHWM")
    _reset_peak()
    base_train = _status_kb("VmRSS")
    step()
    step()
    after_train = _status_kb("VmHWM")
    print(json.dumps({"base_mb": base / 1024, "infer_growth_mb": (after_infer - base) / 1024,
                      "train_growth_mb": (after_train - base_train) / 1024}))


def measure_memory(kind: str, n: int, size: int, n_threads: int) -> dict:
    out = subprocess.run([sys.executable, "-m", "bench.bench_model", "--memory-child", kind, "--batch", str(n),
                          "--size", str(size), "--threads", str(n_threads)], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", "--reps", dest="reps", type=int, default=5, help="timed repetitions per variant (median taken)")
    parser.add_argument("--batch-size", "--batch", dest="batch", type=int, default=32)
    parser.add_argument("--image-size", "--size", dest="size", type=int, default=DEFAULT_SIZE)
    add_shared_options(parser, "threads", threads_default=1)
    parser.add_argument("--quick", action="store_true", help="one repetition, small batches: a sanity run")
    parser.add_argument("--memory-child", choices=("tjnet", "resnet50"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        memory_child(args.memory_child, args.batch, args.size, args.threads)
        return 0
    reps, n, size = (1, 8, args.size) if args.quick else (args.reps, args.batch, args.size)
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, default threads {torch.get_num_threads()}, "
          f"load {load()}; batch {n}, {size} px, {reps} reps")

    # 1. parameters and FLOPs per image
    print("\n| network | input | width | parameters | forward GFLOP/image (hooks) | FlopCounterMode |")
    print("|---|---|---|---|---|---|")
    flops: dict[str, float] = {}
    for name, (side, width) in list(PRESET_SIZES.items()) + [("resnet50", (size, 1.0))]:
        kind = "resnet50" if name == "resnet50" else "tjnet"
        side = size if name == "default" else side
        model = build(kind, side, width).eval()
        inputs = batch(1, side)[:2]
        hooks = count_flops(model, inputs)
        check = flop_counter_mode(model, inputs)
        params = sum(p.numel() for p in model.parameters())
        label = "ResNet-50-style" if kind == "resnet50" else f"TJ-Net ({name})"
        flops[name] = hooks / 1e9
        print(f"| {label} | {side} px | {width} | {params:,} | {hooks / 1e9:.4f} | "
              f"{'n/a' if check is None else f'{check / 1e9:.4f}'} |")

    # 2. TJ-Net vs ResNet-50-style, training and inference, interleaved, in both memory layouts
    torch.set_num_threads(args.threads)
    variants = {}
    for key, kind in (("tj", "tjnet"), ("rn", "resnet50")):
        for suffix, channels_last in (("", True), ("-std", False)):
            variants[f"{key}-train{suffix}"] = (train_step_fn(build(kind, size), n, size, channels_last), None)
            variants[f"{key}-infer{suffix}"] = (infer_fn(build(kind, size), n, size, channels_last=channels_last), None)
    load_before = load()
    secs = interleaved(variants, reps)
    print(f"\nTJ-Net vs ResNet-50-style at {size} px, batch {n}, {args.threads} thread(s) (load {load_before} -> {load()})")
    print("| network | layout | train img/s | infer img/s | train s per GFLOP (3x fwd) | infer s per GFLOP |")
    print("|---|---|---|---|---|---|")
    per_gflop = {}
    for suffix, layout in (("", "channels-last (the training loops' default)"), ("-std", "standard (NCHW)")):
        for key, label, gf in (("tj", "TJ-Net", flops["default"]), ("rn", "ResNet-50-style", flops["resnet50"])):
            train_s, infer_s = secs[f"{key}-train{suffix}"], secs[f"{key}-infer{suffix}"]
            per_gflop[key + suffix] = (train_s / (3 * gf * n), infer_s / (gf * n))
            print(f"| {label} | {layout} | {n / train_s:.1f} | {n / infer_s:.1f} | {per_gflop[key + suffix][0]:.4f} | "
                  f"{per_gflop[key + suffix][1]:.4f} |")
    for suffix, layout in (("", "channels-last"), ("-std", "standard layout")):
        train_ratio = per_gflop["tj" + suffix][0] / per_gflop["rn" + suffix][0]
        infer_ratio = per_gflop["tj" + suffix][1] / per_gflop["rn" + suffix][1]
        verdict = "within" if train_ratio <= 2 else "NOT within"
        print(f"{layout}: TJ-Net / ResNet-50-style time per GFLOP: training {train_ratio:.2f}x ({verdict} the 2x "
              f"target), inference {infer_ratio:.2f}x")
    for key, label in (("tj", "TJ-Net"), ("rn", "ResNet-50-style")):
        print(f"{label}: channels-last / standard time: training {secs[f'{key}-train'] / secs[f'{key}-train-std']:.2f}x, "
              f"inference {secs[f'{key}-infer'] / secs[f'{key}-infer-std']:.2f}x")

    # 3. memory, one fresh process per network
    print("\n| network | batch | peak RSS (VmHWM) growth, inference (MB) | same, 2 train steps (MB) | RSS after build (MB) |")
    print("|---|---|---|---|---|")
    for kind, label in (("tjnet", "TJ-Net"), ("resnet50", "ResNet-50-style")):
        mem = measure_memory(kind, n, size, args.threads)
        print(f"| {label} | {n} | {mem['infer_growth_mb']:.0f} | {mem['train_growth_mb']:.0f} | {mem['base_mb']:.0f} |")

    # 4. CPU settings for TJ-Net: threads, inference_mode vs no_grad
    model, model_eval = build("tjnet", size), build("tjnet", size)
    train, infer_im, infer_ng = train_step_fn(model, n, size), infer_fn(model_eval, 64, size), \
        infer_fn(model_eval, 64, size, "no_grad")
    load_before = load()
    secs = interleaved({"train-1": (train, threads(1)), "train-2": (train, threads(2)),
                        "im-1": (infer_im, threads(1)), "im-2": (infer_im, threads(2)),
                        "ng-1": (infer_ng, threads(1)), "ng-2": (infer_ng, threads(2))}, reps)
    print(f"\nTJ-Net CPU settings at {size} px (load {load_before} -> {load()})")
    print("| variant | s per call | img/s | vs 1 thread (same work) |")
    print("|---|---|---|---|")
    for name, label, count, ref in (("train-1", f"train batch {n}, 1 thread", n, "train-1"),
                                    ("train-2", f"train batch {n}, 2 threads", n, "train-1"),
                                    ("im-1", "eval batch 64 inference_mode, 1 thread", 64, "im-1"),
                                    ("im-2", "eval batch 64 inference_mode, 2 threads", 64, "im-1"),
                                    ("ng-1", "eval batch 64 no_grad, 1 thread", 64, "im-1"),
                                    ("ng-2", "eval batch 64 no_grad, 2 threads", 64, "im-1")):
        print(f"| {label} | {secs[name]:.3f} | {count / secs[name]:.1f} | {secs[name] / secs[ref]:.2f}x |")
    print(f"no_grad / inference_mode time: {secs['ng-1'] / secs['im-1']:.2f}x (1 thread), "
          f"{secs['ng-2'] / secs['im-2']:.2f}x (2 threads)")

    # 5. training batch size and input side
    torch.set_num_threads(args.threads)
    batches = (4, 8) if args.quick else (16, 32, 64)
    sides = (64, size) if args.quick else (64, 96, 128)
    variants = {f"b{b}": (train_step_fn(build("tjnet", size), b, size), None) for b in batches}
    variants |= {f"s{s}": (train_step_fn(build("tjnet", s), n, s), None) for s in sides if s != size}
    load_before = load()
    secs = interleaved(variants, reps)
    print(f"\nTJ-Net training throughput, {args.threads} thread(s) (load {load_before} -> {load()})")
    print("| batch | input | img/s | s per image vs batch 32 at default size |")
    print("|---|---|---|---|")
    ref = secs.get(f"b{n}", secs[f"b{batches[-1]}"]) / (n if f"b{n}" in secs else batches[-1])
    for b in batches:
        print(f"| {b} | {size} px | {b / secs[f'b{b}']:.1f} | {secs[f'b{b}'] / b / ref:.2f}x |")
    for s in sides:
        if s != size:
            print(f"| {n} | {s} px | {n / secs[f's{s}']:.1f} | {secs[f's{s}'] / n / ref:.2f}x |")
    print(f"\nload at end {load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
