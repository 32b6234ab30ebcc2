"""The training loop the small preprocessing networks share: the orientation model, the localiser and the hand mask.

Each draws its own batches (its own augmentation and random generator) and defines its own loss; the optimiser,
schedule and progress log are the same for all three.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

import torch
from torch import nn

logger = logging.getLogger(__name__)


def fit_steps(net: nn.Module, batch_loss: Callable[[], torch.Tensor], steps: int, lr: float) -> float:
    """Train ``net`` for ``steps`` steps of AdamW (weight decay 1e-4) under a one-cycle schedule that peaks at ``lr``.

    ``batch_loss()`` draws the next batch and returns its loss. Logs the loss every 100 steps and at the last one;
    returns the seconds the loop took.
    """
    optimiser = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, lr, total_steps=steps)
    started = time.perf_counter()
    net.train()
    for step in range(steps):
        loss = batch_loss()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        if step % 100 == 0 or step == steps - 1:
            logger.info("step %d/%d loss %.4f (%.0f s)", step + 1, steps, loss.item(), time.perf_counter() - started)
    return time.perf_counter() - started
