"""A model's metrics on a dataset: the one evaluation every stage uses (central, a site's round, the server)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from core.data import make_loader
from core.data.dataset import BoneAgeDataset
from core.data.views import StackedViews
from core.stats.metrics import compute_metrics
from core.train.training import predict
from core.predict.tta import TTAConfig


def evaluate_model(
    model: nn.Module, dataset: BoneAgeDataset | StackedViews, device: torch.device, label_unit: str = "months",
    batch_size: int = 64, tta: TTAConfig | None = None,
) -> dict[str, Any]:
    """Metrics of `model` on `dataset` (see `core.stats.metrics.compute_metrics`), with test-time augmentation `tta`."""
    loader = make_loader(dataset, batch_size, shuffle=False, seed=0)
    predictions = predict(model.to(device), loader, device, amp=device.type == "cuda", tta=tta)
    step = getattr(model.config, "class_step_months", 3.0)
    return compute_metrics(predictions, class_step_months=step, label_unit=label_unit)
