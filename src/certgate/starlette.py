"""certgate in Starlette (and the parts of FastAPI that are plain Starlette).

Install certgate's middleware outermost; everything here reads what it left
in the scope (``certgate.decision``, ``certgate.identity``, ``certgate.gate``):

```python
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from certgate import CertGate
from certgate.asgi import CertGateMiddleware
from certgate.starlette import CertificateAuthBackend, require_client_cert

gate = CertGate.from_toml("certgate.toml", access="optional")
app = Starlette(routes=[...], middleware=[
    Middleware(CertGateMiddleware, gate=gate),           # first = outermost
    Middleware(AuthenticationMiddleware, backend=CertificateAuthBackend(
        scopes={"admin": certgate.policy.common_name("ops-console")})),
])
```

* :class:`CertificateAuthBackend`: ``request.user`` is a
  :class:`CertificateUser` (or Starlette's ``UnauthenticatedUser``) and
  ``request.auth.scopes`` holds ``"authenticated"``, ``"client_cert"`` and
  every named scope whose policy the certificate satisfies, so Starlette's
  ``@requires("admin")`` works. Refusals of ``@requires`` are Starlette's own
  (a bare 403, not logged by certgate).
* :func:`require_client_cert`: a decorator for endpoints (``async def``,
  ``def``, WebSocket endpoints and ``HTTPEndpoint`` methods) that asks the
  gate (:meth:`~certgate.gate.CertGate.authorize_route`) and answers a
  refusal exactly like the middleware does (same status, headers and body,
  logged and observed; a WebSocket is refused before accept).
* :func:`client_identity` / :func:`optional_client_identity`: **async**
  FastAPI dependencies (see :mod:`certgate.fastapi` for the policy-taking
  one, the installer and the OpenAPI helper).
* :func:`get_identity`: the identity of a ``Request`` or ``WebSocket``, or
  ``None``.

What is checked: only what the middleware verified (chain, tenant, the
tenant's default policy) plus the route's policy. Without the middleware
nothing can be verified: every route check refuses (403 ``internal_error``)
and logs an error - it never lets a request through and never answers 500.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, cast

from starlette.authentication import AuthCredentials, AuthenticationBackend, BaseUser
from starlette.exceptions import HTTPException, WebSocketException
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response
from starlette.websockets import WebSocket

from .asgi import (
    DECISION_KEY,
    GATE_KEY,
    CertGateMiddleware,
    identity_from_scope,
    send_refusal,
    socket_peer,
)
from .decision import Decision
from .errors import ClientCertificateRefused, ServerSetupError
from .gate import CertGate
from .identity import ClientIdentity
from .policy import Policy
from .problem import RefusalResponse, Refusals
from .reasons import Reason
from .verification import utc_now

logger = logging.getLogger("certgate")

__all__ = [
    "BASE_SCOPES",
    "CertificateAuthBackend",
    "CertificateUser",
    "client_identity",
    "get_identity",
    "install",
    "optional_client_identity",
    "refusal_handler",
    "require_client_cert",
    "route_check",
]

BASE_SCOPES: tuple[str, ...] = ("authenticated", "client_cert")
"""The scopes every request with a verified certificate gets."""

_NO_MIDDLEWARE = (
    "certgate: a route-level check ran without certgate's middleware in front of the app "
    "(no scope['certgate.gate']): request refused (403). Install CertGateMiddleware "
    "outermost, e.g. certgate.fastapi.install(app, gate). path=%.255r"
)
_DEFAULT_REFUSALS = Refusals()

Endpoint = TypeVar("Endpoint", bound=Callable[..., Any])


def get_identity(connection: HTTPConnection) -> ClientIdentity | None:
    """The identity certgate verified for this request, or ``None`` (exempt
    or optional path without a certificate, or no certgate middleware in
    front of the app)."""
    return identity_from_scope(connection.scope)


# -- the route check ------------------------------------------------------


def route_check(connection: HTTPConnection, policy: Policy | None = None) -> Decision:
    """Ask the gate whether this request may use a route that needs a
    certificate (and ``policy``, if given).

    Returns the gate's :class:`~certgate.decision.Decision` (logged and
    observed as a ``route`` decision): refuse iff ``result.blocks``. Without
    certgate's middleware there is no gate: the result is an
    ``internal_error`` refusal in enforce mode, and an error is logged.
    An identity the application would not get (the Host was rewritten after
    certgate checked it, see :func:`~certgate.asgi.identity_from_scope`) is
    treated as absent.
    """
    scope = connection.scope
    gate = scope.get(GATE_KEY)
    path = scope.get("path")
    path = path if isinstance(path, str) else ""
    if not isinstance(gate, CertGate):
        logger.error(_NO_MIDDLEWARE, path)
        return Decision(reason=Reason.INTERNAL_ERROR, detail="certgate middleware missing")
    decision = scope.get(DECISION_KEY)
    if isinstance(decision, Decision):
        if decision.identity is not None and identity_from_scope(scope) is None:
            decision = decision._replace(identity=None)
    else:
        decision = None
    return gate.authorize_route(
        decision,
        policy,
        path=path,
        host=connection.headers.get("host"),
        peer=socket_peer(scope, trust_reported=gate.trust.trust_reported_peer),
    )


def _refusal(connection: HTTPConnection, reason: Reason) -> RefusalResponse:
    gate = connection.scope.get(GATE_KEY)
    if isinstance(gate, CertGate):
        return gate.refusal(reason)
    return _DEFAULT_REFUSALS(reason)


def refusal_response(connection: HTTPConnection, reason: Reason) -> Response:
    """The gate's refusal for ``reason`` as a Starlette ``Response`` (the
    default problem+json when there is no gate)."""
    refusal = _refusal(connection, reason)
    headers = {name: value for name, value in refusal.headers if name != "content-length"}
    return Response(refusal.body, status_code=refusal.status, headers=headers)


async def refuse_websocket(websocket: WebSocket, reason: Reason) -> None:
    """Refuse a WebSocket handshake with the gate's refusal (before accept:
    an HTTP response where the server supports it, else close code 1008)."""
    await send_refusal(
        _refusal(websocket, reason), reason, websocket.scope, websocket.receive, websocket.send
    )


# -- FastAPI-style dependencies (plain Starlette types only) ---------------


def dependency_result(connection: HTTPConnection, policy: Policy | None) -> ClientIdentity | None:
    """The route check of a dependency: the identity, ``None`` when a
    report-only refusal let the request through without one, or an
    exception: :class:`~certgate.errors.ClientCertificateRefused` (rendered
    by certgate's middleware or :func:`refusal_handler` in the gate's
    format), or - without the middleware - a plain 403 ``HTTPException``
    (``WebSocketException`` 1008 on a WebSocket)."""
    if policy is None:  # the common case, decided without building a route decision
        scope = connection.scope
        gate = scope.get(GATE_KEY)
        decision = scope.get(DECISION_KEY)
        if (
            isinstance(gate, CertGate)
            and isinstance(decision, Decision)
            and decision.reason is None
            and decision.identity is not None
            and not gate.observes_allows()
        ):
            # What route_check would return: an allow nobody observes.
            identity = identity_from_scope(scope)
            if identity is not None:
                return identity
    result = route_check(connection, policy)
    if not result.blocks:
        return result.identity
    reason = result.reason
    assert reason is not None  # blocks implies a reason
    if not isinstance(connection.scope.get(GATE_KEY), CertGate):
        if connection.scope.get("type") == "websocket":
            raise WebSocketException(code=1008, reason=reason.value)
        raise HTTPException(status_code=403, detail=reason.summary)
    raise ClientCertificateRefused(reason, result.detail, result.fingerprint)


async def client_identity(connection: HTTPConnection) -> ClientIdentity | None:
    """FastAPI dependency: the verified identity of the request.

    A coroutine function, so FastAPI runs it on the event loop (a plain
    ``def`` dependency runs in the thread pool, which costs about half the
    throughput of a small endpoint).

    Refuses (403 ``no_certificate``, ``policy_denied``, ... in the gate's
    refusal format) when the request has no verified certificate - on an
    optional or exempt path, say. Returns ``None`` **only in report-only
    mode**, when the request would have been refused and is let through
    (the refusal is logged and observed); in enforce mode the result is
    always a :class:`~certgate.identity.ClientIdentity`.

    To test routes without TLS, override it:
    ``app.dependency_overrides[client_identity] = lambda: identity`` (see
    :mod:`certgate.testing`).
    """
    return dependency_result(connection, None)


async def optional_client_identity(connection: HTTPConnection) -> ClientIdentity | None:
    """FastAPI dependency for public routes: the verified identity, or
    ``None`` when the request carries none (an optional or exempt path, or
    an identity the app would not see). Never refuses - a certificate that
    is presented and invalid was already refused by the middleware (unless
    the path is exempt: certgate does not look at exempt requests)."""
    return identity_from_scope(connection.scope)


# -- Starlette authentication --------------------------------------------


class CertificateUser(BaseUser):
    """``request.user`` for a request with a verified client certificate.

    ``client_identity`` is the :class:`~certgate.identity.ClientIdentity`;
    ``identity`` is Starlette's string identifier of the user (the leaf's
    SHA-256 fingerprint, hex), ``display_name`` the common name (else the
    RFC 4514 subject).
    """

    def __init__(self, client_identity: ClientIdentity) -> None:
        self.client_identity = client_identity

    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def display_name(self) -> str:
        """The common name, else the RFC 4514 subject (the certificate's
        text: escape it before writing it into HTML or logs)."""
        return self.client_identity.common_name or self.client_identity.subject

    @property
    def identity(self) -> str:
        """The leaf's SHA-256 fingerprint (hex): Starlette's user identifier."""
        return self.client_identity.fingerprint_sha256

    def __repr__(self) -> str:
        tenant = self.client_identity.tenant_id
        return f"CertificateUser(tenant={tenant!r}, fingerprint={self.identity[:16]}...)"


class CertificateAuthBackend(AuthenticationBackend):
    """Starlette ``AuthenticationBackend`` for certgate's verified identity.

    Install it with Starlette's ``AuthenticationMiddleware`` *inside*
    :class:`~certgate.asgi.CertGateMiddleware`. A request with an identity
    gets a :class:`CertificateUser` and the scopes ``base_scopes``
    (``"authenticated"``, ``"client_cert"``) plus each name in ``scopes``
    whose policy holds for the certificate (checked at the gate's clock); a
    request without one is not authenticated (Starlette's
    ``UnauthenticatedUser``, no scopes). A policy that raises grants nothing
    (logged). Scope checks are not decisions: they are not observed; use
    :func:`require_client_cert` for refusals that are logged and rendered in
    certgate's format.
    """

    def __init__(
        self,
        scopes: Mapping[str, Policy] | None = None,
        *,
        base_scopes: tuple[str, ...] = BASE_SCOPES,
    ) -> None:
        self.scopes = dict(scopes or {})
        for name, policy in self.scopes.items():
            if not isinstance(name, str) or not callable(getattr(policy, "check", None)):
                raise ServerSetupError(
                    f"CertificateAuthBackend scopes: {name!r} must name a certgate Policy"
                )
        self.base_scopes = tuple(base_scopes)

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, BaseUser] | None:
        identity = identity_from_scope(conn.scope)
        if identity is None:
            return None
        gate = conn.scope.get(GATE_KEY)
        now = gate.clock() if isinstance(gate, CertGate) else utc_now()
        granted = list(self.base_scopes)
        for name, policy in self.scopes.items():
            try:
                failed = policy.check(identity, now)
            except Exception as exc:
                logger.error(
                    "certgate: policy of scope %r raised, scope not granted: %r", name, exc,
                    exc_info=exc,
                )  # fmt: skip
                continue
            if failed is None:
                granted.append(name)
        return AuthCredentials(granted), CertificateUser(identity)


# -- the endpoint decorator ----------------------------------------------


def require_client_cert(policy: Policy | None = None) -> Callable[[Endpoint], Endpoint]:
    """Decorate a Starlette endpoint so it runs only for a request with a
    verified client certificate (and, with ``policy``, one it allows).

    Works on ``async def endpoint(request)``, ``def endpoint(request)``,
    ``async def endpoint(websocket)`` and ``HTTPEndpoint`` methods (the
    argument must be named ``request`` or ``websocket``, as for Starlette's
    ``@requires``). A refusal is answered like the middleware's (status,
    headers and body in the gate's refusal format; a WebSocket before
    accept) and logged and observed as a ``route`` decision. In report-only
    mode the endpoint always runs. Read the identity with
    :func:`get_identity` (it may be ``None`` in report-only mode).
    """

    def decorate(endpoint: Endpoint) -> Endpoint:
        kind, index = _connection_argument(endpoint)
        if kind == "websocket":

            @functools.wraps(endpoint)
            async def websocket_endpoint(*args: Any, **kwargs: Any) -> Any:
                websocket = _argument(args, kwargs, "websocket", index, WebSocket)
                result = route_check(websocket, policy)
                if result.blocks:
                    await refuse_websocket(websocket, result.reason)  # type: ignore[arg-type]
                    return None
                return await endpoint(*args, **kwargs)

            return cast("Endpoint", websocket_endpoint)
        if inspect.iscoroutinefunction(endpoint):

            @functools.wraps(endpoint)
            async def async_endpoint(*args: Any, **kwargs: Any) -> Any:
                request = _argument(args, kwargs, "request", index, Request)
                result = route_check(request, policy)
                if result.blocks:
                    return refusal_response(request, result.reason)  # type: ignore[arg-type]
                return await endpoint(*args, **kwargs)

            return cast("Endpoint", async_endpoint)

        @functools.wraps(endpoint)
        def sync_endpoint(*args: Any, **kwargs: Any) -> Any:
            request = _argument(args, kwargs, "request", index, Request)
            result = route_check(request, policy)
            if result.blocks:
                return refusal_response(request, result.reason)  # type: ignore[arg-type]
            return endpoint(*args, **kwargs)

        return cast("Endpoint", sync_endpoint)

    if policy is not None and not callable(getattr(policy, "check", None)):
        raise ServerSetupError(
            "require_client_cert(policy): policy must be a certgate Policy "
            "(use @require_client_cert() without arguments for any valid certificate)"
        )
    return decorate


def _connection_argument(endpoint: Callable[..., Any]) -> tuple[str, int]:
    for index, parameter in enumerate(inspect.signature(endpoint).parameters.values()):
        if parameter.name in ("request", "websocket"):
            return parameter.name, index
    raise ServerSetupError(
        f"@require_client_cert: {getattr(endpoint, '__qualname__', endpoint)!r} has no "
        "argument named 'request' or 'websocket'"
    )


_C = TypeVar("_C", Request, WebSocket)


def _argument(
    args: tuple[Any, ...], kwargs: dict[str, Any], name: str, index: int, kind: type[_C]
) -> _C:
    value = kwargs.get(name, args[index] if index < len(args) else None)
    if not isinstance(value, kind):
        raise ServerSetupError(f"@require_client_cert: {name!r} is not a {kind.__name__}")
    return value


# -- installing ------------------------------------------------------------


async def refusal_handler(connection: HTTPConnection, exc: Exception) -> Response | None:
    """Exception handler for :class:`~certgate.errors.ClientCertificateRefused`:
    answers it in the gate's refusal format (a WebSocket is refused before
    accept). Registered by :func:`install`; useful when a middleware between
    certgate's and the app would otherwise turn the exception into a 500."""
    reason = exc.reason if isinstance(exc, ClientCertificateRefused) else Reason.INTERNAL_ERROR
    if isinstance(connection, WebSocket):
        await refuse_websocket(connection, reason)
        return None
    return refusal_response(connection, reason)


def install(app: Any, gate: CertGate) -> None:
    """Add :class:`~certgate.asgi.CertGateMiddleware` (outermost) to a
    Starlette or FastAPI ``app`` and register :func:`refusal_handler` for
    :class:`~certgate.errors.ClientCertificateRefused`.

    Raises :class:`~certgate.errors.ServerSetupError` when the app already
    has a certgate middleware (never check a request twice) or when ``gate``
    is not a :class:`~certgate.gate.CertGate`.
    """
    if not isinstance(gate, CertGate):
        raise ServerSetupError(f"install(app, gate): gate must be a CertGate, not {gate!r}")
    for middleware in getattr(app, "user_middleware", ()):
        if getattr(middleware, "cls", None) is CertGateMiddleware:
            raise ServerSetupError("install(app, gate): the app already has CertGateMiddleware")
    app.add_middleware(CertGateMiddleware, gate=gate)
    app.add_exception_handler(ClientCertificateRefused, refusal_handler)
