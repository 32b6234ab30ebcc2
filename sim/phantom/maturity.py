"""When each ossification centre appears, grows, caps and fuses, as a function of bone age and sex.

Timings follow ``anatomy.md`` (Gilsanz & Ratib; radiopaedia). Bone age is a Greulich-Pyle age and the
atlas has separate standards per sex, so a boy and a girl with the same bone age do *not* look alike:
a boy's bone age is first mapped onto a common maturity scale (the girls' scale, in months) through
the anchor points of the table below, and every indicator is a function of that maturity. Girls thus
show each stage at a younger bone age *and*, since bone age tracks chronological age, at a younger
chronological age. Everything here is a pure function of scalars; individual variation enters as the
``jitter`` (months) added per centre by ``anatomy``.
"""

from __future__ import annotations

import numpy as np

# Boys' bone age (months) -> girls' maturity (months): capitate, triquetrum, lunate/ulna, scaphoid,
# pisiform, start of phalangeal fusion, radius fusion, adult.
_BOY_ANCHORS = np.array([0.0, 4.0, 30.0, 72.0, 138.0, 180.0, 216.0, 264.0])
_GIRL_ANCHORS = np.array([0.0, 2.5, 21.0, 50.0, 111.0, 168.0, 198.0, 246.0])

# Carpal onset on the girls' scale (months), in the fixed order of appearance.
CARPAL_ONSET: dict[str, float] = {
    "capitate": 2.0, "hamate": 2.5, "triquetrum": 21.0, "lunate": 33.0,
    "scaphoid": 48.0, "trapezium": 48.0, "trapezoid": 50.0, "pisiform": 111.0,
}

# Epiphyses of the tubular bones: onset, width equal to the metaphysis, fusion start and end (girls).
EPIPHYSIS_TIMING: dict[str, tuple[float, float, float, float]] = {
    "proximal": (12.0, 90.0, 166.0, 178.0),   # proximal phalanges
    "metacarpal": (15.0, 96.0, 166.0, 178.0),
    "middle": (18.0, 96.0, 172.0, 184.0),
    "distal": (21.0, 90.0, 156.0, 168.0),     # distal phalanges fuse first
    "radius": (12.0, 110.0, 186.0, 204.0),    # radius and ulna fuse last
    "ulna": (60.0, 120.0, 184.0, 200.0),
}
# Middle finger first, fifth last (months added to the onset, per ray; ray 1 is the thumb).
RAY_DELAY: dict[int, float] = {1: 2.0, 2: 1.0, 3: 0.0, 4: 1.5, 5: 3.0}

ADULT_MATURITY = 210.0  # girls' months at which every centre has its final size and is fused
CAPPING_WIDTH = 1.12    # epiphysis width / metaphysis width once capping is complete


def _unit(x: float) -> float:
    return min(max(float(x), 0.0), 1.0)


def maturity(bone_age_months: float, male: bool) -> float:
    """Common maturity (girls' months) of a subject with this bone age and sex."""
    if not male:
        return float(bone_age_months)
    return float(np.interp(bone_age_months, _BOY_ANCHORS, _GIRL_ANCHORS))


def carpal_size(m: float, onset: float) -> float:
    """Size of a carpal centre as a fraction of its adult size (0: not yet ossified)."""
    if m < onset:
        return 0.0
    growth = min(1.0, (m - onset) / max(ADULT_MATURITY - 30.0 - onset, 12.0))
    return 0.18 + 0.82 * growth ** 0.65


def epiphysis_width(m: float, onset: float, equal: float) -> float:
    """Epiphysis width relative to its metaphysis: 0 before onset, ~0.3 at onset, 1 at ``equal``, then capping."""
    if m < onset:
        return 0.0
    if m < equal:
        return 0.3 + 0.7 * ((m - onset) / (equal - onset)) ** 0.8
    return min(CAPPING_WIDTH, 1.0 + (CAPPING_WIDTH - 1.0) * (m - equal) / 60.0)


def fusion(m: float, start: float, end: float) -> float:
    """Progress of physeal fusion: 0 open growth plate, 1 fused (physis line gone)."""
    return _unit((m - start) / (end - start))


def growth(m: float) -> float:
    """Fraction of adult proportions reached (bone length, width, relative finger length)."""
    return _unit(m / 192.0)


def bone_density(m: float) -> float:
    """Mineral density of bone relative to an adult's."""
    return 0.5 + 0.5 * _unit(m / 180.0) ** 0.7


def cartilage(m: float) -> float:
    """Unossified fraction at each end of a tubular bone (large in infants, gone by 5 y)."""
    return 0.12 * (1.0 - _unit(m / 60.0))


def hand_length_cm(m: float, male: bool) -> float:
    """Physical hand length; only used for framing, so small children fill less of the image."""
    adult = 19.0 if male else 17.5
    return adult * (0.36 + 0.64 * _unit(m / 190.0) ** 0.8)


def indicators(bone_age_months: float, male: bool) -> dict[str, float]:
    """Indicators of an average subject (no individual scatter), as a radiologist would read them.

    Returns:
        carpals: number of ossified carpal centres (0-8); carpal_size: their mean size (fraction of adult);
        epiphysis_width: mean epiphysis/metaphysis width ratio over the tubular bones (0 if absent);
        fusion: mean physeal fusion (0 open, 1 fused); density: bone density relative to an adult.
    """
    m = maturity(bone_age_months, male)
    sizes = [carpal_size(m, onset) for onset in CARPAL_ONSET.values()]
    timings = EPIPHYSIS_TIMING.values()
    return {
        "carpals": float(sum(size > 0.0 for size in sizes)),
        "carpal_size": float(np.mean(sizes)),
        "epiphysis_width": float(np.mean([epiphysis_width(m, t[0], t[1]) for t in timings])),
        "fusion": float(np.mean([fusion(m, t[2], t[3]) for t in timings])),
        "density": bone_density(m),
    }
