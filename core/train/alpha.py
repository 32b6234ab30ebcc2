"""When the joint loss raises alpha: `AlphaSchedule` under the rules `ALPHA_RULES`.

The rules and why ``mad`` is the default are described with the loss (`core.train.loss`'s module docstring).
"""

from __future__ import annotations

from collections import deque
from typing import Any

ALPHA_RULES = ("loss", "val", "ramp", "mad")


class AlphaSchedule:
    """Raises alpha from its start value to its final value (see the module docstring for the rules)."""

    def __init__(self, start: float, final: float, window: int, tolerance: float, rule: str = "loss",
                 val_tolerance: float = 0.02, ramp_steps: int = 500, mad_margin: float = 0.15) -> None:
        if window < 1:
            raise ValueError("window must be at least 1")
        self.start, self.final, self.window, self.tolerance = start, final, window, tolerance
        self.rule, self.val_tolerance, self.ramp_steps, self.mad_margin = rule, val_tolerance, ramp_steps, mad_margin
        self.raised = False
        self.steps = 0
        self._last_val: float | None = None
        self._recent: deque[float] = deque(maxlen=2 * window)
        self._mad: deque[tuple[float, float]] = deque(maxlen=window)  # (model MAD, mean predictor's MAD) per batch

    @property
    def alpha(self) -> float:
        if self.rule == "ramp":
            return self.start + (self.final - self.start) * min(self.steps / self.ramp_steps, 1.0)
        return self.final if self.raised else self.start

    def observe_val(self, val_mad: float) -> bool:
        """Record an epoch's val MAD; under the ``val`` rule, True on the epoch alpha is raised."""
        if self.rule != "val" or self.raised:
            return False
        last, self._last_val = self._last_val, float(val_mad)
        if last is not None and last - val_mad <= self.val_tolerance * last:
            self.raised = True
        return self.raised

    def observe(self, batch_loss: float, mad_months: float | None = None,
                mean_predictor_months: float | None = None) -> bool:
        """Record one batch (its loss; for the ``mad`` rule also the model's MAD and that of the batch's mean age);
        return True on the step alpha is raised (the ``loss`` and ``mad`` rules)."""
        self.steps += 1
        if self.raised or self.rule not in ("loss", "mad"):
            return False
        if self.rule == "mad":
            if mad_months is None or mean_predictor_months is None:
                raise ValueError("the mad alpha rule needs each batch's MAD and its mean predictor's MAD")
            self._mad.append((float(mad_months), float(mean_predictor_months)))
            model, mean = (sum(values) for values in zip(*self._mad))
            self.raised = len(self._mad) == self.window and model <= (1.0 - self.mad_margin) * mean
            return self.raised
        self._recent.append(float(batch_loss))
        if len(self._recent) < 2 * self.window:
            return False
        values = list(self._recent)
        before = sum(values[: self.window]) / self.window
        after = sum(values[self.window :]) / self.window
        if abs(before - after) <= self.tolerance * abs(before):
            self.raised = True
            return True
        return False

    def state_dict(self) -> dict[str, Any]:
        return {"raised": self.raised, "recent": list(self._recent), "steps": self.steps, "last_val": self._last_val,
                "mad": [list(pair) for pair in self._mad]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.raised = bool(state.get("raised", False))
        self._recent = deque(state.get("recent", []), maxlen=2 * self.window)
        self.steps = int(state.get("steps", 0))
        self._last_val = state.get("last_val")
        self._mad = deque((tuple(pair) for pair in state.get("mad", [])), maxlen=self.window)
