"""Site data for bone-age training: manifest, image decoding, split, dataset and loader."""

from core.data.config import DataError, SiteDataConfig
from core.data.dataset import AugmentConfig, BoneAgeDataset, make_loader
from core.data.images import ImageError, read_image
from core.data.manifest import Manifest, Record, Skip, load_manifest
from core.data.site import SiteData, load_site
from core.data.split import split_of, split_records

__all__ = [
    "AugmentConfig", "BoneAgeDataset", "DataError", "ImageError", "Manifest", "Record",
    "SiteData", "SiteDataConfig", "Skip", "load_manifest", "load_site", "make_loader",
    "read_image", "split_of", "split_records",
]
