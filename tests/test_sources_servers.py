"""Header presets of the proxies one runs oneself: nginx, ingress-nginx,
HAProxy, Caddy, Apache httpd.

Every sample is built byte for byte to the format the proxy documents (see
formats.md) from certificates made at test time, and decided end to end
through :class:`certgate.asgi.CertGateMiddleware` (a trusted peer forwards
the headers). The helpers here (``ask``, ``Edge``) are shared with the other
``test_sources_*`` files.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import pytest

from certgate import CertGate, ConfigError, RequestFacts
from certgate.asgi import IDENTITY_KEY, CertGateMiddleware, Message, Receive, Scope, Send
from certgate.devpki import IssuedCert
from certgate.sources import header_source
from tests.conftest import PKI

PEER = "10.0.0.1"
UNTRUSTED = "192.0.2.7"

Headers = Mapping[str, str | list[str]]


async def _ok_app(scope: Scope, receive: Receive, send: Send) -> None:
    identity = scope.get(IDENTITY_KEY)
    body = (identity.tenant_id if identity is not None else "-").encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def ask(
    gate: CertGate | CertGateMiddleware,
    headers: Headers,
    host: str = "api.globex.test",
    peer: str = PEER,
) -> tuple[int, str]:
    """One request through the ASGI middleware: (status, tenant id on 200,
    else the ``certgate-reason`` header)."""
    app = gate if isinstance(gate, CertGateMiddleware) else CertGateMiddleware(_ok_app, gate)
    raw: list[tuple[bytes, bytes]] = [(b"host", host.encode())]
    for name, value in headers.items():
        for one in [value] if isinstance(value, str) else value:
            raw.append((name.lower().encode("latin-1"), one.encode("latin-1")))
    scope: Scope = {
        "type": "http",
        "method": "GET",
        "path": "/",
        "raw_path": b"/",
        "query_string": b"",
        "headers": raw,
        "client": (peer, 1234),
        "certgate.socket_peer": (peer, 1234),
    }
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    start = sent[0]
    if start["status"] == 200:
        return 200, b"".join(m.get("body", b"") for m in sent[1:]).decode()
    reason = dict(start["headers"]).get(b"certgate-reason", b"").decode()
    return start["status"], reason


def gate_for(pki: PKI, *sources: Any) -> CertGate:
    return CertGate(pki.registry(), trusted_proxies=["10.0.0.0/8"], header_sources=sources)


def b64(der: bytes) -> str:
    return base64.b64encode(der).decode()


def pem(cert: IssuedCert) -> str:
    return cert.cert_pem.decode()


def nginx_escaped(cert: IssuedCert) -> str:
    """``$ssl_client_escaped_cert``: the PEM URL-encoded (nginx escapes
    everything but unreserved characters)."""
    return quote(pem(cert), safe="-_.~")


def nginx_folded(cert: IssuedCert) -> str:
    """``$ssl_client_cert`` as an app sees it: a tab after each inner newline,
    then the obsolete line folding unfolded into spaces by the server."""
    raw = pem(cert).rstrip("\n").replace("\n", "\n\t")
    return raw.replace("\n\t", " ")


@dataclass
class Edge:
    """One preset's default header spelling for the common end-to-end cases."""

    preset: str
    cert_header: str
    encode: Any
    verify_header: str = ""
    passing: str = ""
    failing: str = ""


SERVER_EDGES = [
    Edge("nginx", "x-ssl-client-cert", nginx_escaped, "x-ssl-client-verify", "SUCCESS",
         "FAILED:certificate has expired"),
    Edge("ingress-nginx", "ssl-client-cert", nginx_escaped, "ssl-client-verify", "SUCCESS",
         "FAILED:unable to verify the first certificate"),
    Edge("haproxy", "x-ssl-client-cert", lambda c: b64(c.der), "x-ssl-client-verify", "0", "20"),
    Edge("caddy", "x-client-cert", lambda c: b64(c.der)),
    Edge("apache", "x-ssl-client-cert", lambda c: pem(c).replace("\n", " "),
         "x-ssl-client-verify", "SUCCESS", "GENEROUS"),
]  # fmt: skip


def forwarded(edge: Edge, cert: IssuedCert, status: str | None = "pass") -> dict[str, str]:
    headers = {edge.cert_header: edge.encode(cert)}
    if edge.verify_header and status is not None:
        headers[edge.verify_header] = edge.passing if status == "pass" else status
    return headers


@pytest.mark.parametrize("edge", SERVER_EDGES, ids=lambda e: e.preset)
def test_end_to_end(pki: PKI, edge: Edge) -> None:
    gate = gate_for(pki, edge.preset)
    own = pki["globex"].client()
    assert ask(gate, forwarded(edge, own)) == (200, "globex")
    other = pki["initech"].client()
    assert ask(gate, forwarded(edge, other)) == (403, "untrusted_chain")
    assert ask(gate, {}) == (403, "no_certificate")
    # the same headers from an untrusted peer are stripped: no certificate
    assert ask(gate, forwarded(edge, own), peer=UNTRUSTED) == (403, "no_certificate")
    assert ask(gate, {edge.cert_header: "garbage!"})[1] in {
        "malformed_certificate",
        "malformed_header",
        "proxy_verify_failed",
    }
    assert ask(gate, {edge.cert_header: [edge.encode(own), edge.encode(own)]}) == (
        403,
        "malformed_header",
    )


WITH_STATUS = [e for e in SERVER_EDGES if e.verify_header]


@pytest.mark.parametrize("edge", WITH_STATUS, ids=lambda e: e.preset)
def test_verify_status(pki: PKI, edge: Edge) -> None:
    gate = gate_for(pki, edge.preset)
    own = pki["globex"].client()
    assert ask(gate, forwarded(edge, own, edge.failing)) == (403, "proxy_verify_failed")
    assert ask(gate, forwarded(edge, own, None)) == (403, "proxy_verify_failed")  # missing
    malformed = {edge.cert_header: "garbage!", edge.verify_header: edge.passing}
    assert ask(gate, malformed)[1] == "malformed_certificate"
    # the proxy rejected a certificate it did not forward: still refused
    assert ask(gate, {edge.verify_header: edge.failing}) == (403, "proxy_verify_failed")
    repeated = {edge.verify_header: [edge.passing, edge.passing]}
    assert ask(gate, repeated) == (403, "malformed_header")
    # opt-out: an edge that forwards unverified certificates on purpose
    lax = gate_for(pki, header_source(edge.preset, verify_status=False))
    assert edge.verify_header not in lax.trust.header_names
    assert ask(lax, forwarded(edge, own, None)) == (200, "globex")
    assert ask(lax, forwarded(edge, own, edge.failing)) == (200, "globex")
    assert ask(lax, forwarded(edge, pki["initech"].client(), None)) == (403, "untrusted_chain")


@pytest.mark.parametrize("edge", WITH_STATUS, ids=lambda e: e.preset)
def test_status_change_is_not_remembered(pki: PKI, edge: Edge) -> None:
    """The decision memo keys on the status header too: an allow remembered
    for ``SUCCESS`` must not answer the same certificate with a failed
    status (this fails if the status header is missing from header_names)."""
    gate = gate_for(pki, edge.preset)
    assert gate.remembers()
    middleware = CertGateMiddleware(_ok_app, gate)
    own = pki["globex"].client()
    for _ in range(3):  # warm: the allow is remembered
        assert ask(middleware, forwarded(edge, own)) == (200, "globex")
    assert ask(middleware, forwarded(edge, own, edge.failing)) == (403, "proxy_verify_failed")


def test_nginx_status_none_without_certificate(pki: PKI) -> None:
    gate = gate_for(pki, "nginx")
    assert ask(gate, {"x-ssl-client-verify": "NONE"}) == (403, "no_certificate")
    own = pki["globex"].client()
    headers = {"x-ssl-client-cert": nginx_escaped(own), "x-ssl-client-verify": "NONE"}
    assert ask(gate, headers) == (403, "proxy_verify_failed")


@pytest.mark.parametrize(
    "encode", [nginx_escaped, nginx_folded, pem], ids=["escaped", "folded", "raw"]
)
def test_nginx_encodings(pki: PKI, encode: Any) -> None:
    own = pki["globex"].client()
    headers = {"x-ssl-client-cert": encode(own), "x-ssl-client-verify": "SUCCESS"}
    if "\n" in headers["x-ssl-client-cert"]:
        headers["x-ssl-client-cert"] = headers["x-ssl-client-cert"].replace("\n", "\n\t")
    assert ask(gate_for(pki, "nginx"), headers) == (200, "globex")


def test_nginx_escaped_sample_is_byte_exact(pki: PKI) -> None:
    own = pki["globex"].client()
    value = nginx_escaped(own)
    assert value.startswith("-----BEGIN%20CERTIFICATE-----%0AMII")
    assert value.endswith("-----END%20CERTIFICATE-----%0A")
    assert not {"+", "/", "=", "\n"} & set(value)


def test_nginx_renamed_headers(pki: PKI) -> None:
    source = header_source("nginx", cert_header="X-Client-Cert", verify_header="x-client-verify")
    assert source.header_names == ("x-client-cert", "x-client-verify")
    gate = gate_for(pki, source)
    own = pki["globex"].client()
    headers = {"x-client-cert": nginx_escaped(own), "x-client-verify": "SUCCESS"}
    assert ask(gate, headers) == (200, "globex")
    headers["x-client-verify"] = "FAILED:x"
    assert ask(gate, headers) == (403, "proxy_verify_failed")


def test_nginx_two_certificates_refused(pki: PKI) -> None:
    own = pki["globex"].client()
    headers = {"x-ssl-client-cert": quote(pem(own) * 2), "x-ssl-client-verify": "SUCCESS"}
    assert ask(gate_for(pki, "nginx"), headers) == (403, "malformed_certificate")


def test_ingress_nginx_leaf_only_needs_configured_intermediates(pki: PKI) -> None:
    gate = gate_for(pki, "ingress-nginx")
    acme = pki["acme"].client()  # acme's intermediate is not configured on the tenant
    headers = {"ssl-client-cert": nginx_escaped(acme), "ssl-client-verify": "SUCCESS"}
    assert ask(gate, headers, host="pay.acme.test") == (403, "untrusted_chain")
    initech = pki["initech"].client()  # intermediate configured
    headers = {"ssl-client-cert": nginx_escaped(initech), "ssl-client-verify": "SUCCESS"}
    assert ask(gate, headers, host="initech.test") == (200, "initech")


# -- HAProxy --------------------------------------------------------------------


def test_haproxy_chain_of_concatenated_der(pki: PKI) -> None:
    gate = gate_for(pki, "haproxy")
    acme = pki["acme"].client()
    leaf, *intermediates = acme.chain_ders
    base = {"x-ssl-client-cert": b64(leaf), "x-ssl-client-verify": "0"}
    assert ask(gate, base, host="pay.acme.test") == (403, "untrusted_chain")
    # ssl_c_chain_der: the intermediates, DER back to back, one base64 blob
    chain = {**base, "x-ssl-client-chain": b64(b"".join(intermediates))}
    assert ask(gate, chain, host="pay.acme.test") == (200, "acme")
    # a chain that starts with the leaf works as well
    with_leaf = {**base, "x-ssl-client-chain": b64(b"".join(acme.chain_ders))}
    assert ask(gate, with_leaf, host="pay.acme.test") == (200, "acme")
    truncated = {**base, "x-ssl-client-chain": b64(b"".join(intermediates)[:-5])}
    assert ask(gate, truncated, host="pay.acme.test") == (403, "malformed_certificate")
    too_many = {**base, "x-ssl-client-chain": b64(b"".join(intermediates) * 9)}
    assert ask(gate, too_many, host="pay.acme.test") == (403, "malformed_certificate")


@pytest.mark.parametrize("status", ["", "1", "0 ", "00", "SUCCESS", "-1"])
def test_haproxy_only_zero_passes(pki: PKI, status: str) -> None:
    own = pki["globex"].client()
    headers = {"x-ssl-client-cert": b64(own.der), "x-ssl-client-verify": status}
    expected = 200 if status.strip() == "0" else 403
    assert ask(gate_for(pki, "haproxy"), headers)[0] == expected


def test_haproxy_empty_certificate_header_is_no_certificate(pki: PKI) -> None:
    # %[ssl_c_der,base64] on a connection without a client certificate
    headers = {"x-ssl-client-cert": "", "x-ssl-client-verify": "0"}
    assert ask(gate_for(pki, "haproxy"), headers) == (403, "no_certificate")


# -- Caddy ------------------------------------------------------------------------


def test_caddy_pem_instead_of_base64_refused(pki: PKI) -> None:
    own = pki["globex"].client()
    assert ask(gate_for(pki, "caddy"), {"x-client-cert": pem(own)}) == (
        403,
        "malformed_certificate",
    )


def test_caddy_has_no_status_option() -> None:
    with pytest.raises(ConfigError, match="unknown option"):
        header_source("caddy", verify_status=True)


# -- Apache -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "encode",
    [
        lambda c: pem(c).replace("\n", " "),  # httpd turns newlines into spaces
        lambda c: pem(c).replace("\n", " ").strip(),
        lambda c: quote(pem(c)),  # expr=%{escape:%{SSL_CLIENT_CERT}}
        lambda c: pem(c).replace("\n", ""),
    ],
    ids=["spaces", "spaces-stripped", "escaped", "no-newlines"],
)
def test_apache_encodings(pki: PKI, encode: Any) -> None:
    own = pki["globex"].client()
    headers = {"x-ssl-client-cert": encode(own), "x-ssl-client-verify": "SUCCESS"}
    assert ask(gate_for(pki, "apache"), headers) == (200, "globex")


def test_apache_chain_headers(pki: PKI) -> None:
    gate = gate_for(pki, "apache")
    acme = pki["acme"].client()
    pems = [c.decode() for c in acme.chain_pem.split(b"\n-----END CERTIFICATE-----\n") if c]
    pems = [p + "\n-----END CERTIFICATE-----\n" for p in pems if "BEGIN" in p]
    assert len(pems) == 2
    headers = {
        "x-ssl-client-cert": pems[0].replace("\n", " "),
        "x-ssl-client-verify": "SUCCESS",
        "x-ssl-client-chain-1": "(null)",
    }
    assert ask(gate, headers, host="pay.acme.test") == (403, "untrusted_chain")
    headers["x-ssl-client-chain-0"] = pems[1].replace("\n", " ")
    assert ask(gate, headers, host="pay.acme.test") == (200, "acme")
    headers["x-ssl-client-chain-0"] = "-----BEGIN CERTIFICATE----- AAAA -----END CERTIFICATE-----"
    assert ask(gate, headers, host="pay.acme.test") == (403, "malformed_certificate")


@pytest.mark.parametrize("status", ["GENEROUS", "NONE", "FAILED:unable to get issuer", "success"])
def test_apache_failed_statuses(pki: PKI, status: str) -> None:
    own = pki["globex"].client()
    headers = {"x-ssl-client-cert": pem(own).replace("\n", " "), "x-ssl-client-verify": status}
    assert ask(gate_for(pki, "apache"), headers) == (403, "proxy_verify_failed")


def test_apache_null_is_absent(pki: PKI) -> None:
    headers = {"x-ssl-client-cert": "(null)", "x-ssl-client-verify": "NONE"}
    assert ask(gate_for(pki, "apache"), headers) == (403, "no_certificate")


def test_fingerprint_of_forwarded_leaf(pki: PKI) -> None:
    """The identity's fingerprint is the forwarded leaf's, whatever the encoding."""
    own = pki["globex"].client()
    presented = header_source("caddy").extract({"x-client-cert": [b64(own.der)]})
    assert presented is not None
    assert list(presented.decode()) == [own.der]
    gate = gate_for(pki, "caddy")
    facts = RequestFacts("api.globex.test", "/", PEER, {"x-client-cert": [b64(own.der)]}, None)
    assert gate.decide(facts).fingerprint == hashlib.sha256(own.der).hexdigest()
