"""Property tests: hostile input never crashes certgate and never lets a request in.

Arbitrary bytes and text go into every place a client (or a confused server)
controls - the Cloudflare headers from a trusted proxy, the Host header, the
ASGI ``client_cert_chain``, ``SSL_CLIENT_CERT``, the path - through both
middlewares. The answer is always a 400/403/503 ``application/problem+json``
whose ``reason`` is a :class:`certgate.Reason` (or a 200 exactly where an
independent oracle says the request is fine), the app never runs on a
rejection, and the gate never takes its "internal error" fallback.
Bit-flipped copies of a valid certificate never pass.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography.x509 import load_der_x509_certificate
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from certgate import CertGate, Presented, Reason, Rejected, RequestFacts
from certgate.asgi import CertGateMiddleware, Message, Scope
from certgate.hosts import normalize_host
from certgate.problem import problem_body
from certgate.wsgi import CertGateWSGIMiddleware, Environ
from tests.conftest import PKI

REASONS = {reason.value: reason for reason in Reason}
TRUSTED_PEER = "10.20.30.40"
UNTRUSTED_PEER = "198.51.100.9"
HOST = "api.globex.test"

FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# -- plumbing ---------------------------------------------------------------------


class InternalErrors(logging.Handler):
    """Collects the gate's "internal error" log records (its fail-closed catch-all)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "internal error" in record.getMessage():
            self.records.append(record)


@pytest.fixture(scope="module")
def internal_errors() -> Iterator[InternalErrors]:
    handler = InternalErrors()
    logger = logging.getLogger("certgate")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


@dataclass
class Setup:
    pki: PKI
    gate: CertGate
    asgi: CertGateMiddleware
    wsgi: CertGateWSGIMiddleware
    app_calls: list[str]
    globex_der: bytes
    globex_pem: str
    acme_chain_pems: list[str]


@pytest.fixture(scope="module")
def setup(pki: PKI) -> Setup:
    gate = CertGate(
        pki.registry(),
        trusted_proxies=["10.0.0.0/8"],
        header_sources=["cloudflare"],
        exempt_paths=["/healthz", "/public/*"],
        trust_reported_peer=True,  # the harness reports the real peer
    )
    calls: list[str] = []

    async def asgi_app(scope: Scope, receive: Any, send: Any) -> None:
        calls.append("asgi")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"app"})

    def wsgi_app(environ: Environ, start_response: Any) -> list[bytes]:
        calls.append("wsgi")
        start_response("200 OK", [])
        return [b"app"]

    globex = pki["globex"].client("fuzz-globex")
    acme = pki["acme"].client("fuzz-acme")
    end = "-----END CERTIFICATE-----\n"
    return Setup(
        pki=pki,
        gate=gate,
        asgi=CertGateMiddleware(asgi_app, gate),
        wsgi=CertGateWSGIMiddleware(wsgi_app, gate),
        app_calls=calls,
        globex_der=globex.der,
        globex_pem=globex.cert_pem.decode(),
        acme_chain_pems=[p + end for p in acme.chain_pem.decode().split(end) if p.strip()],
    )


@dataclass
class Outcome:
    status: int
    reason: Reason | None
    app_called: bool


def _check_response(status: int, headers: dict[str, str], body: bytes, called: bool) -> Outcome:
    if status == 200:
        assert called
        assert body == b"app"
        return Outcome(200, None, True)
    assert not called
    assert status in (400, 403, 503)
    assert headers["content-type"] == "application/problem+json"
    assert headers["cache-control"] == "no-store"
    document = json.loads(body)
    reason = REASONS[document["reason"]]
    assert body == problem_body(reason)
    assert reason.status == status
    return Outcome(status, reason, False)


def run_asgi(
    setup: Setup,
    *,
    headers: Sequence[tuple[bytes, bytes]],
    peer: str = TRUSTED_PEER,
    path: str = "/",
    tls: dict[str, Any] | None = None,
) -> Outcome:
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "https",
        "path": path,
        "raw_path": path.encode("utf-8", "surrogatepass"),
        "query_string": b"",
        "headers": list(headers),
        "client": (peer, 5000),
        "server": ("127.0.0.1", 443),
        "extensions": {} if tls is None else {"tls": tls},
    }
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def send(message: Message) -> None:
        sent.append(message)

    setup.app_calls.clear()
    asyncio.run(setup.asgi(scope, receive, send))
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    response_headers = {k.decode(): v.decode() for k, v in sent[0]["headers"]}
    return _check_response(
        sent[0]["status"], response_headers, sent[1]["body"], setup.app_calls == ["asgi"]
    )


def run_wsgi(setup: Setup, environ: Environ) -> Outcome:
    base: Environ = {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": "/",
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "443",
        "wsgi.url_scheme": "https",
        "REMOTE_ADDR": TRUSTED_PEER,
    }
    base.update(environ)
    captured: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None, /) -> Any:
        captured["status"] = status
        captured["headers"] = {k.lower(): v for k, v in headers}
        return lambda data: None

    setup.app_calls.clear()
    body = b"".join(setup.wsgi(base, start_response))
    status = int(captured["status"].split(" ", 1)[0])
    return _check_response(status, captured["headers"], body, setup.app_calls == ["wsgi"])


def latin1(data: bytes) -> str:
    return data.decode("latin-1")


# -- strategies ----------------------------------------------------------------------

random_bytes = st.binary(max_size=300)
random_text_bytes = st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass"))
base64_of_random = st.binary(min_size=1, max_size=300).map(base64.b64encode)
fake_der = st.tuples(st.integers(0, 0x81), st.binary(max_size=200)).map(
    lambda t: base64.b64encode(bytes([0x30, t[0]]) + t[1])
)
header_values = st.one_of(random_bytes, random_text_bytes, base64_of_random, fake_der)
sha_values = st.one_of(
    st.none(),
    st.binary(max_size=80),
    st.text("0123456789abcdefABCDEF", min_size=60, max_size=68).map(str.encode),
)
CF_BAD_REASONS = {Reason.NO_CERTIFICATE, Reason.MALFORMED_CERTIFICATE, Reason.MALFORMED_HEADER}


# -- Cloudflare headers from a trusted proxy -----------------------------------------


@FUZZ
@given(value=header_values, sha=sha_values, repeat=st.booleans())
def test_cloudflare_headers_asgi(
    setup: Setup, internal_errors: InternalErrors, value: bytes, sha: bytes | None, repeat: bool
) -> None:
    internal_errors.records.clear()
    headers = [(b"host", HOST.encode()), (b"cf-client-cert-der-base64", value)]
    if repeat:
        headers.append((b"cf-client-cert-der-base64", value))
    if sha is not None:
        headers.append((b"cf-client-cert-sha256", sha))
    outcome = run_asgi(setup, headers=headers)
    assert outcome.reason in CF_BAD_REASONS or (
        sha is not None and outcome.reason is Reason.FINGERPRINT_MISMATCH
    )
    if repeat:
        assert outcome.reason is Reason.MALFORMED_HEADER
    assert internal_errors.records == []


@FUZZ
@given(value=header_values, sha=sha_values)
def test_cloudflare_headers_wsgi(
    setup: Setup, internal_errors: InternalErrors, value: bytes, sha: bytes | None
) -> None:
    internal_errors.records.clear()
    environ: Environ = {"HTTP_HOST": HOST, "HTTP_CF_CLIENT_CERT_DER_BASE64": latin1(value)}
    if sha is not None:
        environ["HTTP_CF_CLIENT_CERT_SHA256"] = latin1(sha)
    outcome = run_wsgi(setup, environ)
    assert outcome.reason in CF_BAD_REASONS or (
        # "MAA=" is an empty DER SEQUENCE: it decodes, so the forwarded
        # fingerprint is compared (before the DER is parsed as a certificate).
        sha is not None and outcome.reason is Reason.FINGERPRINT_MISMATCH
    )
    assert internal_errors.records == []


@FUZZ
@given(value=header_values)
def test_cloudflare_headers_from_untrusted_peer_are_no_certificate(
    setup: Setup, value: bytes
) -> None:
    headers = [(b"host", HOST.encode()), (b"cf-client-cert-der-base64", value)]
    assert run_asgi(setup, headers=headers, peer=UNTRUSTED_PEER).reason is Reason.NO_CERTIFICATE
    environ: Environ = {
        "HTTP_HOST": HOST,
        "HTTP_CF_CLIENT_CERT_DER_BASE64": latin1(value),
        "REMOTE_ADDR": UNTRUSTED_PEER,
    }
    assert run_wsgi(setup, environ).reason is Reason.NO_CERTIFICATE


# -- Host ---------------------------------------------------------------------------------

hosts = st.one_of(
    st.binary(max_size=60),
    st.text(max_size=40).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.builds(
        lambda a, b, c: (a + b + c).encode("utf-8"),
        st.sampled_from(["", " ", "API.", "x.", "[", ".", "\t", "xn--"]),
        st.sampled_from([HOST, "API.Globex.Test", "pay.acme.test", "initech.test", "::1"]),
        st.sampled_from(["", ":443", ".", ":", ":99999", "..", "\x00", "]", ":0", " ", "/x"]),
    ),
)


def expected_host_outcome(setup: Setup, raw: str) -> Reason | None:
    """Oracle: what certgate must answer for a valid globex certificate."""
    try:
        host = normalize_host(raw)
    except Rejected:
        return Reason.INVALID_HOST
    tenant = setup.pki.registry().tenant_for_host(host)
    if tenant is None:
        return Reason.UNKNOWN_TENANT
    return None if tenant.id == "globex" else Reason.UNTRUSTED_CHAIN


@FUZZ
@given(host=hosts)
def test_host_header(setup: Setup, internal_errors: InternalErrors, host: bytes) -> None:
    internal_errors.records.clear()
    expected = expected_host_outcome(setup, latin1(host))
    value = base64.b64encode(setup.globex_der)
    headers = [(b"host", host), (b"cf-client-cert-der-base64", value)]
    asgi = run_asgi(setup, headers=headers)
    assert asgi.reason is expected
    wsgi = run_wsgi(
        setup, {"HTTP_HOST": latin1(host), "HTTP_CF_CLIENT_CERT_DER_BASE64": value.decode()}
    )
    assert wsgi.reason is expected
    assert internal_errors.records == []


# -- ASGI tls extension ---------------------------------------------------------------------

chain_entries = st.one_of(
    st.text(max_size=200),
    st.binary(max_size=200),
    st.text(max_size=100).map(
        lambda t: f"-----BEGIN CERTIFICATE-----\n{t}\n-----END CERTIFICATE-----\n"
    ),
)


@FUZZ
@given(
    entries=st.lists(chain_entries, max_size=10),
    lead_with_valid=st.sampled_from(["none", "globex", "acme"]),
    error=st.one_of(st.none(), st.just(""), st.text(min_size=1, max_size=50)),
)
def test_client_cert_chain_entries(
    setup: Setup,
    internal_errors: InternalErrors,
    entries: list[str | bytes],
    lead_with_valid: str,
    error: str | None,
) -> None:
    internal_errors.records.clear()
    chain: list[str | bytes] = list(entries)
    if lead_with_valid == "globex":
        chain = [setup.globex_pem, *chain]
    elif lead_with_valid == "acme":
        chain = [*setup.acme_chain_pems, *chain]
    tls = {"client_cert_chain": chain, "client_cert_error": error}
    headers = [(b"host", HOST.encode())]
    outcome = run_asgi(setup, headers=headers, peer=UNTRUSTED_PEER, tls=tls)
    if error:
        assert outcome.reason is Reason.UNTRUSTED_CHAIN
    elif not chain:
        assert outcome.reason is Reason.NO_CERTIFICATE
    elif not entries:
        # Only well-formed certificates: globex's own passes, acme's is foreign.
        expected = None if lead_with_valid == "globex" else Reason.UNTRUSTED_CHAIN
        assert outcome.reason is expected
    else:
        assert outcome.reason is Reason.MALFORMED_CERTIFICATE
    assert internal_errors.records == []


# -- SSL_CLIENT_CERT ----------------------------------------------------------------------------

latin1_text = st.binary(max_size=300).map(latin1)


@FUZZ
@given(leaf=st.one_of(latin1_text, chain_entries.filter(lambda e: isinstance(e, str))))
def test_ssl_client_cert(setup: Setup, internal_errors: InternalErrors, leaf: str) -> None:
    internal_errors.records.clear()
    outcome = run_wsgi(
        setup, {"HTTP_HOST": HOST, "REMOTE_ADDR": UNTRUSTED_PEER, "SSL_CLIENT_CERT": leaf}
    )
    expected = Reason.NO_CERTIFICATE if leaf == "" else Reason.MALFORMED_CERTIFICATE
    assert outcome.reason is expected
    assert internal_errors.records == []


@FUZZ
@given(extra=st.lists(latin1_text.filter(bool), min_size=1, max_size=10))
def test_ssl_client_cert_chain_entries(
    setup: Setup, internal_errors: InternalErrors, extra: list[str]
) -> None:
    internal_errors.records.clear()
    environ: Environ = {
        "HTTP_HOST": HOST,
        "REMOTE_ADDR": UNTRUSTED_PEER,
        "SSL_CLIENT_CERT": setup.globex_pem,
    }
    environ.update({f"SSL_CLIENT_CERT_CHAIN_{i}": pem for i, pem in enumerate(extra)})
    assert run_wsgi(setup, environ).reason is Reason.MALFORMED_CERTIFICATE
    assert internal_errors.records == []


# -- path ---------------------------------------------------------------------------------------


def is_exempt(path: str) -> bool:
    """Independent oracle for exempt_paths=["/healthz", "/public/*"] (a
    trailing slash and the bare prefix match too: issue 6)."""
    if path in ("/healthz", "/healthz/", "/public"):
        return True
    if not path.startswith("/public/"):
        return False
    segments = path.split("/")[1:]
    if any(seg in (".", "..") for seg in segments):
        return False
    return all(segments[:-1])


paths = st.one_of(
    st.text(max_size=40),
    st.builds(
        lambda prefix, rest: prefix + rest,
        st.sampled_from(["/healthz", "/public/", "/public", "/", "//public/", "/public/./"]),
        st.text(alphabet="/.a%2e\\;\x00", max_size=12),
    ),
)


@FUZZ
@given(path=paths)
def test_path(setup: Setup, internal_errors: InternalErrors, path: str) -> None:
    internal_errors.records.clear()
    expected = None if is_exempt(path) else Reason.NO_CERTIFICATE
    assert run_asgi(setup, headers=[(b"host", HOST.encode())], path=path).reason is expected
    assert run_wsgi(setup, {"HTTP_HOST": HOST, "PATH_INFO": path}).reason is expected
    # No Host header at all: the exempt decision comes first, otherwise no certificate.
    assert run_asgi(setup, headers=[], path=path).reason is expected
    assert internal_errors.records == []


# -- bit flips -------------------------------------------------------------------------------------


def flip(der: bytes, flips: dict[int, int]) -> bytes:
    data = bytearray(der)
    for index, mask in flips.items():
        data[index % len(data)] ^= mask
    return bytes(data)


flip_maps = st.dictionaries(st.integers(0, 10_000), st.integers(1, 255), min_size=1, max_size=4)


@pytest.mark.filterwarnings(
    "ignore:Parsed a serial number:cryptography.utils.CryptographyDeprecationWarning"
)
@FUZZ
@given(flips=flip_maps)
def test_bit_flipped_certificate_never_allowed(
    setup: Setup, internal_errors: InternalErrors, flips: dict[int, int]
) -> None:
    # Every path - gate.check (no fail-closed fallback), decide and both
    # middlewares - must reject with a reason and log no internal error.
    internal_errors.records.clear()
    der = setup.globex_der
    positions = {index % len(der) for index in flips}
    if len(positions) < len(flips):
        return  # two flips on one byte might cancel out
    mutated = flip(der, flips)
    assert mutated != der

    presented = Presented(source="test", material=mutated, decode=lambda: [mutated])
    facts = RequestFacts(host=HOST, path="/", peer=UNTRUSTED_PEER, headers={}, transport=presented)
    decision = setup.gate.decide(facts)
    assert decision.reason is not None
    assert decision.identity is None

    value = base64.b64encode(mutated)
    outcome = run_asgi(
        setup, headers=[(b"host", HOST.encode()), (b"cf-client-cert-der-base64", value)]
    )
    assert outcome.reason is not None
    environ: Environ = {"HTTP_HOST": HOST, "HTTP_CF_CLIENT_CERT_DER_BASE64": value.decode()}
    assert run_wsgi(setup, environ).reason is not None

    body = "\n".join(value.decode()[i : i + 64] for i in range(0, len(value), 64))
    pem = f"-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----\n"
    tls = {"client_cert_chain": [pem]}
    host_only = [(b"host", HOST.encode())]
    assert run_asgi(setup, headers=host_only, peer=UNTRUSTED_PEER, tls=tls).reason is not None
    assert setup.gate.check(HOST, [mutated]).reason is not None
    assert internal_errors.records == []


def _mutate(der: bytes, old: str, new: str) -> bytes:
    assert der.count(bytes.fromhex(old)) == 1
    return der.replace(bytes.fromhex(old), bytes.fromhex(new))


# prime256v1 (1.2.840.10045.3.1.7) -> 1.3.840.10045.3.1.7: parses, but
# public_key() raises cryptography's UnsupportedAlgorithm.
UNKNOWN_CURVE = ("06082a8648ce3d030107", "06082b8648ce3d030107")
# BasicConstraints value SEQUENCE -> SET: the certificate parses (extensions
# are parsed lazily), the signature fails, then reading the extensions raises
# ValueError while the verifier classifies the failure.
BROKEN_EXTENSION = ("0603551d130101ff04023000", "0603551d130101ff04023100")
# SubjectKeyIdentifier OID -> KeyUsage OID (one bit): a duplicate extension,
# which cryptography reports as DuplicateExtension (not a ValueError).
DUPLICATE_EXTENSION = ("0603551d0e", "0603551d0f")
# The subject CN's UTF8String tag 0x0c -> 0xcc (private class) plus the broken
# BasicConstraints above: the verifier's error message describes the leaf, and
# parsing its subject for that raises ValueError (not VerificationError).
MANGLED_SUBJECT = ("06035504030c0b" + b"fuzz-globex".hex(), "0603550403cc0b" + b"fuzz-globex".hex())


@pytest.mark.parametrize(
    ("mutation", "reason"),
    [
        pytest.param(
            (DUPLICATE_EXTENSION,),
            Reason.MALFORMED_CERTIFICATE,
            id="duplicate-ext",
        ),
        pytest.param(
            (MANGLED_SUBJECT, BROKEN_EXTENSION),
            Reason.MALFORMED_CERTIFICATE,
            id="subject",
        ),
    ],
)
def test_mutated_certificate_formerly_escaping_the_verifier(
    setup: Setup, mutation: tuple[tuple[str, str], ...], reason: Reason
) -> None:
    """Found by the bit-flip property: cryptography raised non-ValueError
    parse errors (DuplicateExtension) or a ValueError from inside verify();
    both must be plain ``malformed_certificate`` rejections."""
    mutated = setup.globex_der
    for old, new in mutation:
        mutated = _mutate(mutated, old, new)
    load_der_x509_certificate(mutated)  # still loads
    assert setup.gate.check(HOST, [mutated]).reason is reason
    value = base64.b64encode(mutated)
    headers = [(b"host", HOST.encode()), (b"cf-client-cert-der-base64", value)]
    assert run_asgi(setup, headers=headers).reason is not None


@pytest.mark.parametrize(
    ("mutation", "reason"),
    [(UNKNOWN_CURVE, Reason.WEAK_KEY), (BROKEN_EXTENSION, Reason.MALFORMED_CERTIFICATE)],
    ids=["curve", "ext"],
)
def test_mutated_certificate_is_a_rejection_not_an_error(
    setup: Setup, internal_errors: InternalErrors, mutation: tuple[str, str], reason: Reason
) -> None:
    # Regression: both used to escape ChainVerifier.verify() as exceptions
    # (UnsupportedAlgorithm, ValueError): check() raised, the middlewares
    # refused only through the gate's internal-error fallback.
    internal_errors.records.clear()
    mutated = _mutate(setup.globex_der, *mutation)
    load_der_x509_certificate(mutated)  # still parses
    assert setup.gate.check(HOST, [mutated]).reason is reason
    value = base64.b64encode(mutated)
    headers = [(b"host", HOST.encode()), (b"cf-client-cert-der-base64", value)]
    assert run_asgi(setup, headers=headers).reason is reason
    environ: Environ = {"HTTP_HOST": HOST, "HTTP_CF_CLIENT_CERT_DER_BASE64": value.decode()}
    assert run_wsgi(setup, environ).reason is reason
    assert internal_errors.records == []


@FUZZ
@given(cut=st.integers(1, 10_000), keep_head=st.booleans())
def test_truncated_certificate_never_allowed(
    setup: Setup, internal_errors: InternalErrors, cut: int, keep_head: bool
) -> None:
    internal_errors.records.clear()
    der = setup.globex_der
    cut = 1 + (cut - 1) % (len(der) - 1)  # 1 .. len(der) - 1: never empty, never whole
    mutated = der[:cut] if keep_head else der[cut:]
    assert 0 < len(mutated) < len(der)
    assert setup.gate.check(HOST, [mutated]).reason is Reason.MALFORMED_CERTIFICATE
    value = base64.b64encode(mutated)
    headers = [(b"host", HOST.encode()), (b"cf-client-cert-der-base64", value)]
    assert run_asgi(setup, headers=headers).reason is Reason.MALFORMED_CERTIFICATE
    assert internal_errors.records == []


def test_valid_certificate_still_allowed(setup: Setup) -> None:
    """The fixtures above are able to produce a 200 (so the properties can fail)."""
    value = base64.b64encode(setup.globex_der)
    headers = [(b"host", HOST.encode()), (b"cf-client-cert-der-base64", value)]
    assert run_asgi(setup, headers=headers) == Outcome(200, None, True)
    environ: Environ = {"HTTP_HOST": HOST, "HTTP_CF_CLIENT_CERT_DER_BASE64": value.decode()}
    assert run_wsgi(setup, environ) == Outcome(200, None, True)
    assert setup.gate.check(HOST, [setup.globex_der]).allowed
