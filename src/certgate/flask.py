"""certgate for Flask: an extension, per-route decorators and test support.

```python
from flask import Blueprint, Flask
from certgate.flask import CertGateFlask, get_identity, protect_blueprint, require_client_cert

app = Flask(__name__)
app.config["CERTGATE_CONFIG"] = "certgate.toml"
app.config["CERTGATE_ACCESS"] = "optional"    # authenticate everywhere, enforce per route
CertGateFlask(app)

@app.get("/")                                 # public: identity when a device calls
def index():
    identity = get_identity()                 # ClientIdentity | None
    return {"device": None if identity is None else identity.common_name}

@app.get("/whoami")
@require_client_cert()                        # any valid certificate of the tenant
def whoami():
    return get_identity().as_dict()

@app.post("/admin/rotate")
@require_client_cert(common_name("ops-console"))  # a per-route policy
def rotate(): ...

admin = protect_blueprint(Blueprint("admin", __name__, url_prefix="/admin"))
```

**The extension.** ``CertGateFlask(app)`` (or ``ext = CertGateFlask()`` then
``ext.init_app(app)`` in an app factory) wraps ``app.wsgi_app`` in
:class:`~certgate.wsgi.CertGateWSGIMiddleware`, so a request the gate
refuses never reaches Flask (no view, no ``before_request``). The per-app
state (:class:`CertGateState`: the app's gate and middleware) lives in
``app.extensions["certgate"]``, never on the extension object: one extension
object serves any number of apps, each with its own gate. A second
``init_app`` for the same app raises :class:`~certgate.errors.ServerSetupError`
(the middleware would otherwise check every request twice, possibly against
two gates).

**Settings** come from ``app.config`` unless a :class:`~certgate.gate.CertGate`
is passed (to ``init_app``, or to the constructor for every app):
``CERTGATE_CONFIG`` names the TOML file (its tenants and ``[certgate]``
table), or ``CERTGATE_REGISTRY`` is a trust registry object; every
:class:`~certgate.gate.CertGate` keyword argument can be set as
``CERTGATE_<NAME>`` (``CERTGATE_ACCESS``, ``CERTGATE_MODE``,
``CERTGATE_TRUSTED_PROXIES``, ``CERTGATE_REFUSAL_FORMAT``, ...) and overrides
the TOML's ``[certgate]`` value. A ``CERTGATE_*`` key that is not a setting
is a :class:`~certgate.errors.ConfigError` naming it (a typo never silently
leaves a setting at its default), and so is a value of the wrong type (a
string where a list is expected, ``"false"`` for a boolean). When a gate is
passed, the ``CERTGATE_*`` keys are still checked for typos but not applied
(a warning names them).

**Route checks.** With ``access = "optional"`` the middleware verifies any
certificate that is presented and attaches its identity, lets requests
without one through, and the routes decide:

* :func:`require_client_cert` decorates a view (sync or ``async``), a
  class-based view (``decorators = [require_client_cert()]``, or the class
  itself - subclasses included) or a method. Write it *below* the route
  decorator; written above, Flask routes the unchecked function, and the
  extension refuses such a route (``internal_error``, logged);
* :func:`protect_blueprint` checks every request routed to a blueprint,
  before the blueprint's other ``before_request`` hooks;
* :func:`authorize` is the same check as a call, returning the identity.

Each asks :meth:`CertGate.authorize_route <certgate.gate.CertGate.authorize_route>`
with the middleware's decision and the route's policy: no identity gives
``no_certificate``, a failing policy ``policy_denied`` (the failing rule goes
to the ``certgate`` log, never to the client), and a refusal is answered with
the gate's refusal (:meth:`CertGate.refusal`: the same status, headers and
body as the middleware, ``application/problem+json`` by default). In
report-only mode (``CERTGATE_MODE = "report"``, or
``get_gate().rollout.set_mode("report")`` at run time) the refusal is logged
and the view runs; the identity is attached when the certificate was valid.

**Reading the identity.** :func:`get_identity` returns the verified
:class:`~certgate.identity.ClientIdentity` or ``None`` (no certificate on an
optional or exempt path, or the Host changed after certgate checked it) - a
real ``None``, so ``is None`` works. :func:`require_identity` returns the
identity or answers ``no_certificate`` in the gate's refusal format; it has
nothing to return without an identity, so it refuses even in report-only
mode (use the decorator for checks that follow the rollout mode). There is
deliberately no ``current_identity`` proxy: a proxy object is never ``None``,
so ``current_identity is None`` was never true; importing the old name
raises an ``ImportError`` saying what to use instead.

**Testing your routes** without TLS: the WSGI transport source reads the
PEM certificate a server puts in ``environ["SSL_CLIENT_CERT"]`` (see
:mod:`certgate.sources.wsgi_environ`; a client cannot set that key - its
headers arrive as ``HTTP_*``). :func:`client_cert_environ` turns a PEM chain
into those keys, so Flask's test client sends a real certificate through the
real middleware, verified against the tenant of the request's Host::

    from certgate.devpki import CA
    root = CA.root("Test Root")                   # the tenant's root in your test gate
    device = root.issue("sensor-17")
    client.get("/whoami", headers={"Host": "pay.acme.test"},
               environ_overrides=client_cert_environ(device.chain_pem))

The test client has no server socket, so the peer is unknown and only this
transport certificate counts (unless ``trust_reported_peer`` makes the test
client's ``REMOTE_ADDR`` a trusted proxy).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import os
import ssl
import threading
import weakref
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar, cast, overload

from flask import Blueprint, Flask, Response, abort, current_app, has_app_context, request
from flask.views import View

from .decision import Decision
from .errors import ConfigError, Rejected, ServerSetupError
from .gate import CertGate
from .identity import ClientIdentity
from .pem import pem_to_ders
from .policy import Policy, policy_from_config
from .problem import RefusalResponse, Refusals
from .reasons import Reason
from .rollout import Route
from .sources.base import HeaderSource
from .wsgi import (
    DECISION_KEY,
    GATE_KEY,
    CertGateWSGIMiddleware,
    Environ,
    identity_from_environ,
    socket_peer,
)

if TYPE_CHECKING:
    from .wsgi import WSGIApp

__all__ = [
    "EXTENSION_KEY",
    "CertGateFlask",
    "CertGateState",
    "authorize",
    "client_cert_environ",
    "gate_settings",
    "get_gate",
    "get_identity",
    "protect_blueprint",
    "refusal_response",
    "require_client_cert",
    "require_identity",
]

logger = logging.getLogger("certgate")

EXTENSION_KEY = "certgate"
"""The key of the per-app :class:`CertGateState` in ``app.extensions``."""

PREFIX = "CERTGATE_"
CONFIG_KEY = "CERTGATE_CONFIG"
REGISTRY_KEY = "CERTGATE_REGISTRY"

F = TypeVar("F", bound=Callable[..., Any])

# -- settings from app.config ---------------------------------------------

_GATE_ARGUMENTS = tuple(
    name
    for name, parameter in inspect.signature(CertGate.__init__).parameters.items()
    if parameter.kind is inspect.Parameter.KEYWORD_ONLY
)
"""Every keyword argument of :class:`CertGate` (``CERTGATE_<NAME>``)."""

_SETTING_KEYS = {PREFIX + name.upper(): name for name in _GATE_ARGUMENTS}
_KNOWN_KEYS = frozenset({CONFIG_KEY, REGISTRY_KEY, *_SETTING_KEYS})

_BOOLEANS = frozenset({"transport", "strip_known_headers", "trust_reported_peer"})
_INTEGERS = frozenset({"cache_size", "max_chain_depth", "min_rsa_bits"})
_NUMBERS = frozenset({"registry_timeout", "expiry_warning_days"})
_LISTS: dict[str, tuple[type, ...]] = {
    "trusted_proxies": (str,),
    "header_sources": (str, HeaderSource),
    "exempt_paths": (str,),
    "routes": (Route,),
    "observers": (object,),
}
_TEXT_OR_CALLABLE = frozenset({"refusal_format"})
_CALLABLES = frozenset({"tenant_resolver", "clock"})


def gate_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """The :class:`CertGate` keyword arguments set in ``config`` (an
    ``app.config``) as ``CERTGATE_<NAME>``.

    Raises :class:`~certgate.errors.ConfigError` naming the key for a
    ``CERTGATE_*`` key that is no setting, and for a value of the wrong type
    (a string where a list is expected - it would be read one character at
    a time -, a non-boolean for a boolean, ...). Values the gate checks
    itself (``access``, ``mode``, path patterns, CIDRs) are checked when the
    gate is built, with the gate's messages. A key set to ``None`` counts as
    not set.
    """
    unknown = sorted(key for key in config if key.startswith(PREFIX) and key not in _KNOWN_KEYS)
    if unknown:
        raise ConfigError(
            f"app.config: unknown certgate setting {', '.join(repr(k[:80]) for k in unknown[:5])} "
            f"(known: {', '.join(sorted(_KNOWN_KEYS))})"
        )
    settings: dict[str, Any] = {}
    for key, name in _SETTING_KEYS.items():
        value = config.get(key)
        if value is not None:  # None: not set (a config class's placeholder)
            settings[name] = _checked(key, name, value)
    return settings


def _checked(key: str, name: str, value: Any) -> Any:
    where = f"app.config[{key!r}]"
    if name in _BOOLEANS and not isinstance(value, bool):
        raise ConfigError(f"{where} must be True or False, not {type(value).__name__}")
    if name in _INTEGERS and (not isinstance(value, int) or isinstance(value, bool)):
        raise ConfigError(f"{where} must be an integer, not {type(value).__name__}")
    if name in _NUMBERS and (not isinstance(value, int | float) or isinstance(value, bool)):
        raise ConfigError(f"{where} must be a number, not {type(value).__name__}")
    if name in _TEXT_OR_CALLABLE and not (isinstance(value, str) or callable(value)):
        raise ConfigError(f"{where} must be a format name or a callable")
    if name in _CALLABLES and not callable(value):
        raise ConfigError(f"{where} must be a callable")
    if name == "policy" and isinstance(value, Mapping):
        return policy_from_config(value, where)  # the TOML shape, as a dict
    if name == "policy" and not isinstance(value, Policy):
        raise ConfigError(
            f"{where} must be a certgate.policy Policy or a policy table (dict), "
            f"not {type(value).__name__}"
        )
    item_types = _LISTS.get(name)
    if item_types is not None:
        if not isinstance(value, list | tuple):
            raise ConfigError(
                f"{where} must be a list (not {type(value).__name__}: a string would be "
                "read one character at a time)"
            )
        for item in value:
            if not isinstance(item, item_types):
                raise ConfigError(f"{where}: {type(item).__name__} items are not allowed")
        return tuple(value)
    return value


def _gate_from_config(config: Mapping[str, Any]) -> CertGate:
    settings = gate_settings(config)
    path = config.get(CONFIG_KEY)
    registry = config.get(REGISTRY_KEY)
    if path and registry is not None:
        raise ConfigError(
            f"app.config sets both {CONFIG_KEY} and {REGISTRY_KEY}: the TOML file's "
            "tenants and a registry object cannot both be the trust store; keep one"
        )
    if path:
        if not isinstance(path, str | os.PathLike):
            raise ConfigError(f"app.config[{CONFIG_KEY!r}] must be a path")
        return CertGate.from_toml(cast("str | os.PathLike[str]", path), **settings)
    if registry is not None:
        return CertGate(registry, **settings)
    raise ServerSetupError(
        "CertGateFlask needs a CertGate (CertGateFlask(app, gate) or init_app(app, gate)), "
        f"or app.config[{CONFIG_KEY!r}] naming a certgate TOML file, or "
        f"app.config[{REGISTRY_KEY!r}] holding a trust registry"
    )


# -- the extension ----------------------------------------------------------


@dataclass(frozen=True)
class CertGateState:
    """What :class:`CertGateFlask` keeps per app, in ``app.extensions["certgate"]``."""

    gate: CertGate
    middleware: CertGateWSGIMiddleware
    extension: CertGateFlask


class CertGateFlask:
    """The Flask extension: certgate's WSGI middleware in front of each app.

    ``gate``, when given, is used for every app :meth:`init_app` is called
    for without a gate of its own; otherwise each app's gate is built from
    its ``app.config`` (see the module docstring). The extension object holds
    no per-app state: it may serve several apps.
    """

    def __init__(self, app: Flask | None = None, gate: CertGate | None = None) -> None:
        self.gate = gate
        """The default gate given to the constructor (``None``: each app's
        gate comes from its config). An app's own gate: :func:`get_gate`."""
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask, gate: CertGate | None = None) -> CertGateState:
        """Install certgate in front of ``app`` and return the app's state.

        ``gate`` (else the constructor's, else one built from ``app.config``)
        checks every request. Raises :class:`~certgate.errors.ServerSetupError`
        when the app already has certgate installed, and
        :class:`~certgate.errors.ConfigError` for a bad ``CERTGATE_*`` key.
        """
        if EXTENSION_KEY in app.extensions or isinstance(app.wsgi_app, CertGateWSGIMiddleware):
            raise ServerSetupError(
                f"certgate is already installed on Flask app {app.name!r}: call init_app once "
                "per app (a second middleware would check every request twice)"
            )
        chosen = gate if gate is not None else self.gate
        if chosen is None:
            chosen = _gate_from_config(app.config)
        else:
            gate_settings(app.config)  # typos and bad values are errors all the same
            ignored = sorted(
                key
                for key, value in app.config.items()
                if key.startswith(PREFIX) and value is not None
            )
            if ignored:
                logger.warning(
                    "certgate: Flask app %r was given a CertGate, so its app.config settings "
                    "%s are not applied (configure the gate itself instead)",
                    app.name,
                    ", ".join(ignored),
                )
        middleware = CertGateWSGIMiddleware(cast("WSGIApp", app.wsgi_app), chosen)
        state = CertGateState(gate=chosen, middleware=middleware, extension=self)
        app.before_request(_check_decorator_order)
        _run_first(app.before_request_funcs, _check_decorator_order)
        app.wsgi_app = middleware  # type: ignore[method-assign]
        app.extensions[EXTENSION_KEY] = state
        return state


def _state(app: Flask) -> CertGateState | None:
    state = app.extensions.get(EXTENSION_KEY)
    return state if isinstance(state, CertGateState) else None


def get_gate(app: Flask | None = None) -> CertGate:
    """The :class:`CertGate` of ``app`` (default: the current app) - e.g.
    ``get_gate().rollout.set_mode("enforce")`` to switch a report-only
    rollout to enforcement at run time. Raises
    :class:`~certgate.errors.ServerSetupError` when certgate is not installed."""
    target = app if app is not None else current_app
    state = _state(target)
    if state is None:
        raise ServerSetupError(
            f"certgate is not installed on Flask app {target.name!r}: CertGateFlask(app) first"
        )
    return state.gate


# -- route checks -----------------------------------------------------------

_FALLBACK_REFUSALS = Refusals()


def _request_gate(environ: Environ) -> CertGate | None:
    """The gate that checked this request (the middleware's), else the app's."""
    gate = environ.get(GATE_KEY)
    if isinstance(gate, CertGate):
        return gate
    if has_app_context():
        state = _state(current_app)
        if state is not None:
            return state.gate
    return None


def refusal_response(refusal: RefusalResponse) -> Response:
    """A Flask response carrying a rendered refusal unchanged."""
    return Response(refusal.body, status=refusal.status, headers=list(refusal.headers))


def _refuse(gate: CertGate | None, reason: Reason) -> NoReturn:
    refusal = gate.refusal(reason) if gate is not None else _FALLBACK_REFUSALS(reason)
    abort(refusal_response(refusal))


def authorize(policy: Policy | None = None) -> ClientIdentity | None:
    """Check the current request for a route: a verified client certificate
    and, if given, ``policy``. Returns the identity; refuses (aborts with the
    gate's refusal) when the gate's decision blocks.

    In report-only mode a refusal is logged and this returns - the identity
    when the certificate itself was valid, else ``None``. Without certgate's
    middleware in front of the app the request is refused with
    ``internal_error`` (an enforce-mode gate), never let through unchecked.
    """
    environ = request.environ
    gate = _request_gate(environ)
    if gate is None:
        logger.error(
            "certgate: a route check ran on Flask app %r without certgate installed: "
            "CertGateFlask(app) first; request refused (internal_error)",
            current_app.name,
        )
        _refuse(None, Reason.INTERNAL_ERROR)
    raw = environ.get(DECISION_KEY)
    decision = raw if isinstance(raw, Decision) else None
    host = environ.get("HTTP_HOST")
    host = host if isinstance(host, str) else None
    if (
        decision is not None
        and decision.identity is not None
        and decision.identity_for_host(host) is None  # the Host changed behind certgate (logged)
    ):
        decision = decision._replace(identity=None)
    path = environ.get("PATH_INFO")
    result = gate.authorize_route(
        decision,
        policy,
        path=path if isinstance(path, str) else "",
        host=host,
        peer=socket_peer(environ, trust_reported=gate.trust.trust_reported_peer),
    )
    if result.blocks:
        _refuse(gate, cast("Reason", result.reason))
    return result.identity


@overload
def require_client_cert(policy: F, /) -> F: ...


@overload
def require_client_cert(policy: Policy | None = None, /) -> Callable[[F], F]: ...


def require_client_cert(policy: Policy | F | None = None, /) -> Callable[[F], F] | F:
    """Decorator: the view needs a verified client certificate, and
    ``policy`` (a :class:`~certgate.policy.Policy`) must hold for it.

    ``@require_client_cert()`` / ``@require_client_cert(policy)`` on a view
    function (sync or ``async``) or a method, *below* the route decorator;
    in a class-based view's ``decorators = [require_client_cert(policy)]``;
    or on a :class:`flask.views.View` subclass itself (every view function
    its ``as_view``, and its subclasses', make is checked first, whatever
    their ``decorators``). Bare ``@require_client_cert`` works too. A refusal is the gate's refusal
    (see :func:`authorize`); report-only mode runs the view.
    """
    if policy is not None and not isinstance(policy, Policy):
        if callable(policy):
            return _protect(policy, None)
        raise TypeError(f"require_client_cert() takes a certgate Policy, not {policy!r:.80}")

    def decorate(view: F) -> F:
        return _protect(view, policy)

    return decorate


def _protect(view: F, policy: Policy | None) -> F:
    if isinstance(view, type) and issubclass(view, View):
        return cast("F", _protect_view_class(view, policy))
    if inspect.iscoroutinefunction(view):
        async_view = cast("Callable[..., Awaitable[Any]]", view)

        @functools.wraps(view)
        async def checked_async(*args: Any, **kwargs: Any) -> Any:
            authorize(policy)
            return await async_view(*args, **kwargs)

        _remember_wrapper(view, checked_async)
        return cast("F", checked_async)

    @functools.wraps(view)
    def checked(*args: Any, **kwargs: Any) -> Any:
        authorize(policy)
        return view(*args, **kwargs)

    _remember_wrapper(view, checked)
    return cast("F", checked)


def _protect_view_class(view: type[View], policy: Policy | None) -> type[View]:
    """Check every view function ``as_view`` makes from ``view`` *or a
    subclass* (outermost, before the class's ``decorators``): a subclass that
    sets its own ``decorators`` list keeps the check."""
    inherited = inspect.getattr_static(view, "as_view")
    make_view = cast("Callable[..., Any]", inherited.__func__)

    def as_view(cls: type[View], name: str, *class_args: Any, **class_kwargs: Any) -> Any:
        return _checked_view_function(make_view(cls, name, *class_args, **class_kwargs), policy)

    view.as_view = classmethod(as_view)  # type: ignore[assignment,method-assign]
    return view


def _checked_view_function(view_function: F, policy: Policy | None) -> F:
    """``view_function`` (from ``as_view``: sync) behind the route check; its
    attributes (``view_class``, ``methods``, ...) are kept."""

    @functools.wraps(view_function)
    def checked_view(*args: Any, **kwargs: Any) -> Any:
        authorize(policy)
        return view_function(*args, **kwargs)

    return cast("F", checked_view)


# -- decorator order -------------------------------------------------------------

_WRAPPERS: weakref.WeakKeyDictionary[Callable[..., Any], list[weakref.ref[Any]]] = (
    weakref.WeakKeyDictionary()
)
"""Each function :func:`require_client_cert` wrapped -> its wrappers (weakly)."""
_WRAPPERS_LOCK = threading.Lock()


def _remember_wrapper(view: Callable[..., Any], wrapper: Callable[..., Any]) -> None:
    # (a callable that is not weak-referenceable is not guarded)
    with _WRAPPERS_LOCK, contextlib.suppress(TypeError):
        _WRAPPERS.setdefault(view, []).append(weakref.ref(wrapper))


def _misordered(app: Flask, view: Callable[..., Any]) -> bool:
    """Whether ``view`` is routed unchecked by mistake: a function
    :func:`require_client_cert` wrapped, while none of its wrappers is a view
    of ``app`` (``@require_client_cert`` written above ``@app.route``)."""
    with _WRAPPERS_LOCK:
        refs = _WRAPPERS.get(view)
        wrappers = [ref() for ref in refs] if refs is not None else None
    if wrappers is None:
        return False
    routed = app.view_functions.values()
    return not any(wrapper is not None and wrapper in routed for wrapper in wrappers)


def _check_decorator_order() -> None:
    """``before_request`` hook of :class:`CertGateFlask`: refuse (403
    ``internal_error``) a request routed to a view whose certgate check
    Flask never sees, because ``@require_client_cert`` was written above
    ``@app.route`` (Flask registered the undecorated function)."""
    endpoint = request.endpoint
    if endpoint is None:
        return
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    view = app.view_functions.get(endpoint)
    if view is None or not _misordered(app, view):
        return
    logger.error(
        "certgate: Flask view %r (endpoint %r) was registered without its certgate check: "
        "@require_client_cert must be written below @app.route / @bp.route (route "
        "decorators outermost). Request refused (internal_error).",
        getattr(view, "__qualname__", view),
        endpoint,
    )
    _refuse(_request_gate(request.environ), Reason.INTERNAL_ERROR)


def protect_blueprint(blueprint: Blueprint, policy: Policy | None = None) -> Blueprint:
    """Check every request routed to ``blueprint`` (and the blueprints
    registered inside it) as :func:`require_client_cert` does, in a
    ``before_request`` hook placed before the blueprint's other hooks (the
    app's hooks and a parent blueprint's still run first). Call it before
    the blueprint is registered (Flask raises otherwise). Returns the
    blueprint.

    Only requests that reach one of the blueprint's views are checked (a URL
    under its prefix that no route matches is a 404, as without certgate).
    """

    def certgate_route_check() -> None:
        authorize(policy)

    blueprint.before_request(certgate_route_check)  # raises once the blueprint is registered
    _run_first(blueprint.before_request_funcs, certgate_route_check)
    return blueprint


def _run_first(hooks: dict[Any, list[Any]], hook: Callable[..., Any]) -> None:
    """Move ``hook`` to the front of the ``None`` (all requests) hook list."""
    funcs = hooks[None]
    funcs.remove(hook)
    funcs.insert(0, hook)


# -- the identity -------------------------------------------------------------


def get_identity() -> ClientIdentity | None:
    """The verified identity of the current request, or ``None``.

    ``None`` without a certificate on optional and exempt paths, without
    certgate installed, and when the Host was rewritten after certgate
    checked it (see :meth:`~certgate.decision.Decision.identity_for_host`).
    Needs a request context, like ``flask.request``.
    """
    return identity_from_environ(request.environ)


def require_identity() -> ClientIdentity:
    """The verified identity of the current request; without one, refuses
    with ``no_certificate`` in the gate's refusal format (also in
    report-only mode: there is no identity to return)."""
    identity = get_identity()
    if identity is None:
        _refuse(_request_gate(request.environ), Reason.NO_CERTIFICATE)
    return identity


# -- testing ------------------------------------------------------------------


def client_cert_environ(pem_chain: str | bytes) -> dict[str, str]:
    """The WSGI environ keys a TLS server sets for a client certificate:
    ``SSL_CLIENT_CERT`` (the first certificate of ``pem_chain``) and
    ``SSL_CLIENT_CERT_CHAIN_0``, ``_1``, ... (the rest, in order).

    For tests: ``client.get(path, environ_overrides=client_cert_environ(pem))``
    with Flask's test client sends the certificate through certgate's real
    middleware and verifier, no TLS needed. Raises ``ValueError`` when
    ``pem_chain`` holds no decodable certificate.
    """
    text = pem_chain.decode("ascii") if isinstance(pem_chain, bytes) else pem_chain
    try:
        ders = pem_to_ders(text)
    except Rejected as exc:
        raise ValueError(f"client_cert_environ: {exc.detail}") from None
    pems = [ssl.DER_cert_to_PEM_cert(der) for der in ders]
    environ = {"SSL_CLIENT_CERT": pems[0]}
    for index, pem in enumerate(pems[1:]):
        environ[f"SSL_CLIENT_CERT_CHAIN_{index}"] = pem
    return environ


_REMOVED = {
    "current_identity": (
        "certgate.flask.current_identity was removed: it was a proxy object, never None, "
        "so `current_identity is None` could not detect an anonymous request. Use "
        "certgate.flask.get_identity() (a ClientIdentity or None) or "
        "certgate.flask.require_identity() (403 when there is no identity)."
    ),
}

if not TYPE_CHECKING:  # type checkers should report the removed name as missing

    def __getattr__(name: str) -> object:
        """Fail loudly, at import time, for the removed ``current_identity``."""
        message = _REMOVED.get(name)
        if message is not None:
            raise ImportError(message, name=__name__)
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
