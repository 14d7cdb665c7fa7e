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

Every context :func:`prepare_server_context` sees (including one that asks
for no client certificate) also gets an ``sni_callback`` that records the
server name the client asked for (:func:`record_sni`, chaining to a callback
already set), so the adapters can tell the middleware the connection's SNI
(:mod:`certgate.sni`).

``CERT_OPTIONAL`` (the default here) lets clients without a certificate
connect, so they get a 403 ``no_certificate`` and exempt paths (health
checks) keep working.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
from collections.abc import Callable, Iterable
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding

from .. import sni
from ..errors import ServerSetupError
from ..tenant import Tenant

_log = logging.getLogger("certgate")
_warned_no_client_cert = threading.Event()

SNICallback = Callable[[Any, Any, ssl.SSLContext], "int | None"]
"""The signature of ``SSLContext.sni_callback`` (connection, server name or
``None``, the context the connection was made with)."""

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


class SNIRecorder:
    """An ``sni_callback`` that records the requested server name on the
    connection (:func:`certgate.sni.remember`), then calls the callback that
    was set before it (``previous``) and returns what that returns."""

    __slots__ = ("previous",)

    def __init__(self, previous: SNICallback | None = None) -> None:
        self.previous = previous

    def __call__(self, conn: Any, server_name: str | None, context: ssl.SSLContext) -> int | None:
        sni.remember(conn, server_name)
        if self.previous is not None:
            return self.previous(conn, server_name, context)
        return None


def record_sni(context: ssl.SSLContext) -> ssl.SSLContext:
    """Install an :class:`SNIRecorder` on ``context``, chaining to the
    ``sni_callback`` already set. Idempotent: a context whose callback
    already records (certgate's recorder, or
    :class:`~certgate.servers.tenant_contexts.TenantContexts`) is left as is."""
    current = context.sni_callback
    if not getattr(current, "records_sni", False) and not isinstance(current, SNIRecorder):
        context.sni_callback = SNIRecorder(current)
    return context


def warn_no_client_certificates(context: object, fix: str) -> bool:
    """Log ONE ``WARNING`` per process when ``context`` is a TLS server
    context that asks clients for no certificate (``CERT_NONE``): certgate's
    transport source then sees no certificate and answers 403
    ``no_certificate`` to every device. ``fix`` says how to turn it on for
    the server at hand. Returns whether the context asks for none."""
    if not isinstance(context, ssl.SSLContext) or context.verify_mode != ssl.CERT_NONE:
        return False
    if not _warned_no_client_cert.is_set():
        _warned_no_client_cert.set()
        _log.warning(
            "certgate: this TLS server does not ask clients for a certificate (CERT_NONE): "
            "devices connecting to it directly will present none and get 403 "
            "no_certificate. Fix: %s. (Ignore this behind a trusted proxy that forwards "
            "the certificate in a header.) Logged once.",
            fix,
        )
    return True


def prepare_server_context(context: ssl.SSLContext, *, defer_time: bool = True) -> ssl.SSLContext:
    """Everything certgate needs of a server context that asks for client
    certificates: deferred time checks (unless ``defer_time=False``),
    intermediate anchors, no session tickets. Every context, also one with
    ``verify_mode == CERT_NONE`` (otherwise left unchanged), gets the SNI
    recorder (:func:`record_sni`)."""
    record_sni(context)
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
