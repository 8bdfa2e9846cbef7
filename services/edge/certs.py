"""A development certificate authority and the edge's server certificate, made on first start.

The CA stays in the data folder (its key readable by its owner only); clients trust its certificate
(`ca.pem`) to reach the TLS listener. The server certificate is issued again whenever the names it must
carry change, when it nears its end, or when the CA was replaced; the CA itself is kept for years, so a
client configured once keeps working.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_CERT_FILE = "ca.pem"
CA_KEY_FILE = "ca.key"
SERVER_CERT_FILE = "server.pem"
SERVER_KEY_FILE = "server.key"

# The names every development certificate carries: this machine, and the compose service of the edge.
DEFAULT_NAMES = ("localhost", "127.0.0.1", "envoy")

CA_LIFETIME = datetime.timedelta(days=3650)
# Under the 398 days browsers allow a server certificate; renewed at start once less than RENEW_BEFORE is left.
SERVER_LIFETIME = datetime.timedelta(days=397)
RENEW_BEFORE = datetime.timedelta(days=30)
CA_NAME = "ResilientTask development CA"


@dataclass(frozen=True)
class TlsFiles:
    """Where the CA certificate (for clients) and the server's certificate and key (for Envoy) are."""

    ca_cert: Path
    server_cert: Path
    server_key: Path


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _write(path: Path, data: bytes, mode: int) -> None:
    """Replace path atomically with data, created with mode (keys: 0600)."""
    partial = path.with_name(path.name + ".partial")
    partial.unlink(missing_ok=True)
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(partial, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    pkcs8 = serialization.PrivateFormat.PKCS8
    return key.private_bytes(serialization.Encoding.PEM, pkcs8, serialization.NoEncryption())


def subject_names(names: Sequence[str]) -> list[x509.GeneralName]:
    """IP addresses as IP entries (clients check those against an IP they dialled), the rest as DNS names."""
    entries: list[x509.GeneralName] = []
    for name in dict.fromkeys(names):
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return entries


def _load_ca(folder: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    try:
        cert = x509.load_pem_x509_certificate((folder / CA_CERT_FILE).read_bytes())
        key = serialization.load_pem_private_key((folder / CA_KEY_FILE).read_bytes(), password=None)
    except (OSError, ValueError):
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or cert.not_valid_after_utc - RENEW_BEFORE < _now():
        return None
    return cert, key


def _new_ca(folder: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write(folder / CA_KEY_FILE, _key_pem(key), 0o600)
    _write(folder / CA_CERT_FILE, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return cert, key


def _server_is_current(folder: Path, ca: x509.Certificate, names: Sequence[str]) -> bool:
    """True if the server certificate exists, was issued by this CA, carries exactly these names and is not ageing."""
    try:
        cert = x509.load_pem_x509_certificate((folder / SERVER_CERT_FILE).read_bytes())
        (folder / SERVER_KEY_FILE).stat()
    except (OSError, ValueError):
        return False
    try:
        cert.verify_directly_issued_by(ca)
        present = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, TypeError, x509.ExtensionNotFound, InvalidSignature):
        return False
    return set(present) == set(subject_names(names)) and cert.not_valid_after_utc - RENEW_BEFORE > _now()


def _issue_server(folder: Path, ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, names: Sequence[str]) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + SERVER_LIFETIME)
        .add_extension(x509.SubjectAlternativeName(subject_names(names)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write(folder / SERVER_KEY_FILE, _key_pem(key), 0o600)
    _write(folder / SERVER_CERT_FILE, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def ensure_dev_tls(folder: Path, names: Sequence[str] = DEFAULT_NAMES) -> TlsFiles:
    """Make (or keep) the development CA in folder and a server certificate for names signed by it."""
    if not names:
        raise ValueError("a server certificate needs at least one name")
    folder.mkdir(parents=True, exist_ok=True)
    loaded = _load_ca(folder)
    ca, ca_key = loaded if loaded is not None else _new_ca(folder)
    if not _server_is_current(folder, ca, names):
        _issue_server(folder, ca, ca_key, names)
    return TlsFiles(folder / CA_CERT_FILE, folder / SERVER_CERT_FILE, folder / SERVER_KEY_FILE)
