"""Fixtures building tiny synthetic sites in tmp_path (helpers in data_sites.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from data_sites import SiteBuilder, hand


@pytest.fixture
def site(tmp_path: Path) -> SiteBuilder:
    return SiteBuilder(tmp_path / "site")


@pytest.fixture
def png_site(site: SiteBuilder) -> SiteBuilder:
    """A clean 40-image PNG site, ages spread over 0-19 years, alternating sex."""
    rows = []
    for i in range(40):
        site.image(f"{1000 + i}", pixels=hand(i))
        rows.append((1000 + i, 6 * i, i % 2 == 0))
    site.csv(rows)
    return site
