"""Why a chain did not verify, in terms an operator can act on.

``cryptography``'s verifier says *that* no path was found ("candidates
exhausted", "unable to get issuer"), not which link is missing. When a
chain is refused as ``untrusted_chain`` certgate adds an explanation, built
by walking up from the leaf by issuer name over the certificates it had -
those the client sent and the tenant's own intermediates and roots:

* the first issuer that is nowhere to be found, by name and key id ("the
  client must send it, or configure it as the tenant's intermediate"), or
  found by name only, with another key (Subject Key Identifier) than the
  certificate's Authority Key Identifier names: a CA re-created under the
  same name;
* a tenant root or intermediate on the path that is expired or not yet
  valid, with its date;
* a path that ends at a self-signed certificate that is not one of the
  tenant's roots.

This is a description of names, not a verification: it never changes a
decision, it only explains one. It is bounded (at most ``max_depth`` steps,
each a comparison of names) because anyone can make a request fail. The text
goes to the log and ``certgate check``, never into the response body.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from cryptography import x509

from .tenant import Tenant


def _key_id(cert: x509.Certificate) -> str | None:
    """The hex Authority Key Identifier of ``cert`` (its issuer's key id)."""
    try:
        aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    except (x509.ExtensionNotFound, ValueError):
        return None
    return aki.key_identifier.hex() if aki.key_identifier else None


def _subject_key_id(cert: x509.Certificate) -> str | None:
    """The hex Subject Key Identifier of ``cert``, if it has one."""
    try:
        ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except (x509.ExtensionNotFound, ValueError):
        return None
    return ski.digest.hex()


def _may_have_key(cert: x509.Certificate, key_id: str | None) -> bool:
    """Whether ``cert`` may hold the key ``key_id`` names (unknown: yes)."""
    own = _subject_key_id(cert)
    return key_id is None or own is None or own == key_id


def _dn(name: x509.Name) -> str:
    try:
        return name.rfc4514_string()
    except ValueError:
        return "<unprintable name>"


def _validity_problem(cert: x509.Certificate, now: datetime) -> str | None:
    if now > cert.not_valid_after_utc:
        return f"expired on {cert.not_valid_after_utc:%Y-%m-%d}"
    if now < cert.not_valid_before_utc:
        return f"is not valid before {cert.not_valid_before_utc:%Y-%m-%d}"
    return None


def explain_untrusted(
    tenant: Tenant,
    leaf: x509.Certificate,
    sent: Sequence[x509.Certificate],
    now: datetime,
    *,
    max_depth: int = 8,
) -> str | None:
    """One sentence saying where the path from ``leaf`` to ``tenant``'s roots
    breaks, or ``None`` when the names alone do not show it (a bad
    signature, a policy violation: the verifier's own message stands)."""
    roots = tenant.roots
    own = set(map(id, roots + tenant.intermediates))
    candidates = [*sent, *tenant.intermediates, *roots]
    cert = leaf
    seen: set[int] = set()
    for _ in range(max_depth + 1):
        if any(cert is root or cert == root for root in roots):
            problem = _validity_problem(cert, now)
            if problem is not None:
                return f"the tenant's root {_dn(cert.subject)} {problem}"
            return None  # reached a root by names: the break is elsewhere
        if cert is not leaf and id(cert) in own:
            problem = _validity_problem(cert, now)
            if problem is not None:
                return f"the tenant's intermediate {_dn(cert.subject)} {problem}"
        if cert.issuer == cert.subject and cert is not leaf:
            return (
                f"the chain ends at {_dn(cert.subject)}, which is not a root of tenant "
                f"{tenant.id!r} (its roots: {'; '.join(_dn(r.subject) for r in roots)})"
            )
        named = [c for c in candidates if c.subject == cert.issuer and id(c) not in seen]
        key_id = _key_id(cert)
        issuers = [c for c in named if _may_have_key(c, key_id)]
        if named and not issuers:
            others = ", ".join(sorted({_subject_key_id(c) or "?" for c in named}))
            return (
                f"issuer {_dn(cert.issuer)} (key id {key_id}) of {_dn(cert.subject)} not found: "
                f"the certificates of that name the client sent or tenant {tenant.id!r} has "
                f"have another key (key id {others}) - signed by another CA of the same name "
                f"(a re-created CA, or an impostor)"
            )
        if not issuers:
            keyed = f" (key id {key_id})" if key_id else ""
            return (
                f"issuer {_dn(cert.issuer)}{keyed} of {_dn(cert.subject)} not found among the "
                f"certificates the client sent and the CAs of tenant {tenant.id!r}: if it is "
                f"an intermediate CA of this tenant, the client must send it or the tenant "
                f"must list it in intermediates"
            )
        seen.add(id(cert))
        cert = issuers[0]
    return None
