"""Facts of CA certificates remembered during one bulk import.

An import of a million tenants that share a few CA certificates would
otherwise parse, re-encode, hash and vet the same certificates a million
times. Inside :func:`remembering` (what
:meth:`certgate.stores.sql.SqlTenantStore.import_tenants` runs in), a
:class:`CertMemo` keeps, keyed by the certificate's DER (or by the parsed
object it handed out):

* the DER of a PEM block, and the parsed certificate of a DER;
* a certificate's DER, SHA-256, subject and issuer (DER) and
  :func:`certgate.tenant.name_key`;
* the CA sets (roots and intermediates by SHA-256 of their DER, and the
  ``ca_expired`` and date rules in force) that passed
  :func:`certgate.vetting.check_cas` with no finding at all: the same set
  is not vetted again during this import. A set with any finding (an
  error or a warning) is vetted, and reported, for every tenant.

Nothing is remembered outside :func:`remembering`; every table is bounded
(:data:`MEMO_SIZE` entries, emptied when full), and the memo of one import
ends with it (so the dates of a remembered clean set were judged at most
the length of that import ago).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Hashable, Iterator
from contextvars import ContextVar
from typing import TypeVar

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

MEMO_SIZE = 4096
"""Most entries of each table of a :class:`CertMemo`."""

T = TypeVar("T")


class CertFacts:
    """What is remembered of one certificate object (each computed when
    first asked)."""

    __slots__ = ("cert", "der", "name_key", "names", "sha256")

    def __init__(self, cert: x509.Certificate) -> None:
        self.cert = cert  # referenced: its id is not reused while remembered
        self.der: bytes | None = None
        self.sha256: bytes | None = None
        self.name_key: bytes | None = None
        self.names: tuple[bytes, bytes] | None = None


class CertMemo:
    """The tables of one import (see the module docstring)."""

    def __init__(self, size: int = MEMO_SIZE) -> None:
        self.size = size
        self._tables: dict[str, dict[Hashable, object]] = {}
        self._facts: dict[int, CertFacts] = {}
        self._clean: set[Hashable] = set()

    def get(self, table: str, key: Hashable, make: Callable[[], T]) -> T:
        """The remembered value of ``key`` in ``table``, else ``make()``
        remembered (an exception is not)."""
        entries = self._tables.get(table)
        if entries is None:
            entries = self._tables[table] = {}
        found = entries.get(key, _MISSING)
        if found is _MISSING:
            found = make()
            if len(entries) >= self.size:
                entries.clear()
            entries[key] = found
        return found  # type: ignore[return-value]

    def facts(self, cert: x509.Certificate) -> CertFacts:
        """The remembered facts of the certificate object ``cert``."""
        found = self._facts.get(id(cert))
        if found is None or found.cert is not cert:
            if len(self._facts) >= self.size:
                self._facts.clear()
            found = self._facts[id(cert)] = CertFacts(cert)
        return found

    def is_clean(self, key: Hashable) -> bool:
        """Whether the CA set ``key`` passed vetting with no finding."""
        return key in self._clean

    def mark_clean(self, key: Hashable) -> None:
        if len(self._clean) >= self.size:
            self._clean.clear()
        self._clean.add(key)


_MISSING = object()
_ACTIVE: ContextVar[CertMemo | None] = ContextVar("certgate_cert_memo", default=None)


@contextlib.contextmanager
def remembering(memo: CertMemo | None = None) -> Iterator[CertMemo]:
    """Remember certificate facts inside this block (this thread or task)."""
    memo = memo or CertMemo()
    token = _ACTIVE.set(memo)
    try:
        yield memo
    finally:
        _ACTIVE.reset(token)


def active() -> CertMemo | None:
    """The memo of the import running in this context, or ``None``."""
    return _ACTIVE.get()


def der_of(cert: x509.Certificate) -> bytes:
    """``cert``'s DER (remembered during an import)."""
    memo = _ACTIVE.get()
    if memo is None:
        return cert.public_bytes(Encoding.DER)
    facts = memo.facts(cert)
    if facts.der is None:
        facts.der = cert.public_bytes(Encoding.DER)
    return facts.der


def sha256_of(cert: x509.Certificate) -> bytes:
    """SHA-256 of ``cert``'s DER (remembered during an import)."""
    memo = _ACTIVE.get()
    if memo is None:
        return hashlib.sha256(cert.public_bytes(Encoding.DER)).digest()
    facts = memo.facts(cert)
    if facts.sha256 is None:
        if facts.der is None:
            facts.der = cert.public_bytes(Encoding.DER)
        facts.sha256 = hashlib.sha256(facts.der).digest()
    return facts.sha256


def name_key_of(cert: x509.Certificate, make: Callable[[x509.Certificate], bytes]) -> bytes:
    """``make(cert)`` (:func:`certgate.tenant.name_key`), remembered during an import."""
    memo = _ACTIVE.get()
    if memo is None:
        return make(cert)
    facts = memo.facts(cert)
    if facts.name_key is None:
        facts.name_key = make(cert)
    return facts.name_key


def names_of(
    cert: x509.Certificate, make: Callable[[x509.Certificate], tuple[bytes, bytes]]
) -> tuple[bytes, bytes]:
    """``make(cert)`` (the DER of the subject and issuer names), remembered
    during an import."""
    memo = _ACTIVE.get()
    if memo is None:
        return make(cert)
    facts = memo.facts(cert)
    if facts.names is None:
        facts.names = make(cert)
    return facts.names


def load_der(der: bytes) -> x509.Certificate:
    """The certificate of ``der`` (``ValueError`` when it does not parse);
    during an import the same DER gives the same object."""
    memo = _ACTIVE.get()
    if memo is None:
        return x509.load_der_x509_certificate(der)
    return memo.get("cert", der, lambda: x509.load_der_x509_certificate(der))
