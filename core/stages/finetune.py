"""One site's share of a federated round, in plain PyTorch: load the global arrays into the
pretrained model, fine-tune the unfrozen blocks, evaluate. Used by the Flower ClientApp and
by the "site alone" baseline of the simulation."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from core.train.evaluation import evaluate_model
from core.train.loss import make_loss
from core.data import make_loader
from core.data.dataset import BoneAgeDataset
from core.errors import ConfigError, UserError
from core.train.feature_cache import FeatureCache
from core.train.loss import JointLossConfig
from core.model.freeze import freeze_blocks
from core.privacy import LEDGER_FILENAME, DPConfig, PrivacyLedger, train_private_round
from core.round_settings import RoundSettings
from core.train.training import ExtraLoss, TrainConfig, cosine_schedule, make_optimizer, train_epoch

logger = logging.getLogger(__name__)


class ArrayMismatch(UserError, ValueError):
    """Arrays from the server that do not fit the local model."""


def load_arrays(model: nn.Module, arrays: dict[str, torch.Tensor]) -> None:
    """Copy `arrays` (a subset of the model's state) into `model`; refuses unknown keys or shapes."""
    state = model.state_dict()
    unknown = [key for key in arrays if key not in state]
    if unknown:
        raise ArrayMismatch(f"{len(unknown)} arrays unknown to the local model, e.g. {unknown[:3]}")
    for key, value in arrays.items():
        if tuple(value.shape) != tuple(state[key].shape):
            raise ArrayMismatch(f"array {key}: shape {tuple(value.shape)}, local model has {tuple(state[key].shape)}")
    model.load_state_dict(arrays, strict=False)


def proximal_term(model: nn.Module, mu: float) -> ExtraLoss:
    """FedProx: mu/2 * ||w - w_global||^2 over the trainable parameters, w_global taken now."""
    reference = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}

    def term(current: nn.Module) -> torch.Tensor:
        total = torch.zeros((), device=next(iter(reference.values())).device)
        for name, p in current.named_parameters():
            if name in reference:
                total = total + torch.sum((p - reference[name]) ** 2)
        return 0.5 * mu * total

    return term


@dataclass
class SiteRoundResult:
    num_examples: int
    train_loss: float
    train_mad_months: float
    val_mad_months: float
    train_seconds: float = 0.0
    epsilon: float | None = None
    delta: float | None = None


def train_site_round(
    model: nn.Module,
    train_set: BoneAgeDataset,
    val_set: BoneAgeDataset,
    settings: RoundSettings,
    device: torch.device,
    round_number: int,
    dp: DPConfig | None = None,
    ledger_dir: Path | None = None,
    label_unit: str = "months",
    features: FeatureCache | None = None,
) -> SiteRoundResult:
    """Fine-tune the unfrozen blocks of `model` on a site's training split for one round.

    With `features`, the frozen prefix's outputs come from that cache (`core.train.feature_cache`) and only the
    blocks after it run (under DP, per-sample gradients are taken through those blocks only).
    """
    freeze_blocks(model, settings.freeze)
    model.to(device)
    prepared = features.prepare(model, train_set, device) if features is not None else None
    trained, data = prepared if prepared is not None else (model, train_set)
    seed = settings.seed * 100_003 + round_number
    torch.manual_seed(seed)
    config = TrainConfig(epochs=settings.local_epochs, batch_size=settings.batch_size, lr=settings.lr,
                         weight_decay=settings.weight_decay, seed=seed, progress=False)
    private = dp is not None and dp.enabled
    loss_fn = make_loss(model, JointLossConfig(per_sample=private))
    if hasattr(loss_fn, "schedule"):
        loss_fn.schedule.raised = True  # a pretrained model's loss is already stable: alpha = K
    extra = proximal_term(model, settings.proximal_mu) if settings.proximal_mu > 0 else None
    epsilon = delta = None
    start = time.perf_counter()
    if private:
        if ledger_dir is None:
            raise ConfigError("differential privacy needs a state folder for the privacy ledger")
        if prepared is not None:
            trained.channels_last = False  # Opacus' per-sample hooks see the standard layout, as without the cache
        result = train_private_round(trained, data, loss_fn, config, dp, PrivacyLedger(ledger_dir / LEDGER_FILENAME),
                                     settings.local_epochs, device, settings.num_rounds, extra,
                                     context={"round": round_number})
        stats, epsilon, delta = result.stats, result.epsilon, result.delta
    else:
        loader = make_loader(data, settings.batch_size, shuffle=True, seed=seed,
                             drop_last=len(train_set) > settings.batch_size)
        optimizer = make_optimizer(trained, config)
        scheduler = cosine_schedule(optimizer, settings.local_epochs * len(loader), 0.1)
        for epoch in range(settings.local_epochs):
            data.set_epoch(round_number * settings.local_epochs + epoch)
            stats = train_epoch(trained, loader, loss_fn, optimizer, device, scheduler=scheduler, extra_loss=extra,
                                channels_last=prepared is None)
    train_seconds = time.perf_counter() - start
    val = evaluate_model(model, val_set, device, label_unit)
    return SiteRoundResult(len(train_set), stats.loss, stats.mad_months, val["mad_months"], train_seconds,
                           epsilon, delta)
