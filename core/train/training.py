"""Plain-PyTorch training and evaluation loops shared by central pretraining and site clients."""

from __future__ import annotations

import copy
import logging
import math
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from core.train.ema import WeightAverage
from core.errors import ConfigError
from core.train.loss import LossParts
from core.stats.metrics import Predictions
from core.train.schedule import LRFactor
from core.predict.tta import TTAConfig, forward_tta

logger = logging.getLogger(__name__)

ExtraLoss = Callable[[nn.Module], torch.Tensor]


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings (the paper: Adam, batch 16, lr 1e-3 decayed to 1/1000; here AdamW, batch 32, lr 3e-4).

    The learning rate is 3e-4, not the paper's 1e-3: at 1e-3 the dense layers of TJ-Net learn the per-sex median
    age within ~50 steps and the fused image features of block 5 collapse to one pattern for every image, which
    kept the README's CPU pretraining at the mean-age plateau for up to nine epochs (docs/benchmarks.md,
    "Training recipe"); at 3e-4 the image features survive and training leaves the plateau in its second epoch.

    The learning-rate schedule (`lr_schedule`, `warmup_steps`, `lr_drop_at`, `lr_patience`) is described in
    `core.train.schedule`. `early_stop_patience` > 0 ends training once the val MAD has not improved for that many
    epochs (0: always train all `epochs`); the best state by val MAD is kept either way. `ema_decay` > 0 also keeps
    an exponential moving average of the weights (`core.train.ema`), returned as `FitResult.ema_state` (0: off).
    """

    epochs: int = 10
    batch_size: int = 32
    lr: float = 3e-4
    weight_decay: float = 1e-4
    lr_final_factor: float = 1e-3
    lr_schedule: str = "cosine"
    warmup_steps: int = 0
    lr_drop_at: float = 0.8
    lr_patience: int = 1
    early_stop_patience: int = 0
    ema_decay: float = 0.0

    def __post_init__(self) -> None:
        if self.early_stop_patience < 0:
            raise ConfigError(f"early-stop patience must be >= 0, got {self.early_stop_patience}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError(f"epochs and batch size must be at least 1, got {self.epochs} and {self.batch_size}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"learning rate must be a positive number, got {self.lr}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ConfigError(f"weight decay must be a number >= 0, got {self.weight_decay}")
        if not (math.isfinite(self.ema_decay) and 0.0 <= self.ema_decay < 1.0):
            raise ConfigError(f"EMA decay must be in [0, 1) (0: off), got {self.ema_decay}")
        lr_factor(self, 1)  # a bad schedule setting fails here, not after the data is loaded
    device: str = "auto"
    amp: bool = True
    seed: int = 0
    num_workers: int = 0
    progress: bool = True
    channels_last: bool = True


def resolve_device(name: str = "auto") -> torch.device:
    """"auto" picks CUDA when present, else CPU; an unavailable CUDA request is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but no CUDA GPU is available")
    return device


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def autocast_for(device: torch.device, enabled: bool):
    """bf16 autocast on CUDA when asked (and supported), a no-op context otherwise."""
    if enabled and device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast(device_type="cuda", dtype=dtype)
    return nullcontext()


@contextmanager
def channels_last_layout(model: nn.Module, enabled: bool = True) -> Iterator[torch.memory_format]:
    """Hold the model's 4-D weights in channels-last layout inside the block; yields the layout for inputs.

    Channels-last made TJ-Net's training steps 1.04-1.2x and its evaluation about 1.45x faster on CPU
    (docs/benchmarks.md) and is the layout GPU convolutions prefer. Outside the block the model is in the
    standard layout again: checkpoints, federated arrays and Opacus only ever see that.
    """
    if not enabled:
        yield torch.contiguous_format
        return
    model.to(memory_format=torch.channels_last)
    try:
        yield torch.channels_last
    finally:
        model.to(memory_format=torch.contiguous_format)


def _to_device(batch: dict[str, torch.Tensor], device: torch.device,
               layout: torch.memory_format = torch.contiguous_format) -> tuple[torch.Tensor, ...]:
    non_blocking = device.type == "cuda"
    image = batch["image"].to(device, non_blocking=non_blocking, memory_format=layout)
    return (image, *(batch[key].to(device, non_blocking=non_blocking) for key in ("male", "age")))


@dataclass
class EpochStats:
    loss: float
    mad_months: float
    steps: int
    examples: int
    alpha_raised_at: int | None = None


def train_epoch(
    model: nn.Module,
    loader: DataLoader,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    amp: bool = False,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    extra_loss: ExtraLoss | None = None,
    progress: bool = False,
    description: str = "train",
    channels_last: bool = True,
    ema: WeightAverage | None = None,
) -> EpochStats:
    """One pass over `loader` (updating `ema` after each step); returns the mean loss and training MAD (months)."""
    with channels_last_layout(model, channels_last) as layout:
        return _train_pass(model, loss_fn, optimizer, device, amp, scheduler, extra_loss,
                           tqdm(loader, desc=description, leave=False, disable=not progress), layout, ema)


def _train_pass(model: nn.Module, loss_fn: nn.Module, optimizer: torch.optim.Optimizer,
                device: torch.device, amp: bool, scheduler: torch.optim.lr_scheduler.LRScheduler | None,
                extra_loss: ExtraLoss | None, bar: tqdm, layout: torch.memory_format,
                ema: WeightAverage | None) -> EpochStats:
    model.train()
    total_loss = total_abs = 0.0
    steps = examples = 0
    raised_at = None
    for batch in bar:
        image, male, age = _to_device(batch, device, layout)
        if image.shape[0] == 0:  # Poisson sampling under DP can draw an empty batch
            continue
        optimizer.zero_grad(set_to_none=True)
        with autocast_for(device, amp):
            output = model(image, male)
        teacher = batch["teacher"].to(device) if "teacher" in batch else None  # `core.train.distill`
        parts: LossParts = loss_fn(output, age, male) if teacher is None else loss_fn(output, age, male, teacher)
        loss = parts.total if extra_loss is None else parts.total + extra_loss(model)
        loss.backward()
        optimizer.step()
        if ema is not None:
            ema.update(model)
        if scheduler is not None:
            scheduler.step()
        if loss_fn.after_step(parts):
            raised_at = steps
        batch_size = int(image.shape[0])
        total_loss += float(parts.total.detach()) * batch_size
        total_abs += parts.mad_months * batch_size
        steps += 1
        examples += batch_size
        bar.set_postfix(loss=f"{float(parts.total.detach()):.3f}", mad=f"{parts.mad_months:.1f}")
    if examples == 0:
        return EpochStats(loss=float("nan"), mad_months=float("nan"), steps=0, examples=0)
    return EpochStats(total_loss / examples, total_abs / examples, steps, examples, raised_at)


def predict(model: nn.Module, loader: DataLoader, device: torch.device, amp: bool = False,
            channels_last: bool = True, tta: TTAConfig | None = None) -> Predictions:
    """Predicted bone ages (months) for every item of `loader`, in loader order, under inference mode
    (averaged over the views of `tta`, `core.predict.tta`, when given)."""
    was_training = model.training
    model.eval()
    predicted, true, male = [], [], []
    # the layout changes outside inference mode: weights converted inside it could never train again
    with channels_last_layout(model, channels_last) as layout, torch.inference_mode():
        for batch in loader:
            image, sex, age = _to_device(batch, device, layout)
            with autocast_for(device, amp):
                output = forward_tta(model, image, sex, tta)
            predicted.append(output.expected_months.float().cpu())
            true.append(age.float().cpu())
            male.append(sex.float().cpu())
    model.train(was_training)
    if not predicted:
        empty = np.zeros(0, dtype=np.float32)
        return Predictions(empty, empty, empty)
    return Predictions(torch.cat(predicted).numpy(), torch.cat(true).numpy(), torch.cat(male).numpy())


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """Adam(W) over the parameters that require gradients (frozen blocks are left out).

    The fused implementation: one kernel for all parameters, about 6x faster per step than the loop over them
    on a CPU (a fifth of a freeze-1-3 step on cached features, `bench.bench_feature_cache`).
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ConfigError("the model has no trainable parameters (is every block frozen?)")
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in trainable)
    return torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay, fused=fused)


def cosine_schedule(optimizer: torch.optim.Optimizer, total_steps: int, final_factor: float):
    """Cosine decay from the optimiser's lr to lr * final_factor over `total_steps` steps."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, LRFactor("cosine", total_steps, final_factor))


def lr_factor(config: TrainConfig, total_steps: int) -> LRFactor:
    """The learning-rate factor of `config` over `total_steps` optimiser steps (`core.train.schedule`)."""
    return LRFactor(config.lr_schedule, total_steps, config.lr_final_factor, config.warmup_steps,
                    config.lr_drop_at, config.lr_patience)


@dataclass
class FitResult:
    best_state: dict[str, torch.Tensor]
    best_epoch: int
    best_val_mad: float
    history: list[dict[str, float]] = field(default_factory=list)
    ema_state: dict[str, torch.Tensor] | None = None  # the weights' moving average after the last epoch


def fit(
    model: nn.Module,
    train_loader: DataLoader,
    val_loader: DataLoader,
    loss_fn: nn.Module,
    config: TrainConfig,
    device: torch.device,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> FitResult:
    """Train for `config.epochs`, validating each epoch; keeps the state with the best val MAD (and, with
    `config.ema_decay` > 0, the moving average of the weights at the end)."""
    optimizer = make_optimizer(model, config)
    factor = lr_factor(config, config.epochs * max(len(train_loader), 1))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    amp = config.amp and device.type == "cuda"
    best = FitResult(best_state=copy.deepcopy(model.state_dict()), best_epoch=0, best_val_mad=float("inf"))
    ema = WeightAverage(model, config.ema_decay) if config.ema_decay > 0 else None
    for epoch in range(1, config.epochs + 1):
        if hasattr(train_loader.dataset, "set_epoch"):
            train_loader.dataset.set_epoch(epoch)
        stats = train_epoch(model, train_loader, loss_fn, optimizer, device, amp, scheduler,
                            progress=config.progress, description=f"epoch {epoch}/{config.epochs}",
                            channels_last=config.channels_last, ema=ema)
        val = predict(model, val_loader, device, amp, config.channels_last)
        val_mad = float(np.mean(np.abs(val.predicted_months - val.true_months))) if len(val.true_months) else float("nan")
        row = {"epoch": epoch, "train_loss": stats.loss, "train_mad_months": stats.mad_months, "val_mad_months": val_mad,
               "lr": optimizer.param_groups[0]["lr"], "alpha": getattr(getattr(loss_fn, "schedule", None), "alpha", None)}
        best.history.append(row)
        logger.info("epoch %d/%d  train loss %.4f  train MAD %.2f mo  val MAD %.2f mo",
                    epoch, config.epochs, stats.loss, stats.mad_months, val_mad)
        if stats.alpha_raised_at is not None:
            logger.info("alpha raised to %.1f at step %d of the epoch (%s rule)", loss_fn.schedule.alpha,
                        stats.alpha_raised_at, loss_fn.schedule.rule)
        if loss_fn.after_epoch(val_mad):
            logger.info("val MAD stable: alpha raised to %.1f", loss_fn.schedule.alpha)
        if factor.observe_val(val_mad):
            logger.info("val MAD on a plateau: learning rate dropped to %.3g of its start", config.lr_final_factor)
            for group in optimizer.param_groups:  # from the next step on, not one step late
                group["lr"] = group["initial_lr"] * factor(scheduler.last_epoch)
        if on_epoch is not None:
            on_epoch(row)
        if val_mad < best.best_val_mad or math.isnan(best.best_val_mad):
            best.best_state = copy.deepcopy(model.state_dict())
            best.best_epoch, best.best_val_mad = epoch, val_mad
        if config.early_stop_patience and epoch - best.best_epoch >= config.early_stop_patience:
            logger.info("early stop: no val MAD improvement for %d epochs", config.early_stop_patience)
            break
    if ema is not None:
        best.ema_state = ema.state_dict()
    return best
