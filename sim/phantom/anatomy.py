"""A left hand and wrist, postero-anterior, built from bone age, sex and individual variation.

Hand frame: x towards the thumb, y towards the fingertips, unit = adult hand length (wrist crease to
the tip of the middle finger). Bones are drawn as tubes and ellipsoids (``render.Shapes``); the soft
tissue is a separate silhouette. Every maturity indicator comes from ``maturity`` evaluated at the
subject's maturity plus a per-centre jitter, so two subjects with the same bone age differ a little,
as real hands do, and nothing is looked up from the label.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim.phantom import maturity as mat
from sim.phantom.render import Shapes

# Adult lengths (hand lengths) per ray: metacarpal, proximal, middle, distal phalanx (thumb: no middle).
LENGTHS = {1: (0.20, 0.15, 0.0, 0.11), 2: (0.34, 0.20, 0.12, 0.08), 3: (0.32, 0.22, 0.14, 0.085),
           4: (0.29, 0.205, 0.13, 0.085), 5: (0.27, 0.16, 0.095, 0.075)}
# Shaft half-widths: metacarpal, proximal, middle, distal phalanx.
RADII = {1: (0.025, 0.023, 0.0, 0.018), 2: (0.022, 0.021, 0.017, 0.013), 3: (0.023, 0.022, 0.018, 0.014),
         4: (0.020, 0.020, 0.016, 0.013), 5: (0.018, 0.017, 0.0145, 0.012)}
MC_BASE = {1: (0.135, 0.160), 2: (0.070, 0.190), 3: (0.015, 0.195), 4: (-0.040, 0.185), 5: (-0.085, 0.170)}
MC_ANGLE = {1: 32.0, 2: 7.0, 3: 0.0, 4: -7.0, 5: -14.0}  # degrees from +y towards the thumb
# Carpal centres: adult centre (x, y), semi-axes (a, b), angle of a (degrees from +x).
CARPALS = {
    "capitate": ((0.010, 0.125), (0.040, 0.062), 10.0), "hamate": ((-0.058, 0.125), (0.038, 0.054), -15.0),
    "triquetrum": ((-0.070, 0.058), (0.034, 0.028), 30.0), "lunate": ((0.000, 0.045), (0.040, 0.034), 0.0),
    "scaphoid": ((0.078, 0.052), (0.056, 0.031), 55.0), "trapezium": ((0.118, 0.125), (0.036, 0.042), 30.0),
    "trapezoid": ((0.068, 0.142), (0.028, 0.034), 15.0), "pisiform": ((-0.080, 0.076), (0.022, 0.022), 0.0),
}
# Distal radius and ulna: end of the slot (x, y), shaft half-width, metaphysis flare, epiphysis tilt (deg).
FOREARM = {"radius": ((0.060, 0.000), 0.040, 1.9, -14.0), "ulna": ((-0.088, -0.020), 0.026, 1.5, 0.0)}
FOREARM_LENGTH = 0.45
TIMING_SD = 4.0  # months of per-centre timing scatter


@dataclass
class Hand:
    """One subject's hand in the hand frame: shapes, key points and physical size."""

    bones: Shapes
    soft: Shapes
    keypoints: np.ndarray  # (3, 2): tip of 3rd distal phalanx, tip of thumb, centre of capitate
    length_cm: float


def _unit(angle_deg: float) -> np.ndarray:
    a = np.radians(angle_deg)
    return np.array([np.sin(a), np.cos(a)])


def _across(u: np.ndarray) -> float:
    """Angle (radians from +x) of the direction across a bone running along ``u``."""
    return float(np.arctan2(-u[0], u[1]))


class _Builder:
    """Builds one hand; holds the subject's maturity, density and random draws."""

    def __init__(self, m: float, rng: np.random.Generator) -> None:
        self.m, self.rng = m, rng
        self.bones, self.soft = Shapes(), Shapes()
        g = mat.growth(m)
        self.density = mat.bone_density(m) * rng.normal(1.0, 0.05)
        self.cart = mat.cartilage(m)
        self.width = (0.78 + 0.22 * g) * rng.normal(1.0, 0.06)
        self.finger = (0.86 + 0.14 * g) * rng.normal(1.0, 0.03)
        self.chubby = (1.3 - 0.3 * g) * rng.normal(1.0, 0.08)

    def local_m(self) -> float:
        return self.m + self.rng.normal(0.0, TIMING_SD)

    def tubular(self, base: np.ndarray, u: np.ndarray, length: float, r: float, timing: tuple[float, ...],
                proximal_epi: bool, *, epi_depth: float = 1.1, head: float = 1.0, flare: float = 1.3,
                waist: float = 0.2, tilt: float = 0.0) -> np.ndarray:
        """Draw a tubular bone in the slot ``base -> base + length*u``; return its far (non-physeal) end."""
        onset, equal, f0, f1 = timing
        m = self.local_m()
        w, fused = mat.epiphysis_width(m, onset, equal), mat.fusion(m, f0, f1)
        joint, depth, r_meta = 0.35 * r, epi_depth * r, flare * r
        gap = (0.3 * r + self.cart * length) * (1.0 - fused) - 0.4 * depth * fused
        far = length - joint - 0.5 * self.cart * length
        near_epi = joint + depth + gap
        at = (lambda s: base + s * u) if proximal_epi else (lambda s: base + (length - s) * u)
        r_far = head * r
        self.bones.capsule(at(near_epi), at(far - r_far), r_meta, r_far, self.density, waist=waist * r,
                           hollow=0.45, flat0=True)
        if w > 0.0:
            a = w * r_meta
            b = min(a, 0.5 * depth * (0.45 + 0.55 * min(w, 1.0)))
            self.bones.ellipse(at(joint + 0.5 * depth), a, b, _across(u) + np.radians(tilt),
                               self.density * (1.0 - 0.6 * fused))
        return at(far)

    def ray(self, k: int, spread: float) -> tuple[np.ndarray, np.ndarray]:
        """Metacarpal and phalanges of ray ``k``; return the metacarpal head and the fingertip."""
        rng, lengths, radii = self.rng, LENGTHS[k], RADII[k]
        jitter = rng.normal(1.0, 0.025, size=4)
        base = np.array(MC_BASE[k]) * np.array([self.width, 1.0])
        u = _unit(MC_ANGLE[k] + rng.normal(0.0, 1.5))
        mc_len = lengths[0] * jitter[0] * (0.93 + 0.07 * mat.growth(self.m))
        timing = mat.EPIPHYSIS_TIMING["metacarpal"]
        delayed = (timing[0] + mat.RAY_DELAY[k],) + timing[1:]
        self.tubular(base, u, mc_len, radii[0] * self.width, delayed, proximal_epi=(k == 1),
                     epi_depth=1.1 if k == 1 else 1.7, head=1.0 if k == 1 else 1.25)
        head = base + mc_len * u
        angle = (22.0 + rng.normal(0.0, 6.0)) if k == 1 else MC_ANGLE[k] * spread + rng.normal(0.0, 2.0)
        u = _unit(angle)
        point = head
        for part, name in ((1, "proximal"), (2, "middle"), (3, "distal")):
            if lengths[part] == 0.0:
                continue
            timing = mat.EPIPHYSIS_TIMING[name]
            delayed = (timing[0] + mat.RAY_DELAY[k],) + timing[1:]
            seg = lengths[part] * jitter[part] * self.finger
            tip = self.tubular(point, u, seg, radii[part] * self.width, delayed, proximal_epi=True,
                               head=0.55 if name == "distal" else 0.95)
            if name == "distal":
                r = radii[part] * self.width
                self.bones.ellipse(tip - 0.4 * r * u, 1.05 * r, 0.6 * r, _across(u), self.density)
            point = point + seg * u
            u = _unit(angle + rng.normal(0.0, 1.5))
        return head, tip

    def carpals(self) -> np.ndarray:
        """Carpal centres that have appeared; return the capitate's (adult) centre."""
        for name, (centre, (a, b), angle) in CARPALS.items():
            size = mat.carpal_size(self.local_m(), mat.CARPAL_ONSET[name])
            if size == 0.0:
                continue
            rho = np.sqrt(a * b)
            a_now, b_now = size * (rho + (a - rho) * size), size * (rho + (b - rho) * size)
            c = np.array(centre) * np.array([self.width, 1.0])
            self.bones.ellipse(c, a_now * self.width, b_now * self.width, np.radians(angle), self.density)
        return np.array(CARPALS["capitate"][0]) * np.array([self.width, 1.0])

    def forearm(self) -> None:
        """Distal radius and ulna with their epiphyses (radius tilted: radial inclination)."""
        for name, (end, r, flare, tilt) in FOREARM.items():
            top = np.array(end) * np.array([self.width, 1.0])
            base = top - np.array([0.0, FOREARM_LENGTH])
            self.tubular(base, np.array([0.0, 1.0]), FOREARM_LENGTH, r * self.width, mat.EPIPHYSIS_TIMING[name],
                         proximal_epi=False, epi_depth=0.8, flare=flare, waist=0.5, tilt=tilt)

    def soft_tissue(self, heads: dict[int, np.ndarray], tips: dict[int, np.ndarray]) -> None:
        """Silhouette: fingers, thenar eminence, palm, wrist and forearm."""
        fat = self.chubby * self.width
        for k in range(1, 6):
            r = (0.05 if k == 1 else 0.045 + 0.002 * (k == 3) - 0.006 * (k == 5)) * fat
            u = tips[k] - heads[k]
            u /= np.linalg.norm(u)
            self.soft.capsule(heads[k] - 0.03 * u, tips[k] + 0.1 * r * u, r * 1.1, r * 0.85, 1.0)
            if k > 1:
                wrist = np.array([0.6 * MC_BASE[k][0] * self.width, 0.02])
                self.soft.capsule(wrist, heads[k], 0.06 * fat, 0.06 * fat, 1.1)
        self.soft.ellipse(np.array([0.11, 0.22]) * [self.width, 1.0], 0.17, 0.075 * fat, np.radians(62.0), 0.9)
        self.soft.capsule(np.array([-0.01, 0.13]), np.array([-0.01, -2.0 * FOREARM_LENGTH]),
                          0.155 * fat * self.width, 0.165 * fat * self.width, 0.75)


def build_hand(bone_age_months: float, male: bool, rng: np.random.Generator) -> Hand:
    """Draw one subject's hand from its bone age and sex; ``rng`` supplies the individual variation."""
    m = mat.maturity(bone_age_months, male)
    b = _Builder(m, rng)
    spread = rng.uniform(0.8, 1.8)
    heads, tips = {}, {}
    for k in (3, 2, 4, 5, 1):
        heads[k], tips[k] = b.ray(k, spread)
    capitate = b.carpals()
    b.forearm()
    b.soft_tissue(heads, tips)
    keypoints = np.stack([tips[3], tips[1], capitate])
    return Hand(bones=b.bones, soft=b.soft, keypoints=keypoints, length_cm=mat.hand_length_cm(m, male))
