"""Refuse, before decoding anything, a split whose decoded images cannot fit in this machine's memory."""

from __future__ import annotations

import os

from core.data.config import DataError


def available_memory_bytes() -> int | None:
    """Memory the kernel says can be used without swapping (MemAvailable), or None when unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_decoded_fit(n_images: int, canvas: int, image_size: int) -> None:
    """Raise `DataError` when `n_images` uint8 images of `canvas` px a side exceed the available memory."""
    needed = n_images * canvas * canvas
    available = available_memory_bytes()
    if available is not None and needed > available:
        raise DataError(f"image size {image_size} px needs {needed / 2**30:.1f} GiB to hold {n_images} decoded "
                        f"images, more than the {available / 2**30:.1f} GiB of memory available; "
                        f"use a smaller image size")
