"""Learning-rate schedules of the training loop: linear warm-up, then cosine, a step drop or a drop on plateau.

The paper (section 3) trains with Adam at 1e-3 and, "when the training was close to being stabilized",
reduces the learning rate to 1/1000 of its initial value. It does not say when that is, so three readings
are offered, each as a factor on the optimiser's base learning rate:

* ``cosine`` (the default): a cosine from 1 down to ``final_factor`` over the training steps.
* ``step``: 1 until ``drop_at`` (a fraction of the training steps), ``final_factor`` from then on.
* ``plateau``: 1 until the val MAD has not improved for ``patience`` epochs, ``final_factor`` from then
  on (the drop happens once).

With ``warmup_steps`` W > 0, step k < W (counted from 0) uses the factor (k + 1) / W, and the schedule
above runs over the remaining steps (step W is its step 0).
"""

from __future__ import annotations

import math

from core.errors import ConfigError

LR_SCHEDULES = ("cosine", "step", "plateau")


class LRFactor:
    """The factor on the base learning rate at each optimiser step (a `LambdaLR` lambda)."""

    def __init__(self, schedule: str, total_steps: int, final_factor: float, warmup_steps: int = 0,
                 drop_at: float = 0.8, patience: int = 1) -> None:
        if schedule not in LR_SCHEDULES:
            raise ConfigError(f"lr schedule must be one of {LR_SCHEDULES}, got {schedule!r}")
        if warmup_steps < 0 or not 0.0 <= drop_at <= 1.0 or patience < 1:
            raise ConfigError("warm-up steps must be >= 0, the drop point in [0, 1] and the patience >= 1")
        self.schedule, self.final_factor, self.drop_at, self.patience = schedule, final_factor, drop_at, patience
        self.warmup_steps = warmup_steps
        self.main_steps = max(total_steps - warmup_steps, 1)
        self.dropped = False
        self._best = math.inf
        self._stale = 0

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = min((step - self.warmup_steps) / self.main_steps, 1.0)
        if self.schedule == "cosine":
            return self.final_factor + (1.0 - self.final_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))
        if self.schedule == "step":
            return self.final_factor if progress >= self.drop_at else 1.0
        return self.final_factor if self.dropped else 1.0

    def observe_val(self, val_mad: float) -> bool:
        """Record an epoch's val MAD; True on the epoch the plateau schedule drops the learning rate."""
        if self.schedule != "plateau" or self.dropped:
            return False
        if val_mad < self._best:
            self._best, self._stale = val_mad, 0
            return False
        self._stale += 1
        if self._stale >= self.patience:
            self.dropped = True
            return True
        return False
