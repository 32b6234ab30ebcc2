"""What federation costs: bytes per round and site, and Flower's simulation overhead over a plain loop.

Usage:
    python -m bench.bench_federation [--n 120] [--size 96] [--reps 2] [--quick]

(a) Bytes the server sends each site per round (and the site returns) for each freeze spec, from
    `server.federation.shared_keys` on a TJ-Net at the default size, against the trainable-parameter bytes:
    the shared set also holds the normalisation layers' buffers of the unfrozen blocks (none under GroupNorm).
    The ArrayRecord column is the payload Flower serialises (numpy arrays with their headers).
(b) Framework overhead: two phantom sites (n images each) are generated in a temporary folder and a randomly
    initialised TJ-Net is saved as the "pretrained" checkpoint. The same rounds run (1) in Flower's simulation
    engine through `sim.experiment.run_federations` (ClientApp, ServerApp, per-round checkpoints, a federated
    evaluation on each site's test split) and (2) as a plain loop: `train_site_round` per site, sequentially,
    the same settings and data, decoding each site's data once. Each run is a fresh child process with one torch
    thread (Ray's workers also get one: num_cpus=1); the variants are interleaved and repeated, medians are taken.
    Runs of 1 and 3 rounds separate start-up from per-round cost. The federated round does more than train:
    each site re-reads the checkpoint and re-decodes its data per message and evaluates on its test split, and
    the engine runs the two sites' actors in parallel on the two cores.
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
import time
from pathlib import Path

PLAIN_CHILD = "plain"
FED_CHILD = "fed"
FREEZE_SPECS = ("none", "1", "1-2", "1-3", "1-4")


def bytes_table(size: int, width: float) -> list[dict]:
    """Per freeze spec: shared keys, their bytes, the trainable-parameter bytes, the ArrayRecord payload."""
    from flwr.app import ArrayRecord

    from core.model.config import TJNetConfig
    from core.model.freeze import freeze_blocks, parse_freeze_spec
    from core.model.tjnet import TJNet
    from server.federation import shared_keys

    rows = []
    for spec in FREEZE_SPECS:
        model = TJNet(TJNetConfig(image_size=size, width=width))
        freeze_blocks(model, parse_freeze_spec(spec))
        state = model.state_dict()
        row = {"freeze": spec}
        for mode in ("none", "norm"):
            keys = shared_keys(model, mode)
            row[f"keys_{mode}"] = len(keys)
            row[f"bytes_{mode}"] = sum(state[k].numel() * state[k].element_size() for k in keys)
        keys = shared_keys(model, "none")
        record = ArrayRecord({k: state[k] for k in keys})
        row["record_bytes"] = sum(len(array.data) for array in record.values())
        trainable = [p for p in model.parameters() if p.requires_grad]
        row["trainable_params"] = sum(p.numel() for p in trainable)
        row["trainable_bytes"] = sum(p.numel() * p.element_size() for p in trainable)
        rows.append(row)
    return rows


def make_sites(root: Path, n: int, size: int) -> tuple[list[Path], Path]:
    """Two phantom sites and a randomly initialised TJ-Net checkpoint."""
    from core.checkpoint import describe, save_checkpoint
    from core.model.config import TJNetConfig
    from core.model.tjnet import TJNet
    from sim.phantom.writer import generate_site

    sites = [generate_site(preset, n, root / preset, seed=index + 1, image_size=size)
             for index, preset in enumerate(("tongji", "eu_clinic"))]
    model = TJNet(TJNetConfig(image_size=size, width=0.5))
    pretrained = save_checkpoint(root / "init.pt", model, describe(model, seed=0))
    return sites, pretrained


def child(kind: str, rounds: int, root: Path, freeze: str, batch_size: int) -> None:
    """One timed run in this (fresh) process; prints BENCH_WALL seconds."""
    import torch

    torch.set_num_threads(1)
    sites = sorted(p for p in root.iterdir() if p.is_dir() and (p / "labels.csv").exists())
    units = [json.loads((s / "site.json").read_text())["label_unit"] for s in sites]
    pretrained = root / "init.pt"
    if kind == FED_CHILD:
        from server.config import FederationConfig
        from sim.experiment import run_federations

        out = Path(tempfile.mkdtemp(dir=root))
        config = FederationConfig(
            pretrained=pretrained, out_dir=out, num_rounds=rounds, freeze=freeze, batch_size=batch_size,
            min_nodes=len(sites), forwarded={"sim-site-paths": ";".join(map(str, sites)),
                                             "sim-site-units": ";".join(units), "device": "cpu",
                                             "sim-state-dir": str(out / "site-state")})
        start = time.perf_counter()
        run_federations([config], len(sites))
    else:
        from core.checkpoint import load_checkpoint
        from core.data import AugmentConfig, SiteDataConfig, load_site
        from core.finetune import RoundSettings, train_site_round
        from core.model.freeze import parse_freeze_spec

        settings = RoundSettings(batch_size=batch_size, freeze=parse_freeze_spec(freeze), planned_rounds=rounds)
        start = time.perf_counter()
        models = {s: load_checkpoint(pretrained).model for s in sites}
        data = {s: load_site(SiteDataConfig(root=s, label_unit=u), models[s].config.image_size, AugmentConfig(), seed=0)
                for s, u in zip(sites, units)}
        for round_number in range(1, rounds + 1):
            for s in sites:
                train_site_round(models[s], data[s].train, data[s].val, settings, torch.device("cpu"), round_number)
    print(f"BENCH_WALL {time.perf_counter() - start:.3f}", flush=True)


def timed_child(kind: str, rounds: int, root: Path, freeze: str, batch_size: int) -> float:
    env = {**os.environ, "RAY_TMPDIR": tempfile.mkdtemp(prefix="ray_bench_fed_", dir="/tmp"),
           "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0"}
    result = subprocess.run([sys.executable, "-m", "bench.bench_federation", "--child", kind, "--rounds", str(rounds),
                             "--root", str(root), "--freeze", freeze, "--batch-size", str(batch_size)],
                            capture_output=True, text=True, env=env)
    match = re.search(r"BENCH_WALL ([\d.]+)", result.stdout)
    if result.returncode != 0 or match is None:
        print(result.stdout[-2000:], result.stderr[-4000:])
        raise RuntimeError(f"{kind} run with {rounds} rounds failed (exit code {result.returncode})")
    return float(match.group(1))


def load() -> str:
    return "/".join(f"{v:.1f}" for v in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=120, help="images per phantom site")
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--width", type=float, default=0.5)
    parser.add_argument("--freeze", default="1-3")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="bytes table and one 1-round run of each: a sanity run")
    parser.add_argument("--child", choices=(PLAIN_CHILD, FED_CHILD), help=argparse.SUPPRESS)
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

    n, reps, round_counts = (40, 1, (1,)) if args.quick else (args.n, args.reps, (1, 3))
    with tempfile.TemporaryDirectory(prefix="bench_federation_") as tmp:
        root = Path(tmp)
        make_sites(root, n, args.size)
        print(f"\n(b) 2 sites x {n} images at {args.size} px, freeze {args.freeze}, batch {args.batch_size}, "
              f"1 torch thread per process; load before {load()}")
        times: dict[tuple[str, int], list[float]] = {}
        for _ in range(reps):
            for rounds in round_counts:
                for kind in (FED_CHILD, PLAIN_CHILD):
                    seconds = timed_child(kind, rounds, root, args.freeze, args.batch_size)
                    times.setdefault((kind, rounds), []).append(seconds)
                    print(f"  {kind} {rounds} round(s): {seconds:.1f} s (load {load()})", flush=True)
    med = {key: statistics.median(values) for key, values in times.items()}
    print("| rounds | simulation engine s | plain loop s | engine / plain |")
    print("|---|---|---|---|")
    for rounds in round_counts:
        fed, plain = med[(FED_CHILD, rounds)], med[(PLAIN_CHILD, rounds)]
        print(f"| {rounds} | {fed:.1f} | {plain:.1f} | {fed / plain:.2f}x |")
    if len(round_counts) == 2:
        r1, r3 = round_counts
        fed_round = (med[(FED_CHILD, r3)] - med[(FED_CHILD, r1)]) / (r3 - r1)
        plain_round = (med[(PLAIN_CHILD, r3)] - med[(PLAIN_CHILD, r1)]) / (r3 - r1)
        print(f"per extra round: engine {fed_round:.1f} s, plain {plain_round:.1f} s "
              f"(ratio {fed_round / plain_round:.2f}x); engine start-up and first round beyond plain: "
              f"{med[(FED_CHILD, r1)] - fed_round - (med[(PLAIN_CHILD, r1)] - plain_round):.1f} s")
    print(f"load at end {load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
