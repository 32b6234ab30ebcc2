"""Freeze specs ("none", "1", "1-3", "1,2"): parse and format them; freezing itself is `core.model.groups`."""

from __future__ import annotations

import re

from torch import nn

from core.errors import ConfigError
from core.model.groups import block_of_key, parameter_groups, set_trainable
from core.model.tjnet import BLOCK_NAMES

__all__ = ["FREEZE_CHOICES", "FreezeSpecError", "block_of_key", "format_freeze_spec", "freeze_blocks",
           "parse_freeze_spec", "trainable_state_keys"]

FREEZE_CHOICES = ("none", "1", "1-2", "1-3", "1-4")
_RANGE = re.compile(r"^(\d)(?:-(\d))?$")


class FreezeSpecError(ConfigError):
    """A freeze spec that cannot be understood."""


def parse_freeze_spec(spec: str | None) -> tuple[int, ...]:
    """Turn "none", "1", "1-3" or "1,2,4" into a sorted tuple of block numbers (1-5)."""
    text = (spec or "none").strip().lower()
    if text in ("", "none", "0"):
        return ()
    blocks: set[int] = set()
    for part in text.split(","):
        match = _RANGE.match(part.strip())
        if match is None:
            raise FreezeSpecError(f"freeze spec {spec!r} is not like 'none', '1', '1-3' or '1,2'")
        first = int(match.group(1))
        last = int(match.group(2) or first)
        if not 1 <= first <= last <= len(BLOCK_NAMES) - 1:
            raise FreezeSpecError(
                f"freeze spec {spec!r}: blocks run from 1 to {len(BLOCK_NAMES) - 1} (block 6 always trains)"
            )
        blocks.update(range(first, last + 1))
    return tuple(sorted(blocks))


def format_freeze_spec(blocks: tuple[int, ...]) -> str:
    """Inverse of `parse_freeze_spec` for contiguous specs ("none", "1", "1-3")."""
    if not blocks:
        return "none"
    if list(blocks) == list(range(blocks[0], blocks[-1] + 1)):
        return str(blocks[0]) if len(blocks) == 1 else f"{blocks[0]}-{blocks[-1]}"
    return ",".join(str(b) for b in blocks)


def freeze_blocks(model: nn.Module, blocks: tuple[int, ...]) -> None:
    """Freeze the parameters of `blocks` and keep their normalisation statistics fixed (see `groups.set_trainable`)."""
    set_trainable(model, blocks)


def trainable_state_keys(model: nn.Module) -> list[str]:
    """State-dict keys (parameters and buffers) of the blocks that are not frozen, in order."""
    return list(parameter_groups(model, getattr(model, "frozen_blocks", ())).trainable)
