"""Cross-site scores: each site's own model (site alone, federated then local, federated then calibrated, FedBN,
FedRep) on every site's test split, and the federated model on each; `cross_site.csv` and a heat map.

A model that is good at home and poor elsewhere learnt its site (age range, reader offset, scanner); one that
travels learnt the hand. MADs carry 95 % intervals over test images and seeds.
"""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from core.stats.bootstrap import bootstrap_mean  # noqa: E402
from sim.experiment import Evaluation  # noqa: E402

COLUMNS = ("model_site", "method", "freeze", "test_site", "site_size", "seeds", "mad_months", "mad_ci_low",
           "mad_ci_high", "n")
Cell = tuple[object, str, str, str, str]  # size, method, freeze, model site, test site


def _errors(rows: list[Evaluation]) -> dict[Cell, list[np.ndarray]]:
    cells: dict[Cell, list[np.ndarray]] = {}
    for r in sorted(rows, key=lambda r: r.extra.get("seed", 0)):
        p = r.predictions
        cell = (r.extra.get("site_size"), r.strategy, r.freeze, r.extra["model_site"], r.site)
        cells.setdefault(cell, []).append(np.abs(np.asarray(p.predicted_months, np.float64)
                                                 - np.asarray(p.true_months, np.float64)))
    return cells


def write_cross_site(rows: list[Evaluation], path: Path) -> None:
    """One row per (site size, method, model's site, test site): MAD with its interval over images and seeds."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for (size, method, freeze, owner, target), errors in _errors(rows).items():
            mad = bootstrap_mean(errors)
            writer.writerow((owner, method, freeze, target, "all" if size is None else size, len(errors),
                             f"{mad.estimate:.4f}", f"{mad.low:.4f}", f"{mad.high:.4f}", len(errors[0])))


def plot_cross_site(rows: list[Evaluation], path: Path) -> None:
    """A heat map per method (rows: whose model, columns: whose test split) at the largest site size."""
    cells = _errors(rows)
    largest = max((c[0] for c in cells), key=lambda s: -1 if s is None else s)
    mads = {c[1:]: float(np.mean([e.mean() for e in errors])) for c, errors in cells.items() if c[0] == largest}
    methods = list(dict.fromkeys((m, f) for m, f, _, _ in mads))
    targets = list(dict.fromkeys(t for _, _, _, t in mads))
    columns = min(3, len(methods))
    rows = -(-len(methods) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 3.4 * rows), squeeze=False)
    for ax in axes.flat[len(methods):]:
        ax.axis("off")
    high = max(mads.values())
    for ax, (method, freeze) in zip(axes.flat, methods):
        owners = list(dict.fromkeys(o for m, f, o, _ in mads if (m, f) == (method, freeze)))
        grid = np.array([[mads.get((method, freeze, o, t), np.nan) for t in targets] for o in owners])
        ax.imshow(grid, cmap="viridis_r", vmin=0, vmax=high, aspect="auto")
        for i in range(len(owners)):
            for j in range(len(targets)):
                if np.isfinite(grid[i, j]):
                    ax.text(j, i, f"{grid[i, j]:.1f}", ha="center", va="center", fontsize=7, color="white")
        ax.set_xticks(range(len(targets)), targets, rotation=45, ha="right", fontsize=6)
        ax.set_yticks(range(len(owners)), owners, fontsize=6)
        ax.set_title(method if freeze == "all" else f"{method} ({freeze})", fontsize=8)
        ax.set_xlabel("test split of", fontsize=7)
        ax.set_ylabel("model of", fontsize=7)
    size = "" if largest is None else f", {largest} training images per site"
    fig.suptitle(f"Test MAD (months) of each site's model on every site{size}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def cross_site_lines(rows: list[Evaluation]) -> list[str]:
    """The report's cross-site section: per method, each model's MAD at home against its mean MAD away."""
    cells = _errors(rows)
    lines = ["## Cross-site", "", "Each site's own model scored on every site's test split (`cross_site.csv`); "
             "home: its own test split, away: the mean over the other sites' (months, mean over seeds).", "",
             "| site size | method | model of | home MAD | away MAD |", "|---|---|---|---|---|"]
    seen = dict.fromkeys((c[0], c[1], c[2], c[3]) for c in cells)
    for size, method, freeze, owner in seen:
        home = [np.mean([e.mean() for e in v]) for c, v in cells.items() if c[:4] == (size, method, freeze, owner)
                and c[4] == owner]
        away = [np.mean([e.mean() for e in v]) for c, v in cells.items() if c[:4] == (size, method, freeze, owner)
                and c[4] != owner]
        if owner == "federated" or not home or not away:
            continue
        lines.append(f"| {'all' if size is None else size} | {method} ({freeze}) | {owner} | {home[0]:.2f} | "
                     f"{np.mean(away):.2f} |")
    return lines + ["", "![Cross-site MAD](cross_site.png)", ""]


def held_out_lines(comparisons: dict, strategy: str, freeze: str) -> list[str]:
    """Leave-one-site-out: the federation of the other sites on each site's test split, against the pretrained
    model and calibration (paired differences with 95 % intervals); empty when the run did not leave sites out."""
    from sim.experiment import without_site_name
    from sim.verdicts import label

    alone = (without_site_name(strategy), freeze)
    pairs = [(alone, ("pretrained", "all")), (alone, ("calibrated", "all")),
             ((f"{alone[0]}+calib", freeze), ("calibrated", "all"))]
    lines: list[str] = []
    for size, comparison in comparisons.items():
        for site in comparison.sites:
            for a, b in pairs:
                if comparison.has(site, a) and comparison.has(site, b):
                    d = comparison.difference(site, a, b)
                    verdict = ("better" if d.estimate < 0 else "worse") if d.excludes_zero else "not told apart"
                    at = "" if size is None else f" ({size} training images per site)"
                    lines.append(f"- {site}{at}: {label(a)} minus {label(b)} {d.estimate:+.2f} months (95 % CI "
                                 f"{d.low:+.2f} to {d.high:+.2f}): {verdict}.")
    if not lines:
        return []
    return ["## Leave one site out", "",
            f"For each site, a federation of the other sites ({label(alone)}, `--leave-one-out`) scored on its test "
            "split: what the federated model is worth to a hospital that did not take part, as it is and under the "
            "hospital's own calibration (`+calib`), against the pretrained model and calibrating that.", "",
            *lines, ""]
