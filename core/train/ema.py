"""An exponential moving average (EMA) of a model's weights, kept during training (issue 21).

After each optimiser step the average moves towards the model's current weights:
``average = d * average + (1 - d) * weights`` with ``d = min(decay, (1 + n) / (10 + n))`` at the n-th update,
so the first updates (d 0.1, 0.17, ...) forget the random start quickly and the average settles to ``decay``
after about 10 / (1 - decay) steps (the warm-up of the TensorFlow and timm EMAs). With ``decay`` 0.999 the
average spans roughly the last 1,000 steps (four epochs of rsna100 at batch 32). Buffers are averaged like the
weights (a batch-norm model's running statistics); integer buffers (batch counts) are copied.
"""

from __future__ import annotations

import torch
from torch import nn

from core.errors import ConfigError


class WeightAverage:
    """The EMA of `model`'s state; `update(model)` after each optimiser step, `state_dict()` for the average."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ConfigError(f"EMA decay must be between 0 and 1 (exclusive), got {decay}")
        self.decay = decay
        self.updates = 0
        self._average = {name: value.detach().clone(memory_format=torch.contiguous_format)
                         for name, value in model.state_dict().items()}

    def current_decay(self) -> float:
        """The decay the next update uses (lower during the warm-up)."""
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards `model`'s current state."""
        weight = 1.0 - self.current_decay()
        for name, value in model.state_dict().items():
            average = self._average[name]
            if average.is_floating_point():
                average.lerp_(value.detach().to(average.dtype), weight)
            else:
                average.copy_(value)
        self.updates += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        """A copy of the averaged state, loadable into the model (`model.load_state_dict`)."""
        return {name: value.clone() for name, value in self._average.items()}
