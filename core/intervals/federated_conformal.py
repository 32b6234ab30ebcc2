"""The split-conformal interval of a federated model, fitted across sites from score counts, never scores.

Each site scores its calibration split (val) and its test split with the final model (score: the absolute error of
the expected age, as in `core.intervals.conformal`) and releases only the number of scores in each of fixed bins
``[0, w), [w, 2w), ..., [240 - w, 240), [240, inf)`` months, once with the sex given and once with the sex from the
sex head: ``w`` = 0.5 months at a site without DP (`BIN_MONTHS`), 2 months at a private site
(`PRIVATE_BIN_MONTHS`: its noise is added to every bin, so fewer bins add fewer noise counts). The server sums each
site's counts on the coarsest of the sites' grids (the fine bins nest in the coarse ones) and takes the
``ceil((n + 1) * coverage)``-th smallest score as in `core.intervals.conformal.conformal_quantile`, rounded up to
its bin's upper edge: the half-width is at least the exact pooled quantile, so the finite-sample guarantee holds for
the pooled population (marginally over images exchangeable with the sites' calibration images), by at most one bin
(0.5 months without private sites, 2 with) more conservative than pooling the scores themselves. Since every
half-width is a bin edge, each site's coverage on its test split follows exactly from its test counts.

A private site adds Gaussian noise of standard deviation ``sigma`` to every count it releases. One image adds 1 to one
bin of two histograms (its split's sex-given and sex-from-head counts), so the release is the Gaussian mechanism
with L2 sensitivity sqrt(2), accounted in the site's ledger as one step of noise multiplier ``sigma / sqrt(2)`` at
sampling rate 1. The server adds the noisy counts and clips each bin at zero before it reads the quantile: an empty
bin then holds on average sigma_pooled / sqrt(2 pi) counts that no image made, nearly all of them in bins above the
true quantile, so the interval only widens (its coverage holds, conservatively). With few calibration images those
counts outnumber the 10 % tail the quantile is read from and the interval is set by the noise, near the whole age
range: the summary says so (`noise_dominated`, with the counts the noise adds) and the log warns. The calibration
image counts reported are the unclipped sums (unbiased, exact without noise; `calibration_images_sd` is their noise,
sqrt(121) sigma); test coverages from noisy counts are as noisy and are not a measurement of coverage.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pathlib import Path

import numpy as np

from core.intervals.conformal import METHOD, ConformalError, ConformalInterval, minimum_calibration_size
from core.errors import ConfigError
from core.privacy import BudgetExceeded, DPConfig, PrivacyLedger, default_delta
from core.privacy.guard import site_lock
from core.privacy.settings import load_site_noise, settings_path

SCORE_RANGE_MONTHS = 240.0  # bins up to here, then one for everything above
BIN_MONTHS = 0.5  # a site without DP
PRIVATE_BIN_MONTHS = 2.0  # a private site (its noise is per bin)
SENSITIVITY = math.sqrt(2.0)  # one image: one count in each of two histograms


def n_bins(bin_months: float) -> int:
    """Bins of `bin_months` up to `SCORE_RANGE_MONTHS`, plus the one above."""
    return int(round(SCORE_RANGE_MONTHS / bin_months)) + 1


N_BINS = n_bins(PRIVATE_BIN_MONTHS)  # a private site's release: 121 counts


def federated_method(bin_months: float) -> str:
    return f"federated {METHOD}; sites released score counts in {bin_months:g}-month bins"


def bin_months_of(counts: np.ndarray) -> float:
    """The bin width of released counts, from their number (a private site's 121, an open site's 481).

    Raises:
        ConformalError: a number of counts no site releases.
    """
    for width in (BIN_MONTHS, PRIVATE_BIN_MONTHS):
        if len(counts) == n_bins(width):
            return width
    raise ConformalError(f"{len(counts)} score counts: a site releases {n_bins(BIN_MONTHS)} (bins of {BIN_MONTHS:g} "
                         f"months) or {n_bins(PRIVATE_BIN_MONTHS)} (bins of {PRIVATE_BIN_MONTHS:g} months)")


def score_counts(scores: np.ndarray, bin_months: float = BIN_MONTHS) -> np.ndarray:
    """Number of scores (months) in each fixed bin of `bin_months`."""
    bins = n_bins(bin_months)
    index = np.minimum(np.floor(np.asarray(scores, dtype=np.float64) / bin_months), bins - 1).astype(int)
    return np.bincount(index, minlength=bins).astype(np.float64)


def coarsen(counts: np.ndarray, bin_months: float) -> np.ndarray:
    """Counts summed into the wider bins of `bin_months` (each holds a whole number of the narrower ones)."""
    factor = int(round(bin_months / bin_months_of(counts)))
    return np.append(np.asarray(counts[:-1]).reshape(-1, factor).sum(axis=1), counts[-1])


def add_noise(counts: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Counts with Gaussian noise of standard deviation `sigma` on every bin (what a private site releases)."""
    return counts + rng.normal(0.0, sigma, size=counts.shape)


def noise_multiplier(sigma: float) -> float:
    """The release as one step of the (sigma/sensitivity) Gaussian mechanism at sampling rate 1, for the ledger."""
    return sigma / SENSITIVITY


def halfwidth_from_counts(counts: np.ndarray, coverage: float) -> float:
    """The split-conformal half-width from binned counts: the upper edge of the bin holding the rank-th score,
    rank = ceil((n + 1) * coverage) of the n counted.

    Raises:
        ConformalError: fewer (clipped) counts than the coverage needs.
    """
    clipped = np.maximum(np.asarray(counts, dtype=np.float64), 0.0)
    n = int(round(clipped.sum()))
    if n < minimum_calibration_size(coverage):
        raise ConformalError(f"a {coverage:.0%} interval needs at least {minimum_calibration_size(coverage)} "
                             f"calibration images, the sites counted {n}")
    rank = math.ceil((n + 1) * coverage - 1e-9)
    k = int(np.searchsorted(np.cumsum(clipped), rank - 1e-9))
    return (min(k, len(clipped) - 1) + 1) * bin_months_of(clipped)


def coverage_from_counts(counts: np.ndarray, halfwidth: float) -> tuple[float, int]:
    """(share of the counted scores at most `halfwidth`, n); exact when `halfwidth` is a bin edge."""
    clipped = np.maximum(np.asarray(counts, dtype=np.float64), 0.0)
    n = clipped.sum()
    if n <= 0:
        return float("nan"), 0
    inside = clipped[:int(round(halfwidth / bin_months_of(clipped)))].sum()
    return float(inside / n), int(round(n))


@dataclass(frozen=True)
class SiteCounts:
    """What one site released: counts of calibration (val) and test scores, with the sex given and from the head
    (None without a sex head), in bins of `BIN_MONTHS` or `PRIVATE_BIN_MONTHS`, and the noise it added (0 for a
    site without DP)."""

    site: str
    calibration: np.ndarray
    test: np.ndarray
    calibration_head: np.ndarray | None = None
    test_head: np.ndarray | None = None
    sigma: float = 0.0

    @property
    def bin_months(self) -> float:
        return bin_months_of(self.calibration)

    def on(self, bin_months: float) -> "SiteCounts":
        """The same counts in the wider bins of `bin_months`."""
        wide = {name: None if (v := getattr(self, name)) is None else coarsen(v, bin_months)
                for name in ("calibration", "test", "calibration_head", "test_head")}
        return SiteCounts(self.site, sigma=self.sigma, **wide)


def fit_federated(sites: list[SiteCounts], coverage: float = 0.9) -> tuple[ConformalInterval, dict]:
    """The pooled interval and, per site, its own interval (its own counts' quantile, where it has enough images)
    and the test coverage of both.

    Returns:
        The interval for the checkpoint's metadata["conformal"], and metadata["conformal_federated"]: how it was
        fitted, on how many images from how many sites, and the per-site figures.
    """
    if not sites:
        raise ConformalError("no site sent score counts")
    width = max(s.bin_months for s in sites)  # the coarsest grid holds every site's counts
    released = {s.site: s for s in sites}
    sites = [s.on(width) for s in sites]
    pooled = np.sum([s.calibration for s in sites], axis=0)
    halfwidth = halfwidth_from_counts(pooled, coverage)
    head = None
    if all(s.calibration_head is not None for s in sites):
        head = halfwidth_from_counts(np.sum([s.calibration_head for s in sites], axis=0), coverage)
    n = _images(pooled)
    interval = ConformalInterval(coverage, halfwidth, head, n, "val", f"{len(sites)} sites", federated_method(width))
    per_site = {}
    for s in sites:
        own_bins = released[s.site]  # a site's own interval on its own (finer) bins
        n_site = _images(s.calibration)
        try:
            own = halfwidth_from_counts(own_bins.calibration, coverage)
        except ConformalError:
            own = None
        covered, n_test = coverage_from_counts(s.test, halfwidth)
        own_covered = coverage_from_counts(own_bins.test, own)[0] if own is not None else None
        per_site[s.site] = {"calibration_images": n_site, "test_images": n_test, "noise_sigma": s.sigma,
                            "pooled_test_coverage": covered, "own_halfwidth_months": own,
                            "own_test_coverage": own_covered}
    test_all = np.sum([s.test for s in sites], axis=0)
    covered, n_test = coverage_from_counts(test_all, halfwidth)
    sigma = math.sqrt(sum(s.sigma ** 2 for s in sites))
    added = noise_counts(sigma, n_bins(width))
    summary = {"method": federated_method(width), "bin_months": width, "sites": len(sites), "calibration_images": n,
               "calibration_images_sd": math.sqrt(n_bins(width)) * sigma, "test_images": n_test,
               "pooled_test_coverage": covered, "private_sites": sum(s.sigma > 0 for s in sites),
               "per_site": per_site, "noise_counts_added": added, "noise_dominated": added > (1 - coverage) * n}
    return interval, summary


def _images(counts: np.ndarray) -> int:
    """The images behind released counts: their unclipped sum (exact without noise, unbiased with it)."""
    return max(int(round(float(np.sum(counts)))), 0)


def noise_counts(sigma: float, bins: int = N_BINS) -> float:
    """Counts that clipping pooled noise of standard deviation `sigma` at zero adds over `bins` bins, on average:
    bins * E[max(0, N(0, sigma^2))] (an upper bound: bins that hold images gain less)."""
    return bins * sigma / math.sqrt(2 * math.pi)


def account_release(ledger_path: Path, dp: DPConfig, sigma: float, num_examples: int) -> tuple[float, float]:
    """Record a private site's release of noisy counts in its ledger, under its lock, before anything leaves.

    Returns:
        (epsilon after the release, delta), at the delta the site's training uses.

    Raises:
        BudgetExceeded: the release would take the site past its budget (nothing recorded, nothing released).
    """
    if sigma <= 0:
        raise ConfigError(f"dp-interval-noise must be positive for a private site, got {sigma}")
    ledger = PrivacyLedger(ledger_path)
    with site_lock(ledger):
        stored = load_site_noise(settings_path(ledger))
        delta = dp.delta or (stored.delta if stored is not None else default_delta(max(num_examples, 1)))
        current = ledger.epsilon(delta, dp.accountant)
        projected = ledger.projected_epsilon(noise_multiplier(sigma), 1.0, 1, delta, dp.accountant)
        if projected > dp.budget:
            raise BudgetExceeded(current, projected, dp.budget)
        ledger.record(noise_multiplier(sigma), 1.0, 1, release="interval score counts", count_sigma=sigma)
    return projected, delta
