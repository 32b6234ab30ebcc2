"""Typed settings of a simulation run and its presets (`default`, `smoke`, `paper`).

The settings an experiment file and the command line share are declared once in `SIM_SCHEMA` (experiment-file
key, flag, type, default of the `default` preset, help); a real site's columns and unit come from the site
layout's schema (`core.data.config.LAYOUT_SCHEMA`), under the snake_case of their node-config keys.
"""

from __future__ import annotations

import hashlib
import json
import math
import tomllib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from core.data import SiteDataConfig
from core.cli import DEVICE_DEFAULT, SEED_DEFAULT
from core.data.config import LAYOUT_SCHEMA
from core.train.loss import JointLossConfig
from core.model.heads import DEFAULT_HEAD_INIT
from core.train.feature_augment import FEATURE_AUGMENT
from core.train.training import TrainConfig
from core.errors import ConfigError
from core.model.freeze import FreezeSpec, parse_freeze_spec_list
from core.round_settings import RoundSettings
from core.schema import Schema, Setting, to_bool, to_int
from strategies import STRATEGY_NAMES
from strategies.options import parse_option_assignments, strategy_options


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
    label_unit: str = LAYOUT_SCHEMA.default("label_unit")
    name: str = ""
    csv_name: str = LAYOUT_SCHEMA.default("csv_name")
    image_dir: str = LAYOUT_SCHEMA.default("image_dir")
    id_column: str = LAYOUT_SCHEMA.default("id_column")
    age_column: str = LAYOUT_SCHEMA.default("age_column")
    sex_column: str = LAYOUT_SCHEMA.default("sex_column")

    @property
    def data(self) -> SiteDataConfig:
        """The site as the data contract reads it (refuses an unknown unit or columns that coincide)."""
        return SiteDataConfig(root=self.path, **{name: getattr(self, name) for name in LAYOUT_SCHEMA.settings})

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


def _freeze_list(raw: Any) -> tuple[FreezeSpec, ...]:
    """An experiment file's freeze list: each entry is one spec ("1,2,3" is the spec 1-3)."""
    if isinstance(raw, str) or not isinstance(raw, (list, tuple)):
        raise ValueError('expected a list of specs, e.g. ["1-3", "none"]')
    return tuple(FreezeSpec.parse(str(spec)) for spec in raw)


def _size_list(raw: Any) -> tuple[int, ...]:
    if isinstance(raw, str) or not isinstance(raw, (list, tuple)):
        raise ValueError("expected a list of numbers, e.g. [25, 50, 100]")
    return tuple(to_int(size) for size in raw)


def _comma_list(text: str) -> list[str]:
    """A flag's comma-separated values (`--site-sizes 25,50`, `--dp 0.8,1.2`)."""
    return [part.strip() for part in text.split(",") if part.strip()]


def _number(raw: Any) -> float:
    if isinstance(raw, bool):
        raise ValueError("expected a number")
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise ValueError("expected a number") from None
    if not (math.isfinite(value) and value > 0):
        raise ValueError("expected a positive number")
    return value


def _number_list(raw: Any) -> tuple[float, ...]:
    if isinstance(raw, str) or not isinstance(raw, (list, tuple)):
        raise ValueError("expected a list of numbers, e.g. [0.8, 1.2]")
    return tuple(_number(value) for value in raw)


def _strategy_options(raw: Any) -> tuple[tuple[str, float], ...]:
    """A table (`{server-momentum = 0.9}`) or `KEY=VALUE` texts -> sorted (key, value) pairs."""
    if isinstance(raw, dict):
        raw = [f"{key}={value}" for key, value in raw.items()]
    if isinstance(raw, str) or not isinstance(raw, (list, tuple)):
        raise ValueError("expected a table of options, e.g. {server-momentum = 0.9}")
    if all(isinstance(pair, tuple) for pair in raw):  # already typed (a preset's value)
        raw = [f"{key}={value}" for key, value in raw]
    return tuple(sorted(parse_option_assignments([str(text) for text in raw]).items()))


def _real_sites(raw: Any) -> tuple["RealSite", ...]:
    if isinstance(raw, str) or not isinstance(raw, (list, tuple)):
        raise ValueError("expected a list of site folders")
    return tuple(site if isinstance(site, RealSite) else RealSite.parse(str(site)) for site in raw)


def _optional_path(raw: Any) -> Path | None:
    return None if raw is None else Path(str(raw))


# The settings of a simulation run, each declared once: its experiment-file key (the field name, except `freeze`,
# `source`; None: the command line only), its flag, type, the `default` preset's value and help. A list-valued
# setting takes comma-separated values on the command line, or repeats its flag; an on/off one is a switch.
SIM_SCHEMA = Schema(
    Setting("rounds", to_int, 4, "federated rounds", "rounds", flag="--rounds"),
    Setting("local_epochs", to_int, ROUND.local_epochs, "local epochs per round (also the site-alone baseline's)",
            "local_epochs", flag="--local-epochs"),
    Setting("lr", float, ROUND.lr, "local learning rate", "lr", flag="--lr"),
    Setting("batch_size", to_int, ROUND.batch_size, "local batch size", "batch_size", flag="--batch-size"),
    Setting("seed", to_int, SEED_DEFAULT, "random seed", "seed", flag="--seed"),
    Setting("seeds", to_int, 1, "repeat the whole comparison with N seeds", "seeds", flag="--seeds"),
    Setting("strategy", str, "fedavg", "fedavg, fedprox, fedavgm, fedadam, fedmedian or fedtrimmedavg", "strategy",
            flag="--strategy", choices=STRATEGY_NAMES),
    Setting("strategy_options", _strategy_options, (),
            "a strategy option, repeatable: server-momentum, server-learning-rate (fedavgm), eta, beta-1, beta-2, tau "
            "(fedadam), trimmed-beta (fedtrimmedavg), proximal-mu (fedprox); see docs/strategies.md",
            "strategy_options", flag="--strategy-option", repeat=True, metavar="KEY=VALUE"),
    Setting("freeze_specs", _freeze_list, FREEZE_SPECS,
            "comma-separated freeze specs, e.g. '1-3,none' (repeatable); one spec freezing several blocks is a range "
            "or joined with '+' (1-3, 1-2+4): '1,2,3' is refused as ambiguous", "freeze", flag="--freeze",
            text=parse_freeze_spec_list, repeat=True, metavar="SPECS"),
    Setting("site_sizes", _size_list, (), "repeat the comparison with each site's training split cut to N images, "
            "e.g. 25,50,100,200,400 (test split fixed; see docs/federation.md)", "site_sizes", flag="--site-sizes",
            text=_comma_list, metavar="N,N,..."),
    Setting("dp_noise_multipliers", _number_list, (), "comma-separated DP noise multipliers: adds one DP federation "
            "per value (freeze 1-3)", "dp_noise_multipliers", flag="--dp", text=_comma_list, metavar="SIGMA,..."),
    Setting("dp_max_epsilon", _number, 10.0, "each DP site's privacy budget: a site refuses a round that would pass "
            "it", "dp_max_epsilon", flag="--dp-max-epsilon"),
    Setting("feature_cache", to_bool, True, "run the frozen blocks once per image and view (sites, baselines); "
            "--no-feature-cache recomputes them at every step", "feature_cache", flag="--no-feature-cache"),
    replace(FEATURE_AUGMENT, run_key="feature_augment"),
    Setting("fedrep", to_bool, False, "also run FedRep (each site keeps its own head)", "fedrep", flag="--fedrep"),
    Setting("leave_one_out", to_bool, False, "also federate without each site in turn and score that model on the "
            "site left out", "leave_one_out", flag="--leave-one-out"),
    Setting("wandb", to_bool, False, "also log to wandb (offline unless configured)", flag="--wandb"),
    Setting("pretrained", _optional_path, None, "start from this checkpoint (no pretraining)", "pretrained",
            flag="--pretrained"),
    Setting("source_dir", _optional_path, None, "pretrain on this RSNA-format folder instead", "source",
            flag="--source"),
    Setting("real_sites", _real_sites, (), "a real hospital folder (repeatable; ':years' for whole-year labels); "
            "replaces the phantom sites (an experiment file's [[sites]] tables declare columns too)",
            flag="--site", repeat=True, metavar="DIR[:years]"),
    Setting("out_dir", Path, Path("runs/sim"), "output folder", flag="--out"),
    Setting("cache_dir", Path, Path("runs/cache"), "cache of sites and pretrained models", flag="--cache"),
)
_D = SIM_SCHEMA.default


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
    rounds: int = _D("rounds")
    local_epochs: int = _D("local_epochs")
    lr: float = _D("lr")
    batch_size: int = _D("batch_size")
    freeze_specs: tuple[str, ...] = _D("freeze_specs")  # canonical FreezeSpecs once built
    strategy: str = _D("strategy")
    strategy_options: tuple[tuple[str, float], ...] = _D("strategy_options")  # (kebab-case key, value); see strategies/options.py
    device: str = DEVICE_DEFAULT  # every stage: pretraining, baselines, evaluation, the simulated sites
    baseline_freeze: str = ROUND.freeze_spec
    seed: int = _D("seed")
    dp_noise_multipliers: tuple[float, ...] = _D("dp_noise_multipliers")
    dp_max_grad_norm: float = 1.0
    dp_max_epsilon: float = _D("dp_max_epsilon")  # each DP site's budget: a site never trains privately without one
    wandb: bool = _D("wandb")
    out_dir: Path = _D("out_dir")
    cache_dir: Path = _D("cache_dir")
    seeds: int = _D("seeds")
    pretrained: Path | None = _D("pretrained")
    source_dir: Path | None = _D("source_dir")
    real_sites: tuple[RealSite, ...] = _D("real_sites")
    feature_cache: bool = _D("feature_cache")  # frozen blocks run once per image and view (core.train.feature_cache), sites and baselines
    feature_augment: str = _D("feature_augment")  # where that cache augments (core.train.feature_augment), likewise
    site_sizes: tuple[int, ...] = _D("site_sizes")  # training images per site, one comparison each (empty: the sites as they are)
    fedrep: bool = _D("fedrep")  # also a FedRep federation (each site keeps and first trains its own head, block 6)
    leave_one_out: bool = _D("leave_one_out")  # also, for each site, a federation of the others scored on its test split

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
        SIM_SCHEMA["feature_augment"].convert(self.feature_augment, "--feature-augment")  # refused before any training
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


EXPERIMENT_KEYS = {"sites", "preset", *SIM_SCHEMA.keys().values()}
# a [[sites]] table: path, name, and the site layout under the snake_case of its node-config keys (csv, image_dir...)
SITE_LAYOUT_KEYS = {key.replace("-", "_"): key for key in LAYOUT_SCHEMA.keys("node").values()}
SITE_KEYS = {"path", "name", *SITE_LAYOUT_KEYS}


def load_experiment(path: Path) -> dict[str, Any]:
    """Overrides of `preset` from an experiment file (TOML); relative paths are relative to the file.

    Keys: preset, the experiment-file keys of `SIM_SCHEMA` (pretrained or source, strategy, strategy_options (a
    table), freeze (list), rounds, local_epochs, lr, seed, seeds, batch_size, site_sizes (list of training images per
    site), dp_noise_multipliers (list), dp_max_epsilon, feature_cache, feature_augment ("images" or "features"), fedrep and
    leave_one_out (true/false)), and
    [[sites]] tables with path, name and the layout keys label_unit, csv, image_dir, id_column, age_column,
    sex_column.
    """
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read experiment file {path}: {exc}") from None
    unknown = set(data) - EXPERIMENT_KEYS
    if unknown:
        raise ConfigError(f"experiment file {path}: unknown keys {sorted(unknown)}; known: {sorted(EXPERIMENT_KEYS)}")
    here = Path(path).parent
    sites = []
    try:
        overrides: dict[str, Any] = SIM_SCHEMA.read(data)
        for site in data.get("sites", []):
            if set(site) - SITE_KEYS or "path" not in site:
                raise ConfigError(f"each [[sites]] needs a path and knows only {sorted(SITE_KEYS)}")
            layout = LAYOUT_SCHEMA.read({SITE_LAYOUT_KEYS[k]: v for k, v in site.items() if k in SITE_LAYOUT_KEYS},
                                        "node")
            sites.append(RealSite(path=here / site["path"], name=str(site.get("name", "")), **layout))
    except ConfigError as exc:
        raise ConfigError(f"experiment file {path}: {exc}") from None
    for name in ("pretrained", "source_dir"):
        if name in overrides:
            overrides[name] = here / overrides[name]
    if sites:
        overrides["real_sites"] = tuple(sites)
    return {"preset": data.get("preset", "default"), **overrides}


def preset(name: str, **overrides: object) -> SimConfig:
    """A preset with some fields replaced (None values are ignored)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    return replace(PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})
