"""Typed configuration of TJ-Net and of the class grid it predicts on."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from core.errors import ConfigError
from core.model.heads import resolve_grid

NORMALISATIONS = ("group", "batch")


@dataclass(frozen=True)
class TJNetConfig:
    """Everything that defines a TJ-Net's architecture.

    Attributes:
        image_size: side of the square input in pixels (paper: 500; CPU default 128).
        width: channel multiplier applied to every convolutional block (paper scale: 1.0).
        head: output head, "paper" (77 classes of 3 months), "months" (240 of 1 month) or
            "regression" (one output in [-1, 1]); see `core.model.heads`.
        num_classes: number of bone-age classes; None takes the head's default.
        class_step_months: width of one class in months (class k is centred on k * step); None takes
            the head's default.
        in_channels: image channels (radiographs are grayscale).
        use_cbam: ablation switch; False removes the three CBAM modules.
        use_residual: ablation switch; False removes the shortcuts of IncRes1/IncRes2.
        joint_sex: ablation switch; False removes the sex head of block 5 (and its loss).
        norm: "group" (default; DP-SGD compatible) or "batch".
        dropout: dropout before the dense layers of blocks 5 and 6.
    """

    image_size: int = 128
    width: float = 0.5
    head: str = "paper"
    num_classes: int | None = None
    class_step_months: float | None = None
    in_channels: int = 1
    use_cbam: bool = True
    use_residual: bool = True
    joint_sex: bool = True
    norm: str = "group"
    dropout: float = 0.2

    def __post_init__(self) -> None:
        if self.norm not in NORMALISATIONS:
            raise ConfigError(f"norm must be one of {NORMALISATIONS}, got {self.norm!r}")
        if self.image_size < 32:
            raise ConfigError(f"image_size must be at least 32 px, got {self.image_size}")
        if self.width <= 0:
            raise ConfigError(f"width must be positive, got {self.width}")
        classes, step = resolve_grid(self.head, self.num_classes, self.class_step_months)
        object.__setattr__(self, "num_classes", classes)
        object.__setattr__(self, "class_step_months", step)

    @property
    def max_months(self) -> float:
        """Centre of the top class, in months."""
        return (self.num_classes - 1) * self.class_step_months

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TJNetConfig":
        known = {k: v for k, v in values.items() if k in cls.__dataclass_fields__}
        return cls(**known)
