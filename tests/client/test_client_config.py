"""A site's settings from the node config (deployment) or the simulated site list."""

from pathlib import Path

import pytest

from client.config import SiteConfig, SiteConfigError

SERVER = {"pretrained": "/models/pre.pt", "sim-site-paths": "/sites/a;/sites/b", "sim-site-units": "months;years",
          "sim-state-dir": "/state", "sim-site-freeze": ";1-4"}


def test_deployment_settings_come_from_the_node_config():
    node = {"data-path": "/data/tj", "label-unit": "years", "site-id": "7", "state-dir": "/var/ossifl",
            "pretrained": "/opt/pre.pt", "freeze": "1-4", "age-column": "age_years", "dp-target-epsilon": 8.0}
    site = SiteConfig.resolve(node, SERVER)
    assert site.site_id == "7" and site.data.root == Path("/data/tj") and site.data.label_unit == "years"
    assert site.data.age_column == "age_years" and site.pretrained == Path("/opt/pre.pt")
    assert site.freeze == (1, 2, 3, 4) and site.state_dir == Path("/var/ossifl")
    assert site.dp.enabled and site.dp.target_epsilon == 8.0 and site.dp.noise_multiplier is None
    assert site.decode_cache == Path("/var/ossifl/decoded")  # decoded images outlive the per-message process
    assert SiteConfig.resolve({**node, "decode-cache": "none"}, SERVER).decode_cache is None
    assert SiteConfig.resolve({**node, "decode-cache": "/fast/ssd"}, SERVER).decode_cache == Path("/fast/ssd")


def test_simulated_sites_are_found_by_partition_id():
    site = SiteConfig.resolve({"partition-id": 1, "num-partitions": 2}, SERVER)
    assert site.site_id == "1" and site.data.root == Path("/sites/b") and site.data.label_unit == "years"
    assert site.freeze == (1, 2, 3, 4) and site.state_dir.parent == Path("/state") and not site.dp.enabled
    assert site.state_dir.name.startswith("b-")
    assert site.decode_cache is None  # simulation actors keep decoded images in memory


def test_a_node_without_data_or_site_list_is_refused_clearly():
    with pytest.raises(SiteConfigError, match="data-path"):
        SiteConfig.resolve({"partition-id": 0}, {"pretrained": "x"})
    with pytest.raises(SiteConfigError, match="only 2 site folders"):
        SiteConfig.resolve({"partition-id": 5}, SERVER)


def test_dp_settings_are_validated():
    with pytest.raises(ValueError, match="exactly one"):
        SiteConfig.resolve({"data-path": "/d", "pretrained": "p", "dp-noise-multiplier": 1.0,
                            "dp-target-epsilon": 3.0}, {})


@pytest.mark.parametrize("kind", ["simulation", "deployment without site-id"])
def test_sites_whose_folders_share_a_name_get_their_own_state_folder(kind: str) -> None:
    """a/site and b/site must not write into one audit log and one privacy ledger."""
    if kind == "simulation":
        server = {**SERVER, "sim-site-paths": "/hospital-a/site;/hospital-b/site"}
        dirs = [SiteConfig.resolve({"partition-id": i}, server).state_dir for i in (0, 1)]
    else:
        dirs = [SiteConfig.resolve({"data-path": path, "pretrained": "/p.pt"}, {}).state_dir
                for path in ("/hospital-a/site", "/hospital-b/site")]
    assert dirs[0] != dirs[1] and dirs[0].parent == dirs[1].parent
    assert all(d.name.startswith("site-") for d in dirs)
    again = SiteConfig.resolve({"data-path": "/hospital-a/./site", "pretrained": "/p.pt"}, {}).state_dir
    assert kind == "simulation" or again == dirs[0]  # the same folder, however it is spelt, keeps its state
