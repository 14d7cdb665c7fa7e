"""WSGI middleware: certgate in front of Flask, Werkzeug or any WSGI app.

```python
from certgate import CertGate
from certgate.wsgi import CertGateWSGIMiddleware

app.wsgi_app = CertGateWSGIMiddleware(app.wsgi_app, CertGate.from_toml("certgate.toml"))
```

The socket peer is read from the server's socket (``gunicorn.socket`` /
``werkzeug.socket``); ``REMOTE_ADDR`` only with ``trust_reported_peer``
(see :func:`socket_peer`). An unknown peer is never a trusted proxy. From a peer
that is not a trusted proxy every configured certificate header
(``HTTP_...``; WSGI folds ``-`` and ``_`` together, so both spellings go) is
deleted from the environ before anything reads it.

From a trusted proxy the environ cannot say whether ``HTTP_CF_CLIENT_CERT_...``
came from the dashed header the proxy sets or from an underscore spelling a
client slipped past it. The server decides that, so the middleware checks the
server where it can:

* gunicorn (``gunicorn.socket`` in the environ): the certificate headers are
  believed only if certgate's gunicorn hooks checked this worker's
  ``header_map`` / ``forwarder_headers`` (see :mod:`certgate.servers.gunicorn`);
  otherwise they are deleted and the request is refused with
  ``malformed_header`` (exempt paths still pass);
* Werkzeug's server (``werkzeug.socket``): Werkzeug >= 2.3 drops every header
  name with an underscore; older versions are treated like unchecked gunicorn;
* any other server: certgate cannot see how it mapped the names. Apache
  (mod_wsgi) and nginx drop underscore names by default; make sure yours does.

When the decision does not block, the decision is in
``environ["certgate.decision"]``, the identity (if any) in
``environ["certgate.identity"]`` and the gate in ``environ["certgate.gate"]``
(for route-level checks); on a refusal the app is not called and the client
gets the reason in the gate's refusal format (``application/problem+json``
by default). Safe under threaded servers: the gate's shared
state (cache, registry index) is locked or immutable.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable, Iterable, MutableMapping
from functools import cache
from importlib import metadata
from types import TracebackType
from typing import Any, Protocol

from . import sni
from .decision import Decision
from .facts import RequestFacts
from .gate import CertGate, GateSnapshot
from .identity import ClientIdentity
from .proxies import UNIX_PEER
from .reasons import Reason
from .rollout import Access
from .servers import gunicorn
from .sources import wsgi_environ
from .trust import HeaderTrust

Environ = MutableMapping[str, Any]
_ExcInfo = tuple[type[BaseException], BaseException, TracebackType] | tuple[None, None, None]


class StartResponse(Protocol):
    def __call__(
        self,
        status: str,
        headers: list[tuple[str, str]],
        exc_info: _ExcInfo | None = ...,
        /,
    ) -> Callable[[bytes], object]: ...


WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]

_NO_TLS_FIX = (
    "serve the app from a server that hands certgate the TLS connection: gunicorn with "
    "certfile/keyfile, ca_certs = <tenants' CA bundle> and cert_reqs = 1 plus certgate's "
    "ssl_context hook (certgate.servers.gunicorn), or Werkzeug with ssl_context="
    "certgate.servers.tls.client_auth_context(...); Apache mod_wsgi with SSLOptions "
    "+ExportCertData. If a proxy in front terminates TLS (and sets X-Forwarded-Proto), "
    "configure header_sources with trusted_proxies or proxy_ca instead, or set transport = false."
)
_NOT_REQUESTED_FIX = (
    "make the server ask for a client certificate: gunicorn cert_reqs = 1 with ca_certs = "
    "<tenants' CA bundle, `certgate bundle --config certgate.toml`>; Werkzeug: pass "
    "certgate.servers.tls.client_auth_context(...) as ssl_context (the (cert, key) tuple "
    "form never asks for one)."
)

IDENTITY_KEY = "certgate.identity"
DECISION_KEY = "certgate.decision"
GATE_KEY = "certgate.gate"


def identity_from_environ(environ: Environ) -> ClientIdentity | None:
    """The verified identity of this request, or ``None`` (exempt path,
    certgate not installed, or the Host changed since certgate checked it -
    see :meth:`~certgate.decision.Decision.identity_for_host`)."""
    identity = environ.get(IDENTITY_KEY)
    decision = environ.get(DECISION_KEY)
    if not isinstance(identity, ClientIdentity) or not isinstance(decision, Decision):
        return None
    host = environ.get("HTTP_HOST")
    return decision.identity_for_host(host if isinstance(host, str) else None)


def socket_peer(environ: Environ, *, trust_reported: bool = False) -> str | None:
    """The IP address of the TCP peer of this request, or ``None``.

    Read from the server's socket (``gunicorn.socket``, ``werkzeug.socket``);
    ``"unix:"`` when that is a unix (``AF_UNIX``) socket.
    Without one, ``REMOTE_ADDR`` - or the value Werkzeug's ``ProxyFix`` saved
    before rewriting it - is used only with ``trust_reported=True``: other
    rewriters (Apache ``mod_remoteip``, custom middleware) leave no trace.
    """
    for key in wsgi_environ.SOCKET_KEYS:
        sock = environ.get(key)
        if isinstance(sock, socket.socket):
            if _is_unix(sock):
                return UNIX_PEER
            try:
                name = sock.getpeername()
            except OSError:
                return None
            if isinstance(name, tuple) and name and isinstance(name[0], str):
                return name[0]
            return None
    if not trust_reported:
        return None
    orig = environ.get("werkzeug.proxy_fix.orig")
    if isinstance(orig, dict) and isinstance(orig.get("REMOTE_ADDR"), str):
        return str(orig["REMOTE_ADDR"])
    addr = environ.get("REMOTE_ADDR")
    return addr if isinstance(addr, str) and addr else None


def _is_unix(sock: socket.socket) -> bool:
    family = getattr(socket, "AF_UNIX", None)
    try:
        return family is not None and sock.family == family
    except OSError:
        return False


def server_name(environ: Environ) -> str | None:
    """The TLS server name (SNI) of this request's connection, as recorded by
    certgate's ``sni_callback`` on the server socket (:mod:`certgate.sni`)."""
    for key in wsgi_environ.SOCKET_KEYS:
        sock = environ.get(key)
        if sock is not None:
            return sni.server_name(sock)
    return None


def request_path(environ: Environ) -> str:
    """``PATH_INFO`` as the text frameworks route on: PEP 3333 hands it over
    as bytes decoded as latin-1, and Werkzeug/Flask decode those bytes as
    UTF-8 (invalid sequences replaced), so ``/caf\u00c3\u00a9`` is ``/café``
    here too and a route rule on ``/café/*`` applies. A value that is not
    latin-1 (a server breaking PEP 3333) is taken as it is."""
    path = environ.get("PATH_INFO")
    if not isinstance(path, str):
        return ""
    if path.isascii():
        return path
    try:
        return path.encode("latin-1").decode("utf-8", "replace")
    except UnicodeEncodeError:
        return path


def environ_key(header: str) -> str:
    """``Cf-Client-Cert-Der-Base64`` -> ``HTTP_CF_CLIENT_CERT_DER_BASE64``."""
    return "HTTP_" + header.upper().replace("-", "_")


@cache
def werkzeug_drops_underscore_headers() -> bool:
    """Whether the installed Werkzeug's server drops header names containing
    ``_`` (it does from 2.3.0 on); ``False`` when the version is unknown."""
    try:
        major, minor = metadata.version("werkzeug").split(".")[:2]
        return (int(major), int(minor)) >= (2, 3)
    except (metadata.PackageNotFoundError, ValueError):
        return False


class _EnvironKeys:
    """The environ keys of one :class:`~certgate.trust.HeaderTrust` (a
    snapshot's): the certificate headers read and those stripped."""

    __slots__ = ("keys", "read_keys", "strip_keys", "trust")

    def __init__(self, trust: HeaderTrust) -> None:
        self.trust = trust
        self.keys = tuple((name, environ_key(name)) for name in trust.header_names)
        self.read_keys = frozenset(key for _, key in self.keys)
        self.strip_keys = frozenset(environ_key(name) for name in trust.strip_names)


class CertGateWSGIMiddleware:
    """WSGI middleware around :class:`~certgate.gate.CertGate`.

    Each request reads the gate's snapshot once (:attr:`CertGate.snapshot
    <certgate.gate.CertGate.snapshot>`) and is decided with it alone; the
    environ's ``certgate.gate`` is the gate pinned to that snapshot."""

    def __init__(self, app: WSGIApp, gate: CertGate) -> None:
        self.app = app
        self.gate = gate
        gate.start_monitor()  # a gate loaded from TOML: expiry checks, file watch
        self._environ_keys = _EnvironKeys(gate.trust)
        self._view = (gate.snapshot, gate.snapshot.view())
        self._gunicorn_verdict: tuple[gunicorn.HeaderHandling, HeaderTrust, str | None] | None = (
            None
        )

    def _keys_for(self, trust: HeaderTrust) -> _EnvironKeys:
        keys = self._environ_keys
        if keys.trust is not trust:
            keys = self._environ_keys = _EnvironKeys(trust)
        return keys

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        snapshot = self.gate.snapshot  # read once: this request's configuration
        facts, ambiguous = self._collect(environ, snapshot.trust)
        if ambiguous is not None and snapshot.rollout.rule(facts.path).access is not Access.EXEMPT:
            decision = self._refuse_ambiguous(snapshot, facts, ambiguous)
        else:
            decision = snapshot.decide(facts)
        if decision.blocks:
            refusal = snapshot.refusal(decision.reason)  # type: ignore[arg-type]
            start_response(refusal.status_line, list(refusal.headers))
            return [refusal.body]
        environ[DECISION_KEY] = decision
        view = self._view
        if view[0] is not snapshot:
            view = self._view = (snapshot, snapshot.view())
        environ[GATE_KEY] = view[1]
        if decision.identity is not None:
            environ[IDENTITY_KEY] = decision.identity
        else:  # no identity: never let one set upstream through
            environ.pop(IDENTITY_KEY, None)
        return self.app(environ, start_response)

    def facts(self, environ: Environ) -> RequestFacts:
        """Collect the request facts (and strip forged headers) from ``environ``."""
        return self._collect(environ, self.gate.trust)[0]

    def _collect(self, environ: Environ, trust: HeaderTrust) -> tuple[RequestFacts, str | None]:
        """The facts, and why the certificate headers of a trusted proxy's
        request had to be deleted unread (``None`` when they did not)."""
        keys = self._keys_for(trust)
        peer = socket_peer(environ, trust_reported=trust.trust_reported_peer)
        if peer is None and not any(k in environ for k in wsgi_environ.SOCKET_KEYS):
            trust.note_unknown_peer("no server socket in the WSGI environ")
        trusted, transport = trust.judge(peer, lambda: wsgi_environ.from_environ(environ))
        headers: dict[str, list[str]] = {}
        ambiguous: str | None = None
        if trusted:
            risk = None
            if "gunicorn.socket" in environ or "werkzeug.socket" in environ:
                risk = self._alias_risk(environ, trust)
            if risk is None:
                for name, key in keys.keys:
                    value = environ.get(key)
                    if isinstance(value, str):
                        headers[name] = [value]
            elif any(key in keys.read_keys for key in self._strip(environ, keys)):
                ambiguous = risk
        else:
            stripped = self._strip(environ, keys)
            if stripped:
                trust.note_stripped(peer, stripped, trust.untrusted_why(peer, transport))
            if transport is None and trust.transport:
                self._note_missing_tls(environ, trust)
        host = environ.get("HTTP_HOST")
        facts = RequestFacts(
            host=host if isinstance(host, str) else None,
            path=request_path(environ),
            peer=peer,
            headers=headers,
            transport=transport,
            trusted=trusted,
            sni=server_name(environ),
        )
        return facts, ambiguous

    def _note_missing_tls(self, environ: Environ, trust: HeaderTrust) -> None:
        """Say once, loudly, when no client certificate can ever arrive: an
        https request with neither a TLS server socket nor any ``SSL_*``
        variable of the server, or a TLS socket whose context does not ask
        for a client certificate."""
        sock = wsgi_environ.tls_socket(environ)
        if sock is not None:
            if sock.context.verify_mode == ssl.CERT_NONE:
                trust.note_not_requested(
                    "the WSGI server's TLS context has verify_mode CERT_NONE", _NOT_REQUESTED_FIX
                )
            return
        if environ.get("wsgi.url_scheme") != "https":
            return
        if any(key.startswith("SSL_") for key in environ):
            return  # Apache mod_wsgi and the like export SSL_* variables
        trust.note_no_tls_info(
            "wsgi.url_scheme is https, but there is no TLS server socket and no SSL_* variable",
            _NO_TLS_FIX,
        )

    def _strip(self, environ: Environ, keys: _EnvironKeys) -> list[str]:
        """Delete every certificate header from ``environ``; the keys deleted."""
        removed = [key for key in environ if key in keys.strip_keys]
        for key in removed:
            del environ[key]
        return removed

    def alias_risk(self, environ: Environ) -> str | None:
        """Why a certificate header in this environ might be the underscore
        spelling of its name, or ``None`` when the server rules that out (or
        certgate cannot see the server: see the module docstring)."""
        return self._alias_risk(environ, self.gate.trust)

    def _alias_risk(self, environ: Environ, trust: HeaderTrust) -> str | None:
        if "gunicorn.socket" in environ:
            handling = gunicorn.checked_header_handling()
            if handling is None:
                return (
                    "gunicorn's header_map was not checked in this worker: load the hooks "
                    "on_starting and post_worker_init from certgate.servers.gunicorn in "
                    "gunicorn.conf.py"
                )
            verdict = self._gunicorn_verdict
            if verdict is None or verdict[0] is not handling or verdict[1] is not trust:
                problems = handling.problems(trust.strip_names)
                verdict = (handling, trust, "; ".join(problems) or None)
                self._gunicorn_verdict = verdict
            return verdict[2]
        if "werkzeug.socket" in environ and not werkzeug_drops_underscore_headers():
            return "this Werkzeug (< 2.3) maps underscore-spelled headers into the environ"
        return None

    def _refuse_ambiguous(self, snapshot: GateSnapshot, facts: RequestFacts, why: str) -> Decision:
        """Refuse a request whose certificate header may be an underscore
        alias (``malformed_header``), and log why."""
        decision = Decision(
            reason=Reason.MALFORMED_HEADER,
            detail=f"cannot tell the certificate header from its underscore spelling: {why}",
        )
        return snapshot.conclude(decision, facts)
