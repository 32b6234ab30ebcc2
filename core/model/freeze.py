"""Freeze specs: the one typed, canonical value of "which blocks stay frozen"; freezing itself is `core.model.groups`.

A spec names blocks 1-5 ("block 6 always trains"): `none`, a block (`2`), a range (`1-3`) or several of these
joined with `+` (`1-2+4`). Within one spec a comma also lists blocks (`1,2,3`), for the run config and experiment
files. `FreezeSpec.parse` turns any of these into the canonical spec, which is a `str` (so it travels unchanged
through CSV, JSON, run and node configs): ranges where blocks are contiguous, `+` between them, `none` for
nothing. `1,2,3`, `3,1,2`, `1+2+3` and `1-3` are all the spec `1-3`.

A *list* of specs (`python -m sim --freeze`, `python -m client finetune --specs`) is separated by commas, so
there a comma cannot also list blocks: `parse_freeze_spec_list` refuses a list holding two or more bare block
numbers (`1,2,3`: three specs or the one spec `1-3`?) with a one-line error that names both readings.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from torch import nn

from core.errors import ConfigError
from core.model.groups import block_of_key, parameter_groups, set_trainable
from core.model.tjnet import BLOCK_NAMES

__all__ = ["FREEZE_CHOICES", "FreezeSpec", "FreezeSpecError", "block_of_key", "format_freeze_spec", "freeze_blocks",
           "parse_freeze_spec", "parse_freeze_spec_list", "trainable_state_keys"]

FREEZE_CHOICES = ("none", "1", "1-2", "1-3", "1-4")
FREEZABLE = len(BLOCK_NAMES) - 1  # block 6 (the head) always trains
_RANGE = re.compile(r"^(\d)(?:-(\d))?$")
_BARE_BLOCK = re.compile(r"^\d$")


class FreezeSpecError(ConfigError):
    """A freeze spec that cannot be understood."""


class FreezeSpec(str):
    """A freeze spec in canonical form (a `str`); `.blocks` is the sorted tuple of frozen block numbers."""

    blocks: tuple[int, ...]

    def __new__(cls, text: "str | FreezeSpec | None" = "none") -> "FreezeSpec":
        blocks = _parse_blocks(text)
        spec = super().__new__(cls, _canonical(blocks))
        spec.blocks = blocks
        return spec

    @classmethod
    def parse(cls, text: "str | FreezeSpec | None") -> "FreezeSpec":
        """`none`, `2`, `1-3`, `1-2+4` or `1,2,4` (any order, any spaces) -> the canonical spec."""
        return text if isinstance(text, FreezeSpec) else cls(text)

    @classmethod
    def of(cls, blocks: Iterable[int]) -> "FreezeSpec":
        """The spec that freezes `blocks` (a site that received nothing of block 6 freezes it too: `1-6`)."""
        chosen = tuple(sorted({int(b) for b in blocks}))
        if not set(chosen) <= set(range(1, len(BLOCK_NAMES) + 1)):
            raise FreezeSpecError(f"freeze {chosen}: blocks run from 1 to {len(BLOCK_NAMES)}")
        spec = super().__new__(cls, _canonical(chosen))
        spec.blocks = chosen
        return spec

    def __getnewargs__(self) -> tuple[str]:  # copy and pickle rebuild it from its text
        return (str(self),)

    def __repr__(self) -> str:
        return f"FreezeSpec({str(self)!r})"


def _parse_blocks(spec: str | None) -> tuple[int, ...]:
    text = (spec or "none").strip().lower()
    if text in ("", "none", "0"):
        return ()
    blocks: set[int] = set()
    for part in re.split(r"[,+]", text):
        match = _RANGE.match(re.sub(r"\s+", "", part))
        if match is None:
            raise FreezeSpecError(f"freeze spec {spec!r} is not like 'none', '1', '1-3' or '1-2+4'")
        first = int(match.group(1))
        last = int(match.group(2) or first)
        if not 1 <= first <= last <= FREEZABLE:
            raise FreezeSpecError(f"freeze spec {spec!r}: blocks run from 1 to {FREEZABLE} (block 6 always trains)")
        blocks.update(range(first, last + 1))
    return tuple(sorted(blocks))


def _canonical(blocks: tuple[int, ...]) -> str:
    if not blocks:
        return "none"
    runs: list[list[int]] = []
    for block in blocks:
        if runs and block == runs[-1][-1] + 1:
            runs[-1].append(block)
        else:
            runs.append([block])
    return "+".join(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}" for run in runs)


def parse_freeze_spec(spec: str | None) -> tuple[int, ...]:
    """The sorted block numbers of one spec (see `FreezeSpec.parse`)."""
    return FreezeSpec.parse(spec).blocks


def format_freeze_spec(blocks: Iterable[int]) -> FreezeSpec:
    """The canonical spec of `blocks` ("none", "1", "1-3", "1-2+4")."""
    return FreezeSpec.of(tuple(blocks))


def parse_freeze_spec_list(text: str) -> tuple[FreezeSpec, ...]:
    """Comma-separated specs (`1-3,none`) -> canonical specs, in order, without repeats.

    Two or more bare block numbers (`1,2,3`) could be one spec or several: refused with a one-line error.
    """
    parts = [part.strip() for part in text.split(",") if part.strip()]
    bare = [part for part in parts if _BARE_BLOCK.match(part)]
    if len(bare) >= 2:
        joined = "+".join(bare)
        raise FreezeSpecError(
            f"freeze specs {text!r} are ambiguous: commas separate specs, so this is {len(parts)} specs; for the one "
            f"spec freezing blocks {', '.join(bare)} write {FreezeSpec.parse(joined)} (or {joined}); to run bare "
            f"blocks as separate specs repeat the option")
    if not parts:
        raise FreezeSpecError("no freeze spec given (e.g. '1-3,none')")
    return tuple(dict.fromkeys(FreezeSpec.parse(part) for part in parts))


def freeze_blocks(model: nn.Module, blocks: Iterable[int]) -> None:
    """Freeze the parameters of `blocks` and keep their normalisation statistics fixed (see `groups.set_trainable`)."""
    set_trainable(model, tuple(blocks))


def trainable_state_keys(model: nn.Module) -> list[str]:
    """State-dict keys (parameters and buffers) of the blocks that are not frozen, in order."""
    return list(parameter_groups(model, getattr(model, "frozen_blocks", ())).trainable)
