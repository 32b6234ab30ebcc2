"""`python -m client supernode --approved-apps approved.txt -- <flower-supernode options>`: Flower's SuperNode that
runs only the apps (FABs) whose SHA-256 the site approved (`client/approved_apps.py`, docs/deployment.md), and
`python -m client approve-app APP.fab --approved-apps approved.txt`: list a FAB's files and approve it."""

from __future__ import annotations

import argparse
import sys
import zipfile
from pathlib import Path

from client.approved_apps import fab_sha256, install_guard, read_approved
from core.errors import ConfigError


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register `supernode` and `approve-app` on the `python -m client` command line."""
    parser = commands.add_parser("supernode", help="Flower's SuperNode, running only apps this site approved")
    parser.add_argument("--approved-apps", type=Path, required=True,
                        help="the site's list of approved FAB SHA-256 digests, one per line")
    parser.add_argument("flower_args", nargs=argparse.REMAINDER,
                        help="after --: the options of flower-supernode (--superlink, --node-config, TLS, keys)")
    parser.set_defaults(handler=run_supernode)
    approve = commands.add_parser("approve-app", help="show a FAB's files and add its SHA-256 to the approved list")
    approve.add_argument("fab", type=Path, help="the app bundle (.fab) to approve, e.g. from `flwr build`")
    approve.add_argument("--approved-apps", type=Path, required=True, help="the list to append to")
    approve.set_defaults(handler=run_approve)


def run_supernode(args: argparse.Namespace) -> int:
    flower_args = [a for i, a in enumerate(args.flower_args) if not (i == 0 and a == "--")]
    if any(a.split("=")[0] == "--trusted-entities" for a in flower_args):
        raise ConfigError("--approved-apps replaces --trusted-entities; give one of them")
    install_guard(args.approved_apps)
    from flwr.supernode.cli import flower_supernode

    sys.argv = ["flower-supernode", *flower_args]
    flower_supernode()
    return 0


def run_approve(args: argparse.Namespace) -> int:
    try:
        content = args.fab.read_bytes()
        with zipfile.ZipFile(args.fab) as bundle:
            names = bundle.namelist()
    except (OSError, zipfile.BadZipFile) as exc:
        raise ConfigError(f"{args.fab} is not a readable app bundle: {exc}") from None
    digest = fab_sha256(content)
    for name in names:
        print(name)
    approved = read_approved(args.approved_apps) if args.approved_apps.exists() else set()
    if digest not in approved:
        with open(args.approved_apps, "a", encoding="utf-8") as handle:
            handle.write(f"{digest}  {args.fab.name}\n")
    print(f"approved {args.fab.name}: sha256 {digest} in {args.approved_apps}")
    return 0
