"""The stable, machine-readable reasons certgate gives when it refuses a request.

Every rejection carries exactly one :class:`Reason`. The string values are part
of certgate's public API: they appear in the ``reason`` member of the
``application/problem+json`` body, in log records and in the CLI output, and
they never change meaning between releases. New reasons may be added.
"""

from __future__ import annotations

import enum
from typing import NamedTuple


class _Meta(NamedTuple):
    status: int
    summary: str


class Reason(enum.StrEnum):
    """Why certgate refused a request. The value is the wire code."""

    NO_CERTIFICATE = "no_certificate"
    """No client certificate reached certgate from any configured source."""

    MALFORMED_CERTIFICATE = "malformed_certificate"
    """Certificate bytes could not be decoded (bad base64, PEM or DER), the
    presented chain was too large, or it broke certgate's limits on
    client-sent intermediates (count, shared subjects, RSA key size and
    exponent, name-constraint work)."""

    MALFORMED_HEADER = "malformed_header"
    """A forwarded certificate header was syntactically wrong or repeated."""

    UNTRUSTED_CHAIN = "untrusted_chain"
    """The certificate does not chain to a root CA of the addressed tenant, or
    the path violates the X.509 policy (signature algorithm, critical
    extensions, name constraints, path length, ...)."""

    EXPIRED = "expired"
    """The client certificate's notAfter is in the past."""

    NOT_YET_VALID = "not_yet_valid"
    """The client certificate's notBefore is in the future."""

    WRONG_USAGE = "wrong_usage"
    """The certificate is not for client authentication: its extended key usage
    lacks clientAuth, or it is a CA certificate."""

    WEAK_KEY = "weak_key"
    """The client certificate's public key is too weak (RSA below 2048 bits,
    DSA, or an EC curve other than P-256/P-384/P-521)."""

    FINGERPRINT_MISMATCH = "fingerprint_mismatch"
    """A forwarded fingerprint (e.g. ``Cf-Client-Cert-Sha256``) does not match
    the forwarded certificate."""

    UNKNOWN_TENANT = "unknown_tenant"
    """No tenant is configured for the addressed host (or resolver key)."""

    INVALID_HOST = "invalid_host"
    """The Host header is missing or is not a valid host name."""

    TRUST_STORE_UNAVAILABLE = "trust_store_unavailable"
    """The trust registry failed, or did not answer within
    ``registry_timeout``, while looking up the tenant (fail closed)."""

    POLICY_DENIED = "policy_denied"
    """The certificate is valid for the tenant, but a policy (the tenant's
    default policy or the route's) does not allow it on this path. Which rule
    failed is logged, never sent to the client."""

    PROXY_VERIFY_FAILED = "proxy_verify_failed"
    """A trusted proxy forwarded a certificate together with a verification
    status that is not a success (nginx ``FAILED:...`` or ``NONE``, Apache
    ``GENEROUS``, HAProxy non-zero, GCP not chain-verified, ...), or the
    status header the source requires is missing. certgate still verifies the
    chain itself; a failed status refuses even a chain certgate would accept."""

    SNI_MISMATCH = "sni_mismatch"
    """The TLS server name (SNI) of the connection and the request's Host
    header address different tenants (or the SNI addresses none): a
    certificate accepted in the handshake for one tenant must not reach
    another by changing the Host (the emissary-ingress #3340 attack). Checked
    only where the server adapter knows the SNI and the certificate comes from
    that TLS connection. Answered with 421 Misdirected Request (RFC 9110
    15.5.20), not 403: a browser that reuses an HTTP/2 connection for another
    host its server certificate covers (connection coalescing) retries a 421
    on a new connection, with the right SNI; a 403 would lock it out."""

    REVOKED = "revoked"
    """The client certificate, or an intermediate CA of its verified chain,
    is listed on its issuer's CRL (see :mod:`certgate.crl`)."""

    REVOCATION_UNAVAILABLE = "revocation_unavailable"
    """The tenant checks revocation, but a CRL needed for the chain cannot be
    used: it is stale (past its nextUpdate, or its thisUpdate is in the
    future), a configured CRL URL has not been fetched yet, or
    ``require_crl`` is set and an issuer of the chain has no CRL. Fail
    closed (``crl_stale = "warn"`` lets stale CRLs through with a warning)."""

    INTERNAL_ERROR = "internal_error"
    """certgate could not decide because of an unexpected error - a bug in
    certgate or in a plugged-in part (a tenant resolver, a registry returning
    something that is not a :class:`~certgate.tenant.Tenant`). Refused with
    403 like any rejection: fail closed and never a 500, yet kept apart from
    ``untrusted_chain`` so that metrics and alerts never mix bugs with attacks.
    The traceback is logged at ERROR."""

    @property
    def status(self) -> int:
        """The HTTP status code certgate answers with for this reason."""
        return _META[self].status

    @property
    def summary(self) -> str:
        """A short human-readable description, safe to show to clients."""
        return _META[self].summary


_META: dict[Reason, _Meta] = {
    Reason.NO_CERTIFICATE: _Meta(403, "A client certificate is required"),
    Reason.MALFORMED_CERTIFICATE: _Meta(403, "The client certificate could not be decoded"),
    Reason.MALFORMED_HEADER: _Meta(403, "A forwarded client-certificate header is malformed"),
    Reason.UNTRUSTED_CHAIN: _Meta(403, "The client certificate is not trusted for this host"),
    Reason.EXPIRED: _Meta(403, "The client certificate has expired"),
    Reason.NOT_YET_VALID: _Meta(403, "The client certificate is not yet valid"),
    Reason.WRONG_USAGE: _Meta(403, "The certificate is not a client-authentication certificate"),
    Reason.WEAK_KEY: _Meta(403, "The client certificate's key is too weak"),
    Reason.FINGERPRINT_MISMATCH: _Meta(403, "The forwarded certificate fingerprint does not match"),
    Reason.UNKNOWN_TENANT: _Meta(403, "This host does not accept client certificates"),
    Reason.INVALID_HOST: _Meta(400, "The Host header is missing or invalid"),
    Reason.TRUST_STORE_UNAVAILABLE: _Meta(503, "The trust store is temporarily unavailable"),
    Reason.POLICY_DENIED: _Meta(403, "The client certificate is not allowed here"),
    Reason.PROXY_VERIFY_FAILED: _Meta(403, "The proxy did not verify the client certificate"),
    Reason.SNI_MISMATCH: _Meta(421, "This connection cannot serve this host"),
    Reason.REVOKED: _Meta(403, "The client certificate has been revoked"),
    Reason.REVOCATION_UNAVAILABLE: _Meta(403, "The revocation status could not be checked"),
    Reason.INTERNAL_ERROR: _Meta(403, "The client certificate could not be checked"),
}
