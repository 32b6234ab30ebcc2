"""What preprocessing did to a site's images, for a person to review: flag counts and a before/after contact sheet."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from core.preprocess.pipeline import PreprocessResult

TILE = 128
LABEL_HEIGHT = 28


@dataclass
class QualityTally:
    """Counts of flags and refusals over a site, mean confidence, time per image, and examples for the sheet."""

    n: int = 0
    flags: Counter = field(default_factory=Counter)
    refused: Counter = field(default_factory=Counter)
    confidence_sum: float = 0.0
    seconds: float = 0.0
    examples: list[tuple[str, np.ndarray, PreprocessResult]] = field(default_factory=list)
    max_examples: int = 12

    def add(self, image_id: str, before: np.ndarray, result: PreprocessResult, seconds: float) -> None:
        """Count one image; keep it as an example while there is room, flagged or refused images first."""
        self.n += 1
        self.flags.update(result.flags)
        if result.refused is not None:
            self.refused[result.refused.split(" (")[0]] += 1
        self.confidence_sum += result.confidence
        self.seconds += seconds
        notable = bool(result.flags) or result.refused is not None
        if len(self.examples) < self.max_examples:
            self.examples.append((image_id, before, result))
        elif notable:
            plain = [i for i, (_, _, r) in enumerate(self.examples) if not r.flags and r.refused is None]
            if plain:
                self.examples[plain[0]] = (image_id, before, result)

    def summary(self) -> dict[str, Any]:
        return {"n": self.n, "flags": dict(sorted(self.flags.items())), "refused": dict(sorted(self.refused.items())),
                "mean_confidence": self.confidence_sum / self.n if self.n else 0.0,
                "ms_per_image": 1000.0 * self.seconds / self.n if self.n else 0.0}


def _tile(image: np.ndarray) -> np.ndarray:
    """Min-max stretched, aspect kept, on a black TILE square, uint8."""
    low, high = float(image.min()), float(image.max())
    h, w = image.shape
    ratio = TILE / max(h, w)
    size = (max(1, round(w * ratio)), max(1, round(h * ratio)))
    resized = cv2.resize(np.asarray(image, dtype=np.float32), size, interpolation=cv2.INTER_AREA)
    canvas = np.zeros((TILE, TILE), dtype=np.uint8)
    top, left = (TILE - size[1]) // 2, (TILE - size[0]) // 2
    canvas[top:top + size[1], left:left + size[0]] = np.rint(255 * (resized - low) / max(high - low, 1e-6))
    return canvas


def _label(lines: list[str], width: int) -> np.ndarray:
    strip = np.zeros((LABEL_HEIGHT, width), dtype=np.uint8)
    for i, text in enumerate(lines[:2]):
        cv2.putText(strip, text[:40], (3, 11 + 13 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.33, 255, 1)
    return strip


def contact_sheet(examples: list[tuple[str, np.ndarray, PreprocessResult]], path: Path, columns: int = 4) -> Path:
    """A PNG grid: for each example, the image as read and as preprocessed, with its id, flags or refusal."""
    cells = []
    for image_id, before, result in examples:
        pair = np.concatenate([_tile(before), np.full((TILE, 2), 128, np.uint8), _tile(result.image)], axis=1)
        status = f"REFUSED {result.refused.split(' (')[0]}" if result.refused else (", ".join(result.flags) or "ok")
        label = _label([f"{image_id}  conf {result.confidence:.2f}", status], pair.shape[1])
        cells.append(np.concatenate([pair, label], axis=0))
    if not cells:
        raise ValueError("a contact sheet needs at least one image")
    blank = np.zeros_like(cells[0])
    while len(cells) % columns:
        cells.append(blank)
    gap = np.full((cells[0].shape[0], 6), 60, np.uint8)
    rows = [np.concatenate([c for cell in cells[r:r + columns] for c in (cell, gap)][:-1], axis=1)
            for r in range(0, len(cells), columns)]
    sheet = np.concatenate([np.concatenate([row, np.full((6, row.shape[1]), 60, np.uint8)]) for row in rows])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sheet).save(path)
    return path
