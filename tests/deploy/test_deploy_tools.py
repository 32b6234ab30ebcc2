"""The coordinator's and the hospital's deployment tools, and the sample configurations."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

import pytest
import tomli
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key

from client.config import SiteConfig
from deploy.make_certs import main as make_certs
from deploy.make_site_keys import fingerprint, main as make_site_keys
from deploy.site_report import site_report
from server.config import FederationConfig

REPO = Path(__file__).resolve().parents[2]


def test_certificates_name_the_superlink_and_chain_to_the_ca(tmp_path: Path) -> None:
    assert make_certs(["--out", str(tmp_path), "--names", "fl.example.org,10.1.2.3"]) == 0
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.crt").read_bytes())
    server = x509.load_pem_x509_certificate((tmp_path / "server.pem").read_bytes())
    server.verify_directly_issued_by(ca)
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["fl.example.org"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.1.2.3")]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for key in ("ca.key", "server.key"):
        assert stat.S_IMODE((tmp_path / key).stat().st_mode) == 0o600


def test_renewing_the_server_certificate_keeps_the_ca(tmp_path: Path) -> None:
    assert make_certs(["--out", str(tmp_path)]) == 0
    ca_before = (tmp_path / "ca.crt").read_bytes()
    assert make_certs(["--out", str(tmp_path)]) == 2  # refuses to overwrite without --force
    assert make_certs(["--out", str(tmp_path), "--names", "fl.example.org", "--force"]) == 0
    assert (tmp_path / "ca.crt").read_bytes() == ca_before
    ca = x509.load_pem_x509_certificate(ca_before)
    x509.load_pem_x509_certificate((tmp_path / "server.pem").read_bytes()).verify_directly_issued_by(ca)


def test_site_keys_are_p384_openssh_as_flower_reads_them(tmp_path: Path) -> None:
    assert make_site_keys(["--out", str(tmp_path), "--name", "site-3"]) == 0
    private = load_ssh_private_key((tmp_path / "site-3").read_bytes(), password=None)
    public_line = (tmp_path / "site-3.pub").read_bytes()
    public = load_ssh_public_key(public_line)
    assert isinstance(private, ec.EllipticCurvePrivateKey) and isinstance(private.curve, ec.SECP384R1)
    assert public.public_numbers() == private.public_key().public_numbers()
    assert public_line.startswith(b"ecdsa-sha2-nistp384 ") and public_line.rstrip().endswith(b" site-3")
    assert stat.S_IMODE((tmp_path / "site-3").stat().st_mode) == 0o600
    assert fingerprint(public_line).startswith("SHA256:")
    assert make_site_keys(["--out", str(tmp_path), "--name", "site-3"]) == 2  # never overwrites silently


def test_sample_site_config_resolves_to_a_deployed_site() -> None:
    with open(REPO / "deploy" / "site.toml", "rb") as handle:
        node_config = tomli.load(handle)
    site = SiteConfig.from_node_config(node_config, "/coordinator/path.pt")
    assert site.site_id == "3" and site.data.label_unit == "months"
    assert site.pretrained == Path("/etc/ossifl/pretrained.pt")  # the site's own copy wins
    assert site.state_dir == Path("/var/lib/ossifl/site-3") and not site.dp.enabled


def test_sample_run_config_uses_only_keys_of_the_app() -> None:
    with open(REPO / "deploy" / "federation.toml", "rb") as handle:
        run_config = tomli.load(handle)
    with open(REPO / "pyproject.toml", "rb") as handle:
        app_keys = set(tomli.load(handle)["tool"]["flwr"]["app"]["config"])
    assert set(run_config) <= app_keys
    assert FederationConfig.from_run_config(run_config).min_nodes == 3


def test_site_report_reads_the_last_round_and_failures(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.csv"
    metrics.write_text("round,phase,site,status,reason,metric,value\n"
                       "1,train,1,ok,,num-examples,30\n"
                       "2,train,1,ok,,num-examples,31\n"
                       "2,evaluate,1,ok,,mad-months,7.5\n"
                       "2,train,2,error,BudgetExceeded: epsilon 10.2 > 10,,\n")
    chosen, sites = site_report(metrics)
    assert chosen == 2
    assert sites["1"] == {"status": "ok", "train/num-examples": "31", "evaluate/mad-months": "7.5"}
    assert sites["2"]["status"] == "train error: BudgetExceeded: epsilon 10.2 > 10"
    empty = tmp_path / "empty.csv"
    empty.write_text("round,phase,site,status,reason,metric,value\n")
    with pytest.raises(ValueError, match="no rows"):
        site_report(empty)
