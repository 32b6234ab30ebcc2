"""The round settings: what the server tells every site about one round, with its defaults defined once.

The server builds a `RoundSettings` from its run config (the same kebab-case keys), writes
`to_config()` into each train/evaluate message, and the site reads it back with `from_config`.
A key the server did not send takes the default below, so a site driven by a server that knows
nothing of OssiFL (Flower's own FedAvg) still trains with sensible settings.

`freeze` is the run's spec: the server sends only the arrays of the blocks it does not freeze.
A site trains exactly the blocks whose arrays it received (plus any deeper freeze it declares
itself), so a server that sends the whole model gets the whole model back.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from core.errors import ConfigError
from core.model.freeze import FreezeSpec, format_freeze_spec, parse_freeze_spec
from core.model.groups import LOCAL_LAYER_CHOICES
from core.model.tjnet import BLOCK_NAMES

BLOCKS = len(BLOCK_NAMES)

# field name -> message / run config key
KEYS = {
    "num_rounds": "num-rounds", "local_epochs": "local-epochs", "lr": "lr", "batch_size": "batch-size",
    "weight_decay": "weight-decay", "proximal_mu": "proximal-mu", "seed": "seed", "freeze": "freeze",
    "local_layers": "local-layers", "pretrained": "pretrained", "pretrained_sha256": "pretrained-sha256",
    "uniform_weights": "central-dp",
}


@dataclass(frozen=True)
class RoundSettings:
    """How sites train in a federated round; the defaults are the run config's defaults.

    Attributes:
        num_rounds: rounds the run plans (sites use it to plan a DP budget per round).
        local_epochs, lr, batch_size, weight_decay: local training per round (AdamW, cosine schedule).
        proximal_mu: FedProx's mu; 0 disables the proximal term.
        seed: seed of the run; a site's round seed is derived from it and the round number.
        freeze: blocks the run freezes (the server sends none of their arrays). A run config spec names
            blocks 1-5; a site that received no array of block 6 freezes it too.
        local_layers: "none", or "norm" to keep normalisation layers at the sites (FedBN).
        pretrained: the pretrained checkpoint's path as the server knows it (a site's node config may override).
        pretrained_sha256: its SHA-256; a site whose pretrained file differs refuses the round.
        uniform_weights: under central DP sites report `num-examples` = 1 (uniform mean), the real count stays.
    """

    num_rounds: int = 3
    local_epochs: int = 1
    lr: float = 3e-4
    batch_size: int = 32
    weight_decay: float = 1e-4
    proximal_mu: float = 0.0
    seed: int = 0
    freeze: tuple[int, ...] = (1, 2, 3)
    local_layers: str = "none"
    pretrained: str = ""
    pretrained_sha256: str = ""
    uniform_weights: bool = False

    def __post_init__(self) -> None:
        if self.num_rounds < 1 or self.local_epochs < 1 or self.batch_size < 1:
            raise ConfigError("num-rounds, local-epochs and batch-size must be at least 1")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"lr must be a positive number, got {self.lr}")
        if not (self.weight_decay >= 0 and self.proximal_mu >= 0):
            raise ConfigError("weight-decay and proximal-mu must be >= 0")
        if self.local_layers not in LOCAL_LAYER_CHOICES:
            raise ConfigError(f"local-layers must be one of {', '.join(LOCAL_LAYER_CHOICES)}, "
                              f"got {self.local_layers!r}")
        if not set(self.freeze) <= set(range(1, BLOCKS + 1)):
            raise ConfigError(f"freeze {self.freeze}: blocks run from 1 to {BLOCKS}")
        if len(set(self.freeze)) == BLOCKS:
            raise ConfigError("every block is frozen: nothing to train (did the server send no arrays?)")

    @property
    def freeze_spec(self) -> FreezeSpec:
        """The freeze as its canonical spec ("1-3", "none")."""
        return format_freeze_spec(self.freeze)

    def to_config(self) -> dict[str, Any]:
        """Message/run-config entries (kebab-case keys, scalar values)."""
        values = asdict(self)
        values["freeze"] = str(self.freeze_spec)
        return {KEYS[name]: value for name, value in values.items()}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "RoundSettings":
        """Read the keys of `KEYS` that `config` has; other keys are ignored, missing ones take the defaults."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            key = KEYS[f.name]
            if key not in config:
                continue
            raw = config[key]
            try:
                values[f.name] = _convert(f.name, raw, type(getattr(_DEFAULTS, f.name)))
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"{key} = {raw!r} is not a valid value ({exc})") from None
        return cls(**values)


def _convert(name: str, raw: Any, kind: type) -> Any:
    if name == "freeze":
        return parse_freeze_spec(raw if isinstance(raw, str) else format_freeze_spec(tuple(raw)))
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text not in ("1", "0", "true", "false", "yes", "no"):
            raise ValueError("expected true or false")
        return text in ("1", "true", "yes")
    if kind is int:
        if isinstance(raw, float) and not raw.is_integer():
            raise ValueError("expected a whole number")
        return int(raw)
    return kind(raw)


_DEFAULTS = RoundSettings()
