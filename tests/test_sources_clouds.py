"""Header presets of edges one does not run oneself: RFC 9440, Envoy/Istio
XFCC, Traefik, AWS ALB, Azure App Service, Google Cloud, and Cloudflare's
opt-in status. Byte-exact samples built to each documented format from
certificates made at test time, decided through the ASGI middleware."""

from __future__ import annotations

import base64
import hashlib
from urllib.parse import quote

import pytest

from certgate import ConfigError
from certgate.asgi import CertGateMiddleware
from certgate.devpki import IssuedCert
from certgate.sources import header_source
from certgate.sources.envoy import MAX_ELEMENTS, parse_xfcc
from tests.conftest import PKI
from tests.test_sources_servers import _ok_app, ask, b64, gate_for, pem


def sf(der: bytes) -> str:
    return f":{b64(der)}:"


# -- RFC 9440 -------------------------------------------------------------------


def test_rfc9440_leaf_and_chain(pki: PKI) -> None:
    gate = gate_for(pki, "rfc9440")
    acme = pki["acme"].client()
    leaf, *rest = acme.chain_ders
    assert ask(gate, {"client-cert": sf(leaf)}, host="pay.acme.test") == (403, "untrusted_chain")
    chain = ", ".join(sf(d) for d in rest)
    headers = {"client-cert": sf(leaf), "client-cert-chain": chain}
    assert ask(gate, headers, host="pay.acme.test") == (200, "acme")
    # a list field may arrive as several lines
    assert (
        ask(gate, {"client-cert": sf(leaf), "client-cert-chain": [chain]}, "pay.acme.test")[0]
        == 200
    )
    own = pki["globex"].client()
    assert ask(gate, {"client-cert": sf(own.der)}) == (200, "globex")
    assert ask(gate, {"client-cert": sf(pki["initech"].client().der)}) == (403, "untrusted_chain")
    # unpadded base64 is accepted (RFC 8941 4.2.7)
    assert ask(gate, {"client-cert": sf(own.der).replace("=", "")}) == (200, "globex")


@pytest.mark.parametrize(
    "mangle",
    [
        lambda v: v.strip(":"),  # bare base64
        lambda v: v[:-1],  # no closing colon
        lambda v: v + ";a=1",  # parameters
        lambda v: v[:10] + " " + v[10:],  # inner whitespace
        lambda v: v.replace("+", "-").replace("/", "_") + "-_",  # base64url
        lambda v: ":" + v,
        lambda v: "::",
        lambda v: '"' + v + '"',
    ],
)
def test_rfc9440_not_a_byte_sequence(pki: PKI, mangle: object) -> None:
    value = mangle(sf(pki["globex"].client().der))  # type: ignore[operator]
    assert ask(gate_for(pki, "rfc9440"), {"client-cert": value}) == (403, "malformed_header")


def test_rfc9440_bad_chain_member(pki: PKI) -> None:
    own = pki["globex"].client()
    headers = {"client-cert": sf(own.der), "client-cert-chain": f"{sf(own.der)}, {b64(own.der)}"}
    assert ask(gate_for(pki, "rfc9440"), headers) == (403, "malformed_header")
    headers["client-cert-chain"] = ", ".join([sf(own.der)] * 8)
    assert ask(gate_for(pki, "rfc9440"), headers) == (403, "malformed_certificate")


# -- Envoy / Istio XFCC -----------------------------------------------------------


def _xfcc_cert(cert: IssuedCert) -> str:
    return quote(pem(cert), safe="")


def _element(cert: IssuedCert, *, chain: bool = False, digest: str | None = None) -> str:
    parts = ["By=spiffe://cluster.local/ns/default/sa/app"]
    parts.append(f"Hash={digest or hashlib.sha256(cert.der).hexdigest()}")
    parts.append(f'Cert="{_xfcc_cert(cert)}"')
    if chain:
        parts.append(f'Chain="{quote(cert.chain_pem.decode(), safe="")}"')
    parts.append('Subject="CN=device,O=Acme\\"s \\"Lab\\""')
    parts += ["URI=spiffe://a/b", "DNS=a.example", "DNS=b.example", "uri=spiffe://c/d"]
    return ";".join(parts)


@pytest.mark.parametrize("preset", ["envoy", "xfcc", "istio"])
def test_xfcc_end_to_end(pki: PKI, preset: str) -> None:
    gate = gate_for(pki, preset)
    own = pki["globex"].client()
    assert ask(gate, {"x-forwarded-client-cert": _element(own)}) == (200, "globex")
    other = pki["initech"].client()
    assert ask(gate, {"x-forwarded-client-cert": _element(other)}) == (403, "untrusted_chain")
    assert ask(gate, {"x-forwarded-client-cert": "By=x;Hash=" + "0" * 64}) == (
        403,
        "no_certificate",
    )


def test_xfcc_rightmost_element_wins(pki: PKI) -> None:
    gate = gate_for(pki, "envoy")
    own, other = pki["globex"].client(), pki["initech"].client()
    # only the rightmost element is read: the hop nearest the app added it
    assert ask(
        gate, {"x-forwarded-client-cert": f"By=spiffe://c;Hash={'ab' * 32},{_element(own)}"}
    ) == (
        200,
        "globex",
    )
    # a certificate in any element but the last is refused (it could be the
    # tail of an unquoted URI SAN splitting the real element: see envoy.py)
    assert ask(gate, {"x-forwarded-client-cert": f"{_element(other)},{_element(own)}"}) == (
        403,
        "malformed_header",
    )
    assert ask(gate, {"x-forwarded-client-cert": f"{_element(own)},{_element(other)}"}) == (
        403,
        "malformed_header",
    )
    headers = {"x-forwarded-client-cert": f"{_element(own)},By=spiffe://edge"}
    assert ask(gate, headers) == (403, "malformed_header")
    # the nearest hop's element without a certificate: no certificate
    headers = {"x-forwarded-client-cert": "By=spiffe://c,By=spiffe://edge"}
    assert ask(gate, headers) == (403, "no_certificate")
    # two lines are one list: the last line's last element counts
    lines = {"x-forwarded-client-cert": ["By=spiffe://c", _element(own)]}
    assert ask(gate, lines) == (200, "globex")
    lines = {"x-forwarded-client-cert": [_element(other), _element(own)]}
    assert ask(gate, lines) == (403, "malformed_header")


def test_xfcc_chain_leaf_first(pki: PKI) -> None:
    gate = gate_for(pki, "envoy")
    acme = pki["acme"].client()
    assert ask(gate, {"x-forwarded-client-cert": _element(acme)}, "pay.acme.test") == (
        403,
        "untrusted_chain",
    )
    headers = {"x-forwarded-client-cert": _element(acme, chain=True)}
    assert ask(gate, headers, "pay.acme.test") == (200, "acme")
    other = pki["acme"].client("someone-else")
    mixed = f'Cert="{_xfcc_cert(acme)}";Chain="{quote(other.chain_pem.decode(), safe="")}"'
    assert ask(gate, {"x-forwarded-client-cert": mixed}, "pay.acme.test") == (
        403,
        "malformed_header",
    )


def test_xfcc_hash_mismatch(pki: PKI) -> None:
    gate = gate_for(pki, "envoy")
    own = pki["globex"].client()
    bad = {"x-forwarded-client-cert": _element(own, digest="ab" * 32)}
    assert ask(gate, bad) == (403, "fingerprint_mismatch")
    good = {"x-forwarded-client-cert": _element(own)}
    assert ask(gate, good) == (200, "globex")
    assert ask(gate, bad) == (403, "fingerprint_mismatch")  # after a cached success too
    upper = {
        "x-forwarded-client-cert": _element(own, digest=hashlib.sha256(own.der).hexdigest().upper())
    }
    assert ask(gate, upper) == (200, "globex")
    assert ask(gate, {"x-forwarded-client-cert": _element(own, digest="xyz")}) == (
        403,
        "malformed_header",
    )


def test_xfcc_parser() -> None:
    value = 'By=a;HASH=b;Subject="x,y;z=\\"q\\"";URI=u1;uri=u2, By = c ; Cert = "d"'
    assert parse_xfcc(value) == [
        [("by", "a"), ("hash", "b"), ("subject", 'x,y;z="q"'), ("uri", "u1"), ("uri", "u2")],
        [("by", "c"), ("cert", "d")],
    ]


@pytest.mark.parametrize(
    "value",
    [
        "By=a,,By=b",
        "By=a;",
        "Cert",
        'Cert="abc',
        'Cert="abc"x',
        'Cert=ab"c',
        'Cert="abc\\',
        "=x",
        "Cert=a;Cert=b",
        "Hash=a;hash=b;Cert=x",
        ",".join(["By=a"] * (MAX_ELEMENTS + 1)),
        ";".join(["DNS=a"] * 65),
        'Subject="' + "\\x" * 1100 + '"',
    ],
)
def test_xfcc_malformed(pki: PKI, value: str) -> None:
    assert ask(gate_for(pki, "envoy"), {"x-forwarded-client-cert": value}) == (
        403,
        "malformed_header",
    )


# -- Traefik ------------------------------------------------------------------------


def _traefik(*ders: bytes) -> str:
    return ",".join(b64(d) for d in ders)


def test_traefik(pki: PKI) -> None:
    gate = gate_for(pki, "traefik")
    acme = pki["acme"].client()
    header = "x-forwarded-tls-client-cert"
    assert ask(gate, {header: _traefik(acme.der)}, "pay.acme.test") == (403, "untrusted_chain")
    assert ask(gate, {header: _traefik(*acme.chain_ders)}, "pay.acme.test") == (200, "acme")
    # before v2.9.4: url.QueryEscape of the same text
    old = quote(_traefik(*acme.chain_ders), safe="")
    assert "%2C" in old
    assert ask(gate, {header: old}, "pay.acme.test") == (200, "acme")
    own = pki["globex"].client()
    assert ask(gate, {header: _traefik(own.der)}) == (200, "globex")
    assert ask(gate, {header: _traefik(pki["initech"].client().der)}) == (403, "untrusted_chain")
    assert ask(gate, {header: pem(own)}) == (403, "malformed_certificate")
    assert ask(gate, {header: _traefik(own.der) + ","}) == (403, "malformed_certificate")
    assert ask(gate, {header: [_traefik(own.der)] * 2}) == (403, "malformed_header")
    assert ask(gate, {header: _traefik(*[own.der] * 9)}) == (403, "malformed_certificate")


# -- AWS ALB --------------------------------------------------------------------------


def _alb(text: str) -> str:
    """ALB's encoding: URL-encoded, but +, = and / left as they are."""
    return quote(text, safe="+=/")


def _with_plus(pki: PKI) -> IssuedCert:
    for n in range(200):
        cert = pki["acme"].client(f"plus-{n}")
        if "+" in cert.cert_pem.decode():
            return cert
    raise AssertionError("no certificate with a '+' in its base64")


def test_aws_alb_chain_and_literal_plus(pki: PKI) -> None:
    gate = gate_for(pki, "aws-alb")
    acme = _with_plus(pki)
    value = _alb(acme.chain_pem.decode())
    assert "+" in value
    assert "%0A" in value
    header = "x-amzn-mtls-clientcert"
    assert ask(gate, {header: value}, "pay.acme.test") == (200, "acme")
    # unquote_plus would turn '+' into ' ' and break the base64
    from urllib.parse import unquote_plus

    from certgate.pem import pem_to_ders

    with pytest.raises(Exception):  # noqa: B017, PT011 - the corruption this preset avoids
        assert pem_to_ders(unquote_plus(value)) == acme.chain_ders
    assert ask(gate, {header: _alb(acme.cert_pem.decode())}, "pay.acme.test") == (
        403,
        "untrusted_chain",
    )
    own = pki["globex"].client()
    assert ask(gate, {header: _alb(pem(own))}) == (200, "globex")
    assert ask(gate, {header: _alb(pem(pki["initech"].client()))}) == (403, "untrusted_chain")
    assert ask(gate, {header: "%ZZ"}) == (403, "malformed_certificate")
    leaf_mode = gate_for(pki, header_source("aws-alb", cert_header="x-amzn-mtls-clientcert-leaf"))
    assert ask(leaf_mode, {"x-amzn-mtls-clientcert-leaf": _alb(pem(own))}) == (200, "globex")


# -- Azure ------------------------------------------------------------------------------


def test_azure(pki: PKI) -> None:
    gate = gate_for(pki, "azure")
    own = pki["globex"].client()
    assert ask(gate, {"x-arr-clientcert": b64(own.der)}) == (200, "globex")
    assert ask(gate, {"x-arr-clientcert": b64(pki["initech"].client().der)}) == (
        403,
        "untrusted_chain",
    )
    assert ask(gate, {"x-arr-clientcert": "!!"}) == (403, "malformed_certificate")
    assert ask(gate, {"x-arr-clientcert": [b64(own.der)] * 2}) == (403, "malformed_header")


# -- Google Cloud ---------------------------------------------------------------------------


def _gcp(
    cert: IssuedCert, present: str | None = "true", verified: str | None = "true"
) -> dict[str, str]:
    headers = {"x-client-cert-leaf": sf(cert.der)}
    if present is not None:
        headers["x-client-cert-present"] = present
    if verified is not None:
        headers["x-client-cert-chain-verified"] = verified
    return headers


def test_gcp(pki: PKI) -> None:
    gate = gate_for(pki, "gcp")
    own = pki["globex"].client()
    assert ask(gate, _gcp(own)) == (200, "globex")
    assert ask(gate, _gcp(pki["initech"].client())) == (403, "untrusted_chain")
    assert ask(gate, _gcp(own, verified="false")) == (403, "proxy_verify_failed")
    assert ask(gate, _gcp(own, verified=None)) == (403, "proxy_verify_failed")
    assert ask(gate, _gcp(own, present=None)) == (403, "proxy_verify_failed")
    assert ask(gate, _gcp(own, present="false")) == (403, "proxy_verify_failed")
    assert ask(gate, _gcp(own, verified="True")) == (403, "proxy_verify_failed")
    # "allow invalid" mode: present, not verified, no leaf
    assert ask(
        gate, {"x-client-cert-present": "true", "x-client-cert-chain-verified": "false"}
    ) == (
        403,
        "proxy_verify_failed",
    )
    assert ask(gate, {"x-client-cert-present": "false"}) == (403, "no_certificate")
    acme = pki["acme"].client()
    leaf, *rest = acme.chain_ders
    headers = {**_gcp(acme), "x-client-cert-leaf": sf(leaf), "x-client-cert-chain": sf(rest[0])}
    assert ask(gate, headers, "pay.acme.test") == (200, "acme")
    lax = gate_for(pki, header_source("gcp", verify_status=False))
    assert ask(lax, _gcp(own, present=None, verified=None)) == (200, "globex")


def test_gcp_status_change_is_not_remembered(pki: PKI) -> None:
    middleware = CertGateMiddleware(_ok_app, gate_for(pki, "gcp"))
    own = pki["globex"].client()
    for _ in range(3):
        assert ask(middleware, _gcp(own)) == (200, "globex")
    assert ask(middleware, _gcp(own, verified="false")) == (403, "proxy_verify_failed")


# -- Cloudflare's opt-in status ----------------------------------------------------------------


def test_cloudflare_status_is_opt_in(pki: PKI) -> None:
    own = pki["globex"].client()
    plain = {"cf-client-cert-der-base64": b64(own.der)}
    assert ask(gate_for(pki, "cloudflare"), plain) == (200, "globex")
    source = header_source("cloudflare", verify_status=True)
    assert "cf-cert-verified" in source.header_names
    assert "cf-cert-revoked" in source.header_names
    middleware = CertGateMiddleware(_ok_app, gate_for(pki, source))
    assert ask(middleware, plain) == (403, "proxy_verify_failed")
    good = {**plain, "cf-cert-verified": "true", "cf-cert-revoked": "false"}
    for _ in range(3):
        assert ask(middleware, good) == (200, "globex")
    assert ask(middleware, {**good, "cf-cert-revoked": "true"}) == (403, "proxy_verify_failed")
    assert ask(middleware, {**good, "cf-cert-verified": "false"}) == (403, "proxy_verify_failed")


def test_unknown_option_and_bad_values() -> None:
    with pytest.raises(ConfigError, match="unknown option"):
        header_source("envoy", verify_status=True)
    with pytest.raises(ConfigError, match="true or false"):
        header_source("gcp", verify_status="no")
    with pytest.raises(ConfigError, match="not a header name"):
        header_source("azure", cert_header="x_arr_clientcert")
    with pytest.raises(ConfigError, match="header name"):
        header_source("azure", cert_header=3)


def test_sample_encodings_are_the_documented_ones(pki: PKI) -> None:
    own = pki["globex"].client()
    assert sf(own.der).startswith(":MII")
    assert sf(own.der).endswith(":")
    assert base64.b64decode(sf(own.der)[1:-1]) == own.der
    assert _xfcc_cert(own).startswith("-----BEGIN%20CERTIFICATE-----%0A")
