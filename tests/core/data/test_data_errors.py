"""Errors that help: bad site folders give one line (DataError, exit 2 in the CLIs), never a traceback."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from data_sites import SiteBuilder

from core.data import DataError, SiteDataConfig, load_manifest, load_site, read_image
from core.data import memory
from core.data.images import TOO_SMALL, ImageError

NOBODY = 65534


def test_a_symlink_loop_in_the_image_folder_is_one_line(png_site: SiteBuilder) -> None:
    os.symlink("loop-b.png", png_site.images / "loop-a.png")
    os.symlink("loop-a.png", png_site.images / "loop-b.png")
    with pytest.raises(DataError, match=r"loop-a.png: symbolic link loop in the image folder") as info:
        load_manifest(SiteDataConfig(png_site.root))
    assert "\n" not in str(info.value)


def test_an_image_folder_that_is_a_symlink_loop_is_named(png_site: SiteBuilder) -> None:
    shutil.rmtree(png_site.images)
    os.symlink("images", png_site.images)
    with pytest.raises(DataError, match=r"images: symbolic link loop"):
        load_manifest(SiteDataConfig(png_site.root))


@pytest.mark.parametrize("delimiter, name", [(";", "semicolon"), ("\t", "tab")])
def test_another_delimiter_gets_a_hint_about_the_delimiter(png_site: SiteBuilder, delimiter: str, name: str) -> None:
    csv = png_site.root / "labels.csv"
    csv.write_text(csv.read_text().replace(",", delimiter))
    with pytest.raises(DataError, match=rf"looks {name}-separated .*save it as comma-separated") as info:
        load_manifest(SiteDataConfig(png_site.root))
    assert "id column" not in str(info.value)


@pytest.mark.parametrize("shape", [(2, 1), (1, 2), (8, 300)])
def test_a_tiny_image_is_not_a_usable_radiograph(site: SiteBuilder, shape: tuple[int, int]) -> None:
    pixels = (np.arange(shape[0] * shape[1]).reshape(shape) % 2 * 255).astype(np.uint8)
    path = site.image("1", pixels=pixels)
    with pytest.raises(ImageError, match="image too small") as info:
        read_image(path)
    assert info.value.reason == TOO_SMALL


def test_an_image_size_too_large_for_memory_is_refused_before_decoding(
        png_site: SiteBuilder, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "available_memory_bytes", lambda: 10 * 2**20)
    decoded: list[Path] = []
    real_read = read_image
    monkeypatch.setattr("core.data.dataset.read_image", lambda path: decoded.append(path) or real_read(path))
    with pytest.raises(DataError, match=r"image size 1024 px needs .* GiB .* more than the 0.0 GiB .*smaller image"):
        load_site(SiteDataConfig(png_site.root), 1024, None, seed=0)
    assert decoded == []
    assert len(load_site(SiteDataConfig(png_site.root), 32, None, seed=0).train) > 0  # what fits still loads


def _check_as_nobody(site: Path) -> tuple[int, str]:
    """`python -m client check` in a forked child that runs as nobody when the tests run as root
    (root reads everything; the interpreter under /root cannot be exec'd by another user)."""
    from client.__main__ import main

    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through the pipe and its exit status
        code = 1
        try:
            sys.stderr = os.fdopen(write_end, "w")  # the CLI prints its error line there
            os.chdir(site.parent)  # where the check would write its contact sheet
            if os.geteuid() == 0:
                os.setgid(NOBODY)
                os.setuid(NOBODY)
            code = main(["check", "--data", str(site)])
        finally:
            sys.stderr.flush()
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end) as stream:
        stderr = stream.read()
    return os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]), stderr


@pytest.mark.parametrize("target", ["labels.csv", "images"])
def test_an_unreadable_labels_file_or_image_folder_exits_2_with_one_line(png_site: SiteBuilder, target: str) -> None:
    shared = Path(tempfile.mkdtemp(prefix="ossifl-unreadable-"))
    site = shared / "site"
    try:
        shutil.copytree(png_site.root, site)
        for folder in (shared, site, site / "images"):
            folder.chmod(0o755)
        (site / target).chmod(0o000)
        code, stderr = _check_as_nobody(site)
    finally:
        (site / target).chmod(0o755)
        shutil.rmtree(shared)
    what = "labels file" if target == "labels.csv" else "image folder"
    assert code == 2, stderr
    assert stderr.strip().splitlines() == [f"error: {site / target}: permission denied; run as a user who may read "
                                           f"the {what}"]
