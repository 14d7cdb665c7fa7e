"""certgate in FastAPI: async dependencies, per-route policies, OpenAPI.

```python
from fastapi import Depends, FastAPI, Security
from certgate import CertGate, ClientIdentity, policy
from certgate.fastapi import (
    client_identity, install, optional_client_identity, require_client_cert,
)

app = FastAPI()
gate = CertGate.from_toml("certgate.toml", access="optional")
install(app, gate)          # middleware + exception handler + OpenAPI mutualTLS

ops_only = require_client_cert(policy.common_name("ops-console"))

@app.get("/whoami")
async def whoami(identity: ClientIdentity = Depends(client_identity)) -> dict:
    return identity.as_dict()

@app.post("/admin/reload")
async def reload(identity: ClientIdentity = Security(ops_only)) -> dict: ...

@app.get("/")
async def home(identity: ClientIdentity | None = Depends(optional_client_identity)) -> dict: ...
```

* :func:`client_identity` - the verified identity, or a refusal.
* :func:`require_client_cert` ``(policy)`` - the same, and the certificate
  must satisfy ``policy`` (403 ``policy_denied``; the failing rule is
  logged, never sent). Usable with ``Depends`` and ``Security``.
* :func:`optional_client_identity` - ``ClientIdentity | None``, never refuses.

All three are coroutine functions: FastAPI runs them on the event loop, not
in the thread pool. A refusal raises
:class:`~certgate.errors.ClientCertificateRefused`, which certgate's
middleware (and the handler :func:`install` registers) answers with the
gate's refusal: the same status, headers and body as a refusal by the
middleware, in the gate's ``refusal_format``. Without certgate's middleware
a route check refuses with a plain 403 and logs an error (never a 500).

**Report-only mode** (``CertGate(mode="report")``, or
``gate.rollout.set_mode("report", ...)`` at run time): dependencies never
refuse; they return the identity when the certificate is valid and
``None`` when it is not (annotate ``ClientIdentity | None`` on routes that
may run in report-only mode). The refusal they would have given is logged
and observed.

**Tests**: override the dependency you depend on, e.g.
``app.dependency_overrides[client_identity] = lambda: identity`` or, for a
policy dependency, the instance (``app.dependency_overrides[ops_only] =
...``); :func:`certgate.testing.override_identity` does both, keeping each
route's policy. See :mod:`certgate.testing`.

**OpenAPI**: :func:`mutual_tls_openapi` (called by :func:`install`) adds the
OpenAPI 3.1 ``mutualTLS`` security scheme to exactly the operations that
need a certificate.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import fastapi.routing
from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.requests import HTTPConnection

from .asgi import CertGateMiddleware
from .errors import ServerSetupError
from .gate import CertGate
from .identity import ClientIdentity
from .policy import Policy
from .rollout import Access
from .starlette import (
    client_identity,
    dependency_result,
    optional_client_identity,
    refusal_handler,
)
from .starlette import install as _install_starlette

__all__ = [
    "DEFAULT_SCHEME_NAME",
    "RequireClientCert",
    "api_routes",
    "certificate_operations",
    "client_identity",
    "install",
    "mutual_tls_openapi",
    "needs_certificate",
    "optional_client_identity",
    "refusal_handler",
    "require_client_cert",
]

DEFAULT_SCHEME_NAME = "mutualTLS"
DEFAULT_DESCRIPTION = (
    "A TLS client certificate issued by a CA of the tenant addressed by the Host header."
)


class RequireClientCert:
    """The dependency made by :func:`require_client_cert` (an instance is
    the ``dependency_overrides`` key for its routes)."""

    def __init__(self, policy: Policy | None = None) -> None:
        if policy is not None and not callable(getattr(policy, "check", None)):
            raise ServerSetupError("require_client_cert(policy): policy must be a certgate Policy")
        self.policy = policy

    async def __call__(self, connection: HTTPConnection) -> ClientIdentity | None:
        """The verified identity when the certificate satisfies the policy;
        ``None`` only in report-only mode; else a refusal."""
        return dependency_result(connection, self.policy)

    def __repr__(self) -> str:
        label = getattr(self.policy, "label", None)
        return f"require_client_cert({label!r})" if label else "require_client_cert()"


def require_client_cert(policy: Policy | None = None) -> RequireClientCert:
    """A dependency for routes that need a client certificate satisfying
    ``policy`` (any verified certificate when ``policy`` is ``None``).

    ``Depends(require_client_cert(p))`` or ``Security(require_client_cert(p))``;
    keep the instance in a variable to reuse it and to override it in tests.
    Returns the identity (``None`` only in report-only mode).
    """
    return RequireClientCert(policy)


# -- OpenAPI -----------------------------------------------------------------


def needs_certificate(call: object) -> bool:
    """Whether a dependency callable is one of certgate's refusing ones."""
    return call is client_identity or isinstance(call, RequireClientCert)


def _calls(dependant: Any) -> Iterator[object]:
    stack = [dependant]
    while stack:
        current = stack.pop()
        yield current.call
        stack.extend(current.dependencies)


def api_routes(app: FastAPI) -> Iterator[Any]:
    """Every ``APIRoute`` of ``app``, routers included (as FastAPI's OpenAPI
    generator sees them: with the prefix and dependencies of the routers
    they were included through)."""
    iterate = getattr(fastapi.routing, "iter_route_contexts", None)
    if iterate is None:  # FastAPI without lazily included routers: all flat
        yield from (route for route in app.routes if isinstance(route, APIRoute))
        return
    for context in iterate(app.routes):
        if isinstance(context.original_route, APIRoute):
            yield context


def certificate_operations(app: FastAPI, gate: CertGate | None = None) -> set[tuple[str, str]]:
    """``(path, method)`` (method lowercase) of every operation that needs a
    client certificate: its dependencies include :func:`client_identity` or
    a :func:`require_client_cert` dependency, or ``gate`` says its path
    requires a certificate (access ``require``, checked on the route's path
    template: ``/items/{id}`` is matched literally)."""
    found: set[tuple[str, str]] = set()
    for route in api_routes(app):
        if not route.include_in_schema:
            continue
        needed = any(needs_certificate(call) for call in _calls(route.dependant))
        if not needed and gate is not None:
            needed = gate.rollout.rule(route.path_format).access is Access.REQUIRE
        if needed:
            found.update((route.path_format, method.lower()) for method in route.methods or ())
    return found


def _gate_of(app: FastAPI) -> CertGate | None:
    for middleware in app.user_middleware:
        if getattr(middleware, "cls", None) is CertGateMiddleware:
            gate = middleware.kwargs.get("gate")
            if gate is None and middleware.args:
                gate = middleware.args[0]
            if isinstance(gate, CertGate):
                return gate
    return None


def mutual_tls_openapi(
    app: FastAPI,
    gate: CertGate | None = None,
    *,
    scheme_name: str = DEFAULT_SCHEME_NAME,
    description: str = DEFAULT_DESCRIPTION,
) -> None:
    """Make ``app.openapi()`` declare the OpenAPI 3.1 ``mutualTLS`` scheme.

    FastAPI's own security-scheme types reject ``mutualTLS``, so this wraps
    ``app.openapi``: the generated document gets
    ``components.securitySchemes[scheme_name] = {"type": "mutualTLS",
    "description": description}``, and ``{scheme_name: []}`` is added to
    the security requirements of exactly the operations
    :func:`certificate_operations` names - those using a refusing certgate
    dependency, and those whose path ``gate`` (default: the gate of the
    app's :class:`~certgate.asgi.CertGateMiddleware`, if added before this
    call) requires a certificate for. An operation with other security
    requirements (OAuth2, say) needs the certificate *and* one of them, so
    the scheme is added to each alternative. Optional and exempt paths
    without such a dependency are left alone. Idempotent.
    """
    gate = gate if gate is not None else _gate_of(app)
    original: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        document = original()
        _add_mutual_tls(document, certificate_operations(app, gate), scheme_name, description)
        return document

    app.openapi = openapi  # type: ignore[method-assign]


def _add_mutual_tls(
    document: dict[str, Any],
    operations: set[tuple[str, str]],
    scheme_name: str,
    description: str,
) -> None:
    components = document.setdefault("components", {})
    schemes = components.setdefault("securitySchemes", {})
    schemes[scheme_name] = {"type": "mutualTLS", "description": description}
    paths = document.get("paths", {})
    for path, method in operations:
        operation = paths.get(path, {}).get(method)
        if not isinstance(operation, dict):
            continue
        requirements = operation.get("security")
        if not requirements:
            operation["security"] = [{scheme_name: []}]
            continue
        for requirement in requirements:
            requirement.setdefault(scheme_name, [])


# -- installing ----------------------------------------------------------------


def install(app: FastAPI, gate: CertGate, *, openapi: bool = True) -> None:
    """Put certgate in front of ``app``: :class:`~certgate.asgi.CertGateMiddleware`
    (outermost), the :func:`refusal_handler` for
    :class:`~certgate.errors.ClientCertificateRefused` (for a middleware between
    that would turn it into a 500) and, with ``openapi``,
    :func:`mutual_tls_openapi`. Raises
    :class:`~certgate.errors.ServerSetupError` if the app already has
    certgate's middleware."""
    _install_starlette(app, gate)
    if openapi:
        mutual_tls_openapi(app, gate)
