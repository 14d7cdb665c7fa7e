"""Certificate sources and the small input parsers around them.

pem.py (every PEM/base64/DER shape a proxy or server produces), the
Cloudflare header source, the ASGI ``tls`` extension, the WSGI environ
``SSL_CLIENT_CERT*`` keys, trusted-proxy CIDR matching and exempt paths.
"""

from __future__ import annotations

import base64
import hashlib
import socket
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytest

from certgate import CertGate, ConfigError, Presented, Reason, Rejected, RequestFacts
from certgate.pem import (
    MAX_CERTIFICATE_BYTES,
    MAX_PRESENTED_CERTIFICATES,
    b64_to_der,
    load_certificate,
    pem_to_der,
    pem_to_ders,
    split_concatenated_der,
)
from certgate.proxies import TrustedProxies
from certgate.rollout import Access, Rollout, Route
from certgate.sources import asgi_tls, header_source, wsgi_environ
from certgate.sources.cloudflare import CERT_HEADER, SHA256_HEADER, CloudflareSource
from tests.conftest import PKI

GateFactory = Callable[..., CertGate]


def _reason(call: Callable[[], object]) -> Reason:
    """Run ``call`` and return the reason of the ``Rejected`` it must raise."""
    with pytest.raises(Rejected) as info:
        call()
    return info.value.reason


def _pem(pki: PKI, tenant: str = "globex") -> str:
    return pki[tenant].client().cert_pem.decode()


# -- pem.py ------------------------------------------------------------------


def test_pem_plain_round_trips(pki: PKI) -> None:
    client = pki["globex"].client()
    assert pem_to_der(client.cert_pem.decode()) == client.der


def test_pem_tab_folded_like_nginx_ssl_client_cert(pki: PKI) -> None:
    client = pki["globex"].client()
    # nginx's deprecated $ssl_client_cert puts a tab after every newline.
    folded = client.cert_pem.decode().rstrip("\n").replace("\n", "\n\t")
    assert "\n\t" in folded
    assert pem_to_der(folded) == client.der


def test_pem_space_folded(pki: PKI) -> None:
    client = pki["globex"].client()
    folded = client.cert_pem.decode().replace("\n", " ")
    assert "\n" not in folded
    assert pem_to_der(folded) == client.der


def test_pem_with_lost_newlines(pki: PKI) -> None:
    client = pki["globex"].client()
    flat = client.cert_pem.decode().replace("\n", "")
    assert flat.startswith("-----BEGIN CERTIFICATE-----MII")
    assert pem_to_der(flat) == client.der


def test_pem_with_crlf_and_surrounding_text(pki: PKI) -> None:
    client = pki["globex"].client()
    text = "subject=CN=x\r\n" + client.cert_pem.decode().replace("\n", "\r\n") + "trailer\r\n"
    assert pem_to_der(text) == client.der


def test_pem_several_blocks_in_order(pki: PKI) -> None:
    client = pki["acme"].client()
    assert len(client.chain_ders) == 2
    assert pem_to_ders(client.chain_pem.decode()) == client.chain_ders


def test_pem_to_der_refuses_several_blocks(pki: PKI) -> None:
    chain = pki["acme"].client().chain_pem.decode()
    assert _reason(lambda: pem_to_der(chain)) is Reason.MALFORMED_CERTIFICATE


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not a certificate",
        "-----BEGIN CERTIFICATE-----\nMIIB\n",  # no END line
        "-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n",
    ],
)
def test_pem_without_certificate_block(text: str) -> None:
    assert _reason(lambda: pem_to_ders(text)) is Reason.MALFORMED_CERTIFICATE


def test_private_key_pem_is_not_a_certificate(pki: PKI) -> None:
    key_pem = pki["acme"].client("key-only").key_pem.decode()  # generated at test time
    assert _reason(lambda: pem_to_ders(key_pem)) is Reason.MALFORMED_CERTIFICATE


def test_pem_block_limit(pki: PKI) -> None:
    block = _pem(pki)
    assert len(pem_to_ders(block * MAX_PRESENTED_CERTIFICATES)) == MAX_PRESENTED_CERTIFICATES
    too_many = block * (MAX_PRESENTED_CERTIFICATES + 1)
    assert _reason(lambda: pem_to_ders(too_many)) is Reason.MALFORMED_CERTIFICATE


@pytest.mark.parametrize(
    "body",
    [
        "MII!!!notbase64",
        "MIIB=AAA",  # padding in the middle
        "MIIBAAA",  # wrong length
        "",  # empty block
        "    \t\n ",  # only whitespace
    ],
)
def test_pem_bad_base64(body: str) -> None:
    text = f"-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----\n"
    assert _reason(lambda: pem_to_der(text)) is Reason.MALFORMED_CERTIFICATE


def test_b64_accepts_str_bytes_and_whitespace(pki: PKI) -> None:
    der = pki["globex"].client().der
    text = base64.b64encode(der).decode()
    assert b64_to_der(text) == der
    assert b64_to_der(text.encode()) == der
    spaced = " ".join(text[i : i + 64] for i in range(0, len(text), 64))
    assert b64_to_der(f"\t{spaced}\n") == der


def test_b64_refuses_urlsafe_alphabet(pki: PKI) -> None:
    der = pki["globex"].client().der
    urlsafe = base64.urlsafe_b64encode(der).decode()
    if urlsafe == base64.b64encode(der).decode():  # pragma: no cover - no +/ in this one
        urlsafe = "-" + urlsafe[1:]
    assert _reason(lambda: b64_to_der(urlsafe)) is Reason.MALFORMED_CERTIFICATE


@pytest.mark.parametrize("suffix", [b"\x00", b"\x30\x00", b"garbage"])
def test_b64_trailing_bytes_after_der(pki: PKI, suffix: bytes) -> None:
    der = pki["globex"].client().der
    value = base64.b64encode(der + suffix).decode()
    assert _reason(lambda: b64_to_der(value)) is Reason.MALFORMED_CERTIFICATE


def test_b64_truncated_der(pki: PKI) -> None:
    der = pki["globex"].client().der
    value = base64.b64encode(der[:-1]).decode()
    assert _reason(lambda: b64_to_der(value)) is Reason.MALFORMED_CERTIFICATE


@pytest.mark.parametrize("der", [b"\x02\x01\x01", b"\x30", b"\x04\x00"])
def test_b64_not_a_der_sequence(der: bytes) -> None:
    value = base64.b64encode(der).decode()
    assert _reason(lambda: b64_to_der(value)) is Reason.MALFORMED_CERTIFICATE


def test_b64_empty() -> None:
    assert _reason(lambda: b64_to_der("")) is Reason.MALFORMED_CERTIFICATE
    assert _reason(lambda: b64_to_der(" \n\t")) is Reason.MALFORMED_CERTIFICATE


def test_oversized_base64_refused() -> None:
    # A structurally valid DER SEQUENCE just over the limit.
    content = b"\x00" * (MAX_CERTIFICATE_BYTES + 1)
    der = b"\x30\x83" + len(content).to_bytes(3, "big") + content
    assert _reason(lambda: b64_to_der(base64.b64encode(der))) is Reason.MALFORMED_CERTIFICATE
    huge_text = "MIIB" * (MAX_CERTIFICATE_BYTES // 2 + 1)  # over any sane base64 length
    assert _reason(lambda: b64_to_der(huge_text)) is Reason.MALFORMED_CERTIFICATE


def test_der_length_header_too_long() -> None:
    # Five length octets: refused before any int conversion of a huge length.
    der = b"\x30\x85\x00\x00\x00\x00\x01\x00"
    assert _reason(lambda: b64_to_der(base64.b64encode(der))) is Reason.MALFORMED_CERTIFICATE
    indefinite = b"\x30\x80\x00\x00"
    assert _reason(lambda: b64_to_der(base64.b64encode(indefinite))) is Reason.MALFORMED_CERTIFICATE


def test_load_certificate_maps_parse_errors(pki: PKI) -> None:
    client = pki["globex"].client()
    assert load_certificate(client.der).serial_number == client.cert.serial_number
    # A valid DER envelope holding no certificate.
    assert _reason(lambda: load_certificate(b"\x30\x03\x02\x01\x01")) is (
        Reason.MALFORMED_CERTIFICATE
    )


def test_load_certificate_maps_invalid_version(pki: PKI) -> None:
    # cryptography raises InvalidVersion (not a ValueError) for version 4.
    der = pki["globex"].client().der
    marker = bytes.fromhex("a003020102")  # [0] EXPLICIT INTEGER 2 (= v3)
    assert der.count(marker) == 1
    bad = der.replace(marker, bytes.fromhex("a003020103"))
    assert _reason(lambda: load_certificate(bad)) is Reason.MALFORMED_CERTIFICATE


def test_split_concatenated_der_haproxy_chain(pki: PKI) -> None:
    ders = pki["acme"].client().chain_ders
    blob = b"".join(ders)
    # HAProxy: %[ssl_c_chain_der,base64] is one base64 blob of back-to-back DER.
    decoded = base64.b64decode(base64.b64encode(blob))
    assert split_concatenated_der(decoded) == ders
    assert split_concatenated_der(ders[0]) == [ders[0]]
    assert split_concatenated_der(b"") == []


def test_split_concatenated_der_truncated(pki: PKI) -> None:
    blob = b"".join(pki["acme"].client().chain_ders)
    assert _reason(lambda: split_concatenated_der(blob[:-1])) is Reason.MALFORMED_CERTIFICATE
    assert _reason(lambda: split_concatenated_der(blob[:1])) is Reason.MALFORMED_CERTIFICATE
    assert _reason(lambda: split_concatenated_der(blob + b"\x00")) is (Reason.MALFORMED_CERTIFICATE)


def test_split_concatenated_der_limit(pki: PKI) -> None:
    der = pki["globex"].client().der
    assert len(split_concatenated_der(der * MAX_PRESENTED_CERTIFICATES)) == 8
    too_many = der * (MAX_PRESENTED_CERTIFICATES + 1)
    assert _reason(lambda: split_concatenated_der(too_many)) is Reason.MALFORMED_CERTIFICATE


# -- sources/cloudflare.py ----------------------------------------------------


def _cf(value: str | None, sha: str | None = None) -> dict[str, list[str]]:
    headers: dict[str, list[str]] = {}
    if value is not None:
        headers[CERT_HEADER] = [value]
    if sha is not None:
        headers[SHA256_HEADER] = [sha]
    return headers


def _trusted_facts(
    headers: Mapping[str, Sequence[str]], host: str = "api.globex.test"
) -> RequestFacts:
    return RequestFacts(host=host, path="/", peer="10.0.0.1", headers=headers, transport=None)


def _cf_gate(make_gate: GateFactory) -> CertGate:
    return make_gate(trusted_proxies=["10.0.0.0/8"], header_sources=["cloudflare"])


def test_cloudflare_header_names_and_registry() -> None:
    source = header_source("cloudflare")
    assert isinstance(source, CloudflareSource)
    assert source.name == "cloudflare"
    assert source.header_names == ("cf-client-cert-der-base64", "cf-client-cert-sha256")
    with pytest.raises(ConfigError, match="unknown header source 'nope'"):
        header_source("nope")


def test_cloudflare_valid_header(pki: PKI) -> None:
    der = pki["globex"].client().der
    presented = CloudflareSource().extract(_cf(base64.b64encode(der).decode()))
    assert presented is not None
    assert presented.source == "cloudflare"
    assert presented.expected_sha256 is None
    assert presented.verdict is None
    assert list(presented.decode()) == [der]


@pytest.mark.parametrize("case", [str.lower, str.upper])
def test_cloudflare_sha256_either_case(
    pki: PKI, make_gate: GateFactory, case: Callable[[str], str]
) -> None:
    der = pki["globex"].client().der
    digest = hashlib.sha256(der).hexdigest()
    headers = _cf(base64.b64encode(der).decode(), case(digest))
    presented = CloudflareSource().extract(headers)
    assert presented is not None
    assert presented.expected_sha256 == digest
    decision = _cf_gate(make_gate).decide(_trusted_facts(headers))
    assert decision.reason is None
    assert decision.identity is not None
    assert decision.identity.tenant_id == "globex"
    assert decision.identity.source == "cloudflare"
    assert decision.fingerprint == digest


def test_cloudflare_sha256_mismatch(pki: PKI, make_gate: GateFactory) -> None:
    der = pki["globex"].client().der
    other = hashlib.sha256(der + b"x").hexdigest()
    gate = _cf_gate(make_gate)
    decision = gate.decide(_trusted_facts(_cf(base64.b64encode(der).decode(), other)))
    assert decision.reason is Reason.FINGERPRINT_MISMATCH
    assert decision.tenant_id == "globex"
    assert decision.fingerprint == hashlib.sha256(der).hexdigest()


def test_cloudflare_sha256_mismatch_after_cached_success(pki: PKI, make_gate: GateFactory) -> None:
    der = pki["globex"].client().der
    value = base64.b64encode(der).decode()
    gate = _cf_gate(make_gate)
    good = gate.decide(_trusted_facts(_cf(value, hashlib.sha256(der).hexdigest())))
    assert good.reason is None
    bad = gate.decide(_trusted_facts(_cf(value, "0" * 64)))
    assert bad.reason is Reason.FINGERPRINT_MISMATCH


@pytest.mark.parametrize(
    "sha",
    ["z" * 64, "0" * 63, "0" * 65, "sha256=" + "0" * 64, "0" * 32 + " " + "0" * 32],
)
def test_cloudflare_non_hex_sha256(pki: PKI, make_gate: GateFactory, sha: str) -> None:
    value = base64.b64encode(pki["globex"].client().der).decode()
    headers = _cf(value, sha)
    assert _reason(lambda: CloudflareSource().extract(headers)) is Reason.MALFORMED_HEADER
    decision = _cf_gate(make_gate).decide(_trusted_facts(headers))
    assert decision.reason is Reason.MALFORMED_HEADER
    assert decision.source is None


@pytest.mark.parametrize("repeated", [CERT_HEADER, SHA256_HEADER])
def test_cloudflare_repeated_headers(pki: PKI, make_gate: GateFactory, repeated: str) -> None:
    der = pki["globex"].client().der
    headers = _cf(base64.b64encode(der).decode(), hashlib.sha256(der).hexdigest())
    headers[repeated] = headers[repeated] * 2
    assert _reason(lambda: CloudflareSource().extract(headers)) is Reason.MALFORMED_HEADER
    assert _cf_gate(make_gate).decide(_trusted_facts(headers)).reason is Reason.MALFORMED_HEADER


def test_cloudflare_comma_folded_header(pki: PKI, make_gate: GateFactory) -> None:
    # What a WSGI server makes of a repeated header.
    value = base64.b64encode(pki["globex"].client().der).decode()
    decision = _cf_gate(make_gate).decide(_trusted_facts(_cf(f"{value},{value}")))
    assert decision.reason is Reason.MALFORMED_HEADER


@pytest.mark.parametrize("value", ["", "   ", "\t"])
def test_cloudflare_empty_header_is_no_certificate(make_gate: GateFactory, value: str) -> None:
    assert CloudflareSource().extract(_cf(value)) is None
    assert CloudflareSource().extract({}) is None
    decision = _cf_gate(make_gate).decide(_trusted_facts(_cf(value)))
    assert decision.reason is Reason.NO_CERTIFICATE


def test_cloudflare_sha_without_certificate_is_no_certificate(make_gate: GateFactory) -> None:
    decision = _cf_gate(make_gate).decide(_trusted_facts(_cf(None, "0" * 64)))
    assert decision.reason is Reason.NO_CERTIFICATE


@pytest.mark.parametrize("value", ["!!!!", "MIIB", "AAAA", "-----BEGIN CERTIFICATE-----"])
def test_cloudflare_bad_base64(make_gate: GateFactory, value: str) -> None:
    presented = CloudflareSource().extract(_cf(value))
    assert presented is not None
    assert _reason(presented.decode) is Reason.MALFORMED_CERTIFICATE
    decision = _cf_gate(make_gate).decide(_trusted_facts(_cf(value)))
    assert decision.reason is Reason.MALFORMED_CERTIFICATE
    assert decision.source == "cloudflare"


def test_cloudflare_pem_instead_of_base64(pki: PKI, make_gate: GateFactory) -> None:
    decision = _cf_gate(make_gate).decide(_trusted_facts(_cf(_pem(pki))))
    assert decision.reason is Reason.MALFORMED_CERTIFICATE


def test_cloudflare_leaf_of_other_tenant(pki: PKI, make_gate: GateFactory) -> None:
    value = base64.b64encode(pki["initech"].client().der).decode()
    decision = _cf_gate(make_gate).decide(_trusted_facts(_cf(value)))
    assert decision.reason is Reason.UNTRUSTED_CHAIN
    assert decision.tenant_id == "globex"


def test_gate_uses_transport_only_when_enabled(pki: PKI, make_gate: GateFactory) -> None:
    client = pki["globex"].client()
    presented = Presented(source="test", material=client.der, decode=lambda: [client.der])
    facts = RequestFacts(
        host="api.globex.test", path="/", peer="203.0.113.1", headers={}, transport=presented
    )
    assert make_gate().decide(facts).reason is None
    assert make_gate(transport=False).decide(facts).reason is Reason.NO_CERTIFICATE


# -- sources/asgi_tls.py ------------------------------------------------------


def _tls_scope(**tls: Any) -> dict[str, Any]:
    return {"type": "http", "extensions": {"tls": tls}}


def _presented(value: Presented | None) -> Presented:
    assert value is not None
    return value


def test_asgi_tls_pem_strings(pki: PKI) -> None:
    client = pki["acme"].client()
    chain = _split_pem(client.chain_pem.decode())
    assert len(chain) == 2
    presented = _presented(asgi_tls.from_scope(_tls_scope(client_cert_chain=chain)))
    assert presented.source == "asgi_tls"
    assert presented.verdict is None
    assert list(presented.decode()) == client.chain_ders


def _split_pem(text: str) -> list[str]:
    end = "-----END CERTIFICATE-----\n"
    return [part + end for part in text.split(end) if part.strip()]


def test_asgi_tls_bytes_entries_and_tuple(pki: PKI) -> None:
    client = pki["acme"].client()
    chain = tuple(p.encode() for p in _split_pem(client.chain_pem.decode()))
    presented = _presented(asgi_tls.from_scope(_tls_scope(client_cert_chain=chain)))
    assert list(presented.decode()) == client.chain_ders


@pytest.mark.parametrize("chain", [[], (), None])
def test_asgi_tls_empty_chain_is_none(chain: object) -> None:
    assert asgi_tls.from_scope(_tls_scope(client_cert_chain=chain, client_cert_error=None)) is None


@pytest.mark.parametrize(
    "scope",
    [
        {"type": "http"},
        {"type": "http", "extensions": None},
        {"type": "http", "extensions": {}},
        {"type": "http", "extensions": {"tls": None}},
        {"type": "http", "extensions": {"tls": "yes"}},
        {"type": "http", "extensions": ["tls"]},
    ],
)
def test_asgi_tls_no_extension_is_none(scope: dict[str, Any]) -> None:
    assert asgi_tls.from_scope(scope) is None


@pytest.mark.parametrize("chain", ["-----BEGIN CERTIFICATE-----", b"\x30\x00", 42, [42], [None]])
def test_asgi_tls_malformed_chain_is_a_verdict(pki: PKI, chain: object) -> None:
    presented = _presented(asgi_tls.from_scope(_tls_scope(client_cert_chain=chain)))
    assert presented.verdict is not None
    assert presented.verdict.reason is Reason.MALFORMED_CERTIFICATE
    assert _reason(presented.decode) is Reason.MALFORMED_CERTIFICATE


def test_asgi_tls_client_cert_error_is_untrusted(pki: PKI) -> None:
    chain = [_pem(pki)]
    scope = _tls_scope(client_cert_chain=chain, client_cert_error="certificate verify failed")
    presented = _presented(asgi_tls.from_scope(scope))
    assert presented.verdict is not None
    assert presented.verdict.reason is Reason.UNTRUSTED_CHAIN
    # Even without a chain the error is not ignored.
    no_chain = _presented(asgi_tls.from_scope(_tls_scope(client_cert_error="unknown ca")))
    assert no_chain.verdict is not None
    assert no_chain.verdict.reason is Reason.UNTRUSTED_CHAIN


def test_asgi_tls_too_many_or_bad_entries(pki: PKI) -> None:
    pem = _pem(pki)
    long_chain = [pem] * (MAX_PRESENTED_CERTIFICATES + 1)
    presented = _presented(asgi_tls.from_scope(_tls_scope(client_cert_chain=long_chain)))
    assert _reason(presented.decode) is Reason.MALFORMED_CERTIFICATE
    doubled = _presented(asgi_tls.from_scope(_tls_scope(client_cert_chain=[pem + pem])))
    assert _reason(doubled.decode) is Reason.MALFORMED_CERTIFICATE
    empty_entry = _presented(asgi_tls.from_scope(_tls_scope(client_cert_chain=[""])))
    assert _reason(empty_entry.decode) is Reason.MALFORMED_CERTIFICATE


# -- sources/wsgi_environ.py --------------------------------------------------


def test_wsgi_environ_leaf_and_chain(pki: PKI) -> None:
    client = pki["acme"].client()
    leaf, issuer = _split_pem(client.chain_pem.decode())
    environ = {"SSL_CLIENT_CERT": leaf, "SSL_CLIENT_CERT_CHAIN_0": issuer}
    presented = _presented(wsgi_environ.from_environ(environ))
    assert presented.source == "wsgi_environ"
    assert presented.verdict is None
    assert list(presented.decode()) == client.chain_ders


def test_wsgi_environ_chain_stops_at_first_gap(pki: PKI) -> None:
    client = pki["acme"].client()
    leaf, issuer = _split_pem(client.chain_pem.decode())
    environ = {"SSL_CLIENT_CERT": leaf, "SSL_CLIENT_CERT_CHAIN_1": issuer}
    presented = _presented(wsgi_environ.from_environ(environ))
    assert list(presented.decode()) == [client.der]


@pytest.mark.parametrize(
    ("key", "value"),
    [("SSL_CLIENT_CERT", b"-----BEGIN"), ("SSL_CLIENT_CERT", 1), ("SSL_CLIENT_CERT_CHAIN_0", 7)],
)
def test_wsgi_environ_non_string_is_a_verdict(pki: PKI, key: str, value: object) -> None:
    environ: dict[str, object] = {"SSL_CLIENT_CERT": _pem(pki)}
    environ[key] = value
    presented = _presented(wsgi_environ.from_environ(environ))
    assert presented.verdict is not None
    assert presented.verdict.reason is Reason.MALFORMED_CERTIFICATE


@pytest.mark.parametrize("environ", [{}, {"SSL_CLIENT_CERT": ""}, {"SSL_CLIENT_CERT": None}])
def test_wsgi_environ_empty_is_none(environ: dict[str, object]) -> None:
    assert wsgi_environ.from_environ(environ) is None


def test_wsgi_environ_too_many_chain_entries(pki: PKI) -> None:
    pem = _pem(pki)
    environ = {"SSL_CLIENT_CERT": pem}
    environ.update({f"SSL_CLIENT_CERT_CHAIN_{i}": pem for i in range(MAX_PRESENTED_CERTIFICATES)})
    presented = _presented(wsgi_environ.from_environ(environ))
    assert _reason(presented.decode) is Reason.MALFORMED_CERTIFICATE


def test_wsgi_environ_plain_socket_is_not_a_tls_socket(pki: PKI) -> None:
    with socket.socket() as sock:
        environ: dict[str, object] = {"gunicorn.socket": sock}
        assert wsgi_environ.tls_socket(environ) is None
        assert wsgi_environ.from_environ(environ) is None
        environ["SSL_CLIENT_CERT"] = _pem(pki)
        assert _presented(wsgi_environ.from_environ(environ)).source == "wsgi_environ"


# -- proxies.py ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("peer", "trusted"),
    [
        ("10.0.0.1", True),
        ("10.255.255.255", True),
        ("11.0.0.1", False),
        ("192.168.1.7", True),
        ("192.168.1.8", False),
        ("2001:db8::1", True),
        ("2001:db8:ffff::1", True),
        ("2001:db9::1", False),
        ("::1", True),
        ("::2", False),
        ("::ffff:10.0.0.1", True),
        ("::ffff:11.0.0.1", False),
        ("::ffff:192.168.1.7", True),
        ("fe80::1%eth0", True),
    ],
)
def test_trusted_proxies_cidr(peer: str, trusted: bool) -> None:
    proxies = TrustedProxies(
        ["10.0.0.0/8", " 192.168.1.7/32 ", "2001:db8::/32", "::1", "fe80::/10"]
    )
    assert proxies.contains(peer) is trusted
    assert proxies.contains(peer) is trusted  # memoised answer is the same


@pytest.mark.parametrize(
    "peer",
    [None, "", "localhost", "10.0.0.1:8080", "10.0.0", "10.0.0.256", "/run/uvicorn.sock", " "],
)
def test_trusted_proxies_invalid_peers_untrusted(peer: str | None) -> None:
    # the widest trust allowed (0.0.0.0/0 and ::/0 are refused): half of each
    # family, holding 10.x, 127.x and ::1, which the near-misses imitate
    assert TrustedProxies(["0.0.0.0/1", "::/1"]).contains(peer) is False


def test_trusted_proxies_empty() -> None:
    proxies = TrustedProxies()
    assert not proxies
    assert proxies.contains("127.0.0.1") is False
    assert TrustedProxies(["127.0.0.1"])


@pytest.mark.parametrize("cidr", ["10.0.0.1/8", "10.0.0.0/33", "nonsense", "", "::1/129"])
def test_trusted_proxies_bad_cidr(cidr: str) -> None:
    with pytest.raises(ConfigError, match="trusted_proxies"):
        TrustedProxies([cidr])


def test_gate_requires_proxies_and_sources_together(make_gate: GateFactory) -> None:
    with pytest.raises(ConfigError, match="trusted_proxies is empty"):
        make_gate(header_sources=["cloudflare"])
    with pytest.raises(ConfigError, match="no header source"):
        make_gate(trusted_proxies=["10.0.0.0/8"])


# -- exempt paths (certgate.rollout) -------------------------------------------


class ExemptPaths:
    """The exempt-path view of a :class:`Rollout` (what ``exempt_paths`` builds)."""

    def __init__(self, patterns: list[str] | tuple[str, ...] = ()) -> None:
        self.rollout = Rollout([Route(p, access=Access.EXEMPT) for p in patterns])

    def __bool__(self) -> bool:
        return not self.rollout.trivial

    def matches(self, path: str) -> bool:
        return self.rollout.rule(path).access is Access.EXEMPT


@pytest.mark.parametrize(
    ("path", "exempt"),
    [
        ("/healthz", True),
        ("/healthz/", True),  # a trailing slash is the same route (issue 6)
        ("/healthzz", False),
        ("/HEALTHZ", False),
        ("/public/a", True),
        ("/public/a/b.css", True),
        ("/public/", True),
        ("/public", True),  # the prefix itself (issue 6: no surprise 403)
        ("/publicity", False),
        ("/publicity/a", False),
        ("/public/../admin", False),
        ("/public/./a", False),
        ("/public/a/..", False),
        ("/public/..", False),
        ("/public//a", False),
        ("//public/a", False),
        ("/admin", False),
        ("", False),
    ],
)
def test_exempt_paths(path: str, exempt: bool) -> None:
    paths = ExemptPaths(["/healthz", "/public/*"])
    assert paths.matches(path) is exempt


def test_exempt_dot_segments_in_exact_pattern_never_match() -> None:
    assert ExemptPaths(["/a/../b"]).matches("/a/../b") is False
    assert ExemptPaths(["//x"]).matches("//x") is False


def test_exempt_empty() -> None:
    assert not ExemptPaths()
    assert ExemptPaths(["/x"])
    assert ExemptPaths().matches("/") is False


@pytest.mark.parametrize("pattern", ["healthz", "", "*", "/pub*", "/a/*/b", "/a*/", "public/*"])
def test_exempt_bad_patterns(pattern: str) -> None:
    with pytest.raises(ConfigError, match="path pattern"):
        ExemptPaths([pattern])
