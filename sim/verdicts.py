"""From per-image errors to verdicts: MAD with 95 % intervals over images and seeds, paired differences,
and the three questions of the comparison answered in words (which freeze spec is best, does federation beat
each site alone, how close does it come to pooling), per site and over all sites.

Every method is evaluated on the same test images of a site, in the same order, for every seed, so a
difference between two methods is paired image by image (`core.stats.bootstrap.paired_difference`). "All sites" pools
the sites' test images (each seed's errors concatenated in site order).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.stats.bootstrap import Interval, bootstrap_mean, paired_difference
from sim.experiment import Evaluation, fedbn_name

ALL = "all sites"
Key = tuple[str, str]  # (strategy, freeze)
MIN_RANKED_IMAGES = 30  # test images per seed over all sites below which nothing is ranked
UNTRAINED = (("pretrained", "all"), ("calibrated", "all"))


def label(key: Key) -> str:
    strategy, freeze = key
    return strategy if freeze == "all" else f"{strategy} (freeze {freeze})"


class Comparison:
    """Per-image absolute errors of every (site, method, seed)."""

    def __init__(self, rows: list[Evaluation]) -> None:
        self.sites = list(dict.fromkeys(r.site for r in rows))
        self.keys: list[Key] = list(dict.fromkeys((r.strategy, r.freeze) for r in rows))
        self.seeds = sorted({int(r.extra.get("seed", 0)) for r in rows})
        self._errors: dict[tuple[str, Key, int], np.ndarray] = {}
        for r in rows:
            p = r.predictions
            self._errors[(r.site, (r.strategy, r.freeze), int(r.extra.get("seed", 0)))] = np.abs(
                np.asarray(p.predicted_months, dtype=np.float64) - np.asarray(p.true_months, dtype=np.float64))

    def has(self, site: str, key: Key) -> bool:
        sites = self.sites if site == ALL else [site]
        return all((s, key, seed) in self._errors for s in sites for seed in self.seeds)

    def errors(self, site: str, key: Key) -> list[np.ndarray]:
        """One array per seed (all sites: the sites' images concatenated)."""
        sites = self.sites if site == ALL else [site]
        return [np.concatenate([self._errors[(s, key, seed)] for s in sites]) for seed in self.seeds]

    def mad(self, site: str, key: Key) -> Interval:
        return bootstrap_mean(self.errors(site, key))

    def difference(self, site: str, a: Key, b: Key) -> Interval:
        """MAD of a minus MAD of b on the same images (negative: a is better)."""
        return paired_difference(self.errors(site, a), self.errors(site, b))


@dataclass(frozen=True)
class Verdict:
    site: str
    a: Key
    b: Key
    difference: Interval

    def words(self) -> str:
        d = self.difference
        if d.low == d.high == 0.0:
            return (f"{label(self.a)} and {label(self.b)} give the same predictions on every test image (difference "
                    f"0.00): nothing that differs between the two methods changed what these images see")
        if not d.excludes_zero:
            return (f"{label(self.a)} and {label(self.b)} cannot be told apart ({d.estimate:+.2f} months, "
                    f"95 % CI {d.low:+.2f} to {d.high:+.2f})")
        better, worse = (self.a, self.b) if d.estimate < 0 else (self.b, self.a)
        return (f"{label(better)} is better than {label(worse)} by {abs(d.estimate):.2f} months "
                f"(95 % CI of the difference {d.low:+.2f} to {d.high:+.2f})")


def _verdicts(comparison: Comparison, a: Key, b: Key) -> list[Verdict]:
    return [Verdict(site, a, b, comparison.difference(site, a, b)) for site in [ALL, *comparison.sites]
            if comparison.has(site, a) and comparison.has(site, b)]


def _block(title: str, verdicts: list[Verdict]) -> list[str]:
    lines = [f"**{title}**", ""]
    for v in verdicts:
        lines.append(f"- {v.site}: {v.words()}" + (" - significant." if v.difference.excludes_zero else "."))
    return lines + [""]


def _pooling_share(spec: str, got: float, gain: float) -> str:
    """How much of pooling's MAD reduction over the pretrained model federation recovers (point estimates), in
    words where a share would mislead (more than all of it, or a loss)."""
    if got > gain:
        return (f"Federation (freeze {spec}) reduces the MAD below the pretrained model's by more than pooling all "
                f"images does ({got:.2f} against {gain:.2f} months).")
    if got <= 0:
        return (f"Federation (freeze {spec}) does not reduce the MAD below the pretrained model's ({-got:.2f} months "
                f"worse), where pooling all images reduces it by {gain:.2f} months.")
    return (f"Federation (freeze {spec}) recovers {100 * got / gain:.0f} % of the MAD reduction that pooling all "
            f"images gives over the pretrained model ({got:.2f} of {gain:.2f} months).")


def answers(comparison: Comparison, strategy: str, freeze_specs: tuple[str, ...], pooled_freeze: str) -> str:
    """The three answers, per site and over all sites, plus learnability and the detectable difference."""
    federated = [(strategy, spec) for spec in freeze_specs if comparison.has(ALL, (strategy, spec))]
    lines: list[str] = []
    if not federated:
        return "No federated run finished: nothing to answer."
    best = min(federated, key=lambda k: comparison.mad(ALL, k).estimate)
    lines += ranking(comparison, federated, best)
    q1 = [v for other in federated if other != best for v in _verdicts(comparison, other, best)]
    lines += _block(f"1. Which freeze spec is best? (each spec against freeze {best[1]})", q1)
    lines += _block("2. Does federation beat each site alone? (same freeze spec)",
                    _verdicts(comparison, best, ("site-alone", best[1])))
    pooled = ("pooled", pooled_freeze)
    lines += _block("3. How close does federation come to pooling all images?", _verdicts(comparison, best, pooled))
    pre = ("pretrained", "all")
    if comparison.has(ALL, pooled) and comparison.has(ALL, pre):
        gain = comparison.mad(ALL, pre).estimate - comparison.mad(ALL, pooled).estimate
        got = comparison.mad(ALL, pre).estimate - comparison.mad(ALL, best).estimate
        if gain > 0:
            lines += [_pooling_share(best[1], got, gain), ""]
    pairs = [(("calibrated", "all"), pre)] + [(key, (strategy, key[1])) for key in comparison.keys
                                               if key[0] == f"{strategy}+local"]
    others = [v for a, b in pairs for v in _verdicts(comparison, a, b)]
    if others:
        lines += _block("Also: calibration against the pretrained model, local fine-tuning after federation "
                        "against federation", others)
    fedbn = [(key, other) for key in comparison.keys if key[0] == fedbn_name(strategy)
             for other in ((strategy, key[1]), ("site-alone", key[1]))]
    kept = [v for a, b in fedbn for v in _verdicts(comparison, a, b)]
    if kept:
        lines += _block("FedBN (each site keeps its own normalisation layers) against plain federation and against "
                        "each site alone (same freeze spec)", kept)
    lines += learnability(comparison)
    if len(federated) > 1 and test_images(comparison) >= MIN_RANKED_IMAGES:
        widths = [comparison.difference(ALL, a, b) for a in federated for b in federated if a < b]
        mdd = float(np.mean([(w.high - w.low) / 2 for w in widths]))
        lines += [f"Smallest detectable difference: paired differences between federated freeze specs over all "
                  f"sites have 95 % intervals of +-{mdd:.2f} months on average; smaller true differences cannot be "
                  f"told from noise in this run ({len(comparison.seeds)} seed(s)).", ""]
    return "\n".join(lines)


def test_images(comparison: Comparison) -> int:
    """Test images per seed over all sites (every method is evaluated on the same ones)."""
    keys = [k for k in comparison.keys if comparison.has(ALL, k)]
    return len(comparison.errors(ALL, keys[0])[0]) if keys else 0


def ranking(comparison: Comparison, federated: list[Key], best: Key) -> list[str]:
    """Name a best freeze spec only when the data support it; say when the untrained models do as well."""
    n = test_images(comparison)
    lowest = f"freeze **{best[1]}** has the lowest federated MAD ({comparison.mad(ALL, best)} months, 95 % CI)"
    if n < MIN_RANKED_IMAGES:
        lines = [f"**Too few test images to rank anything**: {n} over all sites (at least {MIN_RANKED_IMAGES} are "
                 f"needed); {lowest}, but no method is called best and no detectable difference is estimated. "
                 "The intervals below are shown for completeness.", ""]
    else:
        ties = [other for other in federated if other != best
                and not comparison.difference(ALL, other, best).excludes_zero]
        if ties:
            lines = [f"No federated freeze spec is shown best by these data: {lowest}, but it cannot be told apart "
                     f"from freeze {', '.join(t[1] for t in ties)}.", ""]
        else:
            lines = [f"Over all sites the best federated freeze spec is **{best[1]}** "
                     f"(MAD {comparison.mad(ALL, best)} months, 95 % CI).", ""]
    untrained = [key for key in UNTRAINED if comparison.has(ALL, key)
                 and comparison.mad(ALL, key).estimate <= comparison.mad(ALL, best).estimate]
    if untrained:
        names = " and ".join(f"the {key[0]} model (MAD {comparison.mad(ALL, key)} months)" for key in untrained)
        lines += [f"**Training did not help in this run**: {names} did at least as well as every federated freeze "
                  f"spec, without any training at the sites.", ""]
    return lines


def learnability(comparison: Comparison) -> list[str]:
    """Flag a site where no adapted method beats the unadapted model significantly."""
    pre = ("pretrained", "all")
    lines = []
    for site in comparison.sites:
        if not comparison.has(site, pre):
            continue
        gains = [comparison.difference(site, key, pre) for key in comparison.keys
                 if key != pre and comparison.has(site, key)]
        if gains and not any(g.excludes_zero and g.estimate < 0 for g in gains):
            lines.append(f"- {site}: no method beats the pretrained model significantly; this site cannot tell "
                         "the methods apart (not learnable in this run).")
    if not lines:
        return ["Every site is learnable: at least one method beats the pretrained model significantly there.", ""]
    return ["**Learnability**", "", *lines, ""]
