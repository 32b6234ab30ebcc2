"""Make the federation's certificate authority and the SuperLink's TLS certificate.

Run by the coordinator, once per federation (the CA) and whenever the SuperLink's name changes
(the server certificate). Sites receive only `ca.crt`; `ca.key` never leaves the coordinator.

    python deploy/make_certs.py --out certs --names fl.hospital-network.org,10.0.0.5

Writes into `--out`: `ca.crt`, `ca.key` (kept and reused when present, so sites need not receive
a new CA when the server certificate is renewed), `server.pem` and `server.key`. Private keys are
written with mode 0600. Existing server files are only replaced with `--force`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import logging
import os
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

logger = logging.getLogger("ossifl.deploy")

CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY = "ca.crt", "ca.key", "server.pem", "server.key"
DEFAULT_NAMES = "localhost,127.0.0.1"


def subject_names(names: list[str]) -> list[x509.GeneralName]:
    """SAN entries: IP addresses as IP entries, everything else as DNS names."""
    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return entries


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _builder(subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey,
             days: int) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.timezone.utc)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False))


def make_ca(out: Path, common_name: str, days: int) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Create a self-signed CA (ECDSA P-384) and write `ca.crt` and `ca.key`."""
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (_builder(name, name, key.public_key(), days)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA384()))
    _write_key(out / CA_KEY, key)
    _write_cert(out / CA_CERT, cert)
    return cert, key


def load_ca(out: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Read the CA kept in `out`."""
    cert = x509.load_pem_x509_certificate((out / CA_CERT).read_bytes())
    key = serialization.load_pem_private_key((out / CA_KEY).read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{out / CA_KEY}: not an elliptic-curve key made by this script")
    return cert, key


def make_server_cert(out: Path, ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey,
                     names: list[str], days: int) -> x509.Certificate:
    """Issue the SuperLink's certificate for `names` (the SAN) and write `server.pem`/`server.key`."""
    key = ec.generate_private_key(ec.SECP384R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    cert = (_builder(subject, ca_cert.subject, key.public_key(), days)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(subject_names(names)), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA384()))
    _write_key(out / SERVER_KEY, key)
    _write_cert(out / SERVER_CERT, cert)
    return cert


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python deploy/make_certs.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("certs"), help="output folder (default: certs)")
    parser.add_argument("--names", default=DEFAULT_NAMES,
                        help="comma-separated DNS names and IP addresses the sites use to reach the SuperLink "
                             f"(default: {DEFAULT_NAMES})")
    parser.add_argument("--ca-name", default="OssiFL federation CA", help="common name of the CA")
    parser.add_argument("--ca-days", type=int, default=3650, help="validity of a new CA in days")
    parser.add_argument("--days", type=int, default=825, help="validity of the server certificate in days")
    parser.add_argument("--force", action="store_true", help="replace an existing server certificate and key")
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    args = build_parser().parse_args(argv)
    names = [n.strip() for n in args.names.split(",") if n.strip()]
    if not names:
        print("error: --names is empty; give the SuperLink's DNS names and/or IP addresses", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    if (args.out / SERVER_CERT).exists() and not args.force:
        print(f"error: {args.out / SERVER_CERT} exists; pass --force to replace it", file=sys.stderr)
        return 2
    if (args.out / CA_CERT).exists() and (args.out / CA_KEY).exists():
        ca_cert, ca_key = load_ca(args.out)
        logger.info("reusing the CA in %s", args.out)
    else:
        ca_cert, ca_key = make_ca(args.out, args.ca_name, args.ca_days)
        logger.info("new CA: %s (give this file to every site), %s (keep secret)",
                    args.out / CA_CERT, args.out / CA_KEY)
    make_server_cert(args.out, ca_cert, ca_key, names, args.days)
    logger.info("SuperLink certificate for %s: %s, %s", ", ".join(names), args.out / SERVER_CERT,
                args.out / SERVER_KEY)
    return 0


if __name__ == "__main__":
    sys.exit(main())
