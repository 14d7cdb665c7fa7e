"""Envoy / Istio: ``X-Forwarded-Client-Cert`` (XFCC). Presets ``envoy``, ``xfcc``, ``istio``.

Format (Envoy's ``headers.rst``): elements separated by ``,``, one per hop;
inside an element ``key=value`` pairs separated by ``;``; keys are
case-insensitive and some (``URI``, ``DNS``) may repeat; a value containing
``,``, ``;`` or ``=`` is double-quoted, with ``\\"`` for a quote. The keys
read here: ``Cert`` (the leaf as URL-encoded PEM), ``Chain`` (URL-encoded
PEMs, leaf first) and ``Hash`` (hex SHA-256 of the leaf's DER).

Only the **rightmost** element counts: with ``APPEND_FORWARD`` each hop
appends its own, so the rightmost was added by the hop nearest the app (the
trusted one); anything to its left may come from the client. A ``Cert`` or
``Chain`` in any element but the rightmost is ``malformed_header``: Envoy
writes ``URI`` and ``DNS`` SANs unquoted after ``Cert``/``Chain``, so a
client certificate whose URI SAN is ``x,Cert=<someone else's PEM>`` would
otherwise split Envoy's element in two and make someone else's certificate
the rightmost (a configuration that verifies nothing and forwards ``uri`` or
``dns``). The price: a client's own XFCC with a certificate, or a second
proxy hop that adds ``Cert`` (whose rightmost certificate is a proxy's and
never a tenant's anyway), is refused. That element
must carry ``Cert`` or ``Chain`` (Envoy: ``set_current_client_cert_details``
with ``cert: true`` and/or ``chain: true``), otherwise the request has no
certificate. ``Cert``, ``Chain`` or ``Hash`` twice in that element, a
``Cert`` that is not the first certificate of ``Chain``, or a ``Hash`` that
is not 64 hex digits is ``malformed_header``; a ``Hash`` that does not match
the leaf is ``fingerprint_mismatch``.

Envoy verifies the client certificate only when its TLS context has a
``trusted_ca``; it forwards no status. certgate verifies the chain against
the tenant's roots either way. Bounds: at most :data:`MAX_ELEMENTS`
elements, :data:`MAX_PAIRS` pairs per element and :data:`MAX_ESCAPES`
backslash escapes, parsed in one linear pass. Option: ``cert_header``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from urllib.parse import unquote

from ..errors import Rejected
from ..facts import Presented
from ..pem import pem_to_der
from ..reasons import Reason
from .base import header_option, list_value, register
from .decode import ders_from_urlencoded_pem, material

MAX_ELEMENTS = 32
"""Most XFCC elements (hops) accepted."""
MAX_PAIRS = 64
"""Most ``key=value`` pairs accepted in one element."""
MAX_ESCAPES = 1024
"""Most backslash escapes accepted in one header."""

_KEY_END = re.compile(r'[=;,"]')
_VALUE_END = re.compile(r'[;,"]')
_QUOTED = re.compile(r'["\\]')
_OWS = re.compile(r"[ \t]*")
_KEY = re.compile(r"[a-z0-9!#$%&'*+.^_`|~-]+")
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")

Element = list[tuple[str, str]]


def _malformed(why: str) -> Rejected:
    return Rejected(Reason.MALFORMED_HEADER, f"x-forwarded-client-cert: {why}")


def _quoted(value: str, pos: int, budget: list[int]) -> tuple[str, int]:
    """The unescaped content of the quoted string whose opening quote is just
    before ``pos``, and the position after its closing quote."""
    parts: list[str] = []
    while True:
        found = _QUOTED.search(value, pos)
        if found is None:
            raise _malformed("unterminated quoted value")
        parts.append(value[pos : found.start()])
        if found.group() == '"':
            return "".join(parts), found.end()
        budget[0] -= 1
        if budget[0] < 0:
            raise _malformed(f"more than {MAX_ESCAPES} escapes")
        if found.end() >= len(value):
            raise _malformed("dangling backslash")
        parts.append(value[found.end()])
        pos = found.end() + 1


def parse_xfcc(value: str) -> list[Element]:
    """Every element of an XFCC value: (lowercase key, unquoted value) pairs.

    Raises ``Rejected(malformed_header)`` for anything that is not that
    grammar (an empty element, a key without ``=``, a stray quote, text
    after a closing quote) or exceeds the bounds.
    """
    elements: list[Element] = []
    pairs: Element = []
    budget = [MAX_ESCAPES]
    pos, size = 0, len(value)
    while True:
        found = _KEY_END.search(value, pos)
        if found is None or found.group() != "=":
            raise _malformed("expected key=value")
        key = value[pos : found.start()].strip(" \t").lower()
        if not _KEY.fullmatch(key):
            raise _malformed("invalid key")
        pos = _OWS.match(value, found.end()).end()  # type: ignore[union-attr]
        if pos < size and value[pos] == '"':
            text, pos = _quoted(value, pos + 1, budget)
            pos = _OWS.match(value, pos).end()  # type: ignore[union-attr]
        else:
            end = _VALUE_END.search(value, pos)
            if end is not None and end.group() == '"':
                raise _malformed("quote inside an unquoted value")
            stop = end.start() if end is not None else size
            text = value[pos:stop].strip(" \t")
            pos = stop
        separator = value[pos] if pos < size else ""
        if separator not in ("", ";", ","):
            raise _malformed("text after a quoted value")
        pairs.append((key, text))
        if len(pairs) > MAX_PAIRS:
            raise _malformed(f"more than {MAX_PAIRS} pairs in an element")
        if separator != ";":
            elements.append(pairs)
            if not separator:
                return elements
            if len(elements) >= MAX_ELEMENTS:
                raise _malformed(f"more than {MAX_ELEMENTS} elements")
            pairs = []
        pos += 1


def _only(element: Element, key: str) -> str | None:
    found = [text for name, text in element if name == key]
    if len(found) > 1:
        raise _malformed(f"{key} repeated in one element")
    return found[0] if found else None


def _decode(cert: str | None, chain: str | None) -> list[bytes]:
    leaf = pem_to_der(unquote(cert)) if cert is not None else None
    if chain is None:
        assert leaf is not None
        return [leaf]
    ders = ders_from_urlencoded_pem(chain)
    if leaf is not None and ders[0] != leaf:
        raise _malformed("Cert is not the first certificate of Chain")
    return ders


class EnvoySource:
    """Header source for Envoy's / Istio's ``x-forwarded-client-cert``."""

    name = "envoy"

    def __init__(self, *, cert_header: str = "x-forwarded-client-cert") -> None:
        self.cert_header = header_option(cert_header, "cert_header")
        self.header_names: tuple[str, ...] = (self.cert_header,)

    def extract(self, headers: Mapping[str, Sequence[str]]) -> Presented | None:
        value = list_value(headers, self.cert_header)
        if value is None:
            return None
        *earlier, element = parse_xfcc(value)  # the last: added by the hop nearest the app
        if any(_has(e, "cert") or _has(e, "chain") for e in earlier):
            # Envoy writes URI and DNS SANs unquoted after Cert/Chain, so a SAN
            # holding ",Cert=..." would split the real element in two and put a
            # certificate nobody proved possession of on the right. A
            # certificate in any element but the last is therefore refused.
            raise _malformed("a certificate in an XFCC element other than the last")
        cert = _only(element, "cert")
        chain = _only(element, "chain")
        digest = _only(element, "hash")
        if digest is not None and not _HEX64.fullmatch(digest):
            raise _malformed("Hash is not 64 hex digits")
        if not cert and not chain:
            return None
        cert, chain = cert or None, chain or None
        return Presented(
            source=self.name,
            material=material(cert, chain),
            decode=lambda: _decode(cert, chain),
            expected_sha256=digest.lower() if digest else None,
        )


def _has(element: Element, key: str) -> bool:
    return any(k == key for k, _ in element)


register(EnvoySource.name, EnvoySource)
register("xfcc", EnvoySource)
register("istio", EnvoySource)
