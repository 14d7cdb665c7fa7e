"""``ssl.SSLContext`` helpers for servers that terminate client-certificate TLS.

Python's ``ssl`` module has no verify callback: with ``CERT_OPTIONAL`` or
``CERT_REQUIRED`` the handshake itself checks the client chain against the
CAs loaded into the context and aborts on failure. For a multi-tenant server
load the union of every tenant's roots and intermediates
(:func:`trust_bundle_pem`): the handshake then proves only "chains to *some*
tenant", and certgate re-verifies every request against the tenant it is
addressed to.

``defer_time_checks`` sets OpenSSL's ``X509_V_FLAG_NO_CHECK_TIME`` so an
expired or not-yet-valid client certificate completes the handshake and gets
certgate's 403 with reason ``expired`` / ``not_yet_valid`` instead of an
opaque TLS alert. It is safe only because certgate checks validity times on
every request; do not use it on a listener where certgate does not run.

``CERT_OPTIONAL`` (the default here) lets clients without a certificate
connect, so they get a 403 ``no_certificate`` and exempt paths (health
checks) keep working.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Iterable

from cryptography.hazmat.primitives.serialization import Encoding

from ..tenant import Tenant

X509_V_FLAG_NO_CHECK_TIME = 0x200000
"""OpenSSL's flag (``x509_vfy.h``) to skip validity-time checks."""


def defer_time_checks(context: ssl.SSLContext) -> ssl.SSLContext:
    """Let certgate, not the handshake, judge certificate validity times."""
    context.verify_flags = ssl.VerifyFlags(int(context.verify_flags) | X509_V_FLAG_NO_CHECK_TIME)
    return context


def defer_time_checks_if_verifying(context: ssl.SSLContext) -> ssl.SSLContext:
    """:func:`defer_time_checks` on a context that asks for client certificates."""
    if context.verify_mode != ssl.CERT_NONE:
        defer_time_checks(context)
    return context


def trust_bundle_pem(tenants: Iterable[Tenant]) -> str:
    """PEM of every root and intermediate of ``tenants``, de-duplicated."""
    seen: dict[bytes, str] = {}
    for tenant in tenants:
        for cert in (*tenant.roots, *tenant.intermediates):
            der = cert.public_bytes(Encoding.DER)
            seen.setdefault(der, cert.public_bytes(Encoding.PEM).decode())
    return "".join(seen.values())


def client_auth_context(
    certfile: str | os.PathLike[str],
    keyfile: str | os.PathLike[str] | None = None,
    *,
    ca_file: str | os.PathLike[str] | None = None,
    ca_pem: str | None = None,
    require_certificate: bool = False,
    defer_time: bool = True,
    password: str | None = None,
) -> ssl.SSLContext:
    """A TLS 1.2+ server context that asks clients for a certificate.

    ``ca_file`` / ``ca_pem``: the CAs the handshake accepts client chains
    from (the tenants' trust bundle). ``require_certificate`` refuses the
    handshake without a client certificate (``CERT_REQUIRED``); the default
    ``CERT_OPTIONAL`` leaves that decision to certgate.
    """
    if ca_file is None and ca_pem is None:
        raise ValueError("client_auth_context needs ca_file or ca_pem (the tenants' CAs)")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile, keyfile, password)
    context.load_verify_locations(cafile=ca_file, cadata=ca_pem)
    context.verify_mode = ssl.CERT_REQUIRED if require_certificate else ssl.CERT_OPTIONAL
    if defer_time:
        defer_time_checks(context)
    return context
