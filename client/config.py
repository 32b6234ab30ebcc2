"""A site's settings, read once per message from its node config.

A deployed SuperNode gets its node config from `--node-config site.toml`; a simulated site gets
the same keys from `sim/` (see `sim/federation.py`). The server's messages carry round settings
only, never site settings. Each key is declared once: the site's own keys in `SITE_SCHEMA` (below), the data
layout in `core.data.config.LAYOUT_SCHEMA`, differential privacy in `core.privacy.config.DP_SCHEMA`;
`tests/client/test_client_config.py` checks `deploy/site.toml` and the simulation's node configs against them.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping

from core.cli import DEVICE_DEFAULT, DEVICE_HELP
from core.data import SiteDataConfig
from core.data.config import LAYOUT_SCHEMA
from core.errors import ConfigError
from core.model.freeze import FreezeSpec
from core.privacy import DPConfig
from core.privacy.config import DP_SCHEMA
from core.schema import Schema, Setting, to_bool, to_int
from core.train.feature_augment import FEATURE_AUGMENT

DEFAULT_STATE_ROOT = Path(os.environ.get("OSSIFL_STATE", Path.home() / ".ossifl" / "state"))


def state_folder_name(data_root: Path) -> str:
    """`<folder name>-<8 hex digits of the resolved path>`: sites whose folders share a name never share state."""
    digest = hashlib.sha256(str(Path(data_root).resolve()).encode()).hexdigest()[:8]
    return f"{Path(data_root).name}-{digest}"


def state_dir_of(node: Mapping[str, Any]) -> Path:
    """A site's state folder: `state-dir`, else `<state root>/<site-id>`, else the one named after `data-path`."""
    keys = SITE_SCHEMA.keys("node")
    if keys["state_dir"] in node:
        return Path(str(node[keys["state_dir"]]))
    if keys["site_id"] in node:
        return DEFAULT_STATE_ROOT / str(node[keys["site_id"]])
    return DEFAULT_STATE_ROOT / state_folder_name(Path(str(node[keys["data_path"]])))


def _at_least_one(raw: Any) -> int:
    value = to_int(raw)
    if value < 1:
        raise ValueError("expected a whole number of at least 1")
    return value


# The site's own node-config keys (`deploy/site.toml`); None defaults are worked out from the others.
SITE_SCHEMA = Schema(
    Setting("data_path", str, None, "the site folder: a CSV manifest and an image folder, read-only",
            node_key="data-path"),
    Setting("site_id", str, "site", "the number the coordinator gave this site (names it in the report)",
            node_key="site-id"),
    Setting("state_dir", str, None, "audit log and privacy ledger (default: <state root>/<site-id>, else named "
            "after data-path)", node_key="state-dir"),
    Setting("pretrained", str, "", "the pretrained model (default: the path the server sends)",
            node_key="pretrained"),
    Setting("device", str, DEVICE_DEFAULT, DEVICE_HELP, node_key="device"),
    Setting("freeze", FreezeSpec.parse, FreezeSpec("none"), "freeze deeper than the run (1-4: train blocks 5-6 only)",
            node_key="freeze"),
    Setting("decode_cache", str, None, "decoded images kept between rounds (default: <state-dir>/decoded; none: "
            "off)", node_key="decode-cache"),
    Setting("min_group_images", _at_least_one, 5, "an age group with fewer test images is not reported",
            node_key="min-group-images"),
    Setting("feature_cache", to_bool, True, "reuse the frozen blocks' outputs between epochs and rounds",
            node_key="feature-cache"),
    replace(FEATURE_AUGMENT, node_key="feature-augment"),
    Setting("calibrate", to_bool, False, "fit the site's own sex-specific output line at every evaluation",
            node_key="calibrate"),
)
_D = SITE_SCHEMA.default
# every key a site's node config may hold for the ClientApp: its own, the data layout's and the privacy settings'
NODE_KEYS = frozenset({*SITE_SCHEMA.keys("node").values(), *LAYOUT_SCHEMA.keys("node").values(),
                       *DP_SCHEMA.keys("node").values()})
_OFF = ("", "none", "off")  # a decode-cache that turns the cache off


class SiteConfigError(ConfigError):
    """Node settings that cannot work; the message explains the fix in one line."""


@dataclass(frozen=True)
class SiteConfig:
    """Everything a site needs that is not in the model arrays."""

    site_id: str
    data: SiteDataConfig
    pretrained: Path
    state_dir: Path
    device: str = _D("device")
    freeze: tuple[int, ...] = _D("freeze").blocks
    dp: DPConfig = DPConfig()
    decode_cache: Path | None = None  # where decoded images outlive the per-message ClientApp process
    min_group_images: int = _D("min_group_images")  # an age group with fewer test images is not reported (n, MAD 0)
    feature_cache: bool = _D("feature_cache")  # reuse the frozen blocks' outputs (core.train.feature_cache)
    calibrate: bool = _D("calibrate")  # the site's own sex-specific output line (core.predict.calibration)
    feature_augment: str = _D("feature_augment")  # where that cache augments (core.train.feature_augment)

    @classmethod
    def from_node_config(cls, node: Mapping[str, Any], server_pretrained: str = "") -> "SiteConfig":
        """The site's settings from its node config (`--node-config site.toml`; see deploy/site.toml).

        `server_pretrained` is the pretrained path the server sent; the node config's own `pretrained` wins.
        """
        if SITE_SCHEMA["data_path"].node_key not in node:
            raise SiteConfigError("the node config has no 'data-path': start the SuperNode with "
                                  "--node-config site.toml (see deploy/site.toml)")
        try:
            values = {**{name: _D(name) for name in SITE_SCHEMA.settings}, **SITE_SCHEMA.read(node, "node")}
            dp = DPConfig.from_node_config(node)
        except ConfigError as exc:
            raise SiteConfigError(str(exc)) from None
        data = SiteDataConfig.from_node_config(Path(values["data_path"]), node)
        pretrained = values["pretrained"] or server_pretrained or ""
        if not pretrained:
            raise SiteConfigError("no pretrained model: set 'pretrained' in the node config "
                                  "(the server did not send one either)")
        state_dir = state_dir_of(node)
        cache = values["decode_cache"]
        decode_cache = state_dir / "decoded" if cache is None else None if cache.lower() in _OFF else Path(cache)
        return cls(values["site_id"], data, Path(pretrained), state_dir, values["device"], values["freeze"].blocks,
                   dp, decode_cache, values["min_group_images"], values["feature_cache"], values["calibrate"],
                   values["feature_augment"])

    def node_config(self) -> dict[str, Any]:
        """The node config that gives back these settings (the simulation writes its sites' with it)."""
        values = {"data_path": str(self.data.root), "site_id": self.site_id, "state_dir": str(self.state_dir),
                  "pretrained": str(self.pretrained), "device": self.device, "freeze": FreezeSpec.of(self.freeze),
                  "decode_cache": "none" if self.decode_cache is None else str(self.decode_cache),
                  "min_group_images": self.min_group_images, "feature_cache": self.feature_cache,
                  "calibrate": self.calibrate, "feature_augment": self.feature_augment}
        return {**SITE_SCHEMA.write(values, "node"), **self.data.node_config(), **self.dp.node_config()}
