"""`python -m sim` end to end: sites, pretraining, baselines, federations, report."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from core.checkpoint import load_checkpoint
from sim.config import SimConfig
from sim.experiment import (Evaluation, load_test_splits, epsilon_by_site, evaluate_everywhere, federation_configs,
                            mean_mad, per_round_mad, run_baselines, run_federations)
from sim.report import plot_age_groups, plot_privacy, plot_rounds, table, write_results
from sim.sites import prepare_sites, pretrained_model

logger = logging.getLogger("ossifl.sim")


def run_experiment(config: SimConfig) -> list[Evaluation]:
    """Run the whole comparison and write results.csv, report.md and the plots to `out_dir`."""
    started = time.perf_counter()
    config.out_dir.mkdir(parents=True, exist_ok=True)
    (config.out_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
    stages = 5
    logger.info("[1/%d] phantom sites", stages)
    source, sites = prepare_sites(config)
    logger.info("[2/%d] pretrained source model", stages)
    pretrained = pretrained_model(config, source)
    tests = load_test_splits(sites, config.image_size)
    logger.info("[3/%d] baselines: pretrained, each site alone, all sites pooled", stages)
    rows = run_baselines(config, sites, pretrained, tests)
    configs = federation_configs(config, sites, pretrained)
    logger.info("[4/%d] %d federated runs of %d rounds on %d sites", stages, len(configs), config.rounds, len(sites))
    run_federations(configs, len(sites))
    curves: dict[str, dict[str, list[float]]] = {}
    privacy_points: list[tuple[str, float, float]] = []
    for fed in configs:
        final = load_checkpoint(fed.out_dir / "federated_final.pt").model
        name = fed.out_dir.name
        fed_rows = evaluate_everywhere(final, sites, tests, name, fed.freeze)
        epsilons = epsilon_by_site(fed.out_dir, sites) if "dp-noise-multiplier" in fed.forwarded else {}
        for row in fed_rows:
            row.extra["epsilon"] = epsilons.get(row.site)
            if row.extra["epsilon"] is not None:
                privacy_points.append((row.site, row.extra["epsilon"], row.metrics["mad_months"]))
        rows += fed_rows
        curves[name] = per_round_mad(fed.out_dir, sites)
    logger.info("[5/%d] report", stages)
    _write_outputs(config, rows, curves, privacy_points, time.perf_counter() - started)
    return rows


def _write_outputs(config: SimConfig, rows: list[Evaluation], curves: dict, privacy_points: list,
                   seconds: float) -> None:
    out = config.out_dir
    write_results(rows, out / "results.csv")
    baselines = {name: mean_mad([r for r in rows if r.strategy == name]) for name in ("pretrained", "site-alone", "pooled")}
    plot_rounds(curves, baselines, out / "mad_per_round.png")
    plain = [name for name in curves if "_dp-" not in name]
    best = min(plain, key=lambda n: mean_mad([r for r in rows if r.strategy == n])) if plain else None
    compare = ["pretrained", "site-alone"] + ([best] if best else []) + ["pooled"]
    plot_age_groups(rows, compare, out / "error_by_age_group.png")
    if privacy_points:
        plot_privacy(privacy_points, out / "privacy_utility.png")
    summary = summarise(rows)
    report = [f"# OssiFL simulation report", "",
              f"{len(config.sites)} hospital sites ({', '.join(s.preset for s in config.sites)}), TJ-Net at "
              f"{config.image_size} px (width {config.width}) pretrained on {config.source.n} {config.source.preset} "
              f"phantom images; {config.rounds} rounds of {config.strategy}, {config.local_epochs} local epoch(s); "
              f"seed {config.seed}; wall time {seconds / 60:.1f} min.", "",
              "## Summary", "", summary, "",
              "## Per site (the paper's Table 2, under federation)", "", table(rows),
              "## Plots", "", "![MAD per round](mad_per_round.png)", "",
              "![Error by age group](error_by_age_group.png)", ""]
    if privacy_points:
        report += ["![Privacy / utility](privacy_utility.png)", ""]
    (out / "report.md").write_text("\n".join(report))
    logger.info("results in %s (results.csv, report.md, plots); total %.1f min", out, seconds / 60)
    print("\n" + summary + "\n\n" + table(rows))


def summarise(rows: list[Evaluation]) -> str:
    """Mean MAD over sites per strategy, and which freeze spec wins how often."""
    strategies = list(dict.fromkeys(r.strategy for r in rows))
    lines = ["| strategy | mean test MAD over sites (months) |", "|---|---|"]
    for name in strategies:
        lines.append(f"| {name} | {mean_mad([r for r in rows if r.strategy == name]):.2f} |")
    wins: dict[str, int] = {}
    for site in dict.fromkeys(r.site for r in rows):
        federated = [r for r in rows if r.site == site and r.strategy.startswith("fed") and "_dp-" not in r.strategy]
        if federated:
            winner = min(federated, key=lambda r: r.metrics["mad_months"]).freeze
            wins[winner] = wins.get(winner, 0) + 1
    if wins:
        text = ", ".join(f"freeze {spec}: {count} site(s)" for spec, count in sorted(wins.items(), key=lambda x: -x[1]))
        lines += ["", f"Best federated freeze spec per site: {text}."]
    return "\n".join(lines)
