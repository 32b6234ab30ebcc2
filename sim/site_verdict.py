"""The report's last section: what each hospital should do, at its size, and the paired difference that decides it.

Options, cheapest first: calibrate only (a line on the pretrained model's outputs), stay alone (fine-tune alone),
federate, federate then fine-tune, personalise (the federated model with the site's own calibration, norm layers or
head). The rule, on paired differences over the same test images (95 % intervals over images and seeds):

1. The local choice: stay alone if it beats calibrate-only significantly, else calibrate only (it costs least);
   where the pretrained model as it is beats calibration significantly, the pretrained model takes calibration's
   place in this step (the site alone must then beat the pretrained model).
2. A federated option qualifies when it beats the local choice significantly. Among those that qualify the one with
   the lowest MAD is the best; the verdict is the cheapest qualifying option that the best does not beat
   significantly (a costlier option must earn its cost).
3. When none qualifies, the verdict is the local choice, with the best federated option's difference beside it.

Where the pretrained model as it is beats calibration significantly and nothing beats it, the line says to use the
pretrained model as it is rather than name calibration or a site alone that is no better than it.
"""

from __future__ import annotations

from sim.verdicts import Comparison, Key, label

LOCAL = ("calibrate only", "stay alone")


def site_options(strategy: str, freeze: str) -> list[tuple[str, Key]]:
    """(verdict word, method) of every option, cheapest first."""
    return [("calibrate only", ("calibrated", "all")), ("stay alone", ("site-alone", freeze)),
            ("federate", (strategy, freeze)), ("federate then fine-tune", (f"{strategy}+local", freeze)),
            *(("personalise", (f"{strategy}+{kind}", freeze)) for kind in ("calib", "fedbn", "fedrep"))]


def _diff(comparison: Comparison, site: str, a: Key, b: Key) -> str:
    d = comparison.difference(site, a, b)
    return f"{label(a)} minus {label(b)} {d.estimate:+.2f} months (95 % CI {d.low:+.2f} to {d.high:+.2f})"


def _wins(comparison: Comparison, site: str, a: Key, b: Key) -> bool:
    d = comparison.difference(site, a, b)
    return d.excludes_zero and d.estimate < 0


def site_verdict(comparison: Comparison, site: str, strategy: str, freeze: str) -> str:
    """One line: the verdict for `site` and the difference (with its interval) that decides it."""
    options = [(word, key) for word, key in site_options(strategy, freeze) if comparison.has(site, key)]
    local = dict((w, k) for w, k in options if w in LOCAL)
    if len(local) < 2:
        return f"{site}: no verdict (calibration or the site-alone baseline is missing from this run)"
    calibrate, alone = local["calibrate only"], local["stay alone"]
    pretrained = ("pretrained", "all")
    reference_word, reference, reasons = "calibrate only", calibrate, []
    if comparison.has(site, pretrained) and _wins(comparison, site, pretrained, calibrate):
        reference_word, reference = "use the pretrained model as it is", pretrained  # calibrating would make it worse
        reasons.append(_diff(comparison, site, pretrained, calibrate))
    base_word, base = ("stay alone", alone) if _wins(comparison, site, alone, reference) else (reference_word,
                                                                                              reference)
    local_reason = "; ".join([_diff(comparison, site, alone, reference), *reasons])
    federated = [(w, k) for w, k in options if w not in LOCAL]
    qualified = [(w, k) for w, k in federated if _wins(comparison, site, k, base)]
    if not qualified:
        if not federated:
            return f"{site}: **{base_word}** ({local_reason}; no federated option in this run)"
        best = min(federated, key=lambda o: comparison.mad(site, o[1]).estimate)
        return (f"{site}: **{base_word}**: no federated option beats it significantly (best: "
                f"{_diff(comparison, site, best[1], base)}; {local_reason})")
    best = min(qualified, key=lambda o: comparison.mad(site, o[1]).estimate)
    word, key = next((w, k) for w, k in qualified if k == best[1] or not _wins(comparison, site, best[1], k))
    line = f"{site}: **{word}** ({label(key)}, MAD {comparison.mad(site, key)}): {_diff(comparison, site, key, base)}"
    if key != best[1]:
        line += f"; the lowest MAD, {label(best[1])}, is not significantly better ({_diff(comparison, site, best[1], key)})"
    return line


def verdict_section(comparisons: dict, strategy: str, freeze: str, counts: dict) -> list[str]:
    """The "Verdict" section: one line per site (per site size when the run sweeps sizes)."""
    lines = ["## Verdict", "", "Per site: calibrate only / stay alone / federate / federate then fine-tune / "
             "personalise, by the rule in `sim/site_verdict.py` (a costlier option must beat the cheaper one "
             "significantly; paired differences, 95 % intervals over test images and seeds).", ""]
    for size, comparison in comparisons.items():
        if size is not None:
            lines += [f"**{size} training images per site**", ""]
        for site in comparison.sites:
            n = counts.get((size, site))
            at = f" [{n} training images]" if n is not None else ""
            lines.append(f"- {site_verdict(comparison, site, strategy, freeze).replace(':', at + ':', 1)}")
        lines.append("")
    return lines
