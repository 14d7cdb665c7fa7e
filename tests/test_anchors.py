"""Shared trust anchors across tenants (issue 5, item 3), the server-context
preparation certgate's server helpers apply, and the resumed-session warning.

The scenario: one device vendor's root (``Vendor Root CA``) issues an issuing
CA per customer. Two tenants that both list the vendor root would each accept
the other's devices; certgate refuses that configuration unless every tenant
involved declares ``shared_anchors``. The isolating setup anchors each tenant
at its own customer's issuing CA.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding

from certgate import CertGate, ConfigError, InMemoryRegistry, Reason, Tenant, load_config
from certgate.devpki import CA, IssuedCert
from certgate.facts import RequestFacts
from certgate.servers.tls import client_auth_context, prepare_server_context, trust_bundle_pem
from certgate.sources import asgi_tls, ssl_socket

ACME = ("pay.acme.test",)
GLOBEX = ("api.globex.test",)


@dataclass(frozen=True)
class Vendor:
    root: CA
    acme_issuing: CA
    globex_issuing: CA
    acme_device: IssuedCert
    globex_device: IssuedCert


@pytest.fixture(scope="module")
def vendor() -> Vendor:
    root = CA.root("Vendor Root CA", organization="Vendor")
    acme = root.intermediate("Vendor Issuing CA for Acme", organization="Vendor")
    globex = root.intermediate("Vendor Issuing CA for Globex", organization="Vendor")
    return Vendor(root, acme, globex, acme.issue("acme-1"), globex.issue("globex-1"))


def sha256_hex(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def facts(host: str, device: IssuedCert, root: CA) -> RequestFacts:
    """The device sends leaf, issuing CA and the vendor root over TLS."""
    chain = [
        device.cert_pem.decode(),
        *(c.public_bytes(Encoding.PEM).decode() for c in device.issuers),
    ]
    chain.append(root.cert_pem.decode())
    presented = asgi_tls.from_scope({"extensions": {"tls": {"client_cert_chain": chain}}})
    return RequestFacts(host, "/", "192.0.2.1", {}, presented)


def both_on_root(vendor: Vendor, **kwargs: Any) -> list[Tenant]:
    a_kwargs = {k[2:]: v for k, v in kwargs.items() if k.startswith("a_")}
    b_kwargs = {k[2:]: v for k, v in kwargs.items() if k.startswith("b_")}
    return [
        Tenant("acme", ACME, (vendor.root.cert,), **a_kwargs),
        Tenant("globex", GLOBEX, (vendor.root.cert,), **b_kwargs),
    ]


def assert_names_the_sharing(exc: pytest.ExceptionInfo[ConfigError], anchor: CA) -> None:
    message = str(exc.value)
    assert "'acme'" in message, message
    assert "'globex'" in message, message
    assert anchor.cert.subject.rfc4514_string() in message
    assert sha256_hex(anchor.cert) in message
    assert "issuing CA" in message
    assert "shared_anchors = true" in message


# -- refused at load: the Python API, put(), replace_all() and TOML -------------


def test_two_tenants_on_one_vendor_root_are_refused(vendor: Vendor) -> None:
    with pytest.raises(ConfigError, match="share the trust anchor") as exc:
        InMemoryRegistry(both_on_root(vendor))
    assert_names_the_sharing(exc, vendor.root)
    assert "the same certificate" in str(exc.value)


def test_put_of_a_sharing_tenant_is_refused_and_changes_nothing(vendor: Vendor) -> None:
    acme, globex = both_on_root(vendor)
    registry = InMemoryRegistry([acme])
    with pytest.raises(ConfigError, match="share the trust anchor") as exc:
        registry.put(globex)
    assert_names_the_sharing(exc, vendor.root)
    assert registry.tenants() == [acme]
    assert registry.tenant_for_host(GLOBEX[0]) is None
    with pytest.raises(ConfigError):
        registry.replace_all([acme, globex])
    assert registry.tenants() == [acme]


def test_same_subject_and_key_is_the_same_anchor(vendor: Vendor) -> None:
    """A re-issued root (same name and key, new dates) is the same anchor: a
    path verifies to either certificate."""
    root = vendor.root
    reissued = (
        x509.CertificateBuilder()
        .subject_name(root.cert.subject)
        .issuer_name(root.cert.subject)
        .public_key(root.key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(root.cert.not_valid_before_utc)
        .not_valid_after(root.cert.not_valid_after_utc + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(root.cert.extensions.get_extension_for_class(x509.KeyUsage).value, True)
        .sign(root.key, hashes.SHA256())
    )
    assert reissued.public_bytes(Encoding.DER) != root.der
    with pytest.raises(ConfigError, match="the same subject and public key"):
        InMemoryRegistry(
            [Tenant("acme", ACME, (root.cert,)), Tenant("globex", GLOBEX, (reissued,))]
        )


def test_sharing_loads_only_when_every_tenant_declares_it(vendor: Vendor) -> None:
    with pytest.raises(ConfigError, match="shared_anchors = true on both"):
        InMemoryRegistry(both_on_root(vendor, a_shared_anchors=True))
    with pytest.raises(ConfigError, match="shared_anchors = true on both"):
        InMemoryRegistry(both_on_root(vendor, b_shared_anchors=True))
    registry = InMemoryRegistry(both_on_root(vendor, a_shared_anchors=True, b_shared_anchors=True))
    # declared: a device of one is (knowingly) accepted on the other's hosts
    gate = CertGate(registry)
    decision = gate.decide(facts(GLOBEX[0], vendor.acme_device, vendor.root))
    assert decision.reason is None
    assert decision.identity is not None
    assert decision.identity.tenant_id == "globex"
    # a third tenant on the same root that did not declare it is refused
    with pytest.raises(ConfigError, match="'initech'"):
        registry.put(Tenant("initech", ("initech.test",), (vendor.root.cert,)))


def test_same_tenant_may_list_an_anchor_twice(vendor: Vendor) -> None:
    InMemoryRegistry([Tenant("acme", ACME, (vendor.root.cert, vendor.root.cert))])


def test_declaration_is_not_part_of_the_trust_id(vendor: Vendor) -> None:
    plain = Tenant("acme", ACME, (vendor.root.cert,))
    declared = Tenant("acme", ACME, (vendor.root.cert,), shared_anchors=True)
    assert plain.trust_id == declared.trust_id
    with pytest.raises(ConfigError, match="shared_anchors must be a bool"):
        Tenant("acme", ACME, (vendor.root.cert,), shared_anchors="yes")  # type: ignore[arg-type]


def test_from_pem_takes_the_declaration(vendor: Vendor) -> None:
    tenant = Tenant.from_pem("acme", ACME, vendor.root.cert_pem.decode(), shared_anchors=True)
    assert tenant.shared_anchors is True


# -- one tenant's anchor issued by another's ----------------------------------


def test_anchor_issued_by_another_tenants_anchor_is_refused(vendor: Vendor) -> None:
    """acme anchored at its issuing CA, globex at the vendor root above it:
    globex would accept every acme device (they send the issuing CA)."""
    tenants = [
        Tenant("acme", ACME, (vendor.acme_issuing.cert,)),
        Tenant("globex", GLOBEX, (vendor.root.cert,)),
    ]
    with pytest.raises(ConfigError, match="issued tenant 'acme'") as exc:
        InMemoryRegistry(tenants)
    message = str(exc.value)
    assert sha256_hex(vendor.root.cert) in message
    assert sha256_hex(vendor.acme_issuing.cert) in message
    assert "'globex' would accept every device of 'acme'" in message
    # and that is exactly what it would do
    loose = CertGate(
        InMemoryRegistry(
            [
                Tenant("acme", ACME, (vendor.acme_issuing.cert,), shared_anchors=True),
                Tenant("globex", GLOBEX, (vendor.root.cert,), shared_anchors=True),
            ]
        )
    )
    assert loose.decide(facts(GLOBEX[0], vendor.acme_device, vendor.root)).reason is None


def test_anchor_issued_through_a_configured_intermediate_is_refused() -> None:
    root = CA.root("Vendor Root CA", organization="Vendor")
    regional = root.intermediate("Vendor EU CA", organization="Vendor", path_length=1)
    customer = regional.intermediate("Vendor Issuing CA for Acme", organization="Vendor")
    tenants = [
        Tenant("acme", ACME, (customer.cert,)),
        Tenant("globex", GLOBEX, (root.cert,), (regional.cert,)),
    ]
    with pytest.raises(ConfigError, match="issued tenant 'acme'"):
        InMemoryRegistry(tenants)


def test_same_name_other_key_is_not_an_issuer(vendor: Vendor) -> None:
    """Only a real signature counts: a look-alike CA with the vendor root's
    name but another key issued nothing."""
    lookalike = CA.root("Vendor Root CA", organization="Vendor")
    InMemoryRegistry(
        [
            Tenant("acme", ACME, (vendor.acme_issuing.cert,)),
            Tenant("globex", GLOBEX, (lookalike.cert,)),
        ]
    )


# -- the isolating setup --------------------------------------------------------


def isolated(vendor: Vendor) -> InMemoryRegistry:
    return InMemoryRegistry(
        [
            Tenant("acme", ACME, (vendor.acme_issuing.cert,)),
            Tenant("globex", GLOBEX, (vendor.globex_issuing.cert,)),
        ]
    )


def test_isolating_setup_keeps_each_tenant_to_its_devices(vendor: Vendor) -> None:
    gate = CertGate(isolated(vendor))
    own = gate.decide(facts(ACME[0], vendor.acme_device, vendor.root))
    assert own.reason is None
    assert own.identity is not None
    assert own.identity.tenant_id == "acme"
    assert own.identity.chain[-1] == vendor.acme_issuing.cert  # ends at the tenant's anchor
    assert gate.decide(facts(GLOBEX[0], vendor.acme_device, vendor.root)).reason is (
        Reason.UNTRUSTED_CHAIN
    )
    assert gate.decide(facts(GLOBEX[0], vendor.globex_device, vendor.root)).reason is None
    assert gate.decide(facts(ACME[0], vendor.globex_device, vendor.root)).reason is (
        Reason.UNTRUSTED_CHAIN
    )


def test_bundle_holds_the_issuing_ca_anchors(vendor: Vendor) -> None:
    bundle = trust_bundle_pem(isolated(vendor).tenants())
    certs = x509.load_pem_x509_certificates(bundle.encode())
    assert certs == [vendor.acme_issuing.cert, vendor.globex_issuing.cert]


# -- TOML -----------------------------------------------------------------------

TOML = """\
[[tenants]]
id = "acme"
hosts = ["pay.acme.test"]
roots = ["{acme}"]
{acme_extra}

[[tenants]]
id = "globex"
hosts = ["api.globex.test"]
roots = ["{globex}"]
{globex_extra}
"""


def write_config(
    tmp_path: Path,
    vendor: Vendor,
    acme: str,
    *,
    globex: str,
    acme_extra: str = "",
    globex_extra: str = "",
) -> Path:
    for name, cert in (
        ("vendor-root.pem", vendor.root),
        ("acme-issuing.pem", vendor.acme_issuing),
        ("globex-issuing.pem", vendor.globex_issuing),
    ):
        (tmp_path / name).write_bytes(cert.cert_pem)
    path = tmp_path / "certgate.toml"
    path.write_text(
        TOML.format(acme=acme, globex=globex, acme_extra=acme_extra, globex_extra=globex_extra)
    )
    return path


def test_toml_refuses_a_shared_vendor_root(tmp_path: Path, vendor: Vendor) -> None:
    path = write_config(tmp_path, vendor, "vendor-root.pem", globex="vendor-root.pem")
    with pytest.raises(ConfigError, match="share the trust anchor") as exc:
        load_config(path)
    assert_names_the_sharing(exc, vendor.root)
    one_side = write_config(
        tmp_path,
        vendor,
        "vendor-root.pem",
        globex="vendor-root.pem",
        acme_extra="shared_anchors = true",
    )
    with pytest.raises(ConfigError, match="share the trust anchor"):
        load_config(one_side)


def test_toml_declared_sharing_loads(tmp_path: Path, vendor: Vendor) -> None:
    declared = "shared_anchors = true"
    path = write_config(
        tmp_path,
        vendor,
        "vendor-root.pem",
        globex="vendor-root.pem",
        acme_extra=declared,
        globex_extra=declared,
    )
    tenants = load_config(path).registry.tenants()
    assert [t.shared_anchors for t in tenants] == [True, True]


def test_toml_shared_anchors_must_be_a_bool(tmp_path: Path, vendor: Vendor) -> None:
    path = write_config(
        tmp_path,
        vendor,
        "acme-issuing.pem",
        globex="globex-issuing.pem",
        acme_extra='shared_anchors = "yes"',
    )
    with pytest.raises(ConfigError, match="'shared_anchors' must be true or false"):
        load_config(path)


def test_toml_isolating_setup_loads_and_reload_refuses_sharing(
    tmp_path: Path, vendor: Vendor
) -> None:
    path = write_config(tmp_path, vendor, "acme-issuing.pem", globex="globex-issuing.pem")
    registry = load_config(path).registry
    gate = CertGate(registry)
    assert gate.decide(facts(ACME[0], vendor.acme_device, vendor.root)).reason is None
    write_config(tmp_path, vendor, "acme-issuing.pem", globex="vendor-root.pem")
    with pytest.raises(ConfigError, match="issued tenant 'acme'"):
        registry.reload()
    assert gate.decide(facts(GLOBEX[0], vendor.acme_device, vendor.root)).reason is (
        Reason.UNTRUSTED_CHAIN
    )


# -- what certgate's server helpers do to a context ------------------------------


def test_prepared_context_accepts_intermediate_anchors_and_issues_no_tickets() -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.verify_mode = ssl.CERT_OPTIONAL
    prepare_server_context(context)
    assert context.verify_flags & ssl.VERIFY_X509_PARTIAL_CHAIN
    assert context.options & ssl.OP_NO_TICKET
    assert context.num_tickets == 0
    untouched = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    flags, options, tickets = untouched.verify_flags, untouched.options, untouched.num_tickets
    prepare_server_context(untouched)  # CERT_NONE: not a client-certificate listener
    assert (untouched.verify_flags, untouched.options, untouched.num_tickets) == (
        flags,
        options,
        tickets,
    )


def test_client_auth_context_is_prepared(tmp_path: Path, vendor: Vendor) -> None:
    server = CA.root("server CA").server(["localhost"])
    paths = server.write_files(tmp_path, "server")
    context = client_auth_context(
        paths["chain"], paths["key"], ca_pem=vendor.acme_issuing.cert_pem.decode()
    )
    assert context.verify_flags & ssl.VERIFY_X509_PARTIAL_CHAIN
    assert context.options & ssl.OP_NO_TICKET
    assert context.num_tickets == 0


# -- a resumed session that lost the chain is reported once ----------------------


class _ResumedConn:
    def __init__(self, leaf: bytes) -> None:
        self.leaf = leaf
        self.session_reused = True

    def getpeercert(self, binary_form: bool = False) -> bytes:
        return self.leaf

    def get_unverified_chain(self) -> list[bytes]:
        return [self.leaf]


def test_resumed_session_with_only_a_leaf_is_logged_once(
    vendor: Vendor, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ssl_socket, "_warned", type(ssl_socket._warned)())
    conn = _ResumedConn(vendor.acme_device.der)
    with caplog.at_level(logging.WARNING, logger="certgate"):
        assert ssl_socket.peer_chain_der(conn) == [vendor.acme_device.der]
        assert ssl_socket.peer_chain_der(conn) == [vendor.acme_device.der]
    lines = [r.getMessage() for r in caplog.records if "resumed TLS session" in r.getMessage()]
    assert len(lines) == 1
    assert re.search(r"Turn session tickets off", lines[0])
    assert "BEGIN CERTIFICATE" not in lines[0]
