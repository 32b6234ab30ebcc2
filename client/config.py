"""A site's settings, resolved once per message from the node config (deployment) or from the
simulated site list the server sends (simulation)."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from core.data import SiteDataConfig
from core.errors import ConfigError
from core.model.freeze import parse_freeze_spec
from core.privacy import DPConfig

DEFAULT_STATE_ROOT = Path(os.environ.get("OSSIFL_STATE", Path.home() / ".ossifl" / "state"))


def state_folder_name(data_root: Path) -> str:
    """`<folder name>-<8 hex digits of the resolved path>`: sites whose folders share a name never share state."""
    digest = hashlib.sha256(str(Path(data_root).resolve()).encode()).hexdigest()[:8]
    return f"{Path(data_root).name}-{digest}"


class SiteConfigError(ConfigError):
    """Node settings that cannot work; the message explains the fix in one line."""


@dataclass(frozen=True)
class SiteConfig:
    """Everything a site needs that is not in the model arrays."""

    site_id: str
    data: SiteDataConfig
    pretrained: Path
    state_dir: Path
    device: str = "auto"
    freeze: tuple[int, ...] = ()
    dp: DPConfig = DPConfig()
    decode_cache: Path | None = None  # where decoded images outlive the per-message ClientApp process

    @classmethod
    def resolve(cls, node_config: Mapping[str, Any], server_config: Mapping[str, Any]) -> "SiteConfig":
        """Deployment when the node config names `data-path`, simulation otherwise."""
        if "data-path" in node_config:
            return cls._from_node(node_config, server_config)
        return cls._from_simulation(node_config, server_config)

    @classmethod
    def _from_node(cls, node: Mapping[str, Any], server: Mapping[str, Any]) -> "SiteConfig":
        site_id = str(node.get("site-id", "site"))
        data = SiteDataConfig(
            root=Path(str(node["data-path"])), csv_name=str(node.get("csv", "labels.csv")),
            image_dir=str(node.get("image-dir", "images")), id_column=str(node.get("id-column", "id")),
            age_column=str(node.get("age-column", "boneage")), sex_column=str(node.get("sex-column", "male")),
            label_unit=str(node.get("label-unit", "months")),
        )
        pretrained = node.get("pretrained", server.get("pretrained"))
        if pretrained is None:
            raise SiteConfigError("no pretrained model: set 'pretrained' in the node config")
        default_state = DEFAULT_STATE_ROOT / (site_id if "site-id" in node else state_folder_name(data.root))
        state_dir = Path(str(node.get("state-dir", default_state)))
        cache = str(node.get("decode-cache", state_dir / "decoded"))
        return cls(site_id, data, Path(str(pretrained)), state_dir, str(node.get("device", "auto")),
                   parse_freeze_spec(str(node.get("freeze", "none"))), _dp_from(node),
                   None if cache.lower() in ("", "none", "off") else Path(cache))

    @classmethod
    def _from_simulation(cls, node: Mapping[str, Any], server: Mapping[str, Any]) -> "SiteConfig":
        if "partition-id" not in node or not server.get("sim-site-paths"):
            raise SiteConfigError("node config has no 'data-path' (deployment) and no simulated site list")
        index = int(node["partition-id"])
        paths = str(server["sim-site-paths"]).split(";")
        units = str(server.get("sim-site-units", "")).split(";")
        if index >= len(paths):
            raise SiteConfigError(f"simulated node {index} has no site (only {len(paths)} site folders)")
        root = Path(paths[index])
        unit = units[index] if index < len(units) and units[index] else "months"
        state_dir = Path(str(server.get("sim-state-dir") or DEFAULT_STATE_ROOT)) / state_folder_name(root)
        freezes = str(server.get("sim-site-freeze", "")).split(";")
        site_freeze = parse_freeze_spec(freezes[index]) if index < len(freezes) and freezes[index] else ()
        return cls(str(index), SiteDataConfig(root=root, label_unit=unit), Path(str(server["pretrained"])),
                   state_dir, str(server.get("device", "auto")), site_freeze, _dp_from(server))


def _dp_from(values: Mapping[str, Any]) -> DPConfig:
    def number(key: str) -> float | None:
        return float(values[key]) if key in values and str(values[key]) not in ("", "none") else None

    noise, target = number("dp-noise-multiplier"), number("dp-target-epsilon")
    seed = values.get("dp-seed")
    return DPConfig(
        enabled=noise is not None or target is not None, noise_multiplier=noise, target_epsilon=target,
        max_epsilon=number("dp-max-epsilon"), max_grad_norm=number("dp-max-grad-norm") or 1.0,
        delta=number("dp-delta"), accountant=str(values.get("dp-accountant", "rdp")),
        seed=int(seed) if seed is not None else None,
    )


