"""A site's settings, read once per message from its node config.

A deployed SuperNode gets its node config from `--node-config site.toml`; a simulated site gets
the same keys from `sim/` (see `sim/federation.py`). The server's messages carry round settings
only, never site settings.
"""

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
from core.schema import to_bool

DEFAULT_STATE_ROOT = Path(os.environ.get("OSSIFL_STATE", Path.home() / ".ossifl" / "state"))


def state_folder_name(data_root: Path) -> str:
    """`<folder name>-<8 hex digits of the resolved path>`: sites whose folders share a name never share state."""
    digest = hashlib.sha256(str(Path(data_root).resolve()).encode()).hexdigest()[:8]
    return f"{Path(data_root).name}-{digest}"


def state_dir_of(node: Mapping[str, Any]) -> Path:
    """A site's state folder: `state-dir`, else `<state root>/<site-id>`, else the one named after `data-path`."""
    if "state-dir" in node:
        return Path(str(node["state-dir"]))
    if "site-id" in node:
        return DEFAULT_STATE_ROOT / str(node["site-id"])
    return DEFAULT_STATE_ROOT / state_folder_name(Path(str(node["data-path"])))


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
    min_group_images: int = 5  # an age group with fewer test images is not reported (n and MAD sent as 0)
    feature_cache: bool = True  # reuse the frozen blocks' outputs between epochs and rounds (core.train.feature_cache)
    calibrate: bool = False  # the site's own sex-specific output line on the shared model (core.predict.calibration)

    @classmethod
    def from_node_config(cls, node: Mapping[str, Any], server_pretrained: str = "") -> "SiteConfig":
        """The site's settings from its node config (`--node-config site.toml`; see deploy/site.toml).

        `server_pretrained` is the pretrained path the server sent; the node config's own `pretrained` wins.
        """
        if "data-path" not in node:
            raise SiteConfigError("the node config has no 'data-path': start the SuperNode with "
                                  "--node-config site.toml (see deploy/site.toml)")
        site_id = str(node.get("site-id", "site"))
        data = SiteDataConfig.from_node_config(Path(str(node["data-path"])), node)
        pretrained = str(node.get("pretrained") or server_pretrained or "")
        if not pretrained:
            raise SiteConfigError("no pretrained model: set 'pretrained' in the node config "
                                  "(the server did not send one either)")
        state_dir = state_dir_of(node)
        cache = str(node.get("decode-cache", state_dir / "decoded"))
        try:
            dp = DPConfig.from_node_config(node)
        except ConfigError as exc:
            raise SiteConfigError(str(exc)) from None
        return cls(site_id, data, Path(pretrained), state_dir, str(node.get("device", "auto")),
                   parse_freeze_spec(str(node.get("freeze", "none"))), dp,
                   None if cache.lower() in ("", "none", "off") else Path(cache),
                   int(node.get("min-group-images", cls.min_group_images)),
                   _switch(node, "feature-cache", cls.feature_cache), _switch(node, "calibrate", cls.calibrate))


def _switch(values: Mapping[str, Any], key: str, default: bool) -> bool:
    """An on/off node config key (`core.schema.to_bool`: true/false, yes/no, 1/0)."""
    raw = values.get(key, default)
    try:
        return to_bool(raw)
    except ValueError:
        raise SiteConfigError(f"{key} = {raw!r}: expected true or false") from None
