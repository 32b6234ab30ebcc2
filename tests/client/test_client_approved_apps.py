"""The site's approved-apps list and `python -m client approve-app` (the SuperNode's check runs in
tests/deploy/test_deploy_trusted_apps.py)."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from client.__main__ import main as client_main
from client.approved_apps import read_approved
from core.errors import ConfigError


def test_the_list_takes_digests_with_notes_and_refuses_anything_else(tmp_path: Path) -> None:
    digest = "ab" * 32
    path = tmp_path / "approved.txt"
    path.write_text(f"# reviewed by the site\n\n{digest.upper()}  ossifl 0.1.0\n")
    assert read_approved(path) == {digest}
    path.write_text("ossifl 0.1.0\n")
    with pytest.raises(ConfigError, match="approved.txt:1: 'ossifl' is not a SHA-256"):
        read_approved(path)
    with pytest.raises(ConfigError, match="cannot read the approved-apps list"):
        read_approved(tmp_path / "missing.txt")


def test_approve_app_lists_the_files_and_appends_the_digest_once(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    fab = tmp_path / "ossifl.ossifl.0.1.0.12345678.fab"
    with zipfile.ZipFile(fab, "w") as bundle:
        bundle.writestr("pyproject.toml", "[project]\n")
        bundle.writestr("client/app.py", "")
    listing = tmp_path / "approved.txt"
    for _ in range(2):
        assert client_main(["approve-app", str(fab), "--approved-apps", str(listing)]) == 0
    out = capsys.readouterr().out
    assert "client/app.py" in out and "pyproject.toml" in out
    assert read_approved(listing) == {hashlib.sha256(fab.read_bytes()).hexdigest()}
    assert len(listing.read_text().splitlines()) == 1
    (tmp_path / "bad.fab").write_bytes(b"not a zip")
    assert client_main(["approve-app", str(tmp_path / "bad.fab"), "--approved-apps", str(listing)]) == 2
    assert "not a readable app bundle" in capsys.readouterr().err


def test_the_launcher_refuses_a_broken_list_or_both_checks_before_starting(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture) -> None:
    listing = tmp_path / "approved.txt"
    listing.write_text("not-a-hash\n")
    assert client_main(["supernode", "--approved-apps", str(listing), "--", "--superlink", "127.0.0.1:1"]) == 2
    assert "is not a SHA-256" in capsys.readouterr().err
    listing.write_text("ab" * 32 + "\n")
    assert client_main(["supernode", "--approved-apps", str(listing), "--", "--trusted-entities", "k.yaml"]) == 2
    assert "give one of them" in capsys.readouterr().err
