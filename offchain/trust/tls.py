"""Mutual TLS for Clearhouse services: the SSL contexts of servers and clients and the peer's verified identity.

The TLS layer only proves the peer holds a key certified by our root; `peer_identity` then re-verifies the peer
certificate at the application layer (validity, CRL, on-chain status), because OpenSSL here is not given the CRL.
Routes, role checks and JSON errors live in `offchain.transport.server`, the clients in `offchain.transport.client`. This module does not check that a log
inside a body was signed by the peer: use `Envelope.open(..., peer=...)`.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from aiohttp import web

from offchain.trust.certs import CertificateVerifier, MemberIdentity
from offchain.core.errors import UntrustedCertificate

__all__ = ["server_ssl_context", "client_ssl_context", "peer_identity"]

TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


def _base_context(protocol: int, cert_path: Path | str, key_path: Path | str, ca_path: Path | str) -> ssl.SSLContext:
    context = ssl.SSLContext(protocol)
    context.minimum_version = ssl.TLSVersion.TLSv1_2  # TLS 1.3 is negotiated whenever both ends have it
    context.set_ciphers(TLS12_CIPHERS)
    context.load_cert_chain(str(cert_path), str(key_path))
    context.load_verify_locations(cafile=str(ca_path))
    context.verify_mode = ssl.CERT_REQUIRED
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    return context


def server_ssl_context(cert_path: Path | str, key_path: Path | str, ca_path: Path | str) -> ssl.SSLContext:
    """Server side: presents our certificate and requires a client certificate issued by the CA in `ca_path`."""
    return _base_context(ssl.PROTOCOL_TLS_SERVER, cert_path, key_path, ca_path)


def client_ssl_context(cert_path: Path | str, key_path: Path | str, ca_path: Path | str) -> ssl.SSLContext:
    """Client side: presents our certificate, verifies the server against our CA and its hostname/IP SAN."""
    context = _base_context(ssl.PROTOCOL_TLS_CLIENT, cert_path, key_path, ca_path)
    context.check_hostname = True
    return context


def peer_identity(request: web.Request, verifier: CertificateVerifier) -> MemberIdentity:
    """The verified identity of the TLS peer; CertificateError subclasses otherwise.

    Bind it to the service's verifier as the `identify` of `offchain.transport.server.add_routes`, which calls it once per
    request and checks the route's roles."""
    transport = request.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    if ssl_object is None:
        raise UntrustedCertificate("the request did not arrive over TLS", reason="no_tls")
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        raise UntrustedCertificate("the TLS peer presented no certificate", reason="no_peer_certificate")
    return verifier.verify(ssl.DER_cert_to_PEM_cert(der).encode())
