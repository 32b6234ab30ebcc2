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
from dataclasses import asdict, dataclass
from typing import Any

from core.errors import ConfigError
from core.model.freeze import FreezeSpec, format_freeze_spec, parse_freeze_spec
from core.model.groups import LOCAL_LAYER_CHOICES
from core.model.tjnet import BLOCK_NAMES
from core.schema import Schema, Setting, to_bool, to_int

BLOCKS = len(BLOCK_NAMES)


def _freeze_blocks(raw: Any) -> tuple[int, ...]:
    """A spec ("1-3", "1,2,3") or a sequence of block numbers, as a run config names them (blocks 1-5)."""
    return parse_freeze_spec(raw if isinstance(raw, str) else "+".join(str(to_int(b)) for b in raw))


ROUND_SCHEMA = Schema(
    Setting("num_rounds", to_int, 3, "rounds the run plans", "num-rounds", flag="--rounds"),
    Setting("local_epochs", to_int, 1, "local epochs per round", "local-epochs"),
    Setting("lr", float, 3e-4, "local learning rate (AdamW, cosine schedule)", "lr"),
    Setting("batch_size", to_int, 32, "local batch size", "batch-size"),
    Setting("weight_decay", float, 1e-4, "AdamW weight decay", "weight-decay"),
    Setting("proximal_mu", float, 0.0, "FedProx's mu (0: no proximal term)", "proximal-mu"),
    Setting("seed", to_int, 0, "seed of the run", "seed"),
    Setting("freeze", _freeze_blocks, (1, 2, 3), "blocks the run freezes", "freeze"),
    Setting("local_layers", str, "none", "none, norm to keep normalisation layers at the sites (FedBN), or head to "
            "keep block 6 at the sites and train it first in each round (FedRep)",
            "local-layers", choices=LOCAL_LAYER_CHOICES),
    Setting("pretrained", str, "", "the pretrained checkpoint's path as the server knows it", "pretrained"),
    Setting("pretrained_sha256", str, "", "the pretrained checkpoint's SHA-256", "pretrained-sha256"),
    Setting("uniform_weights", to_bool, False, "sites report num-examples = 1 (central DP)", "central-dp"),
)
KEYS = ROUND_SCHEMA.keys("run")  # field name -> message / run config key


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
        local_layers: "none", "norm" to keep normalisation layers at the sites (FedBN), or "head" to keep block 6
            at the sites and train it before the shared blocks in every round (FedRep).
        pretrained: the pretrained checkpoint's path as the server knows it (a site's node config may override).
        pretrained_sha256: its SHA-256; a site whose pretrained file differs refuses the round.
        uniform_weights: under central DP sites report `num-examples` = 1 (uniform mean), the real count stays.
    """

    num_rounds: int = ROUND_SCHEMA.default("num_rounds")
    local_epochs: int = ROUND_SCHEMA.default("local_epochs")
    lr: float = ROUND_SCHEMA.default("lr")
    batch_size: int = ROUND_SCHEMA.default("batch_size")
    weight_decay: float = ROUND_SCHEMA.default("weight_decay")
    proximal_mu: float = ROUND_SCHEMA.default("proximal_mu")
    seed: int = ROUND_SCHEMA.default("seed")
    freeze: tuple[int, ...] = ROUND_SCHEMA.default("freeze")
    local_layers: str = ROUND_SCHEMA.default("local_layers")
    pretrained: str = ROUND_SCHEMA.default("pretrained")
    pretrained_sha256: str = ROUND_SCHEMA.default("pretrained_sha256")
    uniform_weights: bool = ROUND_SCHEMA.default("uniform_weights")

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
        return ROUND_SCHEMA.write({**asdict(self), "freeze": self.freeze_spec})

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "RoundSettings":
        """Read the keys of `KEYS` that `config` has; other keys are ignored, missing ones take the defaults."""
        return cls(**ROUND_SCHEMA.read(config))
