"""Phantom sites and the pretrained source model of a simulation, generated once and cached."""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from core.central import PretrainJob, pretrain
from core.checkpoint import CheckpointError
from core.data import AugmentConfig, DataError, SiteDataConfig
from core.training import TrainConfig
from sim.config import SimConfig, SiteSpec
from sim.phantom.writer import generate_site

logger = logging.getLogger("ossifl.sim")
DEFAULT_LAYOUT = ("labels.csv", "images", "id", "boneage", "male")


@dataclass(frozen=True)
class PreparedSite:
    name: str
    path: Path
    label_unit: str

    @property
    def data(self) -> SiteDataConfig:
        return SiteDataConfig(root=self.path, label_unit=self.label_unit)


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
    """The researcher's own site folders, checked before anything is trained."""
    sites = []
    for index, site in enumerate(config.real_sites):
        if not (site.path / site.csv_name).is_file():
            raise DataError(f"site {site.path}: no {site.csv_name} (a site folder holds labels.csv and images/)")
        if (site.csv_name, site.image_dir, site.id_column, site.age_column, site.sex_column) != DEFAULT_LAYOUT:
            raise DataError(f"site {site.path}: simulated federation sites read the RSNA layout "
                            f"({', '.join(DEFAULT_LAYOUT)}); other file or column names are not supported yet")
        declared = site.path / "site.json"
        if declared.is_file():
            unit = json.loads(declared.read_text()).get("label_unit", site.label_unit)
            if unit != site.label_unit:
                raise DataError(f"site {site.path}: its site.json says labels are in {unit}, the run was told "
                                f"{site.label_unit}; pass {site.path}:{unit}")
        names = [s.path.name for s in config.real_sites]
        default = site.path.name if names.count(site.path.name) == 1 else f"{index}-{site.path.name}"
        sites.append(PreparedSite(name=site.name or default, path=site.path,
                                  label_unit=site.label_unit))
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
    )
    pretrain(job)
    return path
