"""The site-size sweep in the report: MAD against training images per site, and where federating stops paying.

Every size is its own comparison (`Comparison` of the rows of that size): differences are paired on the same test
images, which do not change with the size. A method "beats" another at a size when the 95 % interval of the paired
difference lies wholly below zero, is worse than it when the interval lies wholly above zero, and is level otherwise.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from core.stats.bootstrap import Interval  # noqa: E402
from sim.experiment import Evaluation  # noqa: E402
from sim.verdicts import ALL, Comparison, Key, label  # noqa: E402


def by_size(rows: list[Evaluation]) -> dict[int | None, Comparison]:
    """One comparison per site size (None: the sites as they are), smallest size first."""
    sizes = sorted({r.extra.get("site_size") for r in rows}, key=lambda s: -1 if s is None else s)
    return {size: Comparison([r for r in rows if r.extra.get("site_size") == size]) for size in sizes}


def size_keys(strategy: str, freeze: str) -> list[Key]:
    """The methods the sweep plots, in legend order."""
    return [("pretrained", "all"), ("calibrated", "all"), ("site-alone", freeze), (strategy, freeze),
            (f"{strategy}+local", freeze), (f"{strategy}+calib", freeze), (f"{strategy}+fedbn", freeze),
            (f"{strategy}+fedrep", freeze), ("pooled", freeze)]


def plot_sizes(comparisons: dict[int | None, Comparison], keys: list[Key], path) -> None:
    """MAD (95 % interval as error bars) against training images per site, one panel per site and one for all."""
    sizes = [s for s in comparisons if s is not None]
    sites = [*next(iter(comparisons.values())).sites, ALL]
    fig, axes = plt.subplots(1, len(sites), figsize=(3.6 * len(sites), 3.6), squeeze=False, sharey=True)
    for ax, site in zip(axes[0], sites):
        for k, key in enumerate(keys):
            points = [(s, comparisons[s].mad(site, key)) for s in sizes if comparisons[s].has(site, key)]
            if not points:
                continue
            xs = [s * (1 + 0.03 * (k - len(keys) / 2)) for s, _ in points]  # a small offset keeps bars apart
            ys = [m.estimate for _, m in points]
            errors = [[m.estimate - m.low for _, m in points], [m.high - m.estimate for _, m in points]]
            ax.errorbar(xs, ys, yerr=errors, marker="o", markersize=3, capsize=2, linewidth=1, label=label(key),
                        color=f"C{k}")
        ax.set_xscale("log")
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.minorticks_off()
        ax.set_title(site, fontsize=9)
        ax.set_xlabel("training images per site")
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("test MAD (months), 95 % CI")
    axes[0, -1].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def crossover(comparisons: dict[int | None, Comparison], site: str, method: Key, alone: Key) -> str:
    """Where `method` stops beating `alone` at `site` as the sites grow, in words with the intervals behind it; for a
    method that never beats it, where it stops being level with it (the reverse crossover), if it does."""
    sizes = [s for s in comparisons if s is not None and comparisons[s].has(site, method)
             and comparisons[s].has(site, alone)]
    if not sizes:
        return f"{label(method)}: not run at these sizes"
    diffs = {s: comparisons[s].difference(site, method, alone) for s in sizes}
    wins = [s for s in sizes if diffs[s].excludes_zero and diffs[s].estimate < 0]
    shown = "; ".join(f"{s}: {_interval(diffs[s])}" for s in sizes)
    if not wins:
        losses = [s for s in sizes if diffs[s].excludes_zero and diffs[s].estimate > 0]
        return f"{label(method)} {_never_wins(sizes, losses, diffs)} (difference in months [95 % CI] by size: {shown})"
    if len(wins) == len(sizes):
        return (f"{label(method)} beats the site alone at every size tried, up to {sizes[-1]} images: no crossover "
                f"found within the sweep ({shown})")
    first_loss = next(s for s in sizes if s not in wins)
    below = [s for s in sizes if s < first_loss]
    if not below:
        return (f"{label(method)} does not beat the site alone at the smallest size ({first_loss}) yet does at "
                f"{', '.join(map(str, wins))}: no clean crossover ({shown})")
    tail = "" if all(s not in wins for s in sizes if s > first_loss) else " (not monotone: it wins again above)"
    return (f"{label(method)} beats the site alone up to {below[-1]} images and no longer from {first_loss} on"
            f"{tail} (difference in months [95 % CI] by size: {shown})")


def _interval(d: Interval) -> str:
    return f"{d.estimate:+.2f} [{d.low:+.2f}, {d.high:+.2f}]"


def _never_wins(sizes: list[int], losses: list[int], diffs: dict[int, Interval]) -> str:
    """A method that beats the site alone at no size: level throughout, worse throughout, level at the small sizes
    and worse from some size on (that size named, with its interval), or a mixture."""
    if not losses:
        return "beats the site alone at no size tried and is level with it at every one: no crossover found"
    if len(losses) == len(sizes):
        return "beats the site alone at no size tried and is worse at every one: no crossover found"
    first = losses[0]
    level = [s for s in sizes if s not in losses]
    if first == sizes[0]:
        return (f"beats the site alone at no size tried; worse at {', '.join(map(str, losses))}, level at "
                f"{', '.join(map(str, level))}: no clean crossover")
    tail = "" if all(s in losses for s in sizes if s > first) else (
        f" (not monotone: level again at {', '.join(str(s) for s in level if s > first)})")
    below = [s for s in sizes if s < first]
    return (f"beats the site alone at no size tried; level with it up to {below[-1]} images and worse from {first} on "
            f"({first}: {_interval(diffs[first])}){tail}: reverse crossover at {first} images")


def crossover_lines(comparisons: dict[int | None, Comparison], strategy: str, freeze: str,
                    freeze_specs: tuple[str, ...] = ()) -> list[str]:
    """Over all sites and per site, the crossover of federating (at the baseline freeze spec `freeze` and at each of
    `freeze_specs`, each against the site alone at the same spec) and of federating then fine-tuning locally (at
    the baseline spec) against the site alone; a method this run did not train is left out."""
    sites = [ALL, *next(iter(comparisons.values())).sites]
    pairs = [((strategy, spec), ("site-alone", spec)) for spec in dict.fromkeys((freeze, *freeze_specs))]
    pairs.append(((f"{strategy}+local", freeze), ("site-alone", freeze)))
    lines = ["## Site size: when federating stops paying", "",
             "Paired differences of MAD (method minus site alone, months; negative: the method is better) at each "
             "size, 95 % intervals over test images and seeds. A method beats the site alone where the interval lies "
             "wholly below 0, is worse where it lies wholly above 0 and is level otherwise; a reverse crossover is the "
             "size from which a method that was level becomes worse.", ""]
    for site in sites:
        for method, alone in pairs:
            if any(c.has(site, method) and c.has(site, alone) for size, c in comparisons.items() if size is not None):
                lines.append(f"- {site}: {crossover(comparisons, site, method, alone)}.")
    return lines + ["", "![MAD against site size](mad_by_site_size.png)", ""]
