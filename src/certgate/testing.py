"""Testing your app's routes without TLS.

Two ways, both with real certificates from a throwaway dev PKI
(:mod:`certgate.devpki`) - never use them outside tests:

**Through the real middleware** (recommended: the gate verifies the chain,
applies tenant and route policies, access and report-only modes exactly as
in production; only the TLS handshake is skipped):

```python
from fastapi.testclient import TestClient
from certgate.testing import TestPKI, with_client_cert

pki = TestPKI()                       # tenant "test": hosts testserver, localhost
app = create_app(gate=pki.gate(access="optional"))
alice = pki.issue_client("alice", dns=["alice.test"])
client = TestClient(with_client_cert(app, alice))
assert client.get("/whoami").json()["common_name"] == "alice"
assert TestClient(app).get("/whoami").status_code == 403     # no certificate
```

:func:`with_client_cert` puts the chain where an ASGI server with the
``tls`` extension puts it (``scope["extensions"]["tls"]["client_cert_chain"]``),
which certgate reads as the TLS transport; the gate must keep
``transport=True`` (the default). ``TestClient``'s default Host is
``testserver``, one of the tenant's hosts. For WSGI / Flask,
:func:`wsgi_environ` gives the environ keys a TLS-terminating WSGI server
sets (``SSL_CLIENT_CERT`` and ``SSL_CLIENT_CERT_CHAIN_n``):
``client.get("/", environ_base=wsgi_environ(alice))``.

**Without the middleware** (unit tests of handlers): a real
:class:`~certgate.identity.ClientIdentity` from :func:`fake_identity` (or
:meth:`TestPKI.identity`), injected as a FastAPI dependency override:

```python
from certgate.fastapi import client_identity
app.dependency_overrides[client_identity] = lambda: fake_identity("alice")
# or, for every certgate dependency of the app, keeping each route's policy:
override_identity(app, fake_identity("alice"))
```

This module imports neither FastAPI nor Flask (only when a function that
needs FastAPI is called).
"""

from __future__ import annotations

import datetime as dt
import functools
import inspect
from collections.abc import Iterable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding

from .devpki import CA, IssuedCert
from .events import DecisionEvent, ExpiryEvent, ReloadEvent, TrustExpiryEvent
from .gate import CertGate
from .identity import ClientIdentity
from .registry import InMemoryRegistry
from .tenant import Tenant

if TYPE_CHECKING:
    from .asgi import ASGIApp, Receive, Scope, Send
    from .policy import Policy

__all__ = [
    "DEFAULT_HOSTS",
    "RecordingObserver",
    "TestCertificate",
    "TestPKI",
    "fake_identity",
    "override_identity",
    "presenting",
    "with_client_cert",
    "wsgi_environ",
]

DEFAULT_HOSTS: tuple[str, ...] = ("testserver", "localhost")
"""Starlette's ``TestClient`` sends ``Host: testserver``; Flask's test client
``localhost``."""


@dataclass(frozen=True)
class TestCertificate:
    """A client certificate issued by a :class:`TestPKI` (with its key)."""

    __test__ = False  # not a pytest test class

    issued: IssuedCert

    @property
    def pem_chain(self) -> list[str]:
        """Leaf first, then the intermediates the client sends (PEM text)."""
        certs = (self.issued.cert, *self.issued.issuers)
        return [cert.public_bytes(Encoding.PEM).decode("ascii") for cert in certs]

    @property
    def chain_pem(self) -> bytes:
        """The PEM chain as one blob (what a client's certificate file holds)."""
        return self.issued.chain_pem

    @property
    def ders(self) -> list[bytes]:
        return self.issued.chain_ders

    @property
    def fingerprint(self) -> str:
        """Hex SHA-256 of the leaf (``identity.fingerprint_sha256``)."""
        return self.issued.cert.fingerprint(hashes.SHA256()).hex()

    @property
    def serial(self) -> str:
        """The leaf's serial number in hex (``identity.serial``)."""
        return format(self.issued.cert.serial_number, "x")


class TestPKI:
    """A throwaway PKI with one tenant for app tests.

    ``root`` -> ``issuing`` (an intermediate, sent by clients, not configured
    on the tenant - as most device PKIs). The tenant ``tenant_id`` answers on
    ``hosts`` (default ``testserver`` and ``localhost``). Keys are made in
    memory; building a PKI takes a few milliseconds.
    """

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        tenant_id: str = "test",
        *,
        hosts: Iterable[str] = DEFAULT_HOSTS,
        organization: str = "certgate test",
        policy: Policy | None = None,
        mode: str | None = None,
    ) -> None:
        self.tenant_id = tenant_id
        self.hosts = tuple(hosts)
        self.root = CA.root(f"{organization} Root CA", organization=organization)
        self.issuing = self.root.intermediate(
            f"{organization} Issuing CA", organization=organization
        )
        self.policy = policy
        self.mode = mode

    def tenant(self) -> Tenant:
        return Tenant(
            self.tenant_id, self.hosts, (self.root.cert,), policy=self.policy, mode=self.mode
        )

    def registry(self) -> InMemoryRegistry:
        return InMemoryRegistry([self.tenant()])

    def gate(self, **kwargs: Any) -> CertGate:
        """A :class:`~certgate.gate.CertGate` trusting this PKI's tenant
        (``kwargs`` go to ``CertGate``: ``access``, ``mode``, ``routes``, ...)."""
        return CertGate(self.registry(), **kwargs)

    def issue_client(
        self,
        common_name: str = "test-client",
        *,
        organization: str | None = None,
        dns: Iterable[str] = (),
        uri: Iterable[str] = (),
        email: Iterable[str] = (),
        ip: Iterable[str] = (),
        sans: Mapping[str, Iterable[str]] | None = None,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
        **kwargs: Any,
    ) -> TestCertificate:
        """A client certificate of this tenant. ``sans`` is another way to
        give SANs: ``{"dns": [...], "uri": [...], "email": [...], "ip": [...]}``;
        other ``kwargs`` go to :meth:`certgate.devpki.CA.issue`."""
        extra = {key: list(values) for key, values in (sans or {}).items()}
        unknown = set(extra) - {"dns", "uri", "email", "ip"}
        if unknown:
            raise ValueError(f"issue_client: unknown SAN kind(s) {sorted(unknown)}")
        issued = self.issuing.issue(
            common_name,
            organization=organization,
            dns=[*dns, *extra.get("dns", ())],
            uri=[*uri, *extra.get("uri", ())],
            email=[*email, *extra.get("email", ())],
            ip=[*ip, *extra.get("ip", ())],
            not_before=not_before,
            not_after=not_after,
            **kwargs,
        )
        return TestCertificate(issued)

    def identity(self, cert: TestCertificate, *, source: str = "test") -> ClientIdentity:
        """The :class:`~certgate.identity.ClientIdentity` certgate verifies
        for ``cert`` (a real verification; :class:`ValueError` if it fails)."""
        decision = self.gate(cache_size=0).check(self.hosts[0], cert.ders, source=source)
        if decision.identity is None:
            raise ValueError(f"the test certificate does not verify: {decision.reason}")
        return decision.identity


class RecordingObserver:
    r"""An observer (see :mod:`certgate.events`) that keeps every event, for
    asserting in tests what certgate decided:
    ``CertGate(..., observers=[recorder])``, then ``recorder.decisions``
    (``DecisionEvent``\ s, in order), ``recorder.expiring``, and for a gate
    loaded from TOML ``recorder.reloads`` and ``recorder.trust_expiry``."""

    def __init__(self) -> None:
        self.decisions: list[DecisionEvent] = []
        self.expiring: list[ExpiryEvent] = []
        self.reloads: list[ReloadEvent] = []
        self.trust_expiry: list[TrustExpiryEvent] = []

    def on_reload(self, event: ReloadEvent) -> None:
        self.reloads.append(event)

    def on_trust_expiry(self, event: TrustExpiryEvent) -> None:
        self.trust_expiry.append(event)

    def on_decision(self, event: DecisionEvent) -> None:
        self.decisions.append(event)

    def on_expiring(self, event: ExpiryEvent) -> None:
        self.expiring.append(event)


@functools.cache
def _shared_pki() -> TestPKI:
    return TestPKI()


def fake_identity(
    common_name: str = "test-client",
    *,
    organization: str | None = None,
    dns: Iterable[str] = (),
    uri: Iterable[str] = (),
    email: Iterable[str] = (),
    ip: Iterable[str] = (),
    **kwargs: Any,
) -> ClientIdentity:
    """A real, verified :class:`~certgate.identity.ClientIdentity` (tenant
    ``test``) for a new certificate with these names, for dependency
    overrides and handler unit tests. ``kwargs`` go to
    :meth:`TestPKI.issue_client`."""
    pki = _shared_pki()
    cert = pki.issue_client(
        common_name, organization=organization, dns=dns, uri=uri, email=email, ip=ip, **kwargs
    )
    return pki.identity(cert)


# -- ASGI ------------------------------------------------------------------------


def with_client_cert(app: ASGIApp, cert: TestCertificate | Iterable[str] | None) -> ASGIApp:
    """An ASGI app that hands ``app`` every HTTP request and WebSocket with
    ``cert`` as the TLS client certificate (``scope["extensions"]["tls"]
    ["client_cert_chain"]``: PEM strings, leaf first), as certgate's uvicorn
    adapter does. Wrap the app that *contains* certgate's middleware.
    ``cert=None`` removes any client certificate."""
    chain = None if cert is None else _pem_chain(cert)

    async def presenting_app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            scope = dict(scope)
            extensions = dict(scope.get("extensions") or {})
            tls: MutableMapping[str, Any] = dict(extensions.get("tls") or {})
            tls.pop("client_cert_error", None)
            if chain is None:
                tls.pop("client_cert_chain", None)
            else:
                tls["client_cert_chain"] = list(chain)
            extensions["tls"] = tls
            scope["extensions"] = extensions
        await app(scope, receive, send)

    return presenting_app


presenting = with_client_cert
"""Another name for :func:`with_client_cert`."""


def _pem_chain(cert: TestCertificate | Iterable[str]) -> list[str]:
    if isinstance(cert, TestCertificate):
        return cert.pem_chain
    if isinstance(cert, str | bytes):
        raise TypeError("give a TestCertificate or a list of PEM strings, not one string")
    return [str(item) for item in cert]


# -- WSGI ------------------------------------------------------------------------


def wsgi_environ(cert: TestCertificate) -> dict[str, str]:
    """The environ keys a TLS-terminating WSGI server sets for ``cert``:
    ``SSL_CLIENT_CERT`` (the leaf) and ``SSL_CLIENT_CERT_CHAIN_0``, ``_1``,
    ... (the intermediates) - for Flask's ``environ_base`` or Werkzeug's
    ``EnvironBuilder``."""
    leaf, *issuers = cert.pem_chain
    environ = {"SSL_CLIENT_CERT": leaf}
    for index, pem in enumerate(issuers):
        environ[f"SSL_CLIENT_CERT_CHAIN_{index}"] = pem
    return environ


# -- FastAPI dependency overrides -----------------------------------------------------


def override_identity(
    app: Any, identity: ClientIdentity | None, *, gate: CertGate | None = None
) -> None:
    """Make every certgate dependency of a FastAPI ``app`` see ``identity``
    (``None``: no certificate), without TLS or middleware.

    Overrides :func:`certgate.fastapi.client_identity` and
    :func:`~certgate.fastapi.optional_client_identity` and each
    :func:`~certgate.fastapi.require_client_cert` dependency the app's routes
    use - the last ones still check their policy against ``identity``
    (refusing with 403 ``policy_denied``), so route rules stay tested.
    Without ``identity``, the refusing dependencies answer 403
    ``no_certificate``. Undo with ``app.dependency_overrides.clear()``.
    ``gate`` (optional) supplies the clock for policies.
    """
    from .fastapi import (  # noqa: PLC0415
        RequireClientCert,
        api_routes,
        client_identity,
        optional_client_identity,
    )

    overrides = app.dependency_overrides
    overrides[client_identity] = _fake_dependency(identity, None, gate)
    overrides[optional_client_identity] = lambda: identity
    for route in api_routes(app):
        stack = [route.dependant]
        while stack:
            dependant = stack.pop()
            stack.extend(dependant.dependencies)
            if isinstance(dependant.call, RequireClientCert):
                overrides[dependant.call] = _fake_dependency(identity, dependant.call.policy, gate)


def _fake_dependency(
    identity: ClientIdentity | None, policy: Policy | None, gate: CertGate | None
) -> Any:
    from starlette.exceptions import HTTPException  # noqa: PLC0415
    from starlette.requests import HTTPConnection  # noqa: PLC0415

    from .asgi import GATE_KEY  # noqa: PLC0415
    from .errors import ClientCertificateRefused  # noqa: PLC0415
    from .reasons import Reason  # noqa: PLC0415
    from .verification import utc_now  # noqa: PLC0415

    clock = gate.clock if gate is not None else utc_now

    def refuse(connection: HTTPConnection, reason: Reason, detail: str) -> Exception:
        handlers = getattr(connection.app, "exception_handlers", {})
        if GATE_KEY in connection.scope or ClientCertificateRefused in handlers:
            return ClientCertificateRefused(reason, detail)  # the gate's refusal format
        return HTTPException(reason.status, reason.summary, headers={"certgate-reason": reason})

    async def fake(connection: HTTPConnection) -> ClientIdentity:
        if identity is None:
            raise refuse(connection, Reason.NO_CERTIFICATE, "override_identity(app, None)")
        if policy is not None:
            failed = policy.check(identity, clock())
            if failed is not None:
                raise refuse(connection, Reason.POLICY_DENIED, failed)
        return identity

    # The annotation must be the class itself (this module's annotations are
    # strings, and HTTPConnection is not a global here).
    connection = inspect.Parameter(
        "connection", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=HTTPConnection
    )
    fake.__signature__ = inspect.Signature([connection])  # type: ignore[attr-defined]
    return fake
