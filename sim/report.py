"""What a simulation leaves behind: results.csv, cross_site.csv, report.md (Table 2 per site, the site-size sweep,
the cross-site scores and a verdict per site) and plots."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from core.stats.metrics import AGE_GROUPS_YEARS, age_group_label  # noqa: E402
from sim.config import SimConfig  # noqa: E402
from sim.experiment import Evaluation  # noqa: E402
from sim.cross_site import cross_site_lines, held_out_lines, plot_cross_site, write_cross_site  # noqa: E402
from sim.site_verdict import verdict_section  # noqa: E402
from sim.sweep import by_size, crossover_lines, plot_sizes, size_keys  # noqa: E402
from sim.verdicts import ALL, Comparison, answers, label  # noqa: E402
from strategies.options import effective_options, format_options  # noqa: E402

logger = logging.getLogger("ossifl.sim")
RESULT_COLUMNS = ("site_size", "n_train", "site", "strategy", "freeze", "mad_months", "mad_ci_low", "mad_ci_high",
                  "rmse_months", "accuracy", "accuracy_1y", "bias_months", "n", "seeds", "epsilon", "strategy_options")


def _mean(rows: list[Evaluation], metric: str) -> float:
    return float(np.mean([r.metrics[metric] for r in rows]))


def _options(config: SimConfig) -> str:
    """The strategy's options, defaults included ("no options" for fedavg and fedmedian)."""
    return format_options(effective_options(config.strategy, dict(config.strategy_options))) or "no options"


def _size(size: int | None) -> str:
    return "all" if size is None else str(size)


def _n_train(match: list[Evaluation]) -> str:
    """Training images per site behind the rows (mean over seeds; summed over sites for all sites)."""
    counts: dict[str, list[int]] = {}
    for r in match:
        if r.extra.get("n_train") is not None:
            counts.setdefault(r.site, []).append(r.extra["n_train"])
    return f"{sum(float(np.mean(v)) for v in counts.values()):g}" if counts else ""


def write_results(rows: list[Evaluation], path: Path) -> None:
    """One row per site size, site and method (all sites too): MAD with its 95 % interval over images and seeds;
    the other metrics are means over seeds. `site_size` is "all" when the sites kept all their images."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(RESULT_COLUMNS)
        for size, comparison in by_size(rows).items():
            _write_size(writer, [r for r in rows if r.extra.get("site_size") == size], comparison, size)


def _write_size(writer: "csv._writer", rows: list[Evaluation], comparison: Comparison, size: int | None) -> None:
    """The rows of one site size."""
    for site in [*comparison.sites, ALL]:
        for key in comparison.keys:
            if not comparison.has(site, key):
                continue
            match = [r for r in rows if (r.strategy, r.freeze) == key and (site == ALL or r.site == site)]
            mad = comparison.mad(site, key)
            eps = [r.extra["epsilon"] for r in match if r.extra.get("epsilon") is not None]
            writer.writerow((_size(size), _n_train(match), site, *key, f"{mad.estimate:.4f}", f"{mad.low:.4f}",
                             f"{mad.high:.4f}",
                             f"{_mean(match, 'rmse_months'):.4f}", f"{_mean(match, 'accuracy'):.4f}",
                             f"{_mean(match, 'accuracy_1y'):.4f}", f"{_mean(match, 'bias_months'):.4f}",
                             sum(len(e) for e in comparison.errors(site, key)) // len(comparison.seeds),
                             len(comparison.seeds), f"{max(eps):.4f}" if eps else "",
                             next((r.extra["strategy_options"] for r in match if "strategy_options" in r.extra), "")))


def table(rows: list[Evaluation]) -> str:
    """A markdown table per site: each method's MAD with its 95 % interval, RMSE, accuracy, bias."""
    comparison = Comparison(rows)
    lines: list[str] = []
    for site in [*comparison.sites, ALL]:
        keys = [k for k in comparison.keys if comparison.has(site, k)]
        if not keys:
            continue
        best = min(keys, key=lambda k: comparison.mad(site, k).estimate)
        n = sum(len(e) for e in comparison.errors(site, keys[0])) // len(comparison.seeds)
        lines += [f"### {site} (test n = {n}, {len(comparison.seeds)} seed(s))", "",
                  "| method | frozen blocks | MAD (mo) [95 % CI] | MAD (y) | RMSE (mo) | accuracy | within 1 y "
                  "| bias (mo) |", "|---|---|---|---|---|---|---|---|"]
        for key in keys:
            match = [r for r in rows if (r.strategy, r.freeze) == key and (site == ALL or r.site == site)]
            mad = comparison.mad(site, key)
            eps = [r.extra["epsilon"] for r in match if r.extra.get("epsilon") is not None]
            name = key[0] + (f" (epsilon {max(eps):.2f})" if eps else "") + (" **lowest**" if key == best else "")
            lines.append(f"| {name} | {key[1]} | {mad} | {mad.estimate / 12:.3f} | {_mean(match, 'rmse_months'):.2f} "
                         f"| {_mean(match, 'accuracy'):.3f} | {_mean(match, 'accuracy_1y'):.3f} "
                         f"| {_mean(match, 'bias_months'):+.2f} |")
        lines.append("")
    return "\n".join(lines)


def legend(strategy: str) -> list[str]:
    """What each method name in the report means."""
    return ["## Methods", "", "| method | what it is |", "|---|---|",
            "| pretrained | the source model as it is: no training at the sites |",
            "| calibrated | the pretrained model with a linear correction of its predictions fitted on each site's "
            "training images (no network training) |",
            "| site-alone | each site fine-tunes the pretrained model on its own images only (freeze spec as given) |",
            "| pooled | one model fine-tuned on all sites' images together (what federation would match at best) |",
            f"| {strategy} | federated fine-tuning of the unfrozen blocks across the sites |",
            f"| {strategy}+local | the federated model, then fine-tuned at each site on its own images |",
            f"| {strategy}+calib | the federated model with each site's own line per sex fitted on its training images "
            "and applied to its outputs (a reader-convention head; no network training) |",
            f"| {strategy}+fedbn | federation with each site's normalisation layers kept at the site (FedBN) |",
            f"| {strategy}+fedrep | federation with each site's head (block 6) kept and trained first at the site "
            "(FedRep; `--fedrep`) |",
            f"| {strategy}-without-site | the federation of the other sites, scored on the site left out "
            "(`--leave-one-out`; `+calib`: under that site's own calibration) |",
            f"| {strategy}_freeze-S_dp-X | federation with sample-level DP at every site, noise multiplier X |", ""]


def write_report(config: SimConfig, rows: list[Evaluation], curves: dict, privacy_points: list,
                 seconds: float, cross: list[Evaluation] | None = None) -> str:
    """results.csv, results_by_seed.csv, cross_site.csv, report.md and the plots; returns what the terminal shows:
    the answers (at the largest site size when the run sweeps sizes) and the verdict per site."""
    out = config.out_dir
    write_results(rows, out / "results.csv")
    write_seed_rows(rows, out / "results_by_seed.csv")
    write_predictions(rows, out / "predictions.csv")
    comparisons = by_size(rows)
    sizes = list(comparisons)
    comparison = comparisons[sizes[-1]]
    baselines = {name: comparison.mad(ALL, key).estimate for name, key in
                 (("pretrained", ("pretrained", "all")), ("site-alone", ("site-alone", config.baseline_freeze)),
                  ("pooled", ("pooled", config.baseline_freeze))) if comparison.has(ALL, key)}
    plot_rounds(curves, baselines, out / "mad_per_round.png")
    largest = [r for r in rows if r.extra.get("site_size") == sizes[-1]]
    federated = [(config.strategy, s) for s in config.freeze_specs if comparison.has(ALL, (config.strategy, s))]
    best = [min(federated, key=lambda k: comparison.mad(ALL, k).estimate)] if federated else []
    compare = [("pretrained", "all"), ("site-alone", config.baseline_freeze), *best, ("pooled", config.baseline_freeze)]
    plot_age_groups(largest, [k for k in compare if comparison.has(ALL, k)], out / "error_by_age_group.png")
    if privacy_points:
        plot_privacy(privacy_points, out / "privacy_utility.png")
    names = [s.path.name for s in config.real_sites] or [s.preset for s in config.sites]
    swept = f"; training images per site {', '.join(map(str, config.site_sizes))}" if config.site_sizes else ""
    report = ["# OssiFL simulation report", "",
              f"{len(names)} hospital sites ({', '.join(names)}), TJ-Net at {config.image_size} px (width "
              f"{config.width}); {config.rounds} rounds of {config.strategy} ({_options(config)}), "
              f"{config.local_epochs} local epoch(s); "
              f"seeds {', '.join(str(s) for s in config.seed_list())}{swept}; wall time {seconds / 60:.1f} min.", "",
              "MADs carry 95 % intervals (bootstrap over test images and seeds); differences are paired on the same "
              "test images.", "", *legend(config.strategy)]
    verdict = ""
    for size, at_size in comparisons.items():
        verdict = answers(at_size, config.strategy, config.freeze_specs, config.baseline_freeze)
        heading = "" if size is None else f" at {size} training images per site"
        report += [f"## Answers{heading}", "", verdict, f"## Per site{heading} (the paper's Table 2)", "",
                   table([r for r in rows if r.extra.get("site_size") == size])]
    if config.site_sizes:
        plot_sizes(comparisons, size_keys(config.strategy, config.baseline_freeze), out / "mad_by_site_size.png")
        report += crossover_lines(comparisons, config.strategy, config.baseline_freeze,
                                  config.freeze_specs)
    if cross:
        write_cross_site(cross, out / "cross_site.csv")
        plot_cross_site(cross, out / "cross_site.png")
        report += cross_site_lines(cross)
    report += held_out_lines(comparisons, config.strategy, config.baseline_freeze)
    report += ["## Plots", "", "![MAD per round](mad_per_round.png)", "", "![Error by age group](error_by_age_group.png)",
               ""]
    if privacy_points:
        report += ["![Privacy / utility](privacy_utility.png)", ""]
    counts = {(r.extra.get("site_size"), r.site): r.extra["n_train"] for r in rows if r.extra.get("n_train")}
    verdicts = verdict_section(comparisons, config.strategy, config.baseline_freeze, counts)
    report += verdicts
    (out / "report.md").write_text("\n".join(report))
    return verdict + "\n" + "\n".join(verdicts)


def write_predictions(rows: list[Evaluation], path: Path) -> None:
    """Every test prediction (months), so the statistics can be recomputed without rerunning."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(("site_size", "site", "strategy", "freeze", "seed", "image", "predicted_months",
                         "true_months"))
        for r in rows:
            p = r.predictions
            for index, (pred, true) in enumerate(zip(p.predicted_months, p.true_months)):
                writer.writerow((_size(r.extra.get("site_size")), r.site, r.strategy, r.freeze, r.extra.get("seed", 0),
                                 index, f"{pred:.3f}", f"{true:.3f}"))


def write_seed_rows(rows: list[Evaluation], path: Path) -> None:
    """Every evaluation as it came: one row per site, method and seed."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(("site_size", "n_train", "site", "strategy", "freeze", "seed", "mad_months", "n"))
        for r in rows:
            writer.writerow((_size(r.extra.get("site_size")), r.extra.get("n_train") or "", r.site, r.strategy,
                             r.freeze, r.extra.get("seed", 0), f"{r.metrics['mad_months']:.4f}", r.metrics["n"]))


def plot_rounds(curves: dict[str, dict[str, list[float]]], baselines: dict[str, float], path: Path) -> None:
    """Mean test MAD over sites per round, one line per federated run; baselines as dashed lines."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, by_site in curves.items():
        series = [v for v in by_site.values() if v]
        if not series:
            continue
        length = min(len(v) for v in series)
        mean = np.mean([v[:length] for v in series], axis=0)
        ax.plot(range(1, length + 1), mean, marker="o", label=name)
    styles = {"pretrained": ("grey", "--"), "site-alone": ("black", ":"), "pooled": ("black", "-.")}
    for name, value in baselines.items():
        color, line = styles.get(name, ("grey", "--"))
        ax.axhline(value, linestyle=line, linewidth=1.2, color=color, label=f"{name} ({value:.1f})")
    ax.xaxis.get_major_locator().set_params(integer=True)
    _finish_line_plot(fig, ax, path, "round", "test MAD, mean over sites (months)",
                      "Federated adaptation per freeze strategy")


def plot_age_groups(rows: list[Evaluation], strategies: list[tuple[str, str]], path: Path) -> None:
    """Signed error by age group per site (the paper's Fig. 6), boxes per strategy."""
    sites = list(dict.fromkeys(r.site for r in rows))
    fig, axes = plt.subplots(len(sites), 1, figsize=(9, 2.6 * len(sites)), squeeze=False)
    groups = [age_group_label(lo, hi) for lo, hi in AGE_GROUPS_YEARS]
    width = 0.8 / max(len(strategies), 1)
    for ax, site in zip(axes[:, 0], sites):
        for k, strategy in enumerate(strategies):
            match = [r for r in rows if r.site == site and (r.strategy, r.freeze) == strategy]
            if not match:
                continue
            p = match[0].predictions
            error = (p.predicted_months - p.true_months) / 12.0
            data, positions = [], []
            for g, (lo, hi) in enumerate(AGE_GROUPS_YEARS):
                inside = (p.true_months >= lo * 12) & ((p.true_months < hi * 12) | (g == len(groups) - 1))
                if inside.any():
                    data.append(error[inside])
                    positions.append(g + (k - (len(strategies) - 1) / 2) * width)
            if data:
                box = ax.boxplot(data, positions=positions, widths=width * 0.9, patch_artist=True,
                                 showfliers=False, manage_ticks=False)
                for patch in box["boxes"]:
                    patch.set_facecolor(f"C{k}")
                ax.plot([], [], color=f"C{k}", linewidth=6, label=label(strategy))
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_xticks(range(len(groups)), groups)
        ax.set_ylabel("error (years)")
        ax.set_title(site, fontsize=9)
    axes[0, 0].legend(fontsize=7, ncol=len(strategies))
    axes[-1, 0].set_xlabel("bone age group")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_privacy(points: list[tuple[str, float, float]], path: Path) -> None:
    """MAD against epsilon per site for the DP runs."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for site in dict.fromkeys(p[0] for p in points):
        xs = [(e, m) for s, e, m in points if s == site]
        xs.sort()
        ax.plot([e for e, _ in xs], [m for _, m in xs], marker="o", label=site)
    ax.set_xscale("log")
    _finish_line_plot(fig, ax, path, "epsilon spent (log scale)", "test MAD (months)", "Privacy / utility per site")


def _finish_line_plot(fig, ax, path: Path, xlabel: str, ylabel: str, title: str) -> None:
    """Labels, legend and grid of a line plot, then write it and free the figure."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
