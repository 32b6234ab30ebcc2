"""A site's settings from its node config; `client/` knows nothing of simulation."""

import dataclasses
import re
from pathlib import Path

import pytest

from client.config import SiteConfig, SiteConfigError
from core.errors import ConfigError

SERVER_PRETRAINED = "/models/pre.pt"


def test_deployment_settings_come_from_the_node_config():
    node = {"data-path": "/data/tj", "label-unit": "years", "site-id": "7", "state-dir": "/var/ossifl",
            "pretrained": "/opt/pre.pt", "freeze": "1-4", "age-column": "age_years", "dp-target-epsilon": 8.0}
    site = SiteConfig.from_node_config(node, SERVER_PRETRAINED)
    assert site.site_id == "7" and site.data.root == Path("/data/tj") and site.data.label_unit == "years"
    assert site.data.age_column == "age_years" and site.pretrained == Path("/opt/pre.pt")
    assert site.freeze == (1, 2, 3, 4) and site.state_dir == Path("/var/ossifl")
    assert site.dp.enabled and site.dp.target_epsilon == 8.0 and site.dp.noise_multiplier is None
    assert site.decode_cache == Path("/var/ossifl/decoded")  # decoded images outlive the per-message process
    assert SiteConfig.from_node_config({**node, "decode-cache": "none"}, SERVER_PRETRAINED).decode_cache is None
    assert SiteConfig.from_node_config({**node, "decode-cache": "/fast/ssd"}, SERVER_PRETRAINED).decode_cache == Path("/fast/ssd")


def test_the_node_config_pretrained_wins_over_the_servers_and_one_is_needed():
    node = {"data-path": "/data/tj"}
    assert SiteConfig.from_node_config(node, SERVER_PRETRAINED).pretrained == Path(SERVER_PRETRAINED)
    assert SiteConfig.from_node_config({**node, "pretrained": "/opt/p.pt"}, SERVER_PRETRAINED).pretrained == \
        Path("/opt/p.pt")
    with pytest.raises(SiteConfigError, match="no pretrained model: set 'pretrained' in the node config"):
        SiteConfig.from_node_config(node, "")


def test_a_node_without_data_is_refused_clearly():
    with pytest.raises(SiteConfigError, match="data-path"):
        SiteConfig.from_node_config({"partition-id": 0}, "x")


def test_the_client_package_has_no_simulation_code():
    for path in Path(__file__).parents[2].joinpath("client").glob("*.py"):
        text = path.read_text()
        assert "sim-" not in text and "partition-id" not in text and "import sim" not in text, path


def test_dp_settings_are_validated():
    with pytest.raises(ValueError, match="exactly one"):
        SiteConfig.from_node_config({"data-path": "/d", "pretrained": "p", "dp-noise-multiplier": 1.0,
                                     "dp-target-epsilon": 3.0})


def test_sites_whose_folders_share_a_name_get_their_own_state_folder() -> None:
    """a/site and b/site must not write into one audit log and one privacy ledger."""
    dirs = [SiteConfig.from_node_config({"data-path": path, "pretrained": "/p.pt"}).state_dir
            for path in ("/hospital-a/site", "/hospital-b/site")]
    assert dirs[0] != dirs[1] and dirs[0].parent == dirs[1].parent
    assert all(d.name.startswith("site-") for d in dirs)
    again = SiteConfig.from_node_config({"data-path": "/hospital-a/./site", "pretrained": "/p.pt"}).state_dir
    assert again == dirs[0]  # the same folder, however it is spelt, keeps its state


@pytest.mark.parametrize("extra, message", [
    ({"dp-noise-multiplier": "abc"}, "dp-noise-multiplier = 'abc' is not a valid value (expected a number)"),
    ({"dp-noise-multiplier": 1.0, "dp-max-epsilon": 8.0, "dp-seed": "abc"}, "dp-seed = 'abc' is not a valid value (expected a whole number)"),
    ({"dp-noise-multiplier": 1.0, "dp-max-epsilon": 8.0, "dp-max-grad-norm": 0}, "max-grad-norm must be a positive"),
    ({"dp-noise-multiplier": 1.0, "dp-max-epsilon": 8.0, "dp-max-grad-norm": -1}, "max-grad-norm must be a positive"),
    ({"dp-noise-multiplier": 1.0}, "needs a budget (dp-max-epsilon)"),
])
def test_dp_node_settings_that_void_the_guarantee_are_one_line_errors(extra, message):
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        SiteConfig.from_node_config({"data-path": "/d", "pretrained": "p", **extra})
    assert "\n" not in str(info.value)


def test_the_feature_cache_is_on_unless_the_node_config_turns_it_off():
    node = {"data-path": "/data/tj", "pretrained": "/opt/pre.pt"}
    assert SiteConfig.from_node_config(node).feature_cache
    for off in (False, "false", "no", "0"):
        assert not SiteConfig.from_node_config({**node, "feature-cache": off}).feature_cache
    with pytest.raises(SiteConfigError, match="feature-cache = 'sometimes'"):
        SiteConfig.from_node_config({**node, "feature-cache": "sometimes"})


def test_calibration_is_off_unless_the_node_config_turns_it_on():
    node = {"data-path": "/data/site", "pretrained": "/m.pt"}
    assert not SiteConfig.from_node_config(node).calibrate
    assert SiteConfig.from_node_config({**node, "calibrate": "true"}).calibrate
    with pytest.raises(SiteConfigError, match="calibrate = 'perhaps'"):
        SiteConfig.from_node_config({**node, "calibrate": "perhaps"})


# node config entry (its key written out: renaming it in one form only fails here) -> the SiteConfig field it sets
NODE_CASES = {
    "site_id": ({"site-id": 7}, "site_id", "7"),
    "state_dir": ({"state-dir": "/var/s"}, "state_dir", Path("/var/s")),
    "pretrained": ({"pretrained": "/opt/p.pt"}, "pretrained", Path("/opt/p.pt")),
    "device": ({"device": "cuda:1"}, "device", "cuda:1"),
    "freeze": ({"freeze": "1,2,3,4"}, "freeze", (1, 2, 3, 4)),
    "decode_cache": ({"decode-cache": "/fast"}, "decode_cache", Path("/fast")),
    "min_group_images": ({"min-group-images": "3"}, "min_group_images", 3),
    "feature_cache": ({"feature-cache": "no"}, "feature_cache", False),
    "feature_augment": ({"feature-augment": "features"}, "feature_augment", "features"),
    "calibrate": ({"calibrate": True}, "calibrate", True),
}
BASE_NODE = {"data-path": "/data/site", "pretrained": "/m.pt"}
ROOT = Path(__file__).resolve().parents[2]


def test_each_node_config_key_of_the_schema_reaches_its_field_and_has_its_default() -> None:
    from client.config import SITE_SCHEMA

    assert set(NODE_CASES) | {"data_path"} == set(SITE_SCHEMA.settings)
    plain = SiteConfig.from_node_config(BASE_NODE)
    record_defaults = {f.name: f.default for f in dataclasses.fields(SiteConfig) if f.default is not dataclasses.MISSING}
    assert SiteConfig.from_node_config({"data-path": "/d"}, "/p").data.root == Path("/d")
    for name, (entry, field, expected) in NODE_CASES.items():
        assert getattr(SiteConfig.from_node_config({**BASE_NODE, **entry}), field) == expected, name
        default = SITE_SCHEMA.default(name)
        if default is not None and name != "pretrained":  # None: worked out from the other keys
            assert getattr(plain, field) == getattr(default, "blocks", default), name
            if field in record_defaults:
                assert record_defaults[field] == getattr(default, "blocks", default), name


def test_a_sites_settings_round_trip_through_the_node_config_it_writes() -> None:
    node = {**BASE_NODE, **{k: v for entry, _, _ in NODE_CASES.values() for k, v in entry.items()},
            "label-unit": "years", "dp-target-epsilon": 8.0}
    site = SiteConfig.from_node_config(node)
    assert SiteConfig.from_node_config(site.node_config()) == site
    off = SiteConfig.from_node_config({**node, "decode-cache": "none"})
    assert SiteConfig.from_node_config(off.node_config()) == off


@pytest.mark.parametrize("entry, message", [
    ({"min-group-images": "many"}, "min-group-images = 'many' is not a valid value (expected a whole number)"),
    ({"min-group-images": 0}, "min-group-images = 0 is not a valid value (expected a whole number of at least 1)"),
    ({"freeze": "1-9"}, "freeze = '1-9' is not a valid value"),
    ({"feature-augment": "pixels"}, "feature-augment must be one of images, features, got 'pixels'"),
])
def test_a_bad_site_value_is_one_line_naming_its_key(entry, message) -> None:
    with pytest.raises(SiteConfigError, match=re.escape(message)) as info:
        SiteConfig.from_node_config({**BASE_NODE, **entry})
    assert "\n" not in str(info.value)


def test_the_shipped_site_template_names_every_node_key_and_its_values_are_valid() -> None:
    import tomllib

    from client.acceptance import ACCEPT_SCHEMA
    from client.config import NODE_KEYS

    text = (ROOT / "deploy" / "site.toml").read_text(encoding="utf-8")
    shown = {m.group(1) for m in re.finditer(r"^(?:# )?([a-z0-9-]+) = ", text, re.MULTILINE)}
    # dp-seed, the SECRET seed of a site's noise, is for reproducible experiments only: not in a production template
    assert NODE_KEYS - shown == {"dp-seed"}
    assert set(ACCEPT_SCHEMA.keys("node").values()) <= shown
    SiteConfig.from_node_config(tomllib.loads(text))  # the active lines
    for line in re.findall(r"^# ([a-z0-9-]+ = .*)$", text, re.MULTILINE):  # each commented example alone
        entry = tomllib.loads(line)
        if set(entry) <= NODE_KEYS and not {"dp-noise-multiplier", "dp-max-epsilon"} & set(entry):
            SiteConfig.from_node_config({**BASE_NODE, **entry})


def test_the_simulation_writes_only_keys_a_site_reads() -> None:
    from sim.federation import site_node_config

    node = site_node_config(Path("/d/s"), 2, Path("/st"), Path("/p.pt"), "years", "cpu", **{"feature-cache": False})
    site = SiteConfig.from_node_config(node)
    assert (site.data.root, site.site_id, site.state_dir, site.pretrained, site.data.label_unit, site.device,
            site.decode_cache, site.feature_cache) == (Path("/d/s"), "2", Path("/st"), Path("/p.pt"), "years", "cpu",
                                                       None, False)
    with pytest.raises(ValueError, match="no site reads the node config keys"):
        site_node_config(Path("/d/s"), 2, Path("/st"), Path("/p.pt"), **{"feature-caching": False})


def test_the_acceptance_keys_of_a_site_config_reach_its_policy(tmp_path: Path) -> None:
    from client.acceptance import ACCEPT_SCHEMA, site_acceptance
    from core.stages.acceptance import AcceptancePolicy

    entries = {"require-acceptance": "true", "accept-margin-months": "2.5", "accept-max-refused": "0.2",
               "accept-pose-images": "4", "accept-pose-tolerance-months": "6.0", "accept-max-pose-moved": "0.25"}
    assert set(entries) == set(ACCEPT_SCHEMA.keys("node").values())
    (tmp_path / "site.toml").write_text("".join(f"{k} = {v}\n" for k, v in entries.items()))
    got = site_acceptance(tmp_path / "site.toml", tmp_path)
    assert got.require and got.policy == AcceptancePolicy(2.5, 0.2, 4, 6.0, 0.25)
    assert site_acceptance(None, tmp_path).policy == AcceptancePolicy() and not site_acceptance(None, tmp_path).require
    (tmp_path / "site.toml").write_text('accept-pose-images = "many"\n')
    with pytest.raises(SiteConfigError, match=re.escape("accept-pose-images = 'many' is not a valid value")):
        site_acceptance(tmp_path / "site.toml", tmp_path)
    (tmp_path / "site.toml").write_text("accept-max-pose-change-months = 3.0\n")  # the retired mean limit
    with pytest.raises(SiteConfigError, match="accept-max-pose-change-months .* is retired"):
        site_acceptance(tmp_path / "site.toml", tmp_path)
