"""What a simulation leaves behind: results.csv, report.md (Table 2 per site) and plots."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from core.metrics import AGE_GROUPS_YEARS, age_group_label  # noqa: E402
from sim.experiment import Evaluation  # noqa: E402

logger = logging.getLogger("ossifl.sim")
RESULT_COLUMNS = ("site", "strategy", "freeze", "mad_months", "rmse_months", "accuracy", "accuracy_1y",
                  "bias_months", "n", "epsilon")


def write_results(rows: list[Evaluation], path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(RESULT_COLUMNS)
        for r in rows:
            m = r.metrics
            writer.writerow((r.site, r.strategy, r.freeze, f"{m['mad_months']:.4f}", f"{m['rmse_months']:.4f}",
                             f"{m['accuracy']:.4f}", f"{m['accuracy_1y']:.4f}", f"{m['bias_months']:.4f}", m["n"],
                             "" if r.extra.get("epsilon") is None else f"{r.extra['epsilon']:.4f}"))


def table(rows: list[Evaluation]) -> str:
    """A markdown table per site: strategy rows with MAD/RMSE (months and years) and accuracy."""
    lines: list[str] = []
    for site in dict.fromkeys(r.site for r in rows):
        site_rows = [r for r in rows if r.site == site]
        best = min((r for r in site_rows if r.strategy.startswith("fed") and "_dp-" not in r.strategy), key=lambda r: r.metrics["mad_months"],
                   default=None)
        lines += [f"### {site} (test n = {site_rows[0].metrics['n']})", "",
                  "| strategy | frozen blocks | MAD (mo) | MAD (y) | RMSE (mo) | accuracy | within 1 y | bias (mo) |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in site_rows:
            m = r.metrics
            mark = " **best federated**" if r is best else ""
            eps = f" (epsilon {r.extra['epsilon']:.2f})" if r.extra.get("epsilon") is not None else ""
            lines.append(f"| {r.strategy}{eps}{mark} | {r.freeze} | {m['mad_months']:.2f} | {m['mad_months'] / 12:.3f} "
                         f"| {m['rmse_months']:.2f} | {m['accuracy']:.3f} | {m['accuracy_1y']:.3f} "
                         f"| {m['bias_months']:+.2f} |")
        lines.append("")
    return "\n".join(lines)


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


def plot_age_groups(rows: list[Evaluation], strategies: list[str], path: Path) -> None:
    """Signed error by age group per site (the paper's Fig. 6), boxes per strategy."""
    sites = list(dict.fromkeys(r.site for r in rows))
    fig, axes = plt.subplots(len(sites), 1, figsize=(9, 2.6 * len(sites)), squeeze=False)
    groups = [age_group_label(lo, hi) for lo, hi in AGE_GROUPS_YEARS]
    width = 0.8 / max(len(strategies), 1)
    for ax, site in zip(axes[:, 0], sites):
        for k, strategy in enumerate(strategies):
            match = [r for r in rows if r.site == site and r.strategy == strategy]
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
                ax.plot([], [], color=f"C{k}", linewidth=6, label=strategy)
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
