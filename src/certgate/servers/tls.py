"""``ssl.SSLContext`` helpers for servers that terminate client-certificate TLS.

Python's ``ssl`` module has no verify callback: with ``CERT_OPTIONAL`` or
``CERT_REQUIRED`` the handshake itself checks the client chain against the
CAs loaded into the context and aborts on failure. For a multi-tenant server
load the union of every tenant's roots and intermediates
(:func:`trust_bundle_pem`): the handshake then proves only "chains to *some*
tenant", and certgate re-verifies every request against the tenant it is
addressed to.

:func:`prepare_server_context` (used by every certgate server helper: the
uvicorn adapter, the gunicorn hook, :func:`client_auth_context`) does three
things to a context that asks for client certificates:

* ``defer_time_checks`` sets OpenSSL's ``X509_V_FLAG_NO_CHECK_TIME`` so an
  expired or not-yet-valid client certificate completes the handshake and
  gets certgate's 403 with reason ``expired`` / ``not_yet_valid`` instead of
  an opaque TLS alert. It is safe only because certgate checks validity
  times on every request; do not use it on a listener where certgate does
  not run.
* ``accept_intermediate_anchors`` sets ``X509_V_FLAG_PARTIAL_CHAIN``
  (``ssl.VERIFY_X509_PARTIAL_CHAIN``) so a tenant anchored at an issuing CA
  (not self-signed; the isolating setup for a vendor PKI whose root is
  shared by several customers) passes the handshake instead of failing with
  "unable to get issuer certificate". Every certificate in the bundle then
  counts as a trust anchor *for the handshake*, which is no weaker than the
  handshake already is: it only ever proved "chains to something some
  tenant trusts". What decides is certgate's per-request verification with
  ``cryptography`` against the addressed tenant's roots only (a configured
  intermediate is never an anchor there).
* ``disable_stateless_resumption`` turns session tickets off
  (``OP_NO_TICKET`` and ``num_tickets = 0``). A ticket carries the client's
  leaf but not its intermediates, so a session resumed from a ticket showed
  certgate only the leaf: a device relying on the intermediates it sends got
  200 on its first connection and 403 ``untrusted_chain`` on every resumed
  one. With tickets off, TLS 1.3 connections always do a full handshake;
  TLS 1.2 clients may still resume from the server's in-memory session
  cache (the ``ssl`` module cannot turn that off), which keeps the whole
  chain (measured with OpenSSL 3.0), so the decision is the same. The cost
  is a full handshake for every new TLS 1.3 connection.

``CERT_OPTIONAL`` (the default here) lets clients without a certificate
connect, so they get a 403 ``no_certificate`` and exempt paths (health
checks) keep working.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Iterable

from cryptography.hazmat.primitives.serialization import Encoding

from ..errors import ServerSetupError
from ..tenant import Tenant

X509_V_FLAG_NO_CHECK_TIME = 0x200000
"""OpenSSL's flag (``x509_vfy.h``) to skip validity-time checks."""


def defer_time_checks(context: ssl.SSLContext) -> ssl.SSLContext:
    """Let certgate, not the handshake, judge certificate validity times."""
    context.verify_flags = ssl.VerifyFlags(int(context.verify_flags) | X509_V_FLAG_NO_CHECK_TIME)
    return context


def accept_intermediate_anchors(context: ssl.SSLContext) -> ssl.SSLContext:
    """Let a non-self-signed CA in the loaded bundle end a client chain.

    Sets ``VERIFY_X509_PARTIAL_CHAIN``; see the module docstring for why the
    handshake is not weakened (certgate re-verifies per tenant).
    """
    context.verify_flags = ssl.VerifyFlags(
        int(context.verify_flags) | int(ssl.VERIFY_X509_PARTIAL_CHAIN)
    )
    return context


def disable_stateless_resumption(context: ssl.SSLContext) -> ssl.SSLContext:
    """Issue and accept no session tickets (they lose the client's intermediates).

    ``OP_NO_TICKET`` stops TLS 1.2 tickets (and TLS 1.3 stateless ones);
    ``num_tickets = 0`` stops TLS 1.3 tickets altogether. Server contexts
    only.
    """
    context.options |= ssl.OP_NO_TICKET
    context.num_tickets = 0
    return context


def prepare_server_context(context: ssl.SSLContext, *, defer_time: bool = True) -> ssl.SSLContext:
    """Everything certgate needs of a server context that asks for client
    certificates: deferred time checks (unless ``defer_time=False``),
    intermediate anchors, no session tickets. A context with
    ``verify_mode == CERT_NONE`` is returned unchanged."""
    if context.verify_mode == ssl.CERT_NONE:
        return context
    if defer_time:
        defer_time_checks(context)
    accept_intermediate_anchors(context)
    return disable_stateless_resumption(context)


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
    ``CERT_OPTIONAL`` leaves that decision to certgate. The context is
    passed through :func:`prepare_server_context`: intermediate anchors are
    accepted, session tickets are off, and (``defer_time``) validity times
    are left to certgate.
    """
    if ca_file is None and ca_pem is None:
        raise ServerSetupError("client_auth_context needs ca_file or ca_pem (the tenants' CAs)")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile, keyfile, password)
    context.load_verify_locations(cafile=ca_file, cadata=ca_pem)
    context.verify_mode = ssl.CERT_REQUIRED if require_certificate else ssl.CERT_OPTIONAL
    return prepare_server_context(context, defer_time=defer_time)
