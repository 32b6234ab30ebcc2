"""Typed settings of a simulation run and its presets (`default`, `smoke`, `paper`)."""

from __future__ import annotations

import hashlib
import json
import math
import tomllib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from core.data import SiteDataConfig
from core.loss import JointLossConfig
from core.model.heads import DEFAULT_HEAD_INIT
from core.training import TrainConfig
from core.errors import ConfigError
from core.model.freeze import FreezeSpec
from core.round_settings import RoundSettings
from strategies import STRATEGY_NAMES
from strategies.options import strategy_options


def pretrain_recipe() -> dict[str, Any]:
    """The pretraining recipe's defaults (loss, alpha rule, head start): a new recipe invalidates cached models."""
    return {"loss": asdict(JointLossConfig()), "head_init": DEFAULT_HEAD_INIT}


ROUND = RoundSettings()  # the federation's round defaults: the simulation's local rounds use the same
FREEZE_SPECS = ("1", "1-2", "1-3", "1-4", "none")


@dataclass(frozen=True)
class SiteSpec:
    """One simulated hospital: a phantom preset and its number of images."""

    preset: str
    n: int


@dataclass(frozen=True)
class RealSite:
    """A hospital folder of real images, read with the project's data contract (declared columns and unit)."""

    path: Path
    label_unit: str = "months"
    name: str = ""
    csv_name: str = "labels.csv"
    image_dir: str = "images"
    id_column: str = "id"
    age_column: str = "boneage"
    sex_column: str = "male"

    @property
    def data(self) -> SiteDataConfig:
        """The site as the data contract reads it (refuses an unknown unit or columns that coincide)."""
        return SiteDataConfig(root=self.path, csv_name=self.csv_name, image_dir=self.image_dir,
                              id_column=self.id_column, age_column=self.age_column, sex_column=self.sex_column,
                              label_unit=self.label_unit)

    @classmethod
    def parse(cls, text: str) -> "RealSite":
        """`DIR` or `DIR:years` / `DIR:months` (the command line's `--site`)."""
        path, _, unit = text.rpartition(":") if text.endswith((":years", ":months")) else (text, "", "")
        return cls(Path(path), unit or "months")


def check_site_sizes(sizes: tuple[int, ...]) -> tuple[int, ...]:
    """Sizes sorted and checked: whole numbers of at least 2 training images, no repeats."""
    if any(int(s) != s or s < 2 for s in sizes):
        raise ConfigError(f"site sizes must be whole numbers of at least 2 training images, got {list(sizes)}")
    if len(set(sizes)) != len(sizes):
        raise ConfigError(f"site sizes repeat a value: {list(sizes)}")
    return tuple(sorted(int(s) for s in sizes))



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
    pretrain_lr: float = TrainConfig.lr
    rounds: int = 4
    local_epochs: int = ROUND.local_epochs
    lr: float = ROUND.lr
    batch_size: int = ROUND.batch_size
    freeze_specs: tuple[str, ...] = FREEZE_SPECS  # canonical FreezeSpecs once built
    strategy: str = "fedavg"
    strategy_options: tuple[tuple[str, float], ...] = ()  # (kebab-case key, value); see strategies/options.py
    device: str = "auto"  # every stage: pretraining, baselines, evaluation, the simulated sites
    baseline_freeze: str = ROUND.freeze_spec
    seed: int = 0
    dp_noise_multipliers: tuple[float, ...] = ()
    dp_max_grad_norm: float = 1.0
    dp_max_epsilon: float = 10.0  # each DP site's budget: a site never trains privately without one
    wandb: bool = False
    out_dir: Path = Path("runs/sim")
    cache_dir: Path = Path("runs/cache")
    seeds: int = 1
    pretrained: Path | None = None
    source_dir: Path | None = None
    real_sites: tuple[RealSite, ...] = ()
    feature_cache: bool = True  # frozen blocks run once per image and view (core.feature_cache), sites and baselines
    site_sizes: tuple[int, ...] = ()  # training images per site, one comparison each (empty: the sites as they are)
    fedrep: bool = False  # also a FedRep federation (each site keeps and first trains its own head, block 6)
    leave_one_out: bool = False  # also, for each site, a federation of the others scored on its test split

    def __post_init__(self) -> None:
        if not self.sites:
            raise ConfigError("a simulation needs at least one hospital site")
        if self.rounds < 1 or self.local_epochs < 1 or self.pretrain_epochs < 1:
            raise ConfigError("rounds, local epochs and pretraining epochs must be at least 1")
        # parsed once, here: every row label, run name and report lookup then uses the same canonical spec
        object.__setattr__(self, "freeze_specs", tuple(dict.fromkeys(FreezeSpec.parse(s) for s in self.freeze_specs)))
        object.__setattr__(self, "baseline_freeze", FreezeSpec.parse(self.baseline_freeze))
        if self.strategy not in STRATEGY_NAMES:
            raise ConfigError(f"unknown strategy {self.strategy!r}; choose from {', '.join(STRATEGY_NAMES)}")
        strategy_options(self.strategy, dict(self.strategy_options))
        if self.seeds < 1:
            raise ConfigError("--seeds must be at least 1")
        if self.pretrained is not None and self.source_dir is not None:
            raise ConfigError("give either a pretrained checkpoint or a source folder to pretrain on, not both")
        for site in self.real_sites:
            if site.label_unit not in ("months", "years"):
                raise ConfigError(f"site {site.path}: label unit must be months or years, got {site.label_unit!r}")
        object.__setattr__(self, "site_sizes", check_site_sizes(tuple(self.site_sizes)))
        if not all(math.isfinite(sigma) and sigma > 0 for sigma in self.dp_noise_multipliers):
            raise ConfigError(f"DP noise multipliers must be positive numbers, got {self.dp_noise_multipliers}")
        for flag, folder in (("--out", self.out_dir), ("--cache", self.cache_dir)):
            if Path(folder).exists() and not Path(folder).is_dir():
                raise ConfigError(f"{flag} {folder} is an existing file; give a folder")
        if not (math.isfinite(self.dp_max_epsilon) and self.dp_max_epsilon > 0):
            raise ConfigError(f"--dp-max-epsilon must be a positive number, got {self.dp_max_epsilon}")

    def pretrain_key(self) -> str:
        """Cache key of the pretrained model: everything that changes its weights."""
        source = {"dir": str(self.source_dir)} if self.source_dir is not None else asdict(self.source)
        relevant = {"source": source, "image_size": self.image_size, "width": self.width,
                    "epochs": self.pretrain_epochs, "lr": self.pretrain_lr, "batch_size": self.batch_size,
                    "seed": self.seed, "recipe": pretrain_recipe()}
        return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:12]

    def to_dict(self) -> dict:
        values = asdict(self)
        return json.loads(json.dumps(values, default=str))

    def seed_list(self) -> list[int]:
        """The seeds the comparison is repeated with (`--seeds N`: seed, seed + 1, ...)."""
        return [self.seed + k for k in range(self.seeds)]


PRESETS: dict[str, SimConfig] = {
    # about 10 minutes on 2 CPU cores (9 min 32 s measured from a fresh clone)
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


EXPERIMENT_KEYS = {"pretrained", "source", "sites", "strategy", "freeze", "rounds", "local_epochs", "lr", "seed", "seeds",
                   "batch_size", "preset", "site_sizes", "fedrep", "leave_one_out"}
SITE_KEYS = {"path", "label_unit", "name", "csv", "image_dir", "id_column", "age_column", "sex_column"}


def load_experiment(path: Path) -> dict[str, Any]:
    """Overrides of `preset` from an experiment file (TOML); relative paths are relative to the file.

    Keys: pretrained or source, strategy, freeze (list), rounds, local_epochs, lr, seed, seeds, batch_size, preset,
    site_sizes (list of training images per site), fedrep and leave_one_out (true/false), and [[sites]] tables with path, label_unit, name, csv, image_dir, id_column, age_column, sex_column.
    """
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read experiment file {path}: {exc}") from None
    unknown = set(data) - EXPERIMENT_KEYS
    if unknown:
        raise ConfigError(f"experiment file {path}: unknown keys {sorted(unknown)}; known: {sorted(EXPERIMENT_KEYS)}")
    here = Path(path).parent
    overrides: dict[str, Any] = {k: data[k] for k in ("strategy", "rounds", "local_epochs", "lr", "seed", "seeds",
                                                      "batch_size") if k in data}
    if "site_sizes" in data:
        if not isinstance(data["site_sizes"], list):
            raise ConfigError(f"experiment file {path}: site_sizes is a list of numbers, e.g. [25, 50, 100]")
        overrides["site_sizes"] = tuple(data["site_sizes"])
    for flag in ("fedrep", "leave_one_out"):
        if flag in data:
            if not isinstance(data[flag], bool):
                raise ConfigError(f"experiment file {path}: {flag} is true or false")
            overrides[flag] = data[flag]
    if "freeze" in data:
        overrides["freeze_specs"] = tuple(str(s) for s in data["freeze"])
    for key, field_name in (("pretrained", "pretrained"), ("source", "source_dir")):
        if key in data:
            overrides[field_name] = here / data[key]
    sites = []
    for site in data.get("sites", []):
        if set(site) - SITE_KEYS or "path" not in site:
            raise ConfigError(f"experiment file {path}: each [[sites]] needs a path and knows only {sorted(SITE_KEYS)}")
        fields = {("csv_name" if k == "csv" else k): v for k, v in site.items() if k != "path"}
        sites.append(RealSite(path=here / site["path"], **fields))
    if sites:
        overrides["real_sites"] = tuple(sites)
    return {"preset": data.get("preset", "default"), **overrides}


def preset(name: str, **overrides: object) -> SimConfig:
    """A preset with some fields replaced (None values are ignored)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    return replace(PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})
