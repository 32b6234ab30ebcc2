"""Models made of other models, each saved as one checkpoint: a model per sex, and a linear ensemble.

Both hold their members' architectures and configs in their own config, so `core.checkpoint.build_model`
rebuilds the members first and then the combination; the combination's state dict holds the members'
weights under `members.<i>.` and, for the ensemble, its fitted weights and intercepts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from core.errors import ConfigError
from core.model.heads import AgeHead, AgeOutput


@dataclass(frozen=True)
class MemberSpec:
    """How to rebuild one member: its architecture name and its model config."""

    architecture: str
    model_config: dict[str, Any]


@dataclass(frozen=True)
class CombinedConfig:
    """Config of a sex-specific model (members: female, male) or of an ensemble (any members).

    Attributes:
        members: the members' specs, in order.
        per_sex: ensemble only: one set of weights and an intercept per sex.
        names: ensemble only: a label per member (the checkpoint file it came from).
        member_views: ensemble only: the input channel (view) each member reads, when members read differently
            preprocessed images (e.g. region crops); empty: every member reads the one channel.
    """

    members: tuple[MemberSpec, ...]
    per_sex: bool = False
    names: tuple[str, ...] = field(default=())
    member_views: tuple[int, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.member_views and (len(self.member_views) != len(self.members) or min(self.member_views) < 0):
            raise ConfigError(f"member_views {list(self.member_views)} must give one view index >= 0 per member "
                              f"({len(self.members)} members)")

    @property
    def n_views(self) -> int:
        """Input channels the model reads: one per distinct member preprocessing."""
        return max(self.member_views) + 1 if self.member_views else 1

    @property
    def image_size(self) -> int:
        return max(int(m.model_config["image_size"]) for m in self.members)

    @property
    def class_step_months(self) -> float:
        return float(self.members[0].model_config.get("class_step_months") or 3.0)

    def to_dict(self) -> dict[str, Any]:
        return {"members": [{"architecture": m.architecture, "model_config": dict(m.model_config)}
                            for m in self.members],
                "per_sex": self.per_sex, "names": list(self.names), "image_size": self.image_size,
                "member_views": list(self.member_views)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "CombinedConfig":
        members = tuple(MemberSpec(m["architecture"], dict(m["model_config"])) for m in values.get("members", ()))
        if not members:
            raise ConfigError("a combined model needs at least one member")
        return cls(members=members, per_sex=bool(values.get("per_sex", False)),
                   names=tuple(values.get("names", ())), member_views=tuple(values.get("member_views", ())))


def _fit_size(image: torch.Tensor, size: int) -> torch.Tensor:
    """The batch at a member's input size (members trained at another size see a resized batch)."""
    if image.shape[-1] == size and image.shape[-2] == size:
        return image
    return F.interpolate(image, size=(size, size), mode="bilinear", align_corners=False)


class SexSpecificModel(nn.Module):
    """Two models of one architecture and head; each image goes to the model of its sex input."""

    def __init__(self, config: CombinedConfig, female: nn.Module, male: nn.Module) -> None:
        super().__init__()
        if len(config.members) != 2:
            raise ValueError("a sex-specific model has exactly two members (female, male)")
        self.config = config
        self.members = nn.ModuleList([female, male])

    @property
    def age_head(self) -> AgeHead:
        return self.members[0].age_head

    def forward(self, image: torch.Tensor, male: torch.Tensor) -> AgeOutput:
        is_male = male.reshape(-1) > 0.5
        parts = {}
        for flag, member in ((False, self.members[0]), (True, self.members[1])):
            index = torch.nonzero(is_male == flag).reshape(-1)
            if index.numel():
                parts[flag] = (index, member(image[index], male[index]))
        return _merge(parts, image.shape[0])


def _merge(parts: dict[bool, tuple[torch.Tensor, AgeOutput]], batch: int) -> AgeOutput:
    """One AgeOutput in batch order from the outputs of the two sexes' sub-batches."""
    first = next(iter(parts.values()))[1]

    def gather(name: str) -> torch.Tensor | None:
        if getattr(first, name) is None:
            return None
        sample = getattr(first, name)
        merged = sample.new_zeros((batch, *sample.shape[1:]))
        for index, output in parts.values():
            merged = merged.index_copy(0, index, getattr(output, name))
        return merged

    return AgeOutput(expected_months=gather("expected_months"), age_logits=gather("age_logits"),
                     sex_logits=gather("sex_logits"), scaled=gather("scaled"))


class EnsembleModel(nn.Module):
    """age = intercept[s] + sum_m weight[s, m] * age_m, with s the sex when fitted per sex, else 0."""

    def __init__(self, config: CombinedConfig, members: list[nn.Module]) -> None:
        super().__init__()
        if len(members) != len(config.members):
            raise ValueError(f"{len(config.members)} member specs but {len(members)} members")
        self.config = config
        self.members = nn.ModuleList(members)
        groups = 2 if config.per_sex else 1
        self.register_buffer("weights", torch.full((groups, len(members)), 1.0 / len(members)))
        self.register_buffer("intercepts", torch.zeros(groups))

    def set_fit(self, weights: torch.Tensor, intercepts: torch.Tensor) -> None:
        """Install fitted weights [groups, members] and intercepts [groups]."""
        if tuple(weights.shape) != tuple(self.weights.shape) or tuple(intercepts.shape) != tuple(self.intercepts.shape):
            raise ValueError(f"fit of shape {tuple(weights.shape)}/{tuple(intercepts.shape)} does not match "
                             f"{tuple(self.weights.shape)}/{tuple(self.intercepts.shape)}")
        self.weights.copy_(weights)
        self.intercepts.copy_(intercepts)

    def member_predictions(self, image: torch.Tensor, male: torch.Tensor) -> torch.Tensor:
        """[B, members] bone ages in months; `image` is [B, views, S, S], member m reading its own view."""
        if image.shape[1] != self.config.n_views:
            raise ValueError(f"this ensemble reads {self.config.n_views} view(s) per image, got {image.shape[1]} "
                             "channel(s)")
        views = self.config.member_views or (0,) * len(self.members)
        outputs = [m(_fit_size(image[:, v:v + 1], spec.model_config["image_size"]), male).expected_months.float()
                   for m, spec, v in zip(self.members, self.config.members, views)]
        return torch.stack(outputs, dim=1)

    def forward(self, image: torch.Tensor, male: torch.Tensor) -> AgeOutput:
        ages = self.member_predictions(image, male)
        group = (male.reshape(-1) > 0.5).long() if self.config.per_sex else torch.zeros_like(male.reshape(-1)).long()
        combined = torch.sum(ages * self.weights[group], dim=1) + self.intercepts[group]
        return AgeOutput(expected_months=combined)
