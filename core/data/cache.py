"""Decoded site data kept in memory between federated rounds, decoded again only when the files change.

A site answers one message per round and phase; decoding its images for each costs about a third of a
round's local training at the simulation's defaults. A process that answers many messages (an actor of
Flower's simulation engine, or any long-lived client) keeps one `SiteDataCache`: each entry is keyed by
everything that determines the decoded arrays (layout, image size, augmentation, seed, splits) and carries a
fingerprint of the site's files: size and modification time of the manifest and of every file in the image
folder. The fingerprint is checked on every use (a directory scan, no decoding), so an edited label or a
replaced image is picked up at the next message. Entries beyond the memory budget are evicted, least
recently used first. The decoded splits are shared between uses: callers only change their epoch.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass

from core.data.config import SiteDataConfig
from core.data.dataset import AugmentConfig
from core.data.site import SiteData, load_site

logger = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 2 << 30

Fingerprint = tuple[tuple[str, int, int], ...]


def site_fingerprint(config: SiteDataConfig) -> Fingerprint:
    """(name, size, mtime in ns) of the manifest and of each file in the image folder, sorted by name.

    A missing manifest or folder gives a shorter fingerprint (and `load_site` then explains the problem).
    """
    entries = []
    try:
        stat = config.csv_path.stat()
        entries.append((str(config.csv_path), stat.st_size, stat.st_mtime_ns))
    except OSError:
        pass
    try:
        with os.scandir(config.image_path) as scan:
            for entry in scan:
                if entry.is_file():
                    stat = entry.stat()
                    entries.append((entry.name, stat.st_size, stat.st_mtime_ns))
    except OSError:
        pass
    return tuple(sorted(entries))


@dataclass(frozen=True)
class _Key:
    config: SiteDataConfig
    image_size: int
    augment: AugmentConfig | None
    seed: int
    splits: tuple[str, ...]


@dataclass
class _Entry:
    fingerprint: Fingerprint
    data: SiteData
    nbytes: int


class SiteDataCache:
    """`load_site` with memory: the same request on unchanged files returns the already decoded splits.

    Args:
        max_bytes: memory budget of the decoded images; 0 turns the cache off (every call decodes).
    """

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if max_bytes < 0:
            raise ValueError(f"the cache's memory budget must be >= 0 bytes, got {max_bytes}")
        self.max_bytes = max_bytes
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[_Key, _Entry] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        """Bytes of decoded images held now."""
        return sum(entry.nbytes for entry in self._entries.values())

    def load(self, config: SiteDataConfig, image_size: int, augment_train: AugmentConfig | None, seed: int,
             splits: tuple[str, ...] = ("train", "val", "test")) -> SiteData:
        """Same arguments and result as `core.data.load_site`; decodes only on a miss or changed files."""
        key = _Key(config, image_size, augment_train, seed, tuple(splits))
        fingerprint = site_fingerprint(config)  # taken before decoding: a change meanwhile forces a new decode
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry.fingerprint == fingerprint:
                self._entries.move_to_end(key)
                self.hits += 1
                return entry.data
            if entry is not None:
                logger.info("%s changed since it was decoded: decoding again", config.root)
                del self._entries[key]
            data = load_site(config, image_size, augment_train, seed, splits=splits)
            self.misses += 1
            nbytes = sum(split.images.nbytes for split in (data.train, data.val, data.test))
            if nbytes <= self.max_bytes:
                self._entries[key] = _Entry(fingerprint, data, nbytes)
                self._evict()
            return data

    def _evict(self) -> None:
        while self.nbytes > self.max_bytes:
            key, entry = self._entries.popitem(last=False)
            logger.info("decoded-image cache over %.0f MB: dropped %s (%.1f MB)", self.max_bytes / 1e6,
                        key.config.root, entry.nbytes / 1e6)


def cache_budget_from_env(variable: str = "OSSIFL_DECODE_CACHE_MB") -> int:
    """The cache budget in bytes from an environment variable in MB (unset: 2 GiB; 0: off).

    A value that is not a number >= 0 is reported in one warning and the default is used.
    """
    value = os.environ.get(variable, "").strip()
    if not value:
        return DEFAULT_MAX_BYTES
    try:
        megabytes = float(value)
    except ValueError:
        megabytes = -1.0
    if not megabytes >= 0:
        logger.warning("%s=%r is not a number of megabytes >= 0: using %d MB", variable, value,
                       DEFAULT_MAX_BYTES // 10**6)
        return DEFAULT_MAX_BYTES
    return int(megabytes * 1e6)

