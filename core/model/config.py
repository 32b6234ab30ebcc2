"""Typed configuration of TJ-Net and of the class grid it predicts on."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from core.errors import ConfigError

NORMALISATIONS = ("group", "batch")


@dataclass(frozen=True)
class TJNetConfig:
    """Everything that defines a TJ-Net's architecture.

    Attributes:
        image_size: side of the square input in pixels (paper: 500; CPU default 128).
        width: channel multiplier applied to every convolutional block (paper scale: 1.0).
        num_classes: number of bone-age classes (paper: 77 classes of 3 months, 0-19 years).
        class_step_months: width of one class in months; class k is centred on k * step.
        in_channels: image channels (radiographs are grayscale).
        use_cbam: ablation switch; False removes the three CBAM modules.
        use_residual: ablation switch; False removes the shortcuts of IncRes1/IncRes2.
        joint_sex: ablation switch; False removes the sex head of block 5 (and its loss).
        norm: "group" (default; DP-SGD compatible) or "batch".
        dropout: dropout before the dense layers of blocks 5 and 6.
    """

    image_size: int = 128
    width: float = 0.5
    num_classes: int = 77
    class_step_months: float = 3.0
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
        if self.num_classes < 2:
            raise ConfigError(f"num_classes must be at least 2, got {self.num_classes}")

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
