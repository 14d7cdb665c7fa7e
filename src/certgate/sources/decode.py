"""Decoders for the certificate encodings edges put in headers.

Public API for custom header sources (re-exported by
:mod:`certgate.sources`). Each function takes one header value (already
read with :func:`~certgate.sources.base.single_value` or a sibling, so its
length is bounded) and returns DER certificates, leaf first, or raises
:class:`~certgate.errors.Rejected`: ``malformed_header`` when the header's
own syntax is wrong (a structured-field byte sequence without colons),
``malformed_certificate`` when the certificate inside is not base64 DER.
Every function runs in time linear in its input (no backtracking regular
expressions) and accepts at most :data:`~certgate.pem.MAX_PRESENTED_CERTIFICATES`
certificates. Nothing here checks trust: the verifier does that.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Callable
from urllib.parse import unquote

from ..errors import Rejected
from ..facts import Presented
from ..pem import (
    MAX_CERTIFICATE_BYTES,
    MAX_PRESENTED_CERTIFICATES,
    b64_to_der,
    pem_to_der,
    pem_to_ders,
    split_concatenated_der,
)
from ..reasons import Reason
from ..text import safe_text

__all__ = [
    "der_from_base64",
    "der_from_pem_text",
    "ders_from_base64_concatenated",
    "ders_from_pem_text",
    "ders_from_urlencoded_pem",
    "material",
    "sf_binary",
    "sf_binary_list",
    "status_refusal",
]


def der_from_base64(value: str) -> bytes:
    """One certificate as standard base64 of its DER (Cloudflare, Azure,
    Caddy, HAProxy ``ssl_c_der,base64``); whitespace is ignored."""
    return b64_to_der(value)


def ders_from_base64_concatenated(value: str) -> list[bytes]:
    """Standard base64 of DER certificates concatenated back to back
    (HAProxy ``ssl_c_chain_der,base64``), split by their DER lengths."""
    compact = "".join(value.split())
    limit = (MAX_PRESENTED_CERTIFICATES * MAX_CERTIFICATE_BYTES * 4) // 3 + 4
    if not compact or len(compact) > limit:
        raise Rejected(Reason.MALFORMED_CERTIFICATE, "empty or oversized base64 chain")
    try:
        blob = binascii.a2b_base64(compact, strict_mode=True)
    except (binascii.Error, ValueError) as exc:
        raise Rejected(Reason.MALFORMED_CERTIFICATE, f"invalid base64: {exc}") from None
    # Each piece is one whole DER SEQUENCE of at most MAX_CERTIFICATE_BYTES
    # (split_concatenated_der reads the lengths and refuses anything else).
    return split_concatenated_der(blob)


def ders_from_pem_text(value: str) -> list[bytes]:
    """Every PEM ``CERTIFICATE`` block of ``value``, in order. Robust to the
    ways proxies mangle PEM in a header: newlines turned into spaces
    (Apache), a tab after each newline (nginx ``$ssl_client_cert``), newlines
    lost, and URL-encoding (``%``-escapes are decoded first: PEM never holds
    a ``%``)."""
    return pem_to_ders(unquote(value) if "%" in value else value)


def der_from_pem_text(value: str) -> bytes:
    """Exactly one PEM certificate, as :func:`ders_from_pem_text`."""
    return pem_to_der(unquote(value) if "%" in value else value)


def ders_from_urlencoded_pem(value: str) -> list[bytes]:
    """URL-encoded PEM, one or more certificates (nginx
    ``$ssl_client_escaped_cert``, Envoy's ``Cert``/``Chain``, AWS ALB).
    Decoded with :func:`urllib.parse.unquote`, never ``unquote_plus``: a
    literal ``+`` is base64, not a space."""
    return pem_to_ders(unquote(value))


# RFC 8941 3.3.5: sf-binary = ":" *(base64) ":" over ALPHA / DIGIT / "+" / "/" / "=".
_SF_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")


def sf_binary(value: str, what: str = "header") -> bytes:
    """One RFC 8941 byte sequence ``:base64:`` holding one DER certificate
    (RFC 9440 ``Client-Cert``). Anything but a bare byte sequence - no
    colons, characters outside the base64 alphabet, parameters, inner
    whitespace - is ``malformed_header``. Missing ``=`` padding is accepted
    (RFC 8941 4.2.7 asks parsers not to fail on it)."""
    item = value.strip(" \t")
    if len(item) < 3 or item[0] != ":" or item[-1] != ":":
        raise Rejected(Reason.MALFORMED_HEADER, f"{what} is not a structured-field byte sequence")
    body = item[1:-1]
    if not _SF_BASE64.fullmatch(body) or len(body) % 4 == 1:
        raise Rejected(Reason.MALFORMED_HEADER, f"{what}: invalid byte sequence content")
    if len(body) % 4:
        if "=" in body:
            raise Rejected(Reason.MALFORMED_HEADER, f"{what}: misplaced base64 padding")
        body += "=" * (-len(body) % 4)
    return b64_to_der(body)


def sf_binary_list(value: str, what: str = "header") -> list[bytes]:
    """An RFC 8941 list of byte sequences (RFC 9440 ``Client-Cert-Chain``),
    each one DER certificate; an empty value is the empty list."""
    if not value.strip(" \t"):
        return []
    members = value.split(",")
    if len(members) > MAX_PRESENTED_CERTIFICATES:
        raise Rejected(
            Reason.MALFORMED_CERTIFICATE,
            f"{what}: more than {MAX_PRESENTED_CERTIFICATES} certificates",
        )
    return [sf_binary(member, what) for member in members]


def material(*parts: str | None) -> bytes:
    """An unambiguous encoding of several header values for
    :attr:`Presented.material` (each value length-prefixed; ``None`` is
    distinct from ``""``): the cache keys on it, so two requests get the
    same material only when every certificate-bearing header is the same."""
    out = bytearray()
    for part in parts:
        if part is None:
            out += b"\xff\xff\xff\xff"
            continue
        data = part.encode("utf-8", "surrogatepass")
        out += len(data).to_bytes(4, "big") + data
    return bytes(out)


def status_refusal(
    source: str,
    header: str,
    status: str | None,
    *,
    certificate: bool,
    passes: Callable[[str], bool],
    no_certificate: Callable[[str], bool] = lambda _: False,
) -> Presented | None:
    """The refusal a forwarded verify status calls for, or ``None``.

    ``status`` is the status header's value (``None``: absent), ``passes``
    says whether a value means "verified", ``no_certificate`` whether it
    means "the client sent none" (nginx ``NONE``). Refused
    (``proxy_verify_failed``): a certificate with a missing or non-passing
    status, and a status that is neither passing nor "none" even without a
    certificate (the proxy saw one and rejected it). ``None``: go on (a
    certificate to verify, or no certificate at all).
    """
    if status is None:
        if not certificate:
            return None
        detail = f"{header} missing"
    elif passes(status) or (no_certificate(status) and not certificate):
        return None
    else:
        detail = f"{header}: {safe_text(status, 80)}"
    return Presented.refused(source, Rejected(Reason.PROXY_VERIFY_FAILED, detail))
