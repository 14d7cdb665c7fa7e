"""certgate.policy: every rule kind, on real certificates verified by a real
CertGate (no hand-built ClientIdentity), and the TOML form."""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import time
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certgate import CertGate, ClientIdentity, ConfigError, InMemoryRegistry, Tenant
from certgate import policy as p
from certgate.devpki import CA, IssuedCert, make_key

HOST = "pol.test"


@dataclass
class World:
    root: CA
    devices: CA  # "Devices CA"
    staff: CA  # "Staff CA"
    devices_twin: CA  # another CA with the subject of "Devices CA"
    gate: CertGate

    def identify(self, cert: IssuedCert) -> ClientIdentity:
        decision = self.gate.check(HOST, cert.chain_ders)
        assert decision.identity is not None, decision
        return decision.identity


@pytest.fixture(scope="module")
def world() -> World:
    root = CA.root("Policy Root CA", organization="PolicyCo")
    devices = root.intermediate("Devices CA", organization="PolicyCo")
    staff = root.intermediate("Staff CA", organization="PolicyCo")
    twin = root.intermediate("Devices CA", organization="PolicyCo")
    gate = CertGate(InMemoryRegistry([Tenant("pol", (HOST,), (root.cert,))]))
    return World(root, devices, staff, twin, gate)


def sha256(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def colons(hex_text: str) -> str:
    return ":".join(hex_text[i : i + 2] for i in range(0, len(hex_text), 2)).upper()


def leaf(
    ca: CA,
    subject: Sequence[tuple[x509.ObjectIdentifier, str]] = ((NameOID.COMMON_NAME, "dev"),),
    *,
    sans: Iterable[x509.GeneralName] = (),
    serial: int | None = None,
    not_after: dt.datetime | None = None,
) -> IssuedCert:
    """A client certificate with any subject attributes (repeated ones too)
    and any SANs, which devpki's issue() cannot express."""
    key = make_key()
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(oid, value) for oid, value in subject]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(serial or x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(not_after or now + dt.timedelta(days=90))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
    )
    names = list(sans)
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca.key, hashes.SHA256())
    return IssuedCert(cert=cert, key=key, issuers=(ca.cert,))


def with_dns(world: World, *names: str) -> ClientIdentity:
    return world.identify(leaf(world.devices, sans=[x509.DNSName(n) for n in names]))


NOW = dt.datetime.now(dt.UTC)


def allows(policy: p.Policy, identity: ClientIdentity, now: dt.datetime = NOW) -> bool:
    return policy.check(identity, now) is None


# --------------------------------------------------------------------------
# Certificate-level rules


def test_any_certificate_allows_every_verified_identity(world: World) -> None:
    identity = world.identify(world.staff.issue("anyone"))
    assert p.any_certificate().check(identity, NOW) is None
    assert p.any_certificate().label == "any_certificate"
    assert (~p.any_certificate()).check(identity, NOW) == "not_(any_certificate)"


def test_cn_impostor_from_another_ca_of_the_same_tenant(world: World) -> None:
    alice = world.identify(world.devices.issue("alice"))
    impostor = world.identify(world.staff.issue("alice"))  # same tenant, other CA
    by_cn = p.common_name("alice")
    assert allows(by_cn, alice)
    assert allows(by_cn, impostor)  # the pitfall: the CN alone lets both in

    pinned = p.common_name("alice") & p.issued_by(fingerprints=[sha256(world.devices.cert)])
    assert allows(pinned, alice)
    failure = pinned.check(impostor, NOW)
    assert failure is not None
    assert failure.startswith("issued_by fingerprint")


def test_cn_impostor_from_the_same_ca_needs_a_unique_pin(world: World) -> None:
    alice = world.devices.issue("alice")
    second = world.devices.issue("alice")  # a second device, same CA, same CN
    first_id, second_id = world.identify(alice), world.identify(second)
    pinned_ca = p.common_name("alice") & p.issued_by(fingerprints=[sha256(world.devices.cert)])
    assert allows(pinned_ca, first_id)
    assert allows(pinned_ca, second_id)  # the CA pin cannot tell them apart
    by_print = p.fingerprint_in(first_id.fingerprint_sha256)
    assert allows(by_print, first_id)
    assert not allows(by_print, second_id)


def test_common_name_every_value_must_be_listed(world: World) -> None:
    both = world.identify(
        leaf(world.devices, [(NameOID.COMMON_NAME, "bob"), (NameOID.COMMON_NAME, "alice")])
    )
    assert both.common_name == "alice"  # what an app reading the CN sees
    assert not allows(p.common_name("alice"), both)
    assert allows(p.common_name("alice", "bob"), both)
    no_cn = world.identify(
        leaf(world.devices, [(NameOID.ORGANIZATION_NAME, "PolicyCo")], sans=[x509.DNSName("x.a")])
    )
    assert no_cn.common_name is None
    assert p.common_name("alice").check(no_cn, NOW) == "common_name in ['alice']"
    assert not allows(p.common_name("Alice"), world.identify(world.devices.issue("alice")))


def test_common_name_pitfall_is_documented_next_to_the_rule() -> None:
    doc = p.common_name.__doc__ or ""
    assert "Pitfall" in doc
    assert "issued_by(fingerprints=" in doc


# --------------------------------------------------------------------------
# SAN DNS


def test_san_dns_exact_is_case_insensitive(world: World) -> None:
    identity = with_dns(world, "API.Acme.Test")
    assert allows(p.san_dns("api.acme.test"), identity)
    assert allows(p.san_dns("api.ACME.test"), identity)
    assert not allows(p.san_dns("acme.test"), identity)


@pytest.mark.parametrize(
    ("san", "expected"),
    [
        ("x.a.com", True),
        ("X.A.COM", True),
        ("a.com", False),  # no extra label
        ("x.y.a.com", False),  # two extra labels
        ("evil-a.com", False),  # suffix without the dot
        ("xa.com", False),
        ("*.a.com", False),  # a wildcard SAN is not a label
        ("x.a.com.evil.com", False),
    ],
)
def test_san_dns_wildcard_is_exactly_one_label(world: World, san: str, expected: bool) -> None:
    assert allows(p.san_dns("*.a.com"), with_dns(world, san)) is expected


def test_san_dns_any_san_matching_is_enough(world: World) -> None:
    identity = with_dns(world, "other.test", "dev1.devices.acme.test")
    assert allows(p.san_dns("*.devices.acme.test"), identity)
    assert not allows(~p.san_dns("*.devices.acme.test"), identity)
    assert allows(~p.san_dns("*.staff.acme.test"), identity)


def test_san_dns_regex_is_a_full_match(world: World) -> None:
    identity = with_dns(world, "dev-17.devices.acme.test")
    assert allows(p.san_dns(r"dev-\d+\.devices\.acme\.test", regex=True), identity)
    assert not allows(p.san_dns(r"dev-\d+", regex=True), identity)  # prefix only
    assert not allows(p.san_dns(r"devices\.acme\.test", regex=True), identity)  # suffix only
    assert not allows(p.san_dns(r"DEV-\d+\.devices\.acme\.test", regex=True), identity)
    assert allows(p.san_dns(r"(?i)DEV-\d+\.devices\.acme\.test", regex=True), identity)


def test_san_longer_than_the_cap_never_matches(world: World) -> None:
    long_name = ".".join(["a" * 60] * 17) + ".test"  # > 1024 characters
    assert len(long_name) > p.MAX_SAN_LENGTH
    identity = with_dns(world, long_name)
    assert identity.sans.dns == (long_name,)
    assert not allows(p.san_dns(long_name), identity)
    assert not allows(p.san_dns(".*", regex=True), identity)
    short = with_dns(world, long_name[-1000:].lstrip("."))
    assert allows(p.san_dns(".*", regex=True), short)


@pytest.mark.parametrize(
    "pattern",
    ["*", "*.*.a.com", "a*.b.com", "x.*.b.com", "a..b", "a.b.", "bad name.test", "é.test"],
)
def test_san_dns_bad_patterns_are_refused(pattern: str) -> None:
    with pytest.raises(ConfigError, match="san_dns"):
        p.san_dns(pattern)


def test_bad_regex_is_refused_at_construction() -> None:
    with pytest.raises(ConfigError, match=r"san_dns_regex: bad regular expression '\(unclosed'"):
        p.san_dns("(unclosed", regex=True)


# --------------------------------------------------------------------------
# SAN URI, email, IP


def test_san_uri_exact_and_regex(world: World) -> None:
    identity = world.identify(
        leaf(world.devices, sans=[x509.UniformResourceIdentifier("https://acme.test/devices/7")])
    )
    assert allows(p.san_uri("https://acme.test/devices/7"), identity)
    assert not allows(p.san_uri("https://acme.test/devices/70"), identity)
    assert not allows(p.san_uri("https://acme.test/Devices/7"), identity)
    assert allows(p.san_uri(r"https://acme\.test/devices/\d+", regex=True), identity)
    assert not allows(p.san_uri(r"https://acme\.test/devices", regex=True), identity)


def test_san_email_exact_wildcard_and_case(world: World) -> None:
    identity = world.identify(leaf(world.devices, sans=[x509.RFC822Name("alice@Acme.Test")]))
    assert allows(p.san_email("alice@acme.test"), identity)  # domain: any case
    assert not allows(p.san_email("Alice@acme.test"), identity)  # local part: exact
    assert allows(p.san_email("*@ACME.test"), identity)
    assert not allows(p.san_email("*@test"), identity)  # not a parent domain
    sub = world.identify(leaf(world.devices, sans=[x509.RFC822Name("bob@eu.acme.test")]))
    assert not allows(p.san_email("*@acme.test"), sub)
    assert allows(p.san_email(r"[a-z]+@eu\.acme\.test", regex=True), sub)
    for bad in ("alice", "@acme.test", "a*@acme.test", "alice@", "a@b@c.test"):
        with pytest.raises(ConfigError, match="san_email"):
            p.san_email(bad)


def test_san_ip_compared_as_addresses_and_networks(world: World) -> None:
    v6 = world.identify(leaf(world.devices, sans=[x509.IPAddress(ipaddress.ip_address("0:0::1"))]))
    assert allows(p.san_ip("::1"), v6)
    assert allows(p.san_ip("0000:0000:0000::0001"), v6)
    assert allows(p.san_ip("::/120"), v6)
    v4 = world.identify(
        leaf(world.devices, sans=[x509.IPAddress(ipaddress.ip_address("10.1.2.3"))])
    )
    assert allows(p.san_ip("10.1.0.0/16"), v4)
    assert not allows(p.san_ip("10.2.0.0/16"), v4)
    assert not allows(p.san_ip("::ffff:10.1.2.3"), v4)  # mapped form is another address
    assert not allows(p.san_ip("::1"), v4)
    assert allows(p.san_ip(r"10\.1\.\d+\.\d+", regex=True), v4)
    for bad in ("10.1.2", "10.1.0.1/16", "example.test", "::1/129"):
        with pytest.raises(ConfigError, match="san_ip"):
            p.san_ip(bad)


# --------------------------------------------------------------------------
# SPIFFE


def spiffe(world: World, *uris: str) -> ClientIdentity:
    return world.identify(
        leaf(world.devices, sans=[x509.UniformResourceIdentifier(u) for u in uris])
    )


def test_spiffe_id_exact_and_trust_domain(world: World) -> None:
    identity = spiffe(world, "spiffe://acme.test/ns/pay/sa/api")
    assert allows(p.spiffe_id("spiffe://acme.test/ns/pay/sa/api"), identity)
    assert not allows(p.spiffe_id("spiffe://acme.test/ns/pay"), identity)
    assert allows(p.spiffe_trust_domain("acme.test"), identity)
    assert allows(p.spiffe_trust_domain("spiffe://acme.test"), identity)
    assert not allows(p.spiffe_trust_domain("evil.test"), identity)
    assert not allows(p.spiffe_trust_domain("test"), identity)


def test_spiffe_path_prefix_is_segment_aware(world: World) -> None:
    rule = p.spiffe_path_prefix("/ns/a")
    assert allows(rule, spiffe(world, "spiffe://acme.test/ns/a"))
    assert allows(rule, spiffe(world, "spiffe://acme.test/ns/a/sa/x"))
    assert not allows(rule, spiffe(world, "spiffe://acme.test/ns/ab"))
    assert not allows(rule, spiffe(world, "spiffe://acme.test/ns"))
    assert not allows(rule, spiffe(world, "spiffe://acme.test/x/ns/a"))
    pinned = p.spiffe_path_prefix("spiffe://acme.test/ns/a")
    assert allows(pinned, spiffe(world, "spiffe://acme.test/ns/a/b"))
    assert not allows(pinned, spiffe(world, "spiffe://other.test/ns/a/b"))


def test_spiffe_rules_refuse_ambiguous_or_malformed_ids(world: World) -> None:
    rules = [
        p.spiffe_id("spiffe://acme.test/ns/a/b"),
        p.spiffe_trust_domain("acme.test"),
        p.spiffe_path_prefix("/ns/a"),
    ]
    two = spiffe(world, "spiffe://acme.test/ns/a/b", "spiffe://acme.test/ns/x")
    assert two.spiffe_id is None
    dotdot = spiffe(world, "spiffe://acme.test/ns/a/../b")
    upper = spiffe(world, "spiffe://ACME.test/ns/a/b")
    for identity in (two, dotdot, upper):
        for rule in rules:
            assert not allows(rule, identity), (rule, identity.sans)
    for bad in ("spiffe://acme.test/ns/", "https://acme.test/ns", "spiffe://a/b?c", "spiffe://"):
        with pytest.raises(ConfigError, match="spiffe_id"):
            p.spiffe_id(bad)
    for bad in ("/", "ns/a", "/ns//a", "spiffe://acme.test", "/ns/a/"):
        with pytest.raises(ConfigError, match="spiffe_path_prefix"):
            p.spiffe_path_prefix(bad)
    with pytest.raises(ConfigError, match="spiffe_trust_domain"):
        p.spiffe_trust_domain("Acme.Test")


# --------------------------------------------------------------------------
# Subject attributes


def test_subject_attributes_must_all_be_listed(world: World) -> None:
    ops = world.identify(
        leaf(
            world.devices,
            [(NameOID.ORGANIZATION_NAME, "Acme"), (NameOID.ORGANIZATIONAL_UNIT_NAME, "ops")],
        )
    )
    assert allows(p.subject(O=["Acme"], OU=["ops", "dev"]), ops)
    assert not allows(p.subject(O=["Globex"]), ops)
    assert p.subject(O=["Acme"], OU=["dev"]).check(ops, NOW) == "subject OU in ['dev']"
    # The attacker's second OU: "ops" is there, but so is "guests".
    smuggled = world.identify(
        leaf(
            world.devices,
            [
                (NameOID.ORGANIZATIONAL_UNIT_NAME, "guests"),
                (NameOID.ORGANIZATIONAL_UNIT_NAME, "ops"),
            ],
        )
    )
    assert not allows(p.subject(OU=["ops"]), smuggled)
    assert allows(p.subject(OU=["ops", "guests"]), smuggled)
    # Absent attribute: the allow rule refuses.
    assert not allows(p.subject(C=["US"]), ops)
    assert dict(ops.subject_attributes) == {"2.5.4.10": ("Acme",), "2.5.4.11": ("ops",)}
    with pytest.raises(TypeError):
        ops.subject_attributes["2.5.4.3"] = ("x",)  # type: ignore[index]
    # By dotted OID and lowercase name.
    assert allows(p.subject({"2.5.4.11": ["ops"]}), ops)
    assert allows(p.subject(ou=["ops"]), ops)


def test_subject_excludes_is_the_safe_deny(world: World) -> None:
    mixed = world.identify(
        leaf(
            world.devices,
            [
                (NameOID.ORGANIZATIONAL_UNIT_NAME, "contractors"),
                (NameOID.ORGANIZATIONAL_UNIT_NAME, "ops"),
            ],
        )
    )
    assert not allows(p.subject_excludes(OU=["contractors"]), mixed)
    assert allows(~p.subject(OU=["contractors"]), mixed)  # why not_ is not the deny form
    plain = world.identify(leaf(world.devices))
    assert allows(p.subject_excludes(OU=["contractors"]), plain)


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((), {}, "at least one attribute"),
        ((), {"XX": ["a"]}, "unknown attribute 'XX'"),
        ((), {"OU": "ops"}, "not a single string"),
        ((), {"OU": []}, "at least one value"),
        (({"O": ["a"]},), {"o": ["b"]}, "given twice"),
        (({"O": ["a"]},), {"O": ["b"]}, "given twice"),
        (({"OU": ["a"], "2.5.4.11": ["b"]},), {}, "given twice"),
        (({"1.2.x": ["a"]},), {}, "unknown attribute"),
    ],
)
def test_subject_bad_arguments(args: tuple[Any, ...], kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        p.subject(*args, **kwargs)


# --------------------------------------------------------------------------
# Issuing CA


def test_issued_by_fingerprint_of_an_intermediate_or_the_root(world: World) -> None:
    device = world.identify(world.devices.issue("d"))
    staff = world.identify(world.staff.issue("s"))
    rule = p.issued_by(fingerprints=[colons(sha256(world.devices.cert))])
    assert allows(rule, device)
    assert not allows(rule, staff)
    root_rule = p.issued_by(fingerprints=[sha256(world.root.cert).upper()])
    assert allows(root_rule, device)
    assert allows(root_rule, staff)
    # The leaf itself is not an issuer.
    assert not allows(p.issued_by(fingerprints=[device.fingerprint_sha256]), device)
    assert device.chain_fingerprints_sha256 == tuple(sha256(cert) for cert in device.chain)
    assert device.chain_fingerprints_sha256[0] == device.fingerprint_sha256
    assert len(device.chain) == 3


def test_issued_by_name_also_accepts_a_ca_reusing_the_name(world: World) -> None:
    device = world.identify(world.devices.issue("d"))
    twin = world.identify(world.devices_twin.issue("d"))
    by_name = p.issued_by(names=["CN=Devices CA,O=PolicyCo"])
    assert allows(by_name, device)
    assert allows(by_name, twin)  # documented: names are only strings
    by_print = p.issued_by(fingerprints=[sha256(world.devices.cert)])
    assert allows(by_print, device)
    assert not allows(by_print, twin)
    assert not allows(p.issued_by(names=["CN=Staff CA,O=PolicyCo"]), device)
    # A leaf whose own subject is the CA's name was not issued by that CA.
    lookalike = world.identify(
        leaf(
            world.staff,
            [(NameOID.ORGANIZATION_NAME, "PolicyCo"), (NameOID.COMMON_NAME, "Devices CA")],
        )
    )
    assert lookalike.subject == "CN=Devices CA,O=PolicyCo"
    assert not allows(by_name, lookalike)
    either = p.issued_by(
        names=["CN=Staff CA,O=PolicyCo"], fingerprints=[sha256(world.devices.cert)]
    )
    assert allows(either, device)


def test_issued_by_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="give fingerprints, names or both"):
        p.issued_by()
    with pytest.raises(ConfigError, match="not a SHA-256 fingerprint"):
        p.issued_by(fingerprints=["abcd"])
    with pytest.raises(ConfigError, match="not an RFC 4514 name"):
        p.issued_by(names=["no equals sign"])


# --------------------------------------------------------------------------
# Serials and fingerprints


def test_serial_lists_normalise_spelling(world: World) -> None:
    identity = world.identify(leaf(world.devices, serial=0x0ABCDEF012))
    assert identity.serial == "abcdef012"
    for spelling in ("abcdef012", "0ABCDEF012", "0x0abcdef012", "0a:bc:de:f0:12", 0xABCDEF012):
        assert allows(p.serial_in(spelling), identity), spelling
        assert not allows(p.serial_not_in(spelling), identity), spelling
    assert not allows(p.serial_in("abcdef0120"), identity)
    assert allows(p.serial_not_in("1234"), identity)
    for bad in ("", "xyz", "-5", "0x", -1, True):
        with pytest.raises(ConfigError, match="serial_in"):
            p.serial_in(bad)
    with pytest.raises(ConfigError, match="at least one"):
        p.serial_not_in()


def test_fingerprint_lists_accept_colons_and_case(world: World) -> None:
    identity = world.identify(world.devices.issue("d"))
    other = world.identify(world.devices.issue("d"))
    print_ = hashlib.sha256(identity.der).hexdigest()
    for spelling in (print_, print_.upper(), colons(print_)):
        assert allows(p.fingerprint_in(spelling), identity)
        assert not allows(p.fingerprint_in(spelling), other)
        assert not allows(p.fingerprint_not_in(spelling), identity)
        assert allows(p.fingerprint_not_in(spelling), other)
    for bad in (print_[:-1], print_ + "0", "z" * 64):
        with pytest.raises(ConfigError, match="fingerprint_not_in"):
            p.fingerprint_not_in(bad)


def test_deny_list_cost_does_not_grow_with_its_length(world: World) -> None:
    identity = world.identify(world.devices.issue("d"))
    small = p.fingerprint_not_in("00" * 32)
    big = p.fingerprint_not_in(*(f"{n:064x}" for n in range(20_000)))

    def cost(rule: p.Policy) -> float:
        best = float("inf")
        for _ in range(7):
            start = time.perf_counter()
            for _ in range(20_000):
                rule.check(identity, NOW)
            best = min(best, time.perf_counter() - start)
        return best

    cost(small)  # warm up
    assert cost(big) < 5 * cost(small)


# --------------------------------------------------------------------------
# Expiry headroom


def test_min_days_left_and_identity_days_left(world: World) -> None:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    identity = world.identify(leaf(world.devices, not_after=now + dt.timedelta(days=10)))
    assert identity.days_left(now) == pytest.approx(10.0)
    assert identity.days_left(now.replace(tzinfo=None)) == pytest.approx(10.0)
    assert 9.9 < identity.days_left() <= 10.0
    assert allows(p.min_days_left(10), identity, now)
    assert allows(p.min_days_left(9.5), identity, now)
    failure = p.min_days_left(10).check(identity, now + dt.timedelta(hours=12))
    assert failure == "min_days_left 10 (9.5 left)"
    assert not allows(p.min_days_left(30), identity, now)
    for bad in (-1, True, "7", float("nan")):
        with pytest.raises(ConfigError, match="min_days_left"):
            p.min_days_left(bad)  # type: ignore[arg-type]


# --------------------------------------------------------------------------
# Predicate


def test_predicate_true_false_and_non_bool(world: World) -> None:
    identity = world.identify(world.devices.issue("alice"))
    assert allows(p.predicate(lambda i: i.common_name == "alice", "is alice"), identity)
    rule = p.predicate(lambda i: i.common_name == "bob", "is bob")
    assert rule.label == "predicate is bob"
    assert rule.check(identity, NOW) == "predicate is bob"
    assert not allows(p.predicate(lambda i: "yes", "truthy"), identity)  # type: ignore[arg-type,return-value]


def test_predicate_exception_is_a_failure_naming_the_type(world: World) -> None:
    identity = world.identify(world.devices.issue("alice"))

    def broken(identity: ClientIdentity) -> bool:
        raise KeyError("secret-" + identity.fingerprint_sha256)

    failure = p.predicate(broken, "lookup").check(identity, NOW)
    assert failure == "predicate lookup raised KeyError"
    assert identity.fingerprint_sha256 not in failure


def test_predicate_must_be_synchronous_and_labelled() -> None:
    async def coroutine(identity: ClientIdentity) -> bool:
        return True

    with pytest.raises(ConfigError, match="synchronous"):
        p.predicate(coroutine, "async")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="label"):
        p.predicate(lambda i: True, "")
    with pytest.raises(ConfigError, match="callable"):
        p.predicate("nope", "x")  # type: ignore[arg-type]


# --------------------------------------------------------------------------
# Composition, labels, immutability


def test_composition_operators_and_failure_texts(world: World) -> None:
    identity = world.identify(world.devices.issue("alice"))
    alice, bob = p.common_name("alice"), p.common_name("bob")
    assert allows(alice & p.any_certificate(), identity)
    assert (alice & bob).check(identity, NOW) == "common_name in ['bob']"
    assert allows(alice | bob, identity)
    assert allows(bob | alice, identity)
    assert (bob | p.common_name("carol")).check(identity, NOW) == (
        "none matched: any_of(common_name in ['bob'], common_name in ['carol'])"
    )
    assert (~alice).check(identity, NOW) == "not_(common_name in ['alice'])"
    assert allows(~bob, identity)
    assert allows(~~alice, identity)
    flat = alice & bob & p.any_certificate()
    assert flat.label == "all_of(common_name in ['alice'], common_name in ['bob'], any_certificate)"
    assert p.all_of(alice) is alice
    assert p.any_of(alice, bob).label == "any_of(common_name in ['alice'], common_name in ['bob'])"
    with pytest.raises(ConfigError, match="all_of"):
        p.all_of()
    with pytest.raises(ConfigError, match="not a Policy"):
        p.any_of(alice, "bob")  # type: ignore[arg-type]


def test_labels_are_bounded_and_log_safe(world: World) -> None:
    many = p.common_name(*(f"user-{n}" for n in range(50)))
    assert "(+45 more)" in many.label
    assert len(many.label) <= p.MAX_LABEL + 20
    huge = p.all_of(*(p.common_name("x" * 60 + str(n)) for n in range(20)))
    assert len(huge.label) <= p.MAX_LABEL + 20
    assert huge.label.endswith("more]")
    noisy = p.predicate(lambda i: False, "\x1b" * 300)
    assert noisy.label.isprintable()
    assert len(noisy.label) <= p.MAX_LABEL + 20
    evil = p.common_name("a\x1b[2J\nFAKE LOG LINE\u202e")
    identity = world.identify(world.devices.issue("alice"))
    failure = evil.check(identity, NOW)
    assert failure is not None
    assert failure.isprintable()
    assert "\\x1b" in failure
    assert "\\n" in failure


def test_policies_are_immutable() -> None:
    rule = p.common_name("alice")
    with pytest.raises(AttributeError):
        rule.label = "any_certificate"
    with pytest.raises(AttributeError):
        del rule.label


def test_failure_text_never_carries_certificate_bytes(world: World) -> None:
    issued = world.devices.issue("alice")
    identity = world.identify(issued)
    pem = issued.cert.public_bytes(serialization.Encoding.PEM).decode()
    body = "".join(pem.splitlines()[1:-1])
    rule = p.all_of(p.common_name("alice"), p.san_dns("*.a.com"))
    failure = rule.check(identity, NOW)
    assert failure == "san_dns ['*.a.com']"
    assert body[:40] not in failure


# --------------------------------------------------------------------------
# TOML


def from_toml(text: str, where: str = "certgate.toml: tenant 'pol'") -> p.Policy:
    return p.policy_from_config(tomllib.loads(text)["policy"], where)


def test_config_every_key(world: World) -> None:
    devices_ca = sha256(world.devices.cert)
    issued = leaf(
        world.devices,
        [
            (NameOID.COMMON_NAME, "alice"),
            (NameOID.ORGANIZATION_NAME, "Acme"),
            (NameOID.ORGANIZATIONAL_UNIT_NAME, "ops"),
        ],
        sans=[
            x509.DNSName("d1.devices.acme.test"),
            x509.RFC822Name("alice@acme.test"),
            x509.IPAddress(ipaddress.ip_address("10.0.0.7")),
        ],
        serial=0x1234,
    )
    identity = world.identify(issued)
    text = f"""
    [policy]
    any_certificate = true
    common_name = ["alice"]
    san_dns = ["*.devices.acme.test"]
    san_dns_regex = ['d\\d\\.devices\\.acme\\.test']
    san_email = ["*@acme.test"]
    san_email_regex = ['alice@.*']
    san_ip = ["10.0.0.0/24"]
    san_ip_regex = ['10\\.0\\.0\\.\\d+']
    subject = {{ O = ["Acme"], OU = ["ops"] }}
    subject_excludes = {{ OU = ["contractors"] }}
    issued_by = {{ fingerprints = ["{colons(devices_ca)}"], names = ["CN=Devices CA,O=PolicyCo"] }}
    serial_in = ["00:12:34"]
    serial_not_in = ["1235"]
    fingerprint_in = ["{identity.fingerprint_sha256.upper()}"]
    fingerprint_not_in = ["{"ab" * 32}"]
    min_days_left = 30
    not = {{ common_name = ["mallory"] }}
    any = [
        {{ san_uri = ["https://x.test/"] }},
        {{ san_uri_regex = ['nope'] }},
        {{ common_name = ["alice"] }},
    ]
    all = [{{ min_days_left = 1.5 }}]
    """
    rule = from_toml(text)
    assert rule.check(identity, NOW) is None
    assert rule.label.startswith("all_of(any_certificate, common_name in ['alice'], san_dns")
    other = world.identify(world.staff.issue("alice"))
    assert rule.check(other, NOW) is not None
    assert from_toml("[policy]\nmin_days_left = 100").check(identity, NOW) is not None


def test_config_spiffe_keys(world: World) -> None:
    identity = spiffe(world, "spiffe://acme.test/ns/a/sa/x")
    rule = from_toml(
        """
        [policy]
        spiffe_trust_domain = ["acme.test"]
        spiffe_path_prefix = ["/ns/a"]
        spiffe_id = ["spiffe://acme.test/ns/a/sa/x"]
        """
    )
    assert allows(rule, identity)
    assert not allows(rule, spiffe(world, "spiffe://acme.test/ns/ab/sa/x"))


def test_config_single_key_is_the_rule_itself() -> None:
    rule = from_toml('[policy]\ncommon_name = ["alice"]')
    assert rule.label == "common_name in ['alice']"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("", r"W: policy: empty policy"),
        ("nope = 1", r"W: policy: unknown key\(s\) \['nope'\]"),
        ('common_name = "alice"', r"W: policy.common_name: expected a list"),
        ("common_name = []", r"W: policy.common_name: needs at least one value"),
        ("common_name = [1]", r"W: policy.common_name: every value must be a non-empty string"),
        ("san_dns_regex = ['(']", r"W: policy.san_dns_regex: bad regular expression"),
        ("san_dns = ['*.*.a']", r"W: policy.san_dns: '\*.\*.a' is not a DNS name"),
        ("san_ip = ['10.0.0.300']", r"W: policy.san_ip: '10.0.0.300'"),
        ("san_email = ['x']", r"W: policy.san_email: 'x' is not"),
        ("spiffe_id = ['spiffe://A/b']", r"W: policy.spiffe_id: .* not a valid SPIFFE ID"),
        ("fingerprint_in = ['abc']", r"W: policy.fingerprint_in: 'abc' is not a SHA-256"),
        ("serial_in = ['0xZZ']", r"W: policy.serial_in: '0xZZ' is not a serial"),
        ("subject = ['O=Acme']", r"W: policy.subject: expected a table"),
        ("subject = { O = 'Acme' }", r"W: policy.subject: every attribute needs a list"),
        ("subject = { XX = ['a'] }", r"W: policy.subject: unknown attribute 'XX'"),
        ("subject = {}", r"W: policy.subject: needs at least one attribute"),
        ("issued_by = ['x']", r"W: policy.issued_by: expected a table"),
        ("issued_by = { fingerprint = ['x'] }", r"W: policy.issued_by: unknown key"),
        ("issued_by = { names = [] }", r"W: policy.issued_by.names: expected a non-empty list"),
        ("issued_by = { names = ['x'] }", r"W: policy.issued_by.names: 'x' is not an RFC 4514"),
        ("issued_by = {}", r"W: policy.issued_by: give fingerprints, names or both"),
        ("any_certificate = false", r"W: policy.any_certificate: only 'any_certificate = true'"),
        ("min_days_left = '7'", r"W: policy.min_days_left: expected a number"),
        ("min_days_left = true", r"W: policy.min_days_left: expected a number"),
        ("not = []", r"W: policy.not: expected a table"),
        ("not = {}", r"W: policy.not: empty policy"),
        ("any = []", r"W: policy.any: expected a non-empty list of tables"),
        ("any = {}", r"W: policy.any: expected a non-empty list of tables"),
        ("all = [1]", r"W: policy.all\[0\]: expected a table"),
        ("any = [{ common_name = ['a'] }, { bad = 1 }]", r"W: policy.any\[1\]: unknown key"),
        ("predicate = 'x'", r"W: policy: unknown key\(s\) \['predicate'\]"),
    ],
)
def test_config_errors_name_where_and_key(body: str, message: str) -> None:
    with pytest.raises(ConfigError, match="^" + message):
        from_toml("[policy]\n" + body, "W")


def test_config_depth_and_rule_count_are_bounded() -> None:
    table: dict[str, Any] = {"common_name": ["a"]}
    for _ in range(p.MAX_CONFIG_DEPTH - 1):
        table = {"not": table}
    p.policy_from_config(table, "W")  # exactly the limit
    with pytest.raises(ConfigError, match="nested more than 8 deep"):
        p.policy_from_config({"not": table}, "W")
    at_limit = {"any": [{"common_name": [str(n)]} for n in range(p.MAX_CONFIG_RULES - 1)]}
    p.policy_from_config(at_limit, "W")
    over = {"any": [{"common_name": [str(n)]} for n in range(p.MAX_CONFIG_RULES)]}
    with pytest.raises(ConfigError, match=r"W: policy.any\[999\].common_name: more than 1000"):
        p.policy_from_config(over, "W")
    with pytest.raises(ConfigError, match="W: policy: expected a table"):
        p.policy_from_config(["common_name"], "W")  # type: ignore[arg-type]


def test_readme_toml_example_parses() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Policies\n", 1)[1].split("\n## ", 1)[0]
    block = section.split("```toml\n", 1)[1].split("```", 1)[0]
    data = tomllib.loads(block)
    tenant = p.policy_from_config(data["tenants"][0]["policy"], "README: tenant 'acme'")
    route = p.policy_from_config(data["certgate"]["routes"][0]["policy"], "README: route")
    assert tenant.label.startswith("all_of(issued_by fingerprint ['3f9a")
    assert route.label.startswith("any_of(all_of(common_name in ['alice', 'bob'], issued_by name")
