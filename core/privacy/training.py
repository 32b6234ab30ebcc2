"""One round of sample-level DP-SGD at a site (Opacus), accounted in the site's privacy ledger.

Only the unfrozen blocks train, under per-sample clipping and Gaussian noise; frozen blocks stay
in eval mode and see no gradient. The caller's model object is trained in place (Opacus hooks,
no wrapper), so it keeps its pretrained weights, layers and state-dict keys. The ledger, not the
Opacus engine, holds the history: a fresh engine per round is only a tool.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, default_collate

from core.errors import UserError
from core.train.loss import JointLoss, RegressionLoss
from core.model.groups import running_stat_layers
from core.privacy.config import DPConfig
from core.privacy.ledger import BudgetExceeded, PrivacyLedger
from core.privacy.guard import require_history, site_lock
from core.privacy.settings import resolve_site_noise, save_site_noise
from core.train.training import EpochStats, ExtraLoss, TrainConfig, make_optimizer

if TYPE_CHECKING:
    from opacus.optimizers import DPOptimizer

logger = logging.getLogger(__name__)


class DPIncompatibleModel(UserError, ValueError):
    """A model that DP-SGD cannot train without leaking or without replacing layers."""


@dataclass
class PrivateRoundResult:
    """What a private round did.

    `stats` (training loss and MAD) are computed from the private data WITHOUT noise: log them at
    the site, do not send them to the server. `epsilon` is the site's cumulative epsilon at `delta`
    after this round, from the ledger.
    """

    stats: EpochStats
    epsilon: float
    delta: float
    noise_multiplier: float
    sample_rate: float
    steps: int


def check_dp_compatible(model: nn.Module) -> None:
    """Raise `DPIncompatibleModel` (one line) for trainable BatchNorm or running statistics in train mode.

    Call after `model.train()`: frozen blocks must be in eval mode, or their running statistics
    would absorb private data without noise and ship to the server.
    """
    for name, module in running_stat_layers(model):
        if any(p.requires_grad for p in module.parameters(recurse=False)):
            raise DPIncompatibleModel(
                f"{type(module).__name__} {name!r} is trainable: DP-SGD cannot clip per-sample gradients through "
                f"batch statistics; use a GroupNorm TJ-Net (norm='group') or freeze that block")
        if module.training:
            raise DPIncompatibleModel(
                f"{type(module).__name__} {name!r} is in train mode: its running statistics would learn "
                f"private data without noise; keep frozen blocks in eval mode")


def train_private_round(model: nn.Module, dataset: Dataset, loss_fn: nn.Module, train_config: TrainConfig,
                        dp: DPConfig, ledger: PrivacyLedger, local_epochs: int, device: torch.device,
                        planned_rounds: int = 1, extra_loss: ExtraLoss | None = None,
                        context: dict[str, Any] | None = None) -> PrivateRoundResult:
    """Train `model` for `local_epochs` passes of Poisson-sampled DP-SGD and record them in `ledger`.

    Raises:
        BudgetExceeded: before any training, when the round would take the site past `dp.budget`.
        LedgerError: a damaged ledger, a missing one where the site trained privately before, or
            another private round holding the site's ledger (`LedgerBusy`); nothing was trained.
        DPIncompatibleModel: when the model cannot be trained privately as it is.
        ValueError: for settings that make no sense (DP off, empty dataset, batch-coupled loss).
    """
    if not dp.enabled:
        raise ValueError("train_private_round needs DPConfig(enabled=True)")
    if local_epochs < 1 or planned_rounds < 1 or len(dataset) == 0:
        raise ValueError("a private round needs local_epochs >= 1, planned_rounds >= 1 and training examples")
    if isinstance(loss_fn, (JointLoss, RegressionLoss)) and not loss_fn.config.per_sample:
        raise ValueError("under DP use JointLossConfig(per_sample=True): the paper's loss couples a batch's samples")
    model.to(device).train()
    check_dp_compatible(model)
    with site_lock(ledger):  # check, training and record: two runs cannot both pass the check
        require_history(ledger)
        return _locked_round(model, dataset, loss_fn, train_config, dp, ledger, local_epochs, device,
                             planned_rounds, extra_loss, context)


def _locked_round(model: nn.Module, dataset: Dataset, loss_fn: nn.Module, train_config: TrainConfig,
                  dp: DPConfig, ledger: PrivacyLedger, local_epochs: int, device: torch.device,
                  planned_rounds: int, extra_loss: ExtraLoss | None,
                  context: dict[str, Any] | None) -> PrivateRoundResult:
    segment = len(ledger.entries())
    sampler_seed, noise_seed, torch_seed = _round_seeds(dp.seed, train_config.seed, segment)
    loader = DataLoader(dataset, batch_size=train_config.batch_size, shuffle=True,
                        generator=_generator(torch.device("cpu"), sampler_seed))
    sample_rate, steps = 1.0 / len(loader), local_epochs * len(loader)
    noise = resolve_site_noise(dp, ledger, sample_rate, steps, len(dataset), planned_rounds)
    current = ledger.epsilon(noise.delta, dp.accountant)
    projected = ledger.projected_epsilon(noise.noise_multiplier, sample_rate, steps, noise.delta, dp.accountant)
    if projected > dp.budget:
        logger.warning("dp: refusing the round: epsilon %.4g -> %.4g, budget %.4g", current, projected, dp.budget)
        raise BudgetExceeded(current, projected, dp.budget)

    # opacus is imported only when a site trains privately: it adds ~1.7 s to every ClientApp start otherwise
    from opacus import PrivacyEngine
    from opacus.validators.errors import UnsupportedModuleError

    torch.manual_seed(torch_seed)
    engine = PrivacyEngine(accountant="rdp", secure_mode=False)
    try:
        hooks, optimizer, private_loader = engine.make_private(
            module=model, optimizer=make_optimizer(model, train_config), data_loader=loader,
            noise_multiplier=noise.noise_multiplier, max_grad_norm=dp.max_grad_norm, poisson_sampling=True,
            noise_generator=_generator(device, noise_seed), grad_sample_mode="hooks", wrap_model=False)
    except UnsupportedModuleError as exc:
        raise DPIncompatibleModel(f"Opacus cannot train this model: {str(exc).splitlines()[-1].strip()}") from None
    _shape_empty_draws(private_loader, dataset)
    tally = _Tally()
    try:
        with warnings.catch_warnings():  # the first trainable block's input needs no gradient: harmless
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            for epoch in range(local_epochs):
                if hasattr(dataset, "set_epoch"):
                    dataset.set_epoch(segment * local_epochs + epoch + 1)
                _private_epoch(model, private_loader, loss_fn, optimizer, device, extra_loss, tally)
    finally:  # draws taken before a failure were noised steps too: they are recorded
        hooks.cleanup()
        if tally.draws:
            ledger.record(noise.noise_multiplier, sample_rate, tally.draws, delta=noise.delta, **(context or {}))
            save_site_noise(ledger, noise)
    epsilon = ledger.epsilon(noise.delta, dp.accountant)
    logger.info("dp: %d steps at sigma %.4g, q %.4g: epsilon %.4g -> %.4g (delta %.3g)", tally.draws,
                noise.noise_multiplier, sample_rate, current, epsilon, noise.delta)
    return PrivateRoundResult(tally.stats(), epsilon, noise.delta, noise.noise_multiplier, sample_rate, tally.draws)


def _shape_empty_draws(private_loader: DataLoader, dataset: Dataset) -> None:
    """Make an empty first Poisson draw an empty batch of the dataset's own structure.

    Opacus learns the structure of empty batches from the first non-empty one; when the very first
    draw is empty it falls back to shapes that only work for tuple samples, and dict samples crash.
    """
    collate = private_loader.collate_fn
    if getattr(collate, "first_batch", False) is None:
        collate.first_batch = default_collate([dataset[0]])


@dataclass
class _Tally:
    """Running totals of a private round: draws (noised steps), updates, examples, sums for the means."""

    draws: int = 0
    updates: int = 0
    examples: int = 0
    loss_sum: float = 0.0
    abs_sum: float = 0.0

    def stats(self) -> EpochStats:
        if self.examples == 0:
            return EpochStats(float("nan"), float("nan"), self.updates, 0)
        return EpochStats(self.loss_sum / self.examples, self.abs_sum / self.examples, self.updates, self.examples)


def _private_epoch(model: nn.Module, loader: DataLoader, loss_fn: nn.Module, optimizer: DPOptimizer,
                   device: torch.device, extra_loss: ExtraLoss | None, tally: _Tally) -> None:
    """One pass of Poisson batches, counted in `tally`; every draw is a noised step.

    An empty draw still takes a noise-only step, as the accountant assumes. The alpha schedule of
    the joint loss is not fed: switching on unnoised batch losses would leak outside the accounting.
    `extra_loss` (e.g. a proximal term) depends on no data: its gradient is added after the noise.
    """
    model.train()
    for batch in loader:
        tally.draws += 1
        optimizer.zero_grad(set_to_none=True)
        size = int(batch["image"].shape[0]) if isinstance(batch, dict) else 0
        if size == 0:
            for parameter in optimizer.params:
                parameter.grad_sample = torch.zeros((0, *parameter.shape), device=parameter.device)
        else:
            image, male, age = (batch[key].to(device) for key in ("image", "male", "age"))
            parts = loss_fn(model(image, male), age, male)
            parts.total.backward()
            tally.loss_sum += float(parts.total.detach()) * size
            tally.abs_sum += parts.mad_months * size
            tally.examples += size
        if not optimizer.pre_step():
            continue
        if extra_loss is not None:
            _add_public_gradient(optimizer.params, extra_loss(model))
        optimizer.original_optimizer.step()
        tally.updates += 1


def _add_public_gradient(parameters: list[nn.Parameter], loss: torch.Tensor) -> None:
    grads = torch.autograd.grad(loss, parameters, allow_unused=True)
    for parameter, grad in zip(parameters, grads):
        if grad is not None:
            parameter.grad = grad if parameter.grad is None else parameter.grad + grad


def _round_seeds(dp_seed: int | None, train_seed: int, segment: int) -> tuple[int | None, int | None, int]:
    """Seeds of the Poisson sampler, the noise and torch (dropout) for the `segment`-th private round.

    Sampler and noise use the site's secret `dp_seed` (None: fresh OS entropy): anyone who knows the
    noise seed can subtract the noise. Dropout follows the ordinary training seed.
    """
    torch_seed = int(np.random.SeedSequence([train_seed, segment]).generate_state(1)[0])
    if dp_seed is None:
        return None, None, torch_seed
    sampler, noise = np.random.SeedSequence([dp_seed, segment]).generate_state(2)
    return int(sampler), int(noise), torch_seed


def _generator(device: torch.device, seed: int | None) -> torch.Generator:
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator
