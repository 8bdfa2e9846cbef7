"""The development CA and server certificate: made once, kept, issued again only when they must be."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from cryptography import x509

from services.edge.certs import CA_NAME, ensure_dev_tls
from services.edge.protoset import descriptor_set
from services.stack.stack import Stack, StackConfig


def _names(path: Path) -> set[str]:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {*sans.get_values_for_type(x509.DNSName), *(str(ip) for ip in sans.get_values_for_type(x509.IPAddress))}


def test_a_ca_and_a_server_certificate_signed_by_it(tmp_path: Path) -> None:
    files = ensure_dev_tls(tmp_path / "tls")
    ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.subject.rfc4514_string() == f"CN={CA_NAME}"
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usage = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert x509.oid.ExtendedKeyUsageOID.SERVER_AUTH in usage
    assert _names(files.server_cert) == {"localhost", "127.0.0.1", "envoy"}
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")], "an IP SAN, not DNS"
    for key in (tmp_path / "tls" / "ca.key", files.server_key):
        assert key.stat().st_mode & 0o777 == 0o600


def test_later_starts_keep_the_ca_and_reissue_only_for_new_names(tmp_path: Path) -> None:
    folder = tmp_path / "tls"
    first = ensure_dev_tls(folder)
    ca, server = first.ca_cert.read_bytes(), first.server_cert.read_bytes()
    ensure_dev_tls(folder)
    assert (first.ca_cert.read_bytes(), first.server_cert.read_bytes()) == (ca, server)
    ensure_dev_tls(folder, ("localhost", "127.0.0.1", "envoy", "myhost.lan", "192.0.2.7"))
    assert first.ca_cert.read_bytes() == ca, "clients configured once keep working"
    assert _names(first.server_cert) == {"localhost", "127.0.0.1", "envoy", "myhost.lan", "192.0.2.7"}
    # A lost CA key means a new CA, and a server certificate from it.
    (folder / "ca.key").unlink()
    ensure_dev_tls(folder)
    fresh = x509.load_pem_x509_certificate(first.ca_cert.read_bytes())
    assert first.ca_cert.read_bytes() != ca
    x509.load_pem_x509_certificate(first.server_cert.read_bytes()).verify_directly_issued_by(fresh)


def test_the_stack_names_its_listen_address_and_extra_names(tmp_path: Path) -> None:
    wide = Stack(StackConfig(data_dir=tmp_path / "a", edge_host="0.0.0.0", tls_names=("myhost.lan",)))
    assert _names(wide.ca_file.with_name("server.pem")) == {"localhost", "127.0.0.1", "envoy", "myhost.lan"}
    one = Stack(StackConfig(data_dir=tmp_path / "b", edge_host="192.0.2.7"))
    assert "192.0.2.7" in _names(one.ca_file.with_name("server.pem"))


def test_the_protoset_holds_the_public_api_and_not_the_worker_service() -> None:
    files = {f.name: f for f in descriptor_set().file}
    services = {f"{f.package}.{s.name}" for f in files.values() for s in f.service}
    assert services == {
        "resilienttask.v1.AuthService",
        "resilienttask.v1.SchedulerService",
        "resilienttask.v1.ScheduleService",
        "resilienttask.v1.OperatorService",
        "grpc.health.v1.Health",
    }
    for file in files.values():
        assert set(file.dependency) <= set(files), f"{file.name} imports a file the set lacks"
