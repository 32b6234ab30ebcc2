"""What federation costs: bytes per round and site, and the framework's share of a round's wall time.

Usage:
    python -m bench.bench_federation [--sites 4] [--n 300] [--size 96] [--reps 2] [--quick]

(a) Bytes the server sends each site per round (and the site returns) for each freeze spec, from
    `core.model.groups.parameter_groups(...).shared` on a TJ-Net at the default size, against the trainable-parameter bytes:
    the shared set also holds the normalisation layers' buffers of the unfrozen blocks (none under GroupNorm).
    The ArrayRecord column is the payload Flower serialises (numpy arrays with their headers).
(b) Framework overhead at the simulation defaults (4 phantom sites of 300 images, 96 px, width 0.5, freeze 1-3,
    batch 32, one local epoch): the sites are generated in a temporary folder and a randomly initialised TJ-Net
    is saved as the "pretrained" checkpoint. Three variants run the same rounds, each in a fresh child process,
    every process (Ray's workers included) with one torch thread:
    - `engine`: Flower's simulation engine as `python -m sim` runs it (ClientApp, ServerApp, per-round
      checkpoints, a federated evaluation on each site's test split every round), two sites at a time on the
      two cores;
    - `engine-serial`: the same, one site at a time (each simulated site claims both cores);
    - `plain`: a loop calling `train_site_round` per site, one after the other, data decoded once.
    Each run's metrics.csv gives the wall time of every round, the sites' local training summed over sites and
    the sites' whole work on their messages (`round-seconds`, `sites-train-seconds`, `sites-seconds`: training,
    validation and test evaluation, reading model and data), so "round wall time / sum of the sites' local
    training" is a ratio measured within one run (target: at most 1.10), and "round wall / sites' work" is the
    share of Flower's messaging, aggregation and checkpointing alone. A round here runs from one merge to the
    next: the previous round's federated evaluation and this round's training (the first round has no
    evaluation before it but starts the engine's workers). For the plain loop, sites' work = its wall time.
    Runs of 1 and 3 rounds also give the cost per extra round against the plain loop's. Variants are
    interleaved and repeated; medians are taken.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = {"engine": 1, "engine-serial": 2, "plain": 0}  # name -> cores claimed per simulated site
SITE_PRESETS = ("tongji", "eu_clinic", "rural_cr", "peds_referral")
FREEZE_SPECS = ("none", "1", "1-2", "1-3", "1-4")


def bytes_table(size: int, width: float) -> list[dict]:
    """Per freeze spec: shared keys, their bytes, the trainable-parameter bytes, the ArrayRecord payload."""
    from flwr.app import ArrayRecord

    from core.model.config import TJNetConfig
    from core.model.freeze import freeze_blocks, parse_freeze_spec
    from core.model.groups import parameter_groups
    from core.model.tjnet import TJNet

    rows = []
    for spec in FREEZE_SPECS:
        model = TJNet(TJNetConfig(image_size=size, width=width))
        freeze_blocks(model, parse_freeze_spec(spec))
        state = model.state_dict()
        row = {"freeze": spec}
        for mode in ("none", "norm"):
            keys = parameter_groups(model, parse_freeze_spec(spec), mode).shared
            row[f"keys_{mode}"] = len(keys)
            row[f"bytes_{mode}"] = sum(state[k].numel() * state[k].element_size() for k in keys)
        keys = parameter_groups(model, parse_freeze_spec(spec)).shared
        record = ArrayRecord({k: state[k] for k in keys})
        row["record_bytes"] = sum(len(array.data) for array in record.values())
        trainable = [p for p in model.parameters() if p.requires_grad]
        row["trainable_params"] = sum(p.numel() for p in trainable)
        row["trainable_bytes"] = sum(p.numel() * p.element_size() for p in trainable)
        rows.append(row)
    return rows


def make_sites(root: Path, sites: int, n: int, size: int, width: float) -> None:
    """Phantom sites (the simulation's hospital presets, in turn) and a randomly initialised TJ-Net checkpoint."""
    from core.checkpoint import describe, save_checkpoint
    from core.model.config import TJNetConfig
    from core.model.tjnet import TJNet
    from sim.phantom.writer import generate_site

    for index in range(sites):
        preset = SITE_PRESETS[index % len(SITE_PRESETS)]
        generate_site(preset, n, root / f"{index}_{preset}", seed=index + 1, image_size=size)
    torch_model = TJNet(TJNetConfig(image_size=size, width=width))
    save_checkpoint(root / "init.pt", torch_model, describe(torch_model, seed=0))


def child(variant: str, rounds: int, root: Path, freeze: str, batch_size: int) -> None:
    """One timed run in this (fresh) process; prints its wall time and the per-round timings as JSON."""
    import torch

    torch.set_num_threads(1)
    sites = sorted(p for p in root.iterdir() if p.is_dir() and (p / "labels.csv").exists())
    units = [json.loads((s / "site.json").read_text())["label_unit"] for s in sites]
    pretrained = root / "init.pt"
    timings = {"round_seconds": 0.0, "train_seconds": 0.0, "site_seconds": 0.0}
    if VARIANTS[variant]:
        from core.model.freeze import parse_freeze_spec
        from core.round_settings import RoundSettings
        from server.config import FederationConfig
        from sim.federation import SimulatedRun, run_federations, site_node_config

        out = Path(tempfile.mkdtemp(dir=root))
        settings = RoundSettings(num_rounds=rounds, freeze=parse_freeze_spec(freeze), batch_size=batch_size)
        config = FederationConfig(pretrained=pretrained, settings=settings, out_dir=out, min_nodes=len(sites),
                                  device="cpu")
        nodes = tuple(site_node_config(site, index, out / "site-state" / site.name, pretrained, unit)
                      for index, (site, unit) in enumerate(zip(sites, units)))
        start = time.perf_counter()
        run_federations([SimulatedRun(config, nodes)], cpus_per_site=VARIANTS[variant])
        wall = time.perf_counter() - start
        with open(out / "metrics.csv", newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                if row["metric"] == "round-seconds":
                    timings["round_seconds"] += float(row["value"])
                elif row["metric"] == "sites-train-seconds":
                    timings["train_seconds"] += float(row["value"])
                elif row["metric"] == "sites-seconds":
                    timings["site_seconds"] += float(row["value"])
    else:
        from core.checkpoint import load_checkpoint
        from core.data import AugmentConfig, SiteDataConfig, load_site
        from core.stages.finetune import train_site_round
        from core.round_settings import RoundSettings
        from core.model.freeze import parse_freeze_spec

        settings = RoundSettings(batch_size=batch_size, freeze=parse_freeze_spec(freeze), num_rounds=rounds)
        start = time.perf_counter()
        models = {s: load_checkpoint(pretrained).model for s in sites}
        data = {s: load_site(SiteDataConfig(root=s, label_unit=u), models[s].config.image_size, AugmentConfig(), seed=0)
                for s, u in zip(sites, units)}
        for round_number in range(1, rounds + 1):
            round_start = time.perf_counter()
            for s in sites:
                result = train_site_round(models[s], data[s].train, data[s].val, settings, torch.device("cpu"),
                                          round_number)
                timings["train_seconds"] += result.train_seconds
            timings["round_seconds"] += time.perf_counter() - round_start
        timings["site_seconds"] = timings["round_seconds"]
        wall = time.perf_counter() - start
    print(f"BENCH_RESULT {json.dumps({'wall': wall, **timings})}", flush=True)


def timed_child(variant: str, rounds: int, root: Path, freeze: str, batch_size: int) -> dict[str, float]:
    env = {**os.environ, "RAY_TMPDIR": tempfile.mkdtemp(prefix="ray_bench_fed_", dir="/tmp"),
           "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "bench.bench_federation", "--child", variant, "--rounds",
                             str(rounds), "--root", str(root), "--freeze", freeze, "--batch-size", str(batch_size)],
                            capture_output=True, text=True, env=env)
    match = re.search(r"BENCH_RESULT (\{.*\})", result.stdout)
    if result.returncode != 0 or match is None:
        print(result.stdout[-2000:], result.stderr[-4000:])
        raise RuntimeError(f"{variant} run with {rounds} rounds failed (exit code {result.returncode})")
    return json.loads(match.group(1))


def load() -> str:
    return "/".join(f"{v:.1f}" for v in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sites", type=int, default=4, help="simulated sites (the simulation default: 4)")
    parser.add_argument("--n", type=int, default=300, help="images per phantom site (the simulation default: 300)")
    parser.add_argument("--image-size", "--size", dest="size", type=int, default=96)
    parser.add_argument("--width", type=float, default=0.5)
    parser.add_argument("--freeze", default="1-3")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", "--reps", dest="reps", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="bytes table and one 1-round run of each: a sanity run")
    parser.add_argument("--child", choices=tuple(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.rounds, args.root, args.freeze, args.batch_size)
        return 0

    print(f"(a) bytes per site and round, TJ-Net {args.size} px width {args.width}, float32")
    print("| freeze | shared keys | shared bytes | ArrayRecord payload | trainable params | trainable-param bytes "
          "| shared / trainable | FedBN (norm local) bytes |")
    print("|---|---|---|---|---|---|---|---|")
    for r in bytes_table(args.size, args.width):
        print(f"| {r['freeze']} | {r['keys_none']} | {r['bytes_none']:,} | {r['record_bytes']:,} | "
              f"{r['trainable_params']:,} | {r['trainable_bytes']:,} | {r['bytes_none'] / r['trainable_bytes']:.3f} | "
              f"{r['bytes_norm']:,} |")

    sites, n, reps, round_counts = (2, 40, 1, (1,)) if args.quick else (args.sites, args.n, args.reps, (1, 3))
    with tempfile.TemporaryDirectory(prefix="bench_federation_") as tmp:
        root = Path(tmp)
        make_sites(root, sites, n, args.size, args.width)
        print(f"\n(b) {sites} sites x {n} images at {args.size} px, width {args.width}, freeze {args.freeze}, "
              f"batch {args.batch_size}, 1 torch thread per process; load before {load()}")
        runs: dict[tuple[str, int], list[dict[str, float]]] = {}
        for _ in range(reps):
            for rounds in round_counts:
                for variant in VARIANTS:
                    result = timed_child(variant, rounds, root, args.freeze, args.batch_size)
                    runs.setdefault((variant, rounds), []).append(result)
                    print(f"  {variant} {rounds} round(s): {result['wall']:.1f} s, rounds {result['round_seconds']:.1f} s, "
                          f"local training {result['train_seconds']:.1f} s (load {load()})", flush=True)
    med = {key: {k: statistics.median(r[k] for r in values) for k in values[0]} for key, values in runs.items()}
    print("| variant | rounds | process wall s | rounds wall s | sites' local training s | sites' work s "
          "| rounds wall / local training | rounds wall / sites' work |")
    print("|---|---|---|---|---|---|---|---|")
    for (variant, rounds), m in med.items():
        print(f"| {variant} | {rounds} | {m['wall']:.1f} | {m['round_seconds']:.1f} | {m['train_seconds']:.1f} | "
              f"{m['site_seconds']:.1f} | {m['round_seconds'] / m['train_seconds']:.2f} | "
              f"{m['round_seconds'] / m['site_seconds']:.2f} |")
    if len(round_counts) == 2:
        r1, r3 = round_counts
        plain = (med[("plain", r3)]["wall"] - med[("plain", r1)]["wall"]) / (r3 - r1)
        for variant in ("engine", "engine-serial"):
            extra = (med[(variant, r3)]["wall"] - med[(variant, r1)]["wall"]) / (r3 - r1)
            print(f"per extra round: {variant} {extra:.1f} s, plain loop {plain:.1f} s ({extra / plain:.2f}x)")
    print(f"load at end {load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
