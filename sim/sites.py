"""Phantom sites and the pretrained source model of a simulation, generated once and cached."""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from core.stages.central import PretrainJob, pretrain
from core.checkpoint import CheckpointError
from core.data import AugmentConfig, DataError, SiteDataConfig, load_manifest
from core.train.training import TrainConfig
from core.predict.tta import TTAConfig
from sim.config import SimConfig, SiteSpec
from sim.phantom.writer import generate_site

logger = logging.getLogger("ossifl.sim")

# The simulation scores every model with one forward pass (no TTA), so its pretrained model records none: `server
# evaluate` on the cached checkpoint then agrees with the simulation's own rows, and its conformal fit stays one
# pass per image (TTA would add ~9 CPU s, 1.9 % of the default run's pretraining: `python -m bench.bench_tta`).
SIM_PRETRAIN_TTA = TTAConfig()


@dataclass(frozen=True)
class PreparedSite:
    """A hospital site of the comparison; `declared`: a real site's manifest as the experiment declared it
    (file and column names, unit); without it the site has the RSNA layout (phantom sites)."""

    name: str
    path: Path
    label_unit: str
    declared: SiteDataConfig | None = None

    @property
    def data(self) -> SiteDataConfig:
        return self.declared or SiteDataConfig(root=self.path, label_unit=self.label_unit)


def prepare_site(spec: SiteSpec, image_size: int, seed: int, cache_dir: Path, name: str) -> PreparedSite:
    """Generate the phantom site, or reuse the cached copy made with the same settings."""
    folder = cache_dir / "sites" / f"{spec.preset}_n{spec.n}_px{image_size}_seed{seed}"
    marker = folder / "site.json"
    if marker.exists() and (folder / "labels.csv").exists():
        logger.info("reusing cached site %s (%s)", name, folder)
    else:
        if folder.exists():
            shutil.rmtree(folder)  # an interrupted generation; the folder is ours, in the cache
        logger.info("generating site %s: %d %s images at %d px", name, spec.n, spec.preset, image_size)
        generate_site(spec.preset, spec.n, folder, seed=seed, image_size=image_size)
    unit = json.loads(marker.read_text())["label_unit"]
    return PreparedSite(name=name, path=folder, label_unit=unit)


def real_sites(config: SimConfig) -> list[PreparedSite]:
    """The researcher's own site folders, read with the data contract before anything is trained."""
    sites = []
    names = [s.path.name for s in config.real_sites]
    for index, site in enumerate(config.real_sites):
        declared = site.path / "site.json"
        if declared.is_file():
            unit = json.loads(declared.read_text()).get("label_unit", site.label_unit)
            if unit != site.label_unit:
                raise DataError(f"site {site.path}: its site.json says labels are in {unit}, the run was told "
                                f"{site.label_unit}; pass {site.path}:{unit}")
        data = site.data
        if not data.csv_path.is_file():
            raise DataError(f"site {site.path}: no {data.csv_name} (a site folder holds its labels CSV and images)")
        manifest = load_manifest(data)  # missing file or column: one line; bad rows: skipped and counted
        summary = manifest.summary()
        if not manifest.records:
            raise DataError(f"site {site.path}: no usable images in {data.csv_name} ({summary['n_skipped']} rows "
                            f"skipped: {summary['skipped_by_reason']})")
        name = site.name or (site.path.name if names.count(site.path.name) == 1 else f"{index}-{site.path.name}")
        logger.info("site %s: %d usable images, %d rows skipped %s (ages in %s, column %r)", name,
                    summary["n_usable"], summary["n_skipped"], summary["skipped_by_reason"] or "", data.label_unit,
                    data.age_column)
        sites.append(PreparedSite(name=name, path=site.path, label_unit=site.label_unit, declared=data))
    return sites


def prepare_sites(config: SimConfig) -> tuple[PreparedSite | None, list[PreparedSite]]:
    """The source site (None when a pretrained model is given) and the hospital sites."""
    if config.real_sites:
        sites = real_sites(config)
        source = None if config.source_dir is None else PreparedSite("source", config.source_dir, "months")
        if config.pretrained is None and source is None:
            source = prepare_site(config.source, config.image_size, config.seed * 1000, config.cache_dir,
                                  f"source-{config.source.preset}")
        return source, sites
    base = config.seed * 1000
    source = prepare_site(config.source, config.image_size, base, config.cache_dir, f"source-{config.source.preset}")
    sites = [prepare_site(spec, config.image_size, base + index + 1, config.cache_dir, f"{index}-{spec.preset}")
             for index, spec in enumerate(config.sites)]
    return source, sites


def pretrained_model(config: SimConfig, source: PreparedSite | None) -> Path:
    """Pretrain TJ-Net on the source site, or reuse the checkpoint cached for this config (or the one given)."""
    if config.pretrained is not None:
        if not config.pretrained.is_file():
            raise CheckpointError(f"checkpoint not found: {config.pretrained}")
        return config.pretrained
    path = config.cache_dir / f"pretrained_{config.pretrain_key()}.pt"
    if path.exists():
        logger.info("reusing cached pretrained model %s", path)
        return path
    logger.info("pretraining TJ-Net on %s for %d epochs (cached afterwards as %s)", source.name,
                config.pretrain_epochs, path)
    job = PretrainJob(
        data=source.data, out=path, architecture="tjnet",
        model_config={"image_size": config.image_size, "width": config.width},
        train=TrainConfig(epochs=config.pretrain_epochs, batch_size=config.batch_size, lr=config.pretrain_lr,
                          seed=config.seed, progress=True, device=config.device),
        augment=AugmentConfig(),
        tta=SIM_PRETRAIN_TTA,
    )
    pretrain(job)
    return path
