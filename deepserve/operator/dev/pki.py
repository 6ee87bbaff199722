"""Certificates and keys for the local control plane.

One self-signed CA signs the API server's serving certificate and a client certificate
per component; a separate RSA key pair signs service-account tokens.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALID_FOR = dt.timedelta(days=365)


@dataclass(frozen=True)
class ClientCert:
    """Paths of one client certificate and its key."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    """Every file the control plane's components read."""

    dir: Path
    ca_cert: Path
    ca_key: Path
    serving_cert: Path
    serving_key: Path
    sa_key: Path
    sa_pub: Path
    clients: dict[str, ClientCert]


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _cert(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    server_names: tuple[str, ...] = (),
    usage: tuple[x509.ObjectIdentifier, ...] = (),
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + _VALID_FOR)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        b = b.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
    if server_names:
        alts: list[x509.GeneralName] = []
        for n in server_names:
            try:
                alts.append(x509.IPAddress(ipaddress.ip_address(n)))
            except ValueError:
                alts.append(x509.DNSName(n))
        b = b.add_extension(x509.SubjectAlternativeName(alts), critical=False)
    if usage:
        b = b.add_extension(x509.ExtendedKeyUsage(list(usage)), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


# client name -> (CommonName = user, Organization = group)
CLIENTS: dict[str, tuple[str, str | None]] = {
    "admin": ("deepserve-admin", "system:masters"),
    "controller-manager": ("system:kube-controller-manager", None),
    "scheduler": ("system:kube-scheduler", None),
    "kwok": ("deepserve-kwok", "system:masters"),
}


def create_pki(directory: Path) -> Pki:
    """Create (or reuse, when already complete) the CA, serving, client and SA keys."""
    directory.mkdir(parents=True, exist_ok=True)
    pki = Pki(
        dir=directory,
        ca_cert=directory / "ca.crt",
        ca_key=directory / "ca.key",
        serving_cert=directory / "apiserver.crt",
        serving_key=directory / "apiserver.key",
        sa_key=directory / "sa.key",
        sa_pub=directory / "sa.pub",
        clients={
            n: ClientCert(directory / f"{n}.crt", directory / f"{n}.key") for n in CLIENTS
        },
    )
    files = [pki.ca_cert, pki.serving_cert, pki.sa_key, pki.sa_pub]
    files += [c.cert for c in pki.clients.values()]
    if all(f.exists() for f in files):
        return pki

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("deepserve-local-ca")
    ca = _cert(ca_name, ca_key, ca_name, ca_key, ca=True)
    _write_key(pki.ca_key, ca_key)
    pki.ca_cert.write_bytes(ca.public_bytes(serialization.Encoding.PEM))

    srv_key = ec.generate_private_key(ec.SECP256R1())
    names = (
        "127.0.0.1", "::1", "10.0.0.1", "localhost", "kubernetes", "kubernetes.default",
        "kubernetes.default.svc", "kubernetes.default.svc.cluster.local",
    )
    srv = _cert(
        _name("kube-apiserver"), srv_key, ca_name, ca_key,
        server_names=names, usage=(ExtendedKeyUsageOID.SERVER_AUTH,),
    )
    _write_key(pki.serving_key, srv_key)
    pki.serving_cert.write_bytes(srv.public_bytes(serialization.Encoding.PEM))

    for client, (cn, org) in CLIENTS.items():
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _cert(_name(cn, org), key, ca_name, ca_key, usage=(ExtendedKeyUsageOID.CLIENT_AUTH,))
        _write_key(pki.clients[client].key, key)
        pki.clients[client].cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    sa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _write_key(pki.sa_key, sa)
    pki.sa_pub.write_bytes(
        sa.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return pki


def write_kubeconfig(path: Path, server: str, pki: Pki, client: str, namespace: str = "default") -> Path:
    """Write a kubeconfig for ``client`` that embeds the CA and the client's key pair."""
    import base64

    def b64(p: Path) -> str:
        return base64.b64encode(p.read_bytes()).decode()

    c = pki.clients[client]
    text = f"""apiVersion: v1
kind: Config
clusters:
- name: deepserve-local
  cluster:
    server: {server}
    certificate-authority-data: {b64(pki.ca_cert)}
users:
- name: {client}
  user:
    client-certificate-data: {b64(c.cert)}
    client-key-data: {b64(c.key)}
contexts:
- name: deepserve-local
  context:
    cluster: deepserve-local
    user: {client}
    namespace: {namespace}
current-context: deepserve-local
"""
    path.write_text(text)
    path.chmod(0o600)
    return path
