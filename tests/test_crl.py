"""Revocation by CRL (issue 9, item 1): real CRLs built with
``cryptography``'s CertificateRevocationListBuilder at test time, checked
through the public interface (Tenant, CertGate.check, the TOML config, the
ASGI middleware with a warm cache and decision memo)."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import http.server
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from certgate import CertGate, InMemoryRegistry, Tenant
from certgate.asgi import CertGateMiddleware
from certgate.config import load_config
from certgate.crlfetch import CrlRefresher
from certgate.devpki import CA, IssuedCert, make_key
from certgate.errors import ConfigError
from tests.test_asgi import RecordingApp, http_scope, run_http

HOST = "crl.test"
PROXY = ("10.1.2.3", 40000)
NOW = dt.datetime.now(dt.UTC)


def build_crl(
    ca: CA,
    revoked: Sequence[int] = (),
    *,
    key: Any = None,
    issuer: x509.Name | None = None,
    this_update: dt.datetime | None = None,
    next_update: dt.datetime | None = None,
    number: int = 1,
    extensions: Sequence[tuple[x509.ExtensionType, bool]] = (),
    entry_extensions: Sequence[tuple[x509.ExtensionType, bool]] = (),
) -> x509.CertificateRevocationList:
    entries = []
    for serial in revoked:
        entry = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(NOW)
        for extension, critical in entry_extensions:
            entry = entry.add_extension(extension, critical)
        entries.append(entry.build())
    builder = (
        x509.CertificateRevocationListBuilder(revoked_certificates=entries)
        .issuer_name(issuer or ca.cert.subject)
        .last_update(this_update or NOW - dt.timedelta(minutes=5))
        .next_update(next_update or NOW + dt.timedelta(days=1))
        .add_extension(x509.CRLNumber(number), critical=False)
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical)
    return builder.sign(key or ca.key, hashes.SHA256())


class Chain:
    """A root, an issuing intermediate (configured on the tenant) and leaves."""

    def __init__(self) -> None:
        self.root = CA.root("CRL Test Root")
        self.issuing = self.root.intermediate("CRL Test Issuing")
        self.leaf = self.issuing.issue("device-1")
        self.other = self.issuing.issue("device-2")

    def tenant(self, **kwargs: Any) -> Tenant:
        return Tenant("crl", (HOST,), (self.root.cert,), (self.issuing.cert,), **kwargs)

    def gate(self, **kwargs: Any) -> CertGate:
        return CertGate(InMemoryRegistry([self.tenant(**kwargs)]))


@pytest.fixture(scope="module")
def chain() -> Chain:
    return Chain()


def reason(gate: CertGate, client: IssuedCert) -> str | None:
    decision = gate.check(HOST, [client.der])
    return None if decision.reason is None else decision.reason.value


# -- what is checked on a request -------------------------------------------


def test_revoked_leaf_is_refused_and_others_allowed(chain: Chain) -> None:
    crls = (build_crl(chain.issuing, [chain.leaf.cert.serial_number]), build_crl(chain.root))
    gate = chain.gate(crls=crls)
    decision = gate.check(HOST, [chain.leaf.der])
    assert decision.reason == "revoked"
    assert decision.reason.status == 403
    assert format(chain.leaf.cert.serial_number, "x") in decision.detail
    assert "CN=CRL Test Issuing" in decision.detail
    assert reason(gate, chain.other) is None


def test_revoked_intermediate_refuses_every_leaf_under_it(chain: Chain) -> None:
    crls = (build_crl(chain.root, [chain.issuing.cert.serial_number]), build_crl(chain.issuing))
    gate = chain.gate(crls=crls)
    for client in (chain.leaf, chain.other):
        decision = gate.check(HOST, [client.der])
        assert decision.reason == "revoked"
        assert "intermediate CA" in decision.detail


def test_revoked_client_sent_intermediate(chain: Chain) -> None:
    """The intermediate sent by the client (not configured on the tenant)
    is checked against the root's CRL too."""
    tenant = Tenant(
        "crl",
        (HOST,),
        (chain.root.cert,),
        crls=(build_crl(chain.root, [chain.issuing.cert.serial_number]),),
    )
    gate = CertGate(InMemoryRegistry([tenant]))
    assert gate.check(HOST, chain.leaf.chain_ders).reason == "revoked"


def test_serial_of_another_issuer_is_not_a_match(chain: Chain) -> None:
    """A serial listed by the root is not a revocation of the issuing CA's leaf."""
    crls = (build_crl(chain.root, [chain.leaf.cert.serial_number]), build_crl(chain.issuing))
    assert reason(chain.gate(crls=crls), chain.leaf) is None


def test_pem_and_der_crls_load(chain: Chain, tmp_path: Path) -> None:
    crl = build_crl(chain.issuing, [chain.leaf.cert.serial_number])
    for encoding in (Encoding.PEM, Encoding.DER):
        tenant = Tenant.from_pem(
            "crl",
            [HOST],
            chain.root.cert_pem,
            chain.issuing.cert_pem,
            crls=[crl.public_bytes(encoding)],
        )
        assert reason(CertGate(InMemoryRegistry([tenant])), chain.leaf) == "revoked"


def test_newest_crl_of_an_issuer_wins(chain: Chain) -> None:
    """A certificate on hold in CRL 1 and released in CRL 2: CRL 2 counts,
    whatever the order the CRLs are listed in."""
    held = build_crl(chain.issuing, [chain.leaf.cert.serial_number], number=1)
    released = build_crl(chain.issuing, [], number=2)
    assert reason(chain.gate(crls=(held, released)), chain.leaf) is None
    assert reason(chain.gate(crls=(released, held)), chain.leaf) is None
    assert reason(chain.gate(crls=(held,)), chain.leaf) == "revoked"


# -- freshness ----------------------------------------------------------------


def test_stale_crl_fails_closed(chain: Chain) -> None:
    stale = build_crl(
        chain.issuing,
        this_update=NOW - dt.timedelta(days=2),
        next_update=NOW - dt.timedelta(hours=1),
    )
    decision = chain.gate(crls=(stale,)).check(HOST, [chain.leaf.der])
    assert decision.reason == "revocation_unavailable"
    assert decision.reason.status == 403
    assert "nextUpdate" in decision.detail


def test_crl_with_future_this_update_fails_closed(chain: Chain) -> None:
    future = build_crl(chain.issuing, this_update=NOW + dt.timedelta(hours=1))
    decision = chain.gate(crls=(future,)).check(HOST, [chain.leaf.der])
    assert decision.reason == "revocation_unavailable"
    assert "thisUpdate" in decision.detail


def test_warn_mode_allows_a_stale_crl_with_a_warning(
    chain: Chain, caplog: pytest.LogCaptureFixture
) -> None:
    stale = build_crl(
        chain.issuing,
        [chain.other.cert.serial_number],
        this_update=NOW - dt.timedelta(days=2),
        next_update=NOW - dt.timedelta(hours=1),
    )
    gate = chain.gate(crls=(stale,), crl_stale="warn")
    with caplog.at_level(logging.WARNING, logger="certgate"):
        decision = gate.check(HOST, [chain.leaf.der])
    assert decision.allowed
    assert any("crl_stale" in r.getMessage() for r in caplog.records)
    assert decision.identity is not None
    assert decision.identity.expires_at <= time.time() + 61  # re-checked (and warned) soon
    assert reason(gate, chain.other) == "revoked"  # a stale CRL still revokes


def test_identity_expires_at_the_crl_next_update(chain: Chain) -> None:
    soon = NOW + dt.timedelta(hours=2)
    gate = chain.gate(crls=(build_crl(chain.issuing, next_update=soon),))
    decision = gate.check(HOST, [chain.leaf.der])
    assert decision.identity is not None
    assert decision.identity.expires_at == soon.replace(microsecond=0).timestamp()


# -- issuers without a CRL ------------------------------------------------------


def test_issuer_without_crl_is_unchecked_unless_required(chain: Chain) -> None:
    only_root = (build_crl(chain.root),)
    assert reason(chain.gate(crls=only_root), chain.leaf) is None
    decision = chain.gate(crls=only_root, require_crl=True).check(HOST, [chain.leaf.der])
    assert decision.reason == "revocation_unavailable"
    assert "CN=CRL Test Issuing" in decision.detail
    both = (*only_root, build_crl(chain.issuing))
    assert reason(chain.gate(crls=both, require_crl=True), chain.leaf) is None


def test_scoped_crls_cover_their_kind_of_certificate_only(chain: Chain) -> None:
    """An Issuing Distribution Point 'only user certificates' CRL of the
    root does not revoke the intermediate it lists (it is not in scope); with
    require_crl the intermediate then has no CRL."""
    users_only = x509.IssuingDistributionPoint(None, None, True, False, None, False, False)
    cas_only = x509.IssuingDistributionPoint(None, None, False, True, None, False, False)
    serial = [chain.issuing.cert.serial_number]
    leaf_crl = build_crl(chain.issuing)
    user_crl = build_crl(chain.root, serial, extensions=[(users_only, True)])
    assert reason(chain.gate(crls=(user_crl, leaf_crl)), chain.leaf) is None
    assert (
        reason(chain.gate(crls=(user_crl, leaf_crl), require_crl=True), chain.leaf)
        == "revocation_unavailable"
    )
    ca_crl = build_crl(chain.root, serial, extensions=[(cas_only, True)])
    assert reason(chain.gate(crls=(ca_crl, leaf_crl)), chain.leaf) == "revoked"


# -- CRLs refused when the tenant is built ---------------------------------------


def refused(chain: Chain, crl: x509.CertificateRevocationList) -> str:
    with pytest.raises(ConfigError) as info:
        chain.tenant(crls=(crl,))
    return str(info.value)


def test_crl_signed_by_the_wrong_key_is_refused(chain: Chain) -> None:
    forged = build_crl(chain.issuing, key=make_key())
    assert "signature does not verify" in refused(chain, forged)


def test_crl_of_an_unknown_issuer_is_refused(chain: Chain) -> None:
    stranger = CA.root("Someone Else")
    assert "not one of the tenant's roots or intermediates" in refused(chain, build_crl(stranger))


def test_issuer_without_crl_sign_is_refused() -> None:
    key = make_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "No cRLSign Root")])
    usage = x509.KeyUsage(True, False, False, False, False, True, False, False, False)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=100))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .sign(key, hashes.SHA256())
    )
    root = CA(cert=cert, key=key, issuers=(), is_root=True)
    with pytest.raises(ConfigError, match="cRLSign"):
        Tenant("x", ("x.test",), (cert,), crls=(build_crl(root),))


def test_unknown_critical_extension_is_refused(chain: Chain) -> None:
    odd = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.55555.1"), b"\x05\x00")
    assert "critical extension" in refused(
        chain, build_crl(chain.issuing, extensions=[(odd, True)])
    )
    # the same extension, not critical, is ignored
    chain.tenant(crls=(build_crl(chain.issuing, extensions=[(odd, False)]),))


def test_unknown_critical_entry_extension_is_refused(chain: Chain) -> None:
    odd = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.55555.2"), b"\x05\x00")
    crl = build_crl(chain.issuing, [5], entry_extensions=[(odd, True)])
    assert "entry has a critical extension" in refused(chain, crl)


def test_delta_crl_is_refused(chain: Chain) -> None:
    delta = build_crl(chain.issuing, extensions=[(x509.DeltaCRLIndicator(1), True)])
    assert "delta CRLs are not supported" in refused(chain, delta)


def test_indirect_and_partitioned_crls_are_refused(chain: Chain) -> None:
    indirect = x509.IssuingDistributionPoint(None, None, False, False, None, True, False)
    assert "indirect" in refused(chain, build_crl(chain.issuing, extensions=[(indirect, True)]))
    named = x509.IssuingDistributionPoint(
        [x509.UniformResourceIdentifier("http://crl.test/1.crl")],
        None,
        False,
        False,
        None,
        False,
        False,
    )
    assert "distribution point" in refused(
        chain, build_crl(chain.issuing, extensions=[(named, True)])
    )
    issuer_entry = x509.CertificateIssuer([x509.DNSName("other.test")])
    crl = build_crl(chain.issuing, [7], entry_extensions=[(issuer_entry, True)])
    assert "indirect" in refused(chain, crl)


def test_malformed_crl_file_names_the_file(chain: Chain, tmp_path: Path) -> None:
    (tmp_path / "root.pem").write_bytes(chain.root.cert_pem)
    (tmp_path / "bad.crl").write_bytes(
        b"-----BEGIN X509 CRL-----\nnot base64\n-----END X509 CRL-----\n"
    )
    config = tmp_path / "certgate.toml"
    config.write_text(
        f'[[tenants]]\nid = "crl"\nhosts = ["{HOST}"]\nroots = ["root.pem"]\ncrls = ["bad.crl"]\n'
    )
    with pytest.raises(ConfigError, match=r"bad\.crl"):
        load_config(config)
    (tmp_path / "bad.crl").write_bytes(b"\x30\x03\x02\x01\x01")  # DER, not a CRL
    with pytest.raises(ConfigError, match=r"bad\.crl.*not a valid CRL"):
        load_config(config)


def test_config_keys(chain: Chain, tmp_path: Path) -> None:
    (tmp_path / "root.pem").write_bytes(chain.root.cert_pem)
    (tmp_path / "issuing.pem").write_bytes(chain.issuing.cert_pem)
    crl = build_crl(chain.issuing, [chain.leaf.cert.serial_number])
    (tmp_path / "issuing.crl").write_bytes(crl.public_bytes(Encoding.DER))
    config = tmp_path / "certgate.toml"
    base = (
        f'[[tenants]]\nid = "crl"\nhosts = ["{HOST}"]\nroots = ["root.pem"]\n'
        'intermediates = ["issuing.pem"]\ncrls = ["issuing.crl"]\n'
    )
    config.write_text(base + 'crl_stale = "warn"\nrequire_crl = true\n')
    gate = CertGate.from_toml(config)
    assert reason(gate, chain.leaf) == "revoked"
    assert reason(gate, chain.other) == "revocation_unavailable"  # no CRL for the root's issuance
    for bad, match in (
        ('crl_stale = "sometimes"\n', "crl_stale"),
        ("require_crl = 1\n", "require_crl"),
        ('crl_urls = ["file:///etc/passwd"]\n', "not an http"),
        ("crl_refresh = 1\n", "crl_refresh"),
        ('crls = ["missing.crl"]\n', "missing.crl"),
    ):
        config.write_text(base.replace('crls = ["issuing.crl"]\n', "") + bad)
        with pytest.raises(ConfigError, match=match):
            load_config(config)


# -- O(1) checks and load time -----------------------------------------------------


def big_crl(ca: CA, count: int) -> x509.CertificateRevocationList:
    return build_crl(ca, range(10**15, 10**15 + count))


def test_large_crl_loads_fast_and_checks_in_constant_time(chain: Chain) -> None:
    """A 100,000-entry CRL: loading costs a small multiple of merely
    iterating over its entries (measured in the same run), and a check costs
    about what a check against a 1-entry CRL costs (a linear scan would be
    thousands of times dearer)."""
    big = big_crl(chain.issuing, 100_000)
    assert len(big) == 100_000
    start = time.perf_counter()
    serials = [entry.serial_number for entry in big]
    baseline = time.perf_counter() - start
    assert len(serials) == 100_000
    start = time.perf_counter()
    tenant = chain.tenant(crls=(big, build_crl(chain.root)))
    load = time.perf_counter() - start
    assert load < 12 * baseline + 0.2, (load, baseline)
    small = chain.tenant(crls=(build_crl(chain.issuing, [1]), build_crl(chain.root)))
    assert tenant.revocation is not None
    assert small.revocation is not None
    path = (chain.leaf.cert, chain.issuing.cert, chain.root.cert)
    now = time.time()

    def per_check(revocation: Any) -> float:
        best = float("inf")
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(2000):
                revocation.check(path, now, "crl")
            best = min(best, (time.perf_counter() - start) / 2000)
        return best

    assert per_check(tenant.revocation) < 3 * per_check(small.revocation) + 2e-6


# -- a cached verification is never reused after its CRL changed --------------------


def cf_scope(client: IssuedCert) -> Any:
    headers = [
        (b"cf-client-cert-der-base64", base64.b64encode(client.der)),
        (b"cf-client-cert-sha256", hashlib.sha256(client.der).hexdigest().encode()),
    ]
    scope = http_scope(host=HOST, path="/", headers=headers)
    scope["certgate.socket_peer"] = PROXY
    return scope


def header_gate(registry: InMemoryRegistry) -> CertGate:
    return CertGate(registry, trusted_proxies=["10.0.0.0/8"], header_sources=["cloudflare"])


def warm(mw: CertGateMiddleware, gate: CertGate, client: IssuedCert) -> None:
    """Two allows: the second promotes the request into the decision memo;
    a third is then answered from the memo."""
    for _ in range(3):
        assert run_http(mw, cf_scope(client)).status == 200
    assert gate._memo is not None
    assert any(entry is not None for entry in gate._memo.values())


def test_revocation_after_an_allow_refuses_the_next_request(chain: Chain) -> None:
    registry = InMemoryRegistry([chain.tenant(crls=(build_crl(chain.issuing, number=1),))])
    gate = header_gate(registry)
    mw = CertGateMiddleware(RecordingApp(), gate)
    warm(mw, gate, chain.leaf)
    revoked = build_crl(chain.issuing, [chain.leaf.cert.serial_number], number=2)
    registry.put(chain.tenant(crls=(revoked,)))
    result = run_http(mw, cf_scope(chain.leaf))
    assert result.status == 403
    assert result.reason == "revoked"


def test_reload_of_a_crl_file_refuses_the_next_request(chain: Chain, tmp_path: Path) -> None:
    (tmp_path / "root.pem").write_bytes(chain.root.cert_pem)
    (tmp_path / "issuing.pem").write_bytes(chain.issuing.cert_pem)
    crl_file = tmp_path / "issuing.crl"
    crl_file.write_bytes(build_crl(chain.issuing, number=1).public_bytes(Encoding.PEM))
    config = tmp_path / "certgate.toml"
    config.write_text(
        f'[[tenants]]\nid = "crl"\nhosts = ["{HOST}"]\nroots = ["root.pem"]\n'
        'intermediates = ["issuing.pem"]\ncrls = ["issuing.crl"]\n'
    )
    registry = load_config(config).registry
    gate = header_gate(registry)
    mw = CertGateMiddleware(RecordingApp(), gate)
    warm(mw, gate, chain.leaf)
    revoked = build_crl(chain.issuing, [chain.leaf.cert.serial_number], number=2)
    crl_file.write_bytes(revoked.public_bytes(Encoding.PEM))
    registry.reload()
    assert run_http(mw, cf_scope(chain.leaf)).reason == "revoked"


def test_crl_reaching_next_update_fails_closed_without_a_reload(
    chain: Chain, monkeypatch: pytest.MonkeyPatch
) -> None:
    next_update = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    registry = InMemoryRegistry(
        [chain.tenant(crls=(build_crl(chain.issuing, next_update=next_update),))]
    )
    gate = header_gate(registry)
    mw = CertGateMiddleware(RecordingApp(), gate)
    warm(mw, gate, chain.leaf)
    later = next_update.timestamp() + 1
    monkeypatch.setattr(time, "time", lambda: later)
    result = run_http(mw, cf_scope(chain.leaf))
    assert result.status == 403
    assert result.reason == "revocation_unavailable"


# -- CRLs from URLs -------------------------------------------------------------------


class CrlServer:
    """A local HTTP server whose CRL (or status) the test changes."""

    def __init__(self) -> None:
        self.body = b""
        self.status = 200
        self.requests = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests += 1
                self.send_response(outer.status)
                self.send_header("Content-Length", str(len(outer.body)))
                self.end_headers()
                self.wfile.write(outer.body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/issuing.crl"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def serve(self, crl: x509.CertificateRevocationList) -> None:
        self.body = crl.public_bytes(Encoding.DER)
        self.status = 200


@pytest.fixture
def crl_server() -> Iterator[CrlServer]:
    server = CrlServer()
    yield server
    server.server.shutdown()
    server.server.server_close()


def test_url_refresh_picks_up_a_new_crl_and_a_500_keeps_the_last_good_one(
    chain: Chain, crl_server: CrlServer, caplog: pytest.LogCaptureFixture
) -> None:
    registry = InMemoryRegistry(
        [chain.tenant(crls=(build_crl(chain.root),), crl_urls=(crl_server.url,), crl_refresh=60)]
    )
    gate = header_gate(registry)
    mw = CertGateMiddleware(RecordingApp(), gate)
    refresher = CrlRefresher(registry)
    # not fetched yet: fail closed
    assert run_http(mw, cf_scope(chain.leaf)).reason == "revocation_unavailable"
    crl_server.serve(build_crl(chain.issuing, number=1))
    assert refresher.refresh() == 1
    warm(mw, gate, chain.leaf)
    crl_server.serve(build_crl(chain.issuing, [chain.leaf.cert.serial_number], number=2))
    assert refresher.refresh() == 1
    assert run_http(mw, cf_scope(chain.leaf)).reason == "revoked"
    assert run_http(mw, cf_scope(chain.other)).status == 200
    crl_server.status = 500
    with caplog.at_level(logging.WARNING, logger="certgate"):
        assert refresher.refresh() == 0
    assert any("keeping the last good CRL" in r.getMessage() for r in caplog.records)
    assert run_http(mw, cf_scope(chain.leaf)).reason == "revoked"
    # an older CRL (a replay) is refused too
    crl_server.serve(build_crl(chain.issuing, number=1))
    assert refresher.refresh() == 0
    assert run_http(mw, cf_scope(chain.leaf)).reason == "revoked"
    # a forged CRL is refused
    crl_server.serve(build_crl(chain.issuing, number=3, key=make_key()))
    assert refresher.refresh() == 0
    assert run_http(mw, cf_scope(chain.leaf)).reason == "revoked"


def test_toml_registry_fetches_crl_urls_in_the_background(
    chain: Chain, crl_server: CrlServer, tmp_path: Path
) -> None:
    crl_server.serve(build_crl(chain.issuing, [chain.leaf.cert.serial_number]))
    (tmp_path / "root.pem").write_bytes(chain.root.cert_pem)
    (tmp_path / "issuing.pem").write_bytes(chain.issuing.cert_pem)
    config = tmp_path / "certgate.toml"
    config.write_text(
        f'[[tenants]]\nid = "crl"\nhosts = ["{HOST}"]\nroots = ["root.pem"]\n'
        f'intermediates = ["issuing.pem"]\ncrl_urls = ["{crl_server.url}"]\ncrl_refresh = 60\n'
    )
    registry = load_config(config).registry
    try:
        assert registry.crl_refresher is not None
        gate = CertGate(registry)
        deadline = time.monotonic() + 30
        while reason(gate, chain.leaf) == "revocation_unavailable" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert reason(gate, chain.leaf) == "revoked"
        assert reason(gate, chain.other) is None
        registry.reload()  # keeps the CRL already fetched
        assert reason(gate, chain.leaf) == "revoked"
    finally:
        registry.close()


def test_cli_check_fetches_crl_urls_first(
    chain: Chain, crl_server: CrlServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from certgate.cli import main

    crl_server.serve(build_crl(chain.issuing, [chain.leaf.cert.serial_number]))
    (tmp_path / "root.pem").write_bytes(chain.root.cert_pem)
    (tmp_path / "issuing.pem").write_bytes(chain.issuing.cert_pem)
    (tmp_path / "leaf.pem").write_bytes(chain.leaf.cert_pem)
    config = tmp_path / "certgate.toml"
    config.write_text(
        f'[[tenants]]\nid = "crl"\nhosts = ["{HOST}"]\nroots = ["root.pem"]\n'
        f'intermediates = ["issuing.pem"]\ncrl_urls = ["{crl_server.url}"]\n'
    )
    code = main(["check", str(tmp_path / "leaf.pem"), "--host", HOST, "--config", str(config)])
    out = capsys.readouterr().out
    assert code == 1
    assert "revoked" in out
