"""Authorization rules over a verified client certificate.

Verification (done before any policy runs) answers "is this a certificate of
the addressed tenant, valid now?". A :class:`Policy` answers the next
question: "may *this* certificate call *this* route?". Policies only ever see
a :class:`~certgate.identity.ClientIdentity`, which certgate builds from a
chain ``cryptography``'s verifier accepted against the tenant's roots; a
policy never widens what verification refused.

```python
from certgate import policy as p

ops_devices = p.issued_by(fingerprints=[OPS_CA_SHA256]) & p.san_dns("*.devices.acme.test")
admins = p.common_name("alice", "bob") & p.issued_by(fingerprints=[STAFF_CA_SHA256])
rule = (ops_devices | admins) & p.min_days_left(7) & p.fingerprint_not_in(LOST_LAPTOP)
reason = rule.check(identity, now)       # None: allowed; else text for the log
```

Rule kinds (module functions; each returns an immutable, thread-safe
:class:`Policy`):

* :func:`any_certificate` - any certificate verification accepted.
* :func:`common_name` - the subject CN (read its pitfall first).
* :func:`san_dns`, :func:`san_uri`, :func:`san_email`, :func:`san_ip` -
  Subject Alternative Names: exact, wildcard (DNS, email domain), CIDR (IP)
  or, with ``regex=True``, full-match regular expressions.
* :func:`spiffe_id`, :func:`spiffe_trust_domain`, :func:`spiffe_path_prefix`.
* :func:`subject` / :func:`subject_excludes` - subject attributes (O, OU, ...).
* :func:`issued_by` - a CA the verified path went through.
* :func:`serial_in` / :func:`serial_not_in`, :func:`fingerprint_in` /
  :func:`fingerprint_not_in` - allow and deny lists.
* :func:`min_days_left` - expiry headroom.
* :func:`predicate` - your own function.
* :func:`all_of` / :func:`any_of` / :func:`not_`, or ``&``, ``|``, ``~``.

:func:`policy_from_config` builds the same rules from a TOML table.

What a policy's :meth:`Policy.check` returns on failure is for logs only:
text naming the failing rule (escaped with :func:`certgate.text.safe_text`,
at most :data:`MAX_LABEL` characters plus a short note), never certificate
bytes. It may describe the tenant's rules, so it is never sent to clients.

Matching is deliberately strict: where a value is ambiguous (a repeated
subject attribute, a malformed SPIFFE ID, an over-long SAN) the rule does
not match, so an allow rule refuses. Keep that in mind for :func:`not_`:
``not_(rule)`` is satisfied whenever ``rule`` is not, including for such
values - for exclusions prefer the deny forms (:func:`serial_not_in`,
:func:`fingerprint_not_in`, :func:`subject_excludes`) whose documented
meaning is "none of these".
"""

from __future__ import annotations

import inspect
import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any, NoReturn

from cryptography.x509 import Name
from cryptography.x509.oid import NameOID

from .errors import ConfigError
from .identity import ClientIdentity
from .text import safe_text

__all__ = [
    "MAX_CONFIG_DEPTH",
    "MAX_CONFIG_RULES",
    "MAX_LABEL",
    "MAX_SAN_LENGTH",
    "Policy",
    "all_of",
    "any_certificate",
    "any_of",
    "common_name",
    "fingerprint_in",
    "fingerprint_not_in",
    "issued_by",
    "min_days_left",
    "not_",
    "policy_from_config",
    "predicate",
    "san_dns",
    "san_email",
    "san_ip",
    "san_uri",
    "serial_in",
    "serial_not_in",
    "spiffe_id",
    "spiffe_path_prefix",
    "spiffe_trust_domain",
    "subject",
    "subject_excludes",
]

MAX_LABEL = 200
"""Labels and failure texts are escaped, then cut to this many characters
(a cut is marked ``...[N more]``; :func:`min_days_left` adds the days left)."""

MAX_SAN_LENGTH = 1024
"""SAN values longer than this never match any SAN rule (not even exactly):
a regular expression never runs on more than this many characters."""

MAX_CONFIG_DEPTH = 8
"""Deepest nesting of ``all`` / ``any`` / ``not`` accepted from TOML."""

MAX_CONFIG_RULES = 1000
"""Most rules (leaves and combinators) one TOML policy may hold."""

_MAX_SPIFFE_ID = 2048  # bytes, per the SPIFFE ID specification
_SHOWN_VALUES = 5
_SHOWN_VALUE_CHARS = 64


class Policy:
    """An authorization rule over a verified :class:`ClientIdentity`.

    Immutable and thread-safe: build policies once (at import or start-up)
    and share them. Combine with ``&`` (:func:`all_of`), ``|``
    (:func:`any_of`) and ``~`` (:func:`not_`).
    """

    __slots__ = ("label",)

    label: str
    """Short, log-safe text naming the rule (``common_name in ['alice']``):
    escaped, at most :data:`MAX_LABEL` characters plus a ``...[N more]``
    mark when cut."""

    def __init__(self, label: str) -> None:
        object.__setattr__(self, "label", _bounded(label))

    def check(self, identity: ClientIdentity, now: datetime) -> str | None:
        """``None`` when ``identity`` satisfies the rule at ``now``; otherwise
        log-safe text naming the failing rule (never sent to clients)."""
        raise NotImplementedError

    def __and__(self, other: object) -> Policy:
        if not isinstance(other, Policy):
            return NotImplemented
        return all_of(self, other)

    def __or__(self, other: object) -> Policy:
        if not isinstance(other, Policy):
            return NotImplemented
        return any_of(self, other)

    def __invert__(self) -> Policy:
        return not_(self)

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __delattr__(self, name: str) -> NoReturn:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __repr__(self) -> str:
        return f"<Policy {self.label}>"

    def _set(self, **fields: object) -> None:
        for name, value in fields.items():
            object.__setattr__(self, name, value)


def _bounded(text: str) -> str:
    """Escaped first, then cut: at most MAX_LABEL characters plus the mark."""
    return safe_text(safe_text(text), MAX_LABEL)


def _shown(values: Iterable[object]) -> str:
    """``['a', 'b', ... (+3 more)]``: a bounded, escaped list for a label."""
    items = list(values)
    parts = [repr(str(value)[:_SHOWN_VALUE_CHARS]) for value in items[:_SHOWN_VALUES]]
    more = f", ... (+{len(items) - _SHOWN_VALUES} more)" if len(items) > _SHOWN_VALUES else ""
    return "[" + ", ".join(parts) + more + "]"


def _strings(values: Iterable[object], what: str) -> list[str]:
    """A non-empty list of non-empty strings, or ConfigError."""
    if isinstance(values, str | bytes):
        raise ConfigError(f"{what}: expected a list of strings, not a single string")
    found = list(values)
    if not found:
        raise ConfigError(f"{what}: needs at least one value")
    for value in found:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{what}: every value must be a non-empty string")
    return found  # type: ignore[return-value]  # checked just above


# --------------------------------------------------------------------------
# Combinators


class _AllOf(Policy):
    __slots__ = ("parts",)
    parts: tuple[Policy, ...]

    def __init__(self, parts: tuple[Policy, ...]) -> None:
        super().__init__("all_of(" + ", ".join(p.label for p in parts) + ")")
        self._set(parts=parts)

    def check(self, identity: ClientIdentity, now: datetime) -> str | None:
        for part in self.parts:
            failure = part.check(identity, now)
            if failure is not None:
                return failure
        return None


class _AnyOf(Policy):
    __slots__ = ("parts",)
    parts: tuple[Policy, ...]

    def __init__(self, parts: tuple[Policy, ...]) -> None:
        super().__init__("any_of(" + ", ".join(p.label for p in parts) + ")")
        self._set(parts=parts)

    def check(self, identity: ClientIdentity, now: datetime) -> str | None:
        for part in self.parts:
            if part.check(identity, now) is None:
                return None
        return _bounded(f"none matched: {self.label}")


class _Not(Policy):
    __slots__ = ("inner",)
    inner: Policy

    def __init__(self, inner: Policy) -> None:
        super().__init__(f"not_({inner.label})")
        self._set(inner=inner)

    def check(self, identity: ClientIdentity, now: datetime) -> str | None:
        if self.inner.check(identity, now) is None:
            return self.label
        return None


def _policies(parts: tuple[object, ...], what: str) -> tuple[Policy, ...]:
    if not parts:
        raise ConfigError(f"{what}: needs at least one policy")
    for part in parts:
        if not isinstance(part, Policy):
            raise ConfigError(f"{what}: {type(part).__name__} is not a Policy")
    return parts  # type: ignore[return-value]  # checked just above


def all_of(*policies: Policy) -> Policy:
    """Satisfied when every one of ``policies`` is; the failure text is the
    first failing one's. ``a & b`` is ``all_of(a, b)``."""
    flat: list[Policy] = []
    for part in _policies(policies, "all_of"):
        flat.extend(part.parts if isinstance(part, _AllOf) else (part,))
    return flat[0] if len(flat) == 1 else _AllOf(tuple(flat))


def any_of(*policies: Policy) -> Policy:
    """Satisfied when at least one of ``policies`` is (tried in order).
    ``a | b`` is ``any_of(a, b)``."""
    flat: list[Policy] = []
    for part in _policies(policies, "any_of"):
        flat.extend(part.parts if isinstance(part, _AnyOf) else (part,))
    return flat[0] if len(flat) == 1 else _AnyOf(tuple(flat))


def not_(policy: Policy) -> Policy:
    """Satisfied when ``policy`` is not. ``~p`` is ``not_(p)``.

    Allow rules do not match ambiguous or malformed values (see the module
    docstring), so ``not_`` of them *is* satisfied by such values: for deny
    lists prefer :func:`serial_not_in`, :func:`fingerprint_not_in` and
    :func:`subject_excludes`. ``not_`` of a SAN rule is a safe exclusion:
    satisfied only when no SAN of that kind matches.
    """
    return _Not(_policies((policy,), "not_")[0])


# --------------------------------------------------------------------------
# Whole certificate, names


class _AnyCertificate(Policy):
    __slots__ = ()

    def check(self, identity: ClientIdentity, now: datetime) -> str | None:
        return None


def any_certificate() -> Policy:
    """Any certificate that verified for the addressed tenant (Cloudflare
    Access's "Valid Certificate"): the tenant's trust is the whole rule."""
    return _AnyCertificate("any_certificate")


_COMMON_NAME_OID = NameOID.COMMON_NAME.dotted_string


class _AttributeRule(Policy):
    """Subject attributes: ``allowed`` maps a dotted OID to (shown name,
    values). ``exclude``: no value may be listed; else every value must be
    listed and the attribute present."""

    __slots__ = ("attributes", "exclude")
    attributes: tuple[tuple[str, str, frozenset[str]], ...]
    exclude: bool

    def __init__(
        self, label: str, attributes: tuple[tuple[str, str, frozenset[str]], ...], exclude: bool
    ) -> None:
        super().__init__(label)
        self._set(attributes=attributes, exclude=exclude)

    def check(self, identity: ClientIdentity, now: datetime) -> str | None:
        present = identity.subject_attributes
        for oid, shown, listed in self.attributes:
            values = present.get(oid, ())
            if self.exclude:
                if any(value in listed for value in values):
                    return _bounded(f"subject_excludes {shown} in {_shown(sorted(listed))}")
            elif not values or any(value not in listed for value in values):
                if len(self.attributes) == 1:
                    return self.label
                return _bounded(f"subject {shown} in {_shown(sorted(listed))}")
        return None


def common_name(*names: str) -> Policy:
    """The leaf's subject commonName is one of ``names`` (exact,
    case-sensitive). A subject with several CNs must have all of them listed.

    **Pitfall: the CN alone identifies nothing.** It is a string that any CA
    the tenant trusts can put in any certificate: a second device, or a
    certificate from a second CA of the same tenant (another intermediate,
    an old root kept during a rotation, a CA run by another team), can carry
    ``CN=alice`` just as well as Alice's own certificate, and this rule lets
    both in. Pin the issuing CA too - ``common_name("alice") &
    issued_by(fingerprints=[ALICE_CA_SHA256])`` - and make sure that CA
    never issues the same CN twice, or identify the client by something
    unique: a SAN (:func:`san_dns`, :func:`san_email`), a SPIFFE ID or the
    certificate's fingerprint (:func:`fingerprint_in`).
    """
    listed = frozenset(_strings(names, "common_name"))
    return _AttributeRule(
        f"common_name in {_shown(sorted(listed))}", ((_COMMON_NAME_OID, "CN", listed),), False
    )


_ATTRIBUTE_OIDS = {
    "cn": (NameOID.COMMON_NAME, "CN"),
    "o": (NameOID.ORGANIZATION_NAME, "O"),
    "ou": (NameOID.ORGANIZATIONAL_UNIT_NAME, "OU"),
    "c": (NameOID.COUNTRY_NAME, "C"),
    "l": (NameOID.LOCALITY_NAME, "L"),
    "st": (NameOID.STATE_OR_PROVINCE_NAME, "ST"),
    "street": (NameOID.STREET_ADDRESS, "STREET"),
    "dc": (NameOID.DOMAIN_COMPONENT, "DC"),
    "uid": (NameOID.USER_ID, "UID"),
    "serialnumber": (NameOID.SERIAL_NUMBER, "serialNumber"),
    "emailaddress": (NameOID.EMAIL_ADDRESS, "emailAddress"),
    "title": (NameOID.TITLE, "title"),
    "gn": (NameOID.GIVEN_NAME, "GN"),
    "sn": (NameOID.SURNAME, "SN"),
    "postalcode": (NameOID.POSTAL_CODE, "postalCode"),
    "pseudonym": (NameOID.PSEUDONYM, "pseudonym"),
}
_DOTTED_OID = re.compile(r"[0-2](\.(0|[1-9][0-9]{0,9})){1,20}")


def _attributes(
    what: str, mapping: Mapping[str, Iterable[str]] | None, kwargs: Mapping[str, Iterable[str]]
) -> tuple[tuple[str, str, frozenset[str]], ...]:
    merged: list[tuple[str, Iterable[str]]] = []
    for source in (mapping or {}, kwargs):
        if not isinstance(source, Mapping):
            raise ConfigError(f"{what}: expected a table of attribute = [values]")
        merged.extend(source.items())
    if not merged:
        raise ConfigError(f"{what}: needs at least one attribute")
    result: dict[str, tuple[str, str, frozenset[str]]] = {}
    for key, values in merged:
        if not isinstance(key, str):
            raise ConfigError(f"{what}: attribute names must be strings")
        known = _ATTRIBUTE_OIDS.get(key.lower())
        if known is not None:
            oid, shown = known[0].dotted_string, known[1]
        elif _DOTTED_OID.fullmatch(key):
            oid, shown = key, key
        else:
            raise ConfigError(
                f"{what}: unknown attribute {safe_text(key, 40)!r} (use one of "
                f"{', '.join(name for _, name in _ATTRIBUTE_OIDS.values())} or a dotted OID)"
            )
        if oid in result:
            raise ConfigError(f"{what}: attribute {shown} given twice")
        result[oid] = (oid, shown, frozenset(_strings(values, f"{what}.{shown}")))
    return tuple(result.values())


def _attributes_label(name: str, attributes: tuple[tuple[str, str, frozenset[str]], ...]) -> str:
    return f"{name}(" + ", ".join(f"{s} in {_shown(sorted(v))}" for _, s, v in attributes) + ")"


def subject(
    attributes: Mapping[str, Iterable[str]] | None = None, /, **kwargs: Iterable[str]
) -> Policy:
    """Subject attributes of the leaf: ``subject(O=["Acme"], OU=["ops"])``,
    or ``subject({"2.5.4.97": [...]})`` for attributes by dotted OID.

    For each attribute given, the leaf's subject must **have** it, and
    **every** value it has must be listed (exact, case-sensitive). A subject
    ``OU=guests, OU=ops`` therefore does not satisfy ``subject(OU=["ops"])``:
    whoever can choose one of a certificate's OUs cannot unlock a route by
    adding a second one. Known names (case-insensitive): CN, O, OU, C, L,
    ST, STREET, DC, UID, serialNumber, emailAddress, title, GN, SN,
    postalCode, pseudonym. Like the CN (see :func:`common_name`), subject
    attributes are only as unique as the tenant's CAs make them.
    """
    found = _attributes("subject", attributes, kwargs)
    return _AttributeRule(_attributes_label("subject", found), found, False)


def subject_excludes(
    attributes: Mapping[str, Iterable[str]] | None = None, /, **kwargs: Iterable[str]
) -> Policy:
    """The deny form of :func:`subject`: satisfied when **no** value of each
    given attribute is listed (a subject without the attribute satisfies
    it). ``subject_excludes(OU=["contractors"])`` refuses
    ``OU=contractors, OU=ops``, where ``not_(subject(OU=["contractors"]))``
    would not."""
    found = _attributes("subject_excludes", attributes, kwargs)
    return _AttributeRule(_attributes_label("subject_excludes", found), found, True)


# --------------------------------------------------------------------------
# Subject Alternative Names


def _san_values(values: tuple[str, ...]) -> Iterable[str]:
    return (value for value in values if len(value) <= MAX_SAN_LENGTH)


class _RegexRule(Policy):
    __slots__ = ("kind", "patterns")
    kind: str
    patterns: tuple[re.Pattern[str], ...]

    def __init__(self, label: str, kind: str, patterns: tuple[re.Pattern[str], ...]) -> None:
        super().__init__(label)
        self._set(kind=kind, patterns=patterns)

    def check(self, identity: ClientIdentity, now: datetime) -> str | None:
        for value in _san_values(getattr(identity.sans, self.kind)):
            for pattern in self.patterns:
                if pattern.fullmatch(value):
                    return None
        return self.label


def _regex_rule(kind: str, patterns: tuple[str, ...]) -> Policy:
    what = f"san_{kind}_regex"
    compiled: list[re.Pattern[str]] = []
    for pattern in _strings(patterns, what):
        try:
            compiled.append(re.compile(pattern))
        except (re.error, RecursionError, OverflowError) as exc:
            raise ConfigError(
                f"{what}: bad regular expression {safe_text(pattern, 80)!r}: {exc}"
            ) from None
    return _RegexRule(f"{what} {_shown(patterns)}", kind, tuple(compiled))


_DNS_BAD = re.compile(r"[^a-z0-9._-]")


class _DnsRule(Policy):
    __slots__ = ("exact", "suffixes")
    exact: frozenset[str]
    suffixes: frozenset[str]

    def __init__(self, label: str, exact: frozenset[str], suffixes: frozenset[str]) -> None:
        super().__init__(label)
        self._set(exact=exact, suffixes=suffixes)

    def check(self, identity: ClientIdentity, now: datetime) -> str | None:
        for value in _san_values(identity.sans.dns):
            if not value.isascii():  # "\u212a".lower() == "k": never a look-alike
                continue
            name = value.lower()
            if name in self.exact:
                return None
            label, dot, rest = name.partition(".")
            if dot and label and "*" not in label and rest in self.suffixes:
                return None
        return self.label


def _dns_name(pattern: str, what: str, shown: str | None = None) -> str:
    name = pattern.lower()
    labels = name.split(".")
    if not name.isascii() or _DNS_BAD.search(name) or not all(labels):
        raise ConfigError(
            f"{what}: {safe_text(shown or pattern, 80)!r} is not a DNS name or a '*.' wildcard "
            "(ASCII letters, digits, '-', '_', '.'; use the xn-- form for IDNs)"
        )
    return name


def san_dns(*patterns: str, regex: bool = False) -> Policy:
    """A DNS SAN of the leaf matches one of ``patterns`` (at least one SAN
    matching is enough: a certificate is entitled to all of its names).

    * ``"api.acme.test"``: exact, case-insensitive (ASCII case only: a SAN
      with a non-ASCII character never matches, so ``\u212aey`` - KELVIN
      SIGN - is not ``key``).
    * ``"*.devices.acme.test"``: exactly one more, non-empty label
      (``a.devices.acme.test``; not ``devices.acme.test``, not
      ``a.b.devices.acme.test``, not a SAN that itself holds ``*``). ``*``
      is only accepted as the whole leftmost label.
    * ``regex=True``: each pattern is a regular expression that must match
      the whole SAN (``re.fullmatch``, case-sensitive unless the pattern
      says ``(?i)``), as Pomerium's ``match_subject_alt_names``.

    SANs longer than :data:`MAX_SAN_LENGTH` characters never match.
    """
    if regex:
        return _regex_rule("dns", patterns)
    exact: set[str] = set()
    suffixes: set[str] = set()
    for pattern in _strings(patterns, "san_dns"):
        if pattern.startswith("*."):
            suffixes.add(_dns_name(pattern[2:], "san_dns", pattern))
        else:
            exact.add(_dns_name(pattern, "san_dns"))
    return _DnsRule(f"san_dns {_shown(patterns)}", frozenset(exact), frozenset(suffixes))


class _UriRule(Policy):
    __slots__ = ("exact",)
    exact: frozenset[str]

    def __init__(self, label: str, exact: frozenset[str]) -> None:
        super().__init__(label)
        self._set(exact=exact)

    def check(self, identity: ClientIdentity, now: datetime) -> str | None:
        for value in _san_values(identity.sans.uri):
            if value in self.exact:
                return None
        return self.label


def san_uri(*patterns: str, regex: bool = False) -> Policy:
    """A URI SAN of the leaf is one of ``patterns`` (exact, case-sensitive)
    or, with ``regex=True``, fully matches one of them. No wildcards: use a
    regular expression, or the SPIFFE rules for ``spiffe://`` IDs. At least
    one matching SAN is enough; SANs longer than :data:`MAX_SAN_LENGTH`
    never match."""
    if regex:
        return _regex_rule("uri", patterns)
    return _UriRule(f"san_uri {_shown(patterns)}", frozenset(_strings(patterns, "san_uri")))


class _EmailRule(Policy):
    __slots__ = ("domains", "exact")
    exact: frozenset[str]
    domains: frozenset[str]

    def __init__(self, label: str, exact: frozenset[str], domains: frozenset[str]) -> None:
        super().__init__(label)
        self._set(exact=exact, domains=domains)

    def check(self, identity: ClientIdentity, now: datetime) -> str | None:
        for value in _san_values(identity.sans.email):
            local, at, domain = value.rpartition("@")
            if not at or not local or "@" in local or not domain.isascii():
                continue
            domain = domain.lower()
            if f"{local}@{domain}" in self.exact or domain in self.domains:
                return None
        return self.label


def san_email(*patterns: str, regex: bool = False) -> Policy:
    """An email (rfc822Name) SAN of the leaf matches one of ``patterns``.

    * ``"alice@acme.test"``: the local part exact (case-sensitive), the
      domain case-insensitive (ASCII case only: a SAN whose domain has a
      non-ASCII character never matches).
    * ``"*@acme.test"``: any local part at exactly that domain (not at a
      subdomain).
    * ``regex=True``: full-match regular expressions on the SAN as written.

    At least one matching SAN is enough; SANs longer than
    :data:`MAX_SAN_LENGTH` characters or with more than one ``@`` never
    match (except a regular expression written for them).
    """
    if regex:
        return _regex_rule("email", patterns)
    exact: set[str] = set()
    domains: set[str] = set()
    for pattern in _strings(patterns, "san_email"):
        local, at, domain = pattern.rpartition("@")
        if not at or not local or not domain or "@" in local or ("*" in local and local != "*"):
            raise ConfigError(
                f"san_email: {safe_text(pattern, 80)!r} is not 'local@domain' or '*@domain'"
            )
        domain = _dns_name(domain, "san_email", pattern)
        if local == "*":
            domains.add(domain)
        else:
            exact.add(f"{local}@{domain}")
    return _EmailRule(f"san_email {_shown(patterns)}", frozenset(exact), frozenset(domains))


_IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class _IpRule(Policy):
    __slots__ = ("exact", "networks")
    exact: frozenset[_IPAddress]
    networks: tuple[_IPNetwork, ...]

    def __init__(
        self, label: str, exact: frozenset[_IPAddress], networks: tuple[_IPNetwork, ...]
    ) -> None:
        super().__init__(label)
        self._set(exact=exact, networks=networks)

    def check(self, identity: ClientIdentity, now: datetime) -> str | None:
        for value in _san_values(identity.sans.ip):
            try:
                address = ipaddress.ip_address(value)
            except ValueError:
                continue
            if address in self.exact or any(address in net for net in self.networks):
                return None
        return self.label


def san_ip(*patterns: str, regex: bool = False) -> Policy:
    """An IP address SAN of the leaf is one of ``patterns``: addresses
    compared as addresses (``::1`` is ``0:0::1``), or networks in CIDR form
    (``10.1.0.0/16``; host bits must be zero). IPv4 and IPv6 never match each
    other (``::ffff:10.0.0.1`` is not ``10.0.0.1``). With ``regex=True``,
    full-match regular expressions on the address's canonical text
    (``str(ipaddress.ip_address(...))``). At least one matching SAN is
    enough."""
    if regex:
        return _regex_rule("ip", patterns)
    exact: set[_IPAddress] = set()
    networks: list[_IPNetwork] = []
    for pattern in _strings(patterns, "san_ip"):
        try:
            if "/" in pattern:
                networks.append(ipaddress.ip_network(pattern, strict=True))
            else:
                exact.add(ipaddress.ip_address(pattern))
        except ValueError as exc:
            raise ConfigError(f"san_ip: {safe_text(pattern, 80)!r}: {exc}") from None
    return _IpRule(f"san_ip {_shown(patterns)}", frozenset(exact), tuple(networks))


# --------------------------------------------------------------------------
# SPIFFE


_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]+")
_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")


def _spiffe_parts(value: str) -> tuple[str, str] | None:
    """(trust domain, path) of a SPIFFE ID valid per the SPIFFE ID spec
    (lowercase scheme and trust domain, no empty, ``.`` or ``..`` path
    segment, no trailing slash, no query or fragment), else ``None``."""
    if len(value) > _MAX_SPIFFE_ID or not value.startswith("spiffe://"):
        return None
    domain, slash, rest = value[9:].partition("/")
    if not _TRUST_DOMAIN.fullmatch(domain):
        return None
    if not slash:
        return domain, ""
    for segment in rest.split("/"):
        if segment in (".", "..") or not _SEGMENT.fullmatch(segment):
            return None
    return domain, "/" + rest


class _SpiffeRule(Policy):
    """``wanted`` holds (trust domain or "", path) pairs; ``prefix`` makes a
    path match any of its segment prefixes; an empty path (with
    ``prefix``) stands for the trust domain alone."""

    __slots__ = ("prefix", "wanted")
    wanted: frozenset[tuple[str, str]]
    prefix: bool

    def __init__(self, label: str, wanted: frozenset[tuple[str, str]], prefix: bool) -> None:
        super().__init__(label)
        self._set(wanted=wanted, prefix=prefix)

    def check(self, identity: ClientIdentity, now: datetime) -> str | None:
        spiffe = identity.spiffe_id
        parts = _spiffe_parts(spiffe) if spiffe is not None else None
        if parts is None:
            return self.label
        domain, path = parts
        if not self.prefix:
            return None if parts in self.wanted else self.label
        candidates = [""]
        end = 0
        while (end := path.find("/", end + 1)) != -1:
            candidates.append(path[:end])
        candidates.append(path)
        for candidate in candidates:
            if (domain, candidate) in self.wanted or ("", candidate) in self.wanted:
                return None
        return self.label


def spiffe_id(*ids: str) -> Policy:
    """The leaf's SPIFFE ID (:attr:`ClientIdentity.spiffe_id`: its only URI
    SAN, with the ``spiffe://`` scheme) is exactly one of ``ids``. IDs that
    break the SPIFFE ID spec (uppercase trust domain, ``..`` or empty path
    segments, query, fragment, ...) are refused here and never match."""
    wanted: set[tuple[str, str]] = set()
    for value in _strings(ids, "spiffe_id"):
        parts = _spiffe_parts(value)
        if parts is None:
            raise ConfigError(f"spiffe_id: {safe_text(value, 80)!r} is not a valid SPIFFE ID")
        wanted.add(parts)
    return _SpiffeRule(f"spiffe_id in {_shown(ids)}", frozenset(wanted), False)


def spiffe_trust_domain(*domains: str) -> Policy:
    """The leaf's SPIFFE ID is in one of the trust ``domains`` (``acme.test``
    or ``spiffe://acme.test``)."""
    wanted: set[tuple[str, str]] = set()
    for value in _strings(domains, "spiffe_trust_domain"):
        domain = value.removeprefix("spiffe://")
        if not _TRUST_DOMAIN.fullmatch(domain):
            raise ConfigError(
                f"spiffe_trust_domain: {safe_text(value, 80)!r} is not a trust domain "
                "(lowercase letters, digits, '.', '-', '_')"
            )
        wanted.add((domain, ""))
    return _SpiffeRule(f"spiffe_trust_domain in {_shown(domains)}", frozenset(wanted), True)


def spiffe_path_prefix(*prefixes: str) -> Policy:
    """The leaf's SPIFFE ID path starts with one of ``prefixes``, segment by
    segment: ``/ns/a`` matches ``/ns/a`` and ``/ns/a/sa/x``, never
    ``/ns/ab``. A prefix is either a path (``/ns/a``: any trust domain - pin
    the domain with :func:`spiffe_trust_domain` too) or a full SPIFFE ID
    (``spiffe://acme.test/ns/a``: that trust domain only)."""
    wanted: set[tuple[str, str]] = set()
    for value in _strings(prefixes, "spiffe_path_prefix"):
        parts = _spiffe_parts(value if value.startswith("spiffe://") else "spiffe://x" + value)
        if parts is None or not parts[1] or not (value.startswith(("/", "spiffe://"))):
            raise ConfigError(
                f"spiffe_path_prefix: {safe_text(value, 80)!r} is not a SPIFFE path "
                "('/seg/seg') or a SPIFFE ID with a path"
            )
        wanted.add((parts[0] if value.startswith("spiffe://") else "", parts[1]))
    return _SpiffeRule(f"spiffe_path_prefix {_shown(prefixes)}", frozenset(wanted), True)


# --------------------------------------------------------------------------
# Issuing CA, serials, fingerprints, expiry, predicate


_HEX = re.compile(r"[0-9a-f]+")


def _fingerprint(value: str, what: str) -> str:
    text = value.replace(":", "").lower()
    if len(text) != 64 or not _HEX.fullmatch(text):
        raise ConfigError(
            f"{what}: {safe_text(value, 100)!r} is not a SHA-256 fingerprint "
            "(64 hex digits, colons allowed)"
        )
    return text


def _serial(value: object, what: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return format(value, "x")
    if isinstance(value, str):
        text = value.replace(":", "").lower()
        text = text.removeprefix("0x")
        if text and len(text) <= 128 and _HEX.fullmatch(text):
            return text.lstrip("0") or "0"
    raise ConfigError(
        f"{what}: {safe_text(value, 100)!r} is not a serial number "
        "(hex digits, optional 0x and colons, or a non-negative int)"
    )


class _IssuedBy(Policy):
    __slots__ = ("fingerprints", "names")
    fingerprints: frozenset[str]
    names: frozenset[Name]

    def __init__(self, label: str, fingerprints: frozenset[str], names: frozenset[Name]) -> None:
        super().__init__(label)
        self._set(fingerprints=fingerprints, names=names)

    def check(self, identity: ClientIdentity, now: datetime) -> str | None:
        if self.fingerprints:
            for fingerprint in identity.chain_fingerprints_sha256[1:]:
                if fingerprint in self.fingerprints:
                    return None
        if self.names:
            for ca in identity.issuers:
                if ca.subject in self.names:
                    return None
        return self.label


def issued_by(*, fingerprints: Iterable[str] = (), names: Iterable[str] = ()) -> Policy:
    """The verified path went through one of these CAs: an intermediate or
    the root above the leaf (``identity.chain[1:]``), given by the SHA-256
    fingerprint of the CA certificate (hex, colons allowed) or by its subject
    name (RFC 4514, ``CN=Acme Issuing CA,O=Acme``; compared attribute by
    attribute, exact). Any one match is enough.

    Fingerprints are the safe pin: they name one CA certificate. A **name**
    is only a string: another CA the tenant trusts (a re-keyed or renewed
    CA, a cross-signed one, a CA of another team) can have the same subject
    and is then accepted too. Pin names only where every CA of the tenant
    with that name is meant.
    """
    prints = [] if _empty(fingerprints) else _strings(fingerprints, "issued_by.fingerprints")
    texts = [] if _empty(names) else _strings(names, "issued_by.names")
    if not prints and not texts:
        raise ConfigError("issued_by: give fingerprints, names or both")
    parsed: set[Name] = set()
    for text in texts:
        try:
            parsed.add(Name.from_rfc4514_string(text))
        except ValueError as exc:
            raise ConfigError(
                f"issued_by.names: {safe_text(text, 100)!r} is not an RFC 4514 name: {exc}"
            ) from None
    wanted = frozenset(_fingerprint(value, "issued_by.fingerprints") for value in prints)
    shown = [f"fingerprint {_shown(sorted(wanted))}"] if wanted else []
    shown += [f"name {_shown(texts)}"] if texts else []
    return _IssuedBy(f"issued_by {' or '.join(shown)}", wanted, frozenset(parsed))


def _empty(values: Iterable[str]) -> bool:
    return isinstance(values, list | tuple | set | frozenset) and not values


class _ListRule(Policy):
    __slots__ = ("allow", "attribute", "listed")
    attribute: str
    listed: frozenset[str]
    allow: bool

    def __init__(self, label: str, attribute: str, listed: frozenset[str], allow: bool) -> None:
        super().__init__(label)
        self._set(attribute=attribute, listed=listed, allow=allow)

    def check(self, identity: ClientIdentity, now: datetime) -> str | None:
        found = getattr(identity, self.attribute) in self.listed
        return None if found == self.allow else self.label


def _serials(values: tuple[str | int, ...], what: str) -> frozenset[str]:
    if not values:
        raise ConfigError(f"{what}: needs at least one value")
    return frozenset(_serial(value, what) for value in values)


def serial_in(*serials: str | int) -> Policy:
    """The leaf's serial number is listed (hex, any case, leading zeros,
    ``0x`` and colons ignored; or ints). Serials are unique per CA only:
    pair with :func:`issued_by` when the tenant has several CAs."""
    listed = _serials(serials, "serial_in")
    return _ListRule(f"serial_in {_shown(sorted(listed))}", "serial", listed, True)


def serial_not_in(*serials: str | int) -> Policy:
    """The leaf's serial number is not listed (a deny list, same spelling
    as :func:`serial_in`)."""
    listed = _serials(serials, "serial_not_in")
    return _ListRule(f"serial_not_in {_shown(sorted(listed))}", "serial", listed, False)


def fingerprint_in(*fingerprints: str) -> Policy:
    """The SHA-256 fingerprint of the leaf (its DER) is listed (64 hex
    digits, any case, colons allowed): exactly these certificates."""
    listed = frozenset(
        _fingerprint(v, "fingerprint_in") for v in _strings(fingerprints, "fingerprint_in")
    )
    return _ListRule(f"fingerprint_in {_shown(sorted(listed))}", "fingerprint_sha256", listed, True)


def fingerprint_not_in(*fingerprints: str) -> Policy:
    """The leaf's SHA-256 fingerprint is not listed (a deny list)."""
    listed = frozenset(
        _fingerprint(v, "fingerprint_not_in") for v in _strings(fingerprints, "fingerprint_not_in")
    )
    return _ListRule(
        f"fingerprint_not_in {_shown(sorted(listed))}", "fingerprint_sha256", listed, False
    )


class _MinDaysLeft(Policy):
    __slots__ = ("days",)
    days: float

    def __init__(self, days: float) -> None:
        super().__init__(f"min_days_left {days:g}")
        self._set(days=days)

    def check(self, identity: ClientIdentity, now: datetime) -> str | None:
        left = identity.days_left(now)
        if left >= self.days:
            return None
        return f"{self.label} ({left:.1f} left)"


def min_days_left(days: float) -> Policy:
    """At least ``days`` days (a non-negative number; fractions allowed)
    between ``now`` and the leaf's ``not_after``
    (:meth:`ClientIdentity.days_left`)."""
    if isinstance(days, bool) or not isinstance(days, int | float) or not 0 <= days <= 100_000:
        raise ConfigError("min_days_left: expected a number of days between 0 and 100000")
    return _MinDaysLeft(float(days))


class _Predicate(Policy):
    __slots__ = ("function",)
    function: Callable[[ClientIdentity], bool]

    def __init__(self, label: str, function: Callable[[ClientIdentity], bool]) -> None:
        super().__init__(label)
        self._set(function=function)

    def check(self, identity: ClientIdentity, now: datetime) -> str | None:
        try:
            result = self.function(identity)
        except Exception as exc:  # noqa: BLE001 - the user's code: a failure, never a 500
            return _bounded(f"{self.label} raised {type(exc).__name__}")
        if result is True:
            return None
        if inspect.isawaitable(result):
            close = getattr(result, "close", None)
            if callable(close):
                close()
            return _bounded(f"{self.label} returned an awaitable")
        return self.label


def predicate(function: Callable[[ClientIdentity], bool], label: str) -> Policy:
    """Your own rule: ``function(identity)`` must return exactly ``True``
    (any other value, truthy or not, fails: fail closed). An exception it
    raises is a failure naming the exception type (its message is not
    logged: it may hold certificate data) and never propagates. It runs on
    the request path, synchronously: keep it fast and do no I/O. ``label``
    names it in logs."""
    if not callable(function):
        raise ConfigError("predicate: function must be callable")
    if inspect.iscoroutinefunction(function):
        raise ConfigError("predicate: function must be synchronous (not async def)")
    if not isinstance(label, str) or not label:
        raise ConfigError("predicate: label must be a non-empty string")
    return _Predicate(f"predicate {label}", function)


# --------------------------------------------------------------------------
# TOML


def _list_key(build: Callable[..., Policy]) -> Callable[[Any, str], Policy]:
    def parse(value: Any, where: str) -> Policy:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list")
        return build(*value)

    return parse


def _regex_key(build: Callable[..., Policy]) -> Callable[[Any, str], Policy]:
    def parse(value: Any, where: str) -> Policy:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list")
        return build(*value, regex=True)

    return parse


def _table_key(build: Callable[..., Policy]) -> Callable[[Any, str], Policy]:
    def parse(value: Any, where: str) -> Policy:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a table of attribute = [values]")
        for values in value.values():
            if not isinstance(values, list):
                raise ConfigError(f"{where}: every attribute needs a list of values")
        return build(value)

    return parse


def _any_certificate_key(value: Any, where: str) -> Policy:
    if value is not True:
        raise ConfigError(f"{where}: only 'any_certificate = true' is meaningful")
    return any_certificate()


def _issued_by_key(value: Any, where: str) -> Policy:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a table {{ fingerprints = [...], names = [...] }}")
    unknown = set(value) - {"fingerprints", "names"}
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {_shown(sorted(map(str, unknown)))}")
    for key in ("fingerprints", "names"):
        if key in value and (not isinstance(value[key], list) or not value[key]):
            raise ConfigError(f"{where}.{key}: expected a non-empty list")
    return issued_by(fingerprints=value.get("fingerprints", []), names=value.get("names", []))


def _min_days_key(value: Any, where: str) -> Policy:
    return min_days_left(value)


_LEAF_KEYS: dict[str, Callable[[Any, str], Policy]] = {
    "any_certificate": _any_certificate_key,
    "common_name": _list_key(common_name),
    "san_dns": _list_key(san_dns),
    "san_dns_regex": _regex_key(san_dns),
    "san_uri": _list_key(san_uri),
    "san_uri_regex": _regex_key(san_uri),
    "san_email": _list_key(san_email),
    "san_email_regex": _regex_key(san_email),
    "san_ip": _list_key(san_ip),
    "san_ip_regex": _regex_key(san_ip),
    "spiffe_id": _list_key(spiffe_id),
    "spiffe_trust_domain": _list_key(spiffe_trust_domain),
    "spiffe_path_prefix": _list_key(spiffe_path_prefix),
    "subject": _table_key(subject),
    "subject_excludes": _table_key(subject_excludes),
    "issued_by": _issued_by_key,
    "serial_in": _list_key(serial_in),
    "serial_not_in": _list_key(serial_not_in),
    "fingerprint_in": _list_key(fingerprint_in),
    "fingerprint_not_in": _list_key(fingerprint_not_in),
    "min_days_left": _min_days_key,
}
_COMBINATOR_KEYS = ("all", "any", "not")
POLICY_KEYS = frozenset(_LEAF_KEYS) | frozenset(_COMBINATOR_KEYS)
"""Every key a TOML policy table may hold."""


class _Budget:
    __slots__ = ("rules",)

    def __init__(self) -> None:
        self.rules = 0

    def spend(self, where: str) -> None:
        self.rules += 1
        if self.rules > MAX_CONFIG_RULES:
            raise ConfigError(f"{where}: more than {MAX_CONFIG_RULES} rules in one policy")


def policy_from_config(table: Mapping[str, Any], where: str) -> Policy:
    """Build a :class:`Policy` from a TOML table (already parsed).

    Each key is a rule kind, named as the Python function
    (``common_name = ["alice"]``, ``san_dns = ["*.devices.acme.test"]``,
    ``issued_by = { fingerprints = ["..."] }``, ``min_days_left = 7``);
    regular expressions use ``san_dns_regex`` / ``san_uri_regex`` /
    ``san_email_regex`` / ``san_ip_regex``; ``any_certificate = true``.
    Several keys in one table must all hold; ``all = [{...}, ...]``,
    ``any = [{...}, ...]`` and ``not = {...}`` combine tables. There is no
    user predicate in TOML.

    Strict: an unknown key, a value of the wrong type, an empty table or
    list, a bad regular expression, IP address, fingerprint, serial, SPIFFE
    ID or CA name, nesting deeper than :data:`MAX_CONFIG_DEPTH` or more than
    :data:`MAX_CONFIG_RULES` rules raise :class:`ConfigError` whose message
    starts with ``where`` and names the key (``where: policy.any[2].san_ip:
    ...``).
    """
    return _parse(table, f"{where}: policy", 1, _Budget())


def _parse(table: Any, where: str, depth: int, budget: _Budget) -> Policy:
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where}: expected a table")
    if depth > MAX_CONFIG_DEPTH:
        raise ConfigError(f"{where}: policies nested more than {MAX_CONFIG_DEPTH} deep")
    if not table:
        raise ConfigError(f"{where}: empty policy (write 'any_certificate = true' for any)")
    unknown = [key for key in table if key not in POLICY_KEYS]
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {_shown(sorted(map(str, unknown)))}; "
            f"known: {', '.join(sorted(POLICY_KEYS))}"
        )
    parts: list[Policy] = []
    for key, value in table.items():
        here = f"{where}.{key}"
        budget.spend(here)
        if key in _LEAF_KEYS:
            try:
                parts.append(_LEAF_KEYS[key](value, here))
            except ConfigError as exc:
                raise ConfigError(_located(str(exc), key, here)) from None
        elif key == "not":
            parts.append(not_(_parse(value, here, depth + 1, budget)))
        else:
            if not isinstance(value, list) or not value:
                raise ConfigError(f"{here}: expected a non-empty list of tables")
            inner = [
                _parse(item, f"{here}[{index}]", depth + 1, budget)
                for index, item in enumerate(value)
            ]
            parts.append(all_of(*inner) if key == "all" else any_of(*inner))
    return all_of(*parts)


def _located(message: str, key: str, here: str) -> str:
    """``here: ...`` for a constructor's ``san_dns: ...`` / ``subject.OU: ...``."""
    if message.startswith(here):
        return message
    head, sep, rest = message.partition(": ")
    base = head.split(".", 1)[0]
    if sep and base in (key, key.removesuffix("_regex"), f"{key.removesuffix('_regex')}_regex"):
        return f"{here}{head[len(base) :]}: {rest}"
    return f"{here}: {message}"
