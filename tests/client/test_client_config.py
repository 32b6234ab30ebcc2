"""A site's settings from its node config; `client/` knows nothing of simulation."""

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
