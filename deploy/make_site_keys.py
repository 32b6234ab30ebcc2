"""Make a site's SuperNode authentication key pair (ECDSA P-384, OpenSSH format, as Flower expects).

Run by the hospital on its own machine. The private key stays there (mode 0600) and is passed to
`flower-supernode --auth-supernode-private-key`; the public key (`<name>.pub`, one line) goes to the
coordinator, who registers it with `flwr supernode register <name>.pub <connection>`.

    python deploy/make_site_keys.py --out keys --name site-3

Same result as `ssh-keygen -t ecdsa -b 384 -N "" -f keys/site-3`.
"""

from __future__ import annotations

import argparse
import hashlib
import base64
import logging
import os
import sys
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

logger = logging.getLogger("ossifl.deploy")


def fingerprint(public_line: bytes) -> str:
    """OpenSSH-style SHA256 fingerprint of a public key line, to compare over the phone."""
    blob = base64.b64decode(public_line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def make_site_keys(out: Path, name: str, force: bool = False) -> tuple[Path, Path]:
    """Write `<out>/<name>` (private, 0600) and `<out>/<name>.pub`; returns both paths."""
    private_path, public_path = out / name, out / f"{name}.pub"
    if not force and (private_path.exists() or public_path.exists()):
        raise FileExistsError(f"{private_path} exists; pass --force to replace it (the old key stops working)")
    out.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    descriptor = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(private)
    public_path.write_bytes(public + f" {name}\n".encode())
    return private_path, public_path


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    parser = argparse.ArgumentParser(prog="python deploy/make_site_keys.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("keys"), help="output folder (default: keys)")
    parser.add_argument("--name", default="site", help="file name of the key, e.g. the site's name")
    parser.add_argument("--force", action="store_true", help="replace an existing key pair")
    args = parser.parse_args(argv)
    try:
        private_path, public_path = make_site_keys(args.out, args.name, args.force)
    except FileExistsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logger.info("private key (stays on this machine): %s", private_path)
    logger.info("public key (send to the coordinator): %s, fingerprint %s", public_path,
                fingerprint(public_path.read_bytes()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
