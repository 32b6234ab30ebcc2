"""The site approves the code it runs: a SuperNode that starts only Flower Apps (FABs) whose SHA-256 the site listed.

Flower 1.41's own mechanism, `flower-supernode --trusted-entities KEYS.yaml`, runs only FABs that carry a signature by
a trusted key, and in this version a FAB carries signatures only when the SuperLink fetched it from Flower Hub (a FAB
submitted with `flwr run .` has none, so such a SuperNode refuses every locally built app). For a federation without
the Hub, `python -m client supernode --approved-apps approved.txt -- <flower-supernode options>` runs Flower's own
SuperNode with one check added where Flower checks signatures: the SHA-256 of the FAB's bytes must be a line of
the site's list (read again for every new run, so a site approves a new version without a restart). A FAB not on it
gets Flower's verification-error reply, one log line with its hash, and an audit entry; its code is never installed
or run. The check runs in the site's own installed OssiFL, not in the app it checks.

The list: one SHA-256 (hex) per line, optionally followed by a comment; `#` starts a comment line.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from logging import ERROR, INFO
from pathlib import Path
from typing import Any

from client.audit import append_audit
from client.config import state_dir_of
from core.errors import ConfigError

APPROVED_KEY = "ossifl-approved-sha256"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def read_approved(path: Path) -> set[str]:
    """The SHA-256 digests a site's list approves.

    Raises:
        ConfigError: the file is unreadable, or a line does not start with a 64-digit hex SHA-256.
    """
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read the approved-apps list {path}: {exc.strerror or exc}") from None
    approved = set()
    for number, line in enumerate(lines, 1):
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if not _SHA256.match(words[0].lower()):
            raise ConfigError(f"{path}:{number}: {words[0]!r} is not a SHA-256 (64 hex digits)")
        approved.add(words[0].lower())
    return approved


def fab_sha256(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def _record(node_config: dict[str, Any], entry: dict[str, Any]) -> None:
    """An audit entry in the site's state folder, when its node config names one."""
    if any(key in node_config for key in ("state-dir", "site-id", "data-path")):
        append_audit(state_dir_of(node_config), entry)


def install_guard(approved_list: Path) -> None:
    """Make this process's Flower SuperNode start only FABs on `approved_list` (call before starting it)."""
    import flwr.supernode.start_client_internal as supernode
    from flwr.common.logger import log
    from flwr.supercore.fab import Fab

    read_approved(approved_list)  # a broken list stops the SuperNode at start, not at the first run
    pull = supernode._pull_and_store_message

    def checked_get_fab(get_fab: Callable[[str, int], Any], node_config: dict[str, Any]) -> Callable[[str, int], Any]:
        def get(fab_hash: str, run_id: int) -> Any:
            fab = get_fab(fab_hash, run_id)
            digest = fab_sha256(fab.content)
            try:
                approved = digest in read_approved(approved_list)
            except ConfigError as exc:
                log(ERROR, "%s", exc)
                approved = False
            entry = {"event": "app_approved" if approved else "app_refused", "run_id": run_id, "fab_sha256": digest,
                     "approved_apps": str(approved_list)}
            _record(node_config, entry)
            if approved:
                log(INFO, "App approved by this site: FAB sha256 %s (run %s)", digest, run_id)
                return Fab(fab.hash_str, fab.content, {"valid_license": "approved by this site", APPROVED_KEY: digest})
            log(ERROR, "Refused app of run %s: FAB sha256 %s is not in this site's approved apps %s", run_id, digest,
                approved_list)
            return Fab(fab.hash_str, fab.content, {})

        return get

    def guarded_pull(*, get_fab: Callable[[str, int], Any], node_config: dict[str, Any], **rest: Any) -> Any:
        rest["trusted_entities"] = {"ossifl-approved-apps": str(approved_list)}  # turns Flower's check on
        return pull(get_fab=checked_get_fab(get_fab, node_config), node_config=node_config, **rest)

    def verify(fab: Any, trusted_entities: dict[str, str]) -> bool:
        return fab.verifications.get(APPROVED_KEY) == fab_sha256(fab.content)

    supernode._pull_and_store_message = guarded_pull
    supernode._verify_fab = verify
