"""Decoded site data kept in memory between federated rounds, decoded again only when the files change.

A site answers one message per round and phase; decoding its images for each costs about a third of a
round's local training at the simulation's defaults. A process that answers many messages (an actor of
Flower's simulation engine, or any long-lived client) keeps one `SiteDataCache`: each entry is keyed by
everything that determines the decoded arrays (layout, image size, augmentation, seed, splits) and carries a
fingerprint of the site's files: size and modification time of the manifest and of every file in the image
folder. The fingerprint is checked on every use (a directory scan, no decoding), so an edited label or a
replaced image is picked up at the next message. Entries beyond the memory budget are evicted, least
recently used first. The decoded splits are shared between uses: callers only change their epoch.

A deployed site answers each message in a fresh process, where memory does not last. Given a `disk_dir`
(a folder of the site's own state, never its data folder), a decoded entry is also written there as one
`.npz` file (owner-only permissions) holding the images, the records and the fingerprint; a new process
reads it back in seconds instead of decoding again (a 10,000-image site of full-size radiographs takes
about 10 minutes to decode). An entry whose fingerprint no longer matches, or that cannot be read, is
decoded again and replaced.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
import numpy as np

from core.data.config import SiteDataConfig
from core.data.dataset import AugmentConfig, BoneAgeDataset, DecodedSplit, Preprocessing, canvas_size
from core.data.manifest import Manifest, Record, Skip
from core.data.site import SiteData, load_site
from core.errors import ConfigError

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
    preprocess: Preprocessing | None = None


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
            raise ConfigError(f"the cache's memory budget must be >= 0 bytes, got {max_bytes}")
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
             splits: tuple[str, ...] = ("train", "val", "test"), disk_dir: Path | None = None,
             preprocess: Preprocessing | None = None) -> SiteData:
        """Same arguments and result as `core.data.load_site`; decodes only on a miss or changed files.

        With `disk_dir`, a memory miss is looked up in (and a fresh decode written to) that folder. The
        preprocessing settings (with the orientation model's SHA-256) are part of the key.
        """
        if preprocess is not None:
            preprocess = preprocess.resolved()
        key = _Key(config, image_size, augment_train, seed, tuple(splits), preprocess)
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
            data = None if disk_dir is None else _read_disk(disk_dir, key, fingerprint)
            if data is None:
                data = load_site(config, image_size, augment_train, seed, splits=splits, preprocess=preprocess)
                self.misses += 1
                if disk_dir is not None:
                    _write_disk(disk_dir, key, fingerprint, data)
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


def cache_budget_from_env(variable: str = "OSSIFL_DECODE_CACHE_MB", default: int = DEFAULT_MAX_BYTES) -> int:
    """The cache budget in bytes from an environment variable in MB (unset: `default`, 2 GiB; 0: off).

    A value that is not a number >= 0 is reported in one warning and the default is used.
    """
    value = os.environ.get(variable, "").strip()
    if not value:
        return default
    try:
        megabytes = float(value)
    except ValueError:
        megabytes = -1.0
    if not megabytes >= 0:
        logger.warning("%s=%r is not a number of megabytes >= 0: using %d MB", variable, value, default // 10**6)
        return default
    return int(megabytes * 1e6)


SPLITS = ("train", "val", "test")


def _disk_path(disk_dir: Path, key: _Key) -> Path:
    """One file per layout, input size, canvas, splits and preprocessing (augmentation and seed do not change the
    pixels)."""
    identity = {"layout": {k: str(v) for k, v in asdict(key.config).items()}, "image_size": key.image_size,
                "canvas": canvas_size(key.image_size, key.augment), "splits": list(key.splits)}
    if key.preprocess is not None:
        identity["preprocess"] = key.preprocess.to_dict()
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return Path(disk_dir) / f"decoded_{digest}.npz"


def _write_disk(disk_dir: Path, key: _Key, fingerprint: Fingerprint, data: SiteData) -> None:
    path = _disk_path(disk_dir, key)
    splits = {name: getattr(data, name) for name in SPLITS}
    meta = {"fingerprint": fingerprint, "n_images_without_label": data.manifest.n_images_without_label,
            "manifest_records": [_record_row(r) for r in data.manifest.records],
            "manifest_skipped": [asdict(s) for s in data.manifest.skipped],
            "splits": {name: {"records": [_record_row(r) for r in split.records],
                              "skipped": [asdict(s) for s in split.skipped]} for name, split in splits.items()}}
    tmp = path.with_name(path.name + ".tmp.npz")
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as handle:
            np.savez(handle, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
                     **{name: split.images for name, split in splits.items()})
        os.replace(tmp, path)
    except OSError as exc:
        logger.warning("cannot keep the decoded images in %s (%s): the next process decodes again", disk_dir, exc)
        tmp.unlink(missing_ok=True)


def _read_disk(disk_dir: Path, key: _Key, fingerprint: Fingerprint) -> SiteData | None:
    path = _disk_path(disk_dir, key)
    if not path.is_file():
        return None
    try:
        with np.load(path) as stored:
            meta = json.loads(stored["meta"].tobytes())
            if meta["fingerprint"] != json.loads(json.dumps(fingerprint)):
                logger.info("%s: the site's files changed since %s was written: decoding again", key.config.root,
                            path.name)
                return None
            images = {name: stored[name] for name in SPLITS}
        manifest = Manifest([_record(r) for r in meta["manifest_records"]],
                            [Skip(**s) for s in meta["manifest_skipped"]], meta["n_images_without_label"])
        datasets = {}
        for name in SPLITS:
            split = meta["splits"][name]
            decoded = DecodedSplit([_record(r) for r in split["records"]], images[name],
                                   [Skip(**s) for s in split["skipped"]])
            datasets[name] = BoneAgeDataset(decoded.records, key.image_size,
                                            key.augment if name == "train" else None, key.seed, decoded=decoded)
    except Exception as exc:  # a truncated or foreign file: numpy, zipfile and json raise many types
        logger.warning("cannot read %s (%s: %s): decoding again", path, exc.__class__.__name__, exc)
        return None
    logger.info("site %s: %d decoded images read from %s", key.config.root,
                sum(len(d) for d in datasets.values()), path)
    return SiteData(manifest=manifest, **datasets)


def _record_row(record: Record) -> list:
    return [record.image_id, str(record.path), record.age_months, record.male]


def _record(row: list) -> Record:
    return Record(row[0], Path(row[1]), float(row[2]), bool(row[3]))
