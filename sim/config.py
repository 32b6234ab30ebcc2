"""Typed settings of a simulation run and its presets (`default`, `smoke`, `paper`)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from core.errors import ConfigError
from core.model.freeze import parse_freeze_spec
from strategies import STRATEGY_NAMES

FREEZE_SPECS = ("1", "1-2", "1-3", "1-4", "none")


@dataclass(frozen=True)
class SiteSpec:
    """One simulated hospital: a phantom preset and its number of images."""

    preset: str
    n: int


@dataclass(frozen=True)
class SimConfig:
    """Everything `python -m sim` does, from phantom sites to the comparison table.

    The source (RSNA-like) site pretrains TJ-Net centrally; each hospital site then adapts it:
    federated once per freeze spec, alone (site-alone), and pooled centrally (upper reference).
    """

    source: SiteSpec = SiteSpec("rsna", 3000)
    sites: tuple[SiteSpec, ...] = (SiteSpec("tongji", 300), SiteSpec("eu_clinic", 300),
                                   SiteSpec("rural_cr", 300), SiteSpec("peds_referral", 300))
    image_size: int = 96
    width: float = 0.5
    pretrain_epochs: int = 30
    pretrain_lr: float = 1e-3
    rounds: int = 4
    local_epochs: int = 1
    lr: float = 3e-4
    batch_size: int = 32
    freeze_specs: tuple[str, ...] = FREEZE_SPECS
    strategy: str = "fedavg"
    baseline_freeze: str = "1-3"
    seed: int = 0
    dp_noise_multipliers: tuple[float, ...] = ()
    dp_max_grad_norm: float = 1.0
    wandb: bool = False
    out_dir: Path = Path("runs/sim")
    cache_dir: Path = Path("runs/cache")

    def __post_init__(self) -> None:
        if not self.sites:
            raise ConfigError("a simulation needs at least one hospital site")
        if self.rounds < 1 or self.local_epochs < 1 or self.pretrain_epochs < 1:
            raise ConfigError("rounds, local epochs and pretraining epochs must be at least 1")
        for spec in (*self.freeze_specs, self.baseline_freeze):
            parse_freeze_spec(spec)
        if self.strategy not in STRATEGY_NAMES:
            raise ConfigError(f"unknown strategy {self.strategy!r}; choose from {', '.join(STRATEGY_NAMES)}")
        if any(sigma <= 0 for sigma in self.dp_noise_multipliers):
            raise ConfigError("DP noise multipliers must be positive")

    def pretrain_key(self) -> str:
        """Cache key of the pretrained model: everything that changes its weights."""
        relevant = {"source": asdict(self.source), "image_size": self.image_size, "width": self.width,
                    "epochs": self.pretrain_epochs, "lr": self.pretrain_lr, "batch_size": self.batch_size,
                    "seed": self.seed}
        return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:12]

    def to_dict(self) -> dict:
        values = asdict(self)
        values["out_dir"], values["cache_dir"] = str(self.out_dir), str(self.cache_dir)
        return values


PRESETS: dict[str, SimConfig] = {
    # about 10-15 minutes on 2 CPU cores
    "default": SimConfig(),
    # CI: two small sites, two freeze specs, two rounds; about 2-3 minutes
    "smoke": SimConfig(source=SiteSpec("rsna", 240), sites=(SiteSpec("tongji", 60), SiteSpec("eu_clinic", 60)),
                       image_size=64, width=0.25, pretrain_epochs=2, rounds=2, batch_size=16,
                       freeze_specs=("1-3", "none")),
    # the paper's scale, for a GPU machine
    "paper": SimConfig(source=SiteSpec("rsna", 12000), sites=tuple(SiteSpec(p, 1400) for p in
                       ("tongji", "eu_clinic", "rural_cr", "peds_referral")),
                       image_size=500, width=1.0, pretrain_epochs=30, rounds=20, local_epochs=1, batch_size=16),
}


def preset(name: str, **overrides: object) -> SimConfig:
    """A preset with some fields replaced (None values are ignored)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    return replace(PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})
