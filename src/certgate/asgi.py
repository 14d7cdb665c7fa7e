"""ASGI middleware: certgate in front of Starlette, FastAPI or any ASGI app.

```python
from certgate import CertGate
from certgate.asgi import CertGateMiddleware

app = CertGateMiddleware(app, CertGate.from_toml("certgate.toml"))
# or, with Starlette/FastAPI:
app.add_middleware(CertGateMiddleware, gate=CertGate.from_toml("certgate.toml"))
```

For every HTTP request and WebSocket handshake it

* reads the socket peer: ``scope["certgate.socket_peer"]``, recorded by
  :mod:`certgate.servers.uvicorn` before uvicorn's proxy-headers middleware
  rewrites ``scope["client"]`` from ``X-Forwarded-For``; ``scope["client"]``
  only if the gate says ``trust_reported_peer`` (see :func:`socket_peer`);
  an unknown peer is never a trusted proxy;
* removes every configured certificate header when that peer is not a trusted
  proxy, so neither certgate nor the app ever sees a forged one;
* asks :class:`~certgate.gate.CertGate` for a decision; when it does not
  block, it stores the decision in ``scope["certgate.decision"]``, the
  :class:`~certgate.identity.ClientIdentity` (if any) in
  ``scope["certgate.identity"]`` and the gate in ``scope["certgate.gate"]``
  (for route-level checks), and calls the app; on a refusal it answers with
  the reason (403, or 400/503) in the gate's refusal format
  (``application/problem+json`` by default) - a WebSocket is refused before
  accept;
* answers a :class:`~certgate.errors.ClientCertificateRefused` raised by a
  route-level check inside the app (see :mod:`certgate.starlette`) the same
  way, if the response has not started; on a WebSocket the app already
  accepted, with close code 1008; after an HTTP response started, the
  exception goes on to the server (which ends the response).

Lifespan and other scope types pass through untouched.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any, NamedTuple

from .decision import Decision
from .errors import ClientCertificateRefused
from .facts import Presented, RequestFacts
from .gate import CertGate, GateSnapshot
from .identity import ClientIdentity
from .problem import RefusalResponse
from .reasons import Reason
from .sni import SCOPE_KEY as SNI_KEY
from .sources import asgi_tls
from .trust import HeaderTrust

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

logger = logging.getLogger("certgate")

IDENTITY_KEY = "certgate.identity"
DECISION_KEY = "certgate.decision"
GATE_KEY = "certgate.gate"
SOCKET_PEER_KEY = "certgate.socket_peer"
CLIENT_CERT_REQUESTED = "certgate.client_cert_requested"
"""Key of the ``tls`` extension dict in which certgate's server adapters say
whether the TLS server asks clients for a certificate."""

_NO_TLS_FIX = (
    "serve the app through certgate's server adapter, which fills the ASGI 'tls' extension: "
    "python -m certgate.servers.uvicorn (uvicorn's flags, plus --ssl-ca-certs <tenants' CA "
    "bundle> --ssl-cert-reqs 1), certgate.servers.uvicorn.run(...), or plain uvicorn with "
    "--http certgate.servers.uvicorn:AutoTLSProtocol --ws "
    "certgate.servers.uvicorn:AutoWebSocketsTLSProtocol (under gunicorn: certgate's uvicorn "
    "worker class; see the README's 'Servers'). If a proxy in front terminates TLS, configure "
    "header_sources with trusted_proxies or proxy_ca instead, or set transport = false."
)
_NOT_REQUESTED_FIX = (
    "make the server ask for a client certificate: --ssl-cert-reqs 1 (ssl.CERT_OPTIONAL) with "
    "--ssl-ca-certs <tenants' CA bundle, `certgate bundle --config certgate.toml`>, or "
    "ssl_cert_reqs=ssl.CERT_OPTIONAL in certgate.servers.uvicorn.run(...)."
)


def identity_from_scope(scope: Scope) -> ClientIdentity | None:
    """The verified identity of this request, or ``None`` (exempt path,
    certgate not installed, or the Host changed since certgate checked it -
    see :meth:`~certgate.decision.Decision.identity_for_host`)."""
    identity = scope.get(IDENTITY_KEY)
    decision = scope.get(DECISION_KEY)
    if not isinstance(identity, ClientIdentity) or not isinstance(decision, Decision):
        return None
    if decision.host is None:
        return identity
    hosts = [v for n, v in scope.get("headers") or () if n == b"host"]
    raw = hosts[0].decode("latin-1") if len(hosts) == 1 else None
    return decision.identity_for_host(raw)


def socket_peer(scope: Scope, *, trust_reported: bool = False) -> str | None:
    """The IP of the TCP peer, or ``None`` when it cannot be known.

    ASGI has no standard key for the socket peer, and ``scope["client"]`` is
    rewritten from ``X-Forwarded-For`` by uvicorn's proxy-headers middleware
    (on by default) and its equivalents elsewhere. So the peer is taken from
    ``scope["certgate.socket_peer"]``, recorded by
    :mod:`certgate.servers.uvicorn` before any such rewriting - even when that
    is ``None`` (a unix socket). ``scope["client"]`` is used only with
    ``trust_reported=True``: the operator's statement that nothing rewrites it.
    """
    if SOCKET_PEER_KEY in scope:
        client = scope[SOCKET_PEER_KEY]
    elif trust_reported:
        client = scope.get("client")
    else:
        return None
    if isinstance(client, list | tuple) and client and isinstance(client[0], str):
        return client[0]
    return None


_PLAIN, _HOST, _WANTED, _STRIP, _ALIAS = range(5)

_MEMO_NAME_BYTES = 64
"""Longest header name remembered by :meth:`CertGateMiddleware._kind` (every
certificate header is shorter; longer names are classified per request)."""


class _HeaderKinds:
    """How each header name is treated under one
    :class:`~certgate.trust.HeaderTrust` (a snapshot's): the names read and
    stripped, and a bounded memo of names already classified."""

    __slots__ = ("kinds", "strip", "trust", "wanted")

    def __init__(self, trust: HeaderTrust) -> None:
        self.trust = trust
        self.wanted = frozenset(name.encode("latin-1") for name in trust.header_names)
        self.strip = frozenset(name.encode("latin-1") for name in trust.strip_names)
        # header name -> _PLAIN/_HOST/_WANTED/_STRIP/_ALIAS, memoised (bounded):
        # one dict lookup per header on the hot path.
        self.kinds: dict[bytes, int] = {}

    def kind(self, name: bytes) -> int:
        """How a header name is treated. ``_ALIAS``: a spelling with an
        underscore of a certificate header - a WSGI bridge behind us
        (Starlette's WSGIMiddleware, a2wsgi, Django) folds ``-`` and ``_``
        into one environ key - dropped even from a trusted proxy, which sets
        the dashed names only. ``_WANTED``/``_STRIP``: read/kept from a
        trusted proxy, dropped from anyone else."""
        lower = name.lower()  # servers send lowercase names; a non-compliant one, not
        if lower == b"host":
            kind = _HOST
        elif b"_" in lower:
            kind = _ALIAS if lower.replace(b"_", b"-") in self.strip else _PLAIN
        elif lower in self.wanted:
            kind = _WANTED
        elif lower in self.strip:
            kind = _STRIP
        else:
            kind = _PLAIN
        if len(name) <= _MEMO_NAME_BYTES and len(self.kinds) < 4096:
            self.kinds[name] = kind  # never a client's long made-up name: it would stay
        return kind


class _Current(NamedTuple):
    """The middleware's view of one snapshot."""

    snapshot: GateSnapshot
    headers: _HeaderKinds
    remembers: bool
    gate: CertGate
    """The gate pinned to ``snapshot`` (for ``scope["certgate.gate"]``)."""


class CertGateMiddleware:
    """Pure ASGI middleware around :class:`~certgate.gate.CertGate`.

    Each request reads the gate's snapshot once (:attr:`CertGate.snapshot
    <certgate.gate.CertGate.snapshot>`) and is decided, refused or handed
    on with that snapshot alone: a reload meanwhile never mixes two
    configurations in one request. ``scope["certgate.gate"]`` is the gate
    pinned to that snapshot, so route-level checks use it too."""

    def __init__(self, app: ASGIApp, gate: CertGate) -> None:
        self.app = app
        self.gate = gate
        gate.start_monitor()  # a gate loaded from TOML: expiry checks, file watch
        self._current = self._follow(gate.snapshot, None)

    @staticmethod
    def _follow(snapshot: GateSnapshot, previous: _Current | None) -> _Current:
        """What the middleware derives from ``snapshot``, once per snapshot
        (the header classification is kept when the header trust is)."""
        headers = (
            previous.headers
            if previous is not None and previous.headers.trust is snapshot.trust
            else _HeaderKinds(snapshot.trust)
        )
        return _Current(snapshot, headers, snapshot.remembers(), snapshot.view())

    def _memo_key(self, scope: Scope, headers: _HeaderKinds) -> tuple[object, ...] | None:
        """The gate's decision-memo key of an HTTP request that needs nothing
        but a decision - from certgate's recorded socket peer, with no
        header to strip - read in one pass over the raw headers: the raw
        Host, whether the peer is a trusted proxy, and the certificate
        headers as sent (name, value pairs in order) or the TLS connection's
        chain digest. ``None`` sends the request down the full path.

        Only a ``list`` or ``tuple`` of headers is read here (a one-shot
        iterable would be used up before the full path reads it), and only
        ``bytes`` Host and certificate header names and values go into the
        key: a ``bytearray`` is unhashable and a ``memoryview`` equals the
        ``bytes`` of another request's key, while the full path decodes the
        one and refuses the other."""
        if scope["type"] != "http":
            return None
        raw = scope.get("headers")
        if type(raw) is not list and type(raw) is not tuple:
            return None
        client = scope.get(SOCKET_PEER_KEY)
        if not (isinstance(client, tuple | list) and client and isinstance(client[0], str)):
            return None
        sni = scope.get(SNI_KEY)
        if sni is not None and type(sni) is not str:
            return None  # the full path ignores it; never part of a key
        trust = headers.trust
        presented: Presented | None = None
        if trust.reads_proxy_certificate:
            try:
                presented = asgi_tls.from_scope(scope)
            except Exception:  # noqa: BLE001 - the full path reads it again and refuses it
                return None
            trusted = trust.trusts(client[0], presented)
        else:
            trusted = trust.peer_is_trusted(client[0])
        host: object = None
        parts: list[object] = [sni, True] if trusted else [sni, False]
        kinds = headers.kinds
        try:
            for name, value in raw:
                kind = kinds.get(name)
                if kind is None:
                    kind = headers.kind(name)
                if kind == _PLAIN:
                    continue
                if type(value) is not bytes:
                    return None  # the full path decodes it, or refuses the scope
                if kind == _HOST:
                    if host is not None:
                        return None  # two Host headers: the full path refuses
                    host = value
                elif kind == _WANTED and trusted and type(name) is bytes:
                    parts.append(name)
                    parts.append(value)
                else:
                    return None  # a header to strip: the full path removes and logs it
        except (TypeError, ValueError):  # not (bytes, bytes) pairs: the full path says so
            return None
        if host is None:
            return None
        if trusted:
            if len(parts) <= 2:
                return None
            if presented is not None:
                # The proxy's own certificate decided the trust: the key
                # names it, so a remembered allow never outlives a change of
                # the proxy's certificate (its verdict is checked above anyway).
                return (host, presented.digest, *parts)
            return (host, *parts)
        if not trust.transport:
            return None
        if presented is None:
            try:
                presented = asgi_tls.from_scope(scope)
            except Exception:  # noqa: BLE001 - the full path reads it again and refuses it
                return None
        if presented is None or presented.digest is None or presented.verdict is not None:
            return None
        return (host, sni, False, presented.source, presented.digest)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        current = self._current
        snapshot = self.gate.snapshot  # read once: this request's configuration
        if current.snapshot is not snapshot:
            current = self._current = self._follow(snapshot, current)
        headers = current.headers
        decision = None
        key = self._memo_key(scope, headers) if current.remembers else None
        if key is not None:
            path = scope.get("path")
            decision = snapshot.recall(key, path if isinstance(path, str) else "")
        if decision is None:
            try:
                scope, facts = self._facts(scope, headers)
            except Exception as exc:  # noqa: BLE001 - a malformed scope fails closed, not a 500
                decision = self._malformed_scope(snapshot, scope, exc)
            else:
                decision = await snapshot.adecide(facts, memo_key=key)
        if decision.blocks:
            reason: Reason = decision.reason  # type: ignore[assignment]
            await send_refusal(snapshot.refusal(reason), reason, scope, receive, send)
            return
        scope[DECISION_KEY] = decision
        scope[GATE_KEY] = current.gate
        if decision.identity is not None:
            scope[IDENTITY_KEY] = decision.identity
        elif IDENTITY_KEY in scope:  # no identity: never let one set upstream through
            del scope[IDENTITY_KEY]
        tracked = _Tracked(receive, send)
        try:
            await self.app(scope, tracked.receive, tracked)
        except ClientCertificateRefused as exc:  # a route-level check inside the app
            if tracked.accepted and not tracked.closed:  # a WebSocket already open
                await send({"type": "websocket.close", "code": 1008, "reason": exc.reason.value})
                return
            if tracked.started:  # too late for a refusal: the server ends the response
                raise
            refusal = snapshot.refusal(exc.reason)
            await send_refusal(
                refusal, exc.reason, scope, receive, send, connect_received=tracked.connected
            )

    def _facts(self, scope: Scope, headers: _HeaderKinds) -> tuple[Scope, RequestFacts]:
        trust = headers.trust
        peer = socket_peer(scope, trust_reported=trust.trust_reported_peer)
        if peer is None and SOCKET_PEER_KEY not in scope:
            trust.note_unknown_peer("no scope['certgate.socket_peer']")
        trusted, transport = trust.judge(peer, lambda: asgi_tls.from_scope(scope))
        host: str | None = None
        found: dict[str, list[str]] = {}
        removed: list[str] = []
        kinds = headers.kinds
        raw_headers = scope.get("headers") or ()
        for name, value in raw_headers:
            kind = kinds.get(name)
            if kind is None:
                kind = headers.kind(name)
            if kind == _PLAIN:
                continue
            if kind == _HOST:
                # Two Host headers: refuse to pick one ("\0" is never a valid host).
                host = "\0" if host is not None else value.decode("latin-1")
            elif kind == _ALIAS or not trusted:
                removed.append(name.decode("latin-1"))
            elif kind == _WANTED:
                key = name.decode("latin-1").lower()
                found.setdefault(key, []).append(value.decode("latin-1"))
        if removed:
            drop = {name.encode("latin-1") for name in removed}
            scope = dict(scope)
            scope["headers"] = [(n, v) for n, v in raw_headers if n not in drop]
            trust.note_stripped(
                peer, removed, "" if trusted else trust.untrusted_why(peer, transport)
            )
        if not trusted and transport is None and trust.transport:
            self._note_missing_tls(scope, trust)
        path = scope.get("path")
        sni = scope.get(SNI_KEY)
        facts = RequestFacts(
            host=host,
            path=path if isinstance(path, str) else "",
            peer=peer,
            headers=found,
            transport=transport,
            trusted=trusted,
            sni=sni if isinstance(sni, str) else None,
        )
        return scope, facts

    def _note_missing_tls(self, scope: Scope, trust: HeaderTrust) -> None:
        """Say once, loudly, when no client certificate can ever arrive: a
        TLS request without the ``tls`` extension (a server that does not
        fill it, and not certgate's adapter, which fills it on every TLS
        connection and records the socket peer), or a TLS server that does
        not ask for a client certificate."""
        extensions = scope.get("extensions")
        tls = extensions.get("tls") if isinstance(extensions, Mapping) else None
        if tls is None:
            if scope.get("scheme") in ("https", "wss") and SOCKET_PEER_KEY not in scope:
                trust.note_no_tls_info(
                    f"ASGI scope scheme {scope.get('scheme')!r} without the 'tls' extension",
                    _NO_TLS_FIX,
                )
        elif isinstance(tls, Mapping) and tls.get(CLIENT_CERT_REQUESTED) is False:
            trust.note_not_requested(
                "the ASGI tls extension says certgate.client_cert_requested = False",
                _NOT_REQUESTED_FIX,
            )

    def _malformed_scope(self, snapshot: GateSnapshot, scope: Scope, exc: Exception) -> Decision:
        """The refusal of a scope the middleware could not read (headers that
        are not ``(bytes, bytes)`` pairs: a bug upstream, logged with its
        traceback). Neither certgate nor the app sees such a request."""
        path = scope.get("path")
        facts = RequestFacts(None, path if isinstance(path, str) else "", None, {}, None)
        logger.error("certgate: unreadable ASGI scope, request refused: %r", exc, exc_info=exc)
        detail = f"unreadable scope: {type(exc).__name__}"
        return snapshot.conclude(Decision(reason=Reason.INTERNAL_ERROR, detail=detail), facts)


_STARTS = frozenset(
    {"http.response.start", "websocket.accept", "websocket.close", "websocket.http.response.start"}
)


class _Tracked:
    """The app's ``send`` (this object) and ``receive``, noting whether a
    response or WebSocket started and whether the app took the WebSocket's
    ``websocket.connect``, so a route-level refusal raised later is never a
    second response and never waits for a message already taken."""

    __slots__ = ("_receive", "accepted", "closed", "connected", "send", "started")

    def __init__(self, receive: Receive, send: Send) -> None:
        self._receive = receive
        self.send = send
        self.started = self.accepted = self.closed = self.connected = False

    async def receive(self) -> Message:
        message = await self._receive()
        if message.get("type") == "websocket.connect":
            self.connected = True
        return message

    async def __call__(self, message: Message) -> None:
        kind = message.get("type")
        if kind in _STARTS:
            self.started = True
            if kind == "websocket.accept":
                self.accepted = True
            elif kind == "websocket.close":
                self.closed = True
        await self.send(message)


async def send_refusal(
    refusal: RefusalResponse,
    reason: Reason,
    scope: Scope,
    receive: Receive,
    send: Send,
    *,
    connect_received: bool = False,
) -> None:
    """Answer an HTTP request, or refuse a WebSocket handshake, with ``refusal``
    (``connect_received``: the app already took ``websocket.connect``)."""
    body = refusal.body
    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in refusal.headers]
    status = refusal.status
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return
    # WebSocket: refuse the handshake; never accept.
    if not connect_received:
        message = await receive()
        if message.get("type") != "websocket.connect":
            return
    extensions = scope.get("extensions") or {}
    if "websocket.http.response" in extensions:
        await send(
            {
                "type": "websocket.http.response.start",
                "status": status,
                "headers": headers,
            }
        )
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": 1008, "reason": reason.value})


__all__ = [
    "DECISION_KEY",
    "GATE_KEY",
    "IDENTITY_KEY",
    "SOCKET_PEER_KEY",
    "CertGateMiddleware",
    "Decision",
    "identity_from_scope",
    "send_refusal",
    "socket_peer",
]
