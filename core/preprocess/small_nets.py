"""What the small preprocessing networks share (the orientation model, the localiser and the hand mask): the
training loop, and one loaded copy of each weights file per process.

Each draws its own batches (its own augmentation and random generator) and defines its own loss; the optimiser,
schedule and progress log are the same for all three.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Callable, TypeVar

import torch
from torch import nn

logger = logging.getLogger(__name__)

Model = TypeVar("Model")
_LOADED: dict[tuple[str, str, str], object] = {}
_LOCK = threading.Lock()


def load_once(load: Callable[[Path], Model], path: str | Path, sha256: str) -> Model:
    """``load(path)``, once per loader, file and content (``sha256``) and process: later calls get the same object."""
    key = (load.__qualname__, str(path), sha256)
    with _LOCK:
        if key not in _LOADED:
            _LOADED[key] = load(Path(path))
        return _LOADED[key]  # type: ignore[return-value]


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
