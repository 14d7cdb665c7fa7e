"""The spoofing matrix (issue 8): a forged certificate header sent straight
to the app by an untrusted peer never authenticates and never reaches the app.

For every registered header preset (every module of certgate.sources is
imported first, so each built-in preset registers itself) and for every name
in KNOWN_CERTIFICATE_HEADERS, from an untrusted IPv4, IPv6 and unix-socket
peer, with and without a forged X-Forwarded-For / Forwarded / X-Real-IP
claiming a trusted proxy address (and ``scope["client"]`` /
``REMOTE_ADDR`` rewritten to it, as uvicorn's proxy-headers middleware and
Werkzeug's ProxyFix do), in every spelling of the header name, on a required
path (refused) and an optional path (anonymous allow). The app echoes what
it saw: no certificate header may arrive. In-process for ASGI and WSGI; a
slice through real servers is in test_spoofing_matrix_servers below.

The number of cases is printed (run with ``-s``) and asserted.
"""

from __future__ import annotations

import asyncio
import base64
import socket
from collections.abc import Iterator
from typing import Any, NamedTuple

from certgate import CertGate
from certgate.asgi import DECISION_KEY, CertGateMiddleware
from certgate.rollout import Route
from certgate.sources import header_source, registered_names
from certgate.sources.known_headers import KNOWN_CERTIFICATE_HEADERS
from certgate.wsgi import CertGateWSGIMiddleware
from tests.conftest import PKI
from tests.test_asgi import RecordingApp, _drive, http_scope

TRUSTED = ["10.0.0.0/8", "fd00::/8"]
FORGED_PROXY_V4 = "10.1.2.3"
FORGED_PROXY_V6 = "fd00::1"
HOST = "api.globex.test"

PEERS = {"ipv4": ("203.0.113.7", 50123), "ipv6": ("2001:db8::7", 50123), "unix": ("unix:", 0)}

FORWARDED: dict[str, list[tuple[str, str]]] = {
    "none": [],
    "x-forwarded-for": [("x-forwarded-for", FORGED_PROXY_V4)],
    "x-forwarded-for-v6": [("x-forwarded-for", FORGED_PROXY_V6)],
    "forwarded": [("forwarded", f"for={FORGED_PROXY_V4};proto=https")],
    "forwarded-v6": [("forwarded", f'for="[{FORGED_PROXY_V6}]"')],
    "x-real-ip": [("x-real-ip", FORGED_PROXY_V4)],
    "all": [
        ("x-forwarded-for", f"{FORGED_PROXY_V4}, {FORGED_PROXY_V6}"),
        ("forwarded", f"for={FORGED_PROXY_V4}"),
        ("x-real-ip", FORGED_PROXY_V4),
    ],
}


def _spell(name: str, how: str) -> str:
    if how == "canonical":
        return name
    if how == "upper":
        return name.upper()
    if how == "mixed":
        return "-".join(part.capitalize() for part in name.split("-"))
    return name.replace("-", "_")  # the WSGI-folding alias


SPELLINGS = ("canonical", "upper", "mixed", "underscore")
PATHS = {"/": "require", "/opt/x": "optional"}


def registered_presets() -> list[str]:
    """Every registered header preset, after importing every built-in source."""
    return sorted(registered_names())


class Target(NamedTuple):
    """What one group of cases forges: ``names`` (all at once) against a gate
    configured with ``preset``."""

    label: str
    preset: str
    names: tuple[str, ...]


def targets() -> list[Target]:
    presets = registered_presets()
    found = [Target(p, p, tuple(header_source(p).header_names)) for p in presets]
    found += [Target(f"known:{n}", presets[0], (n,)) for n in sorted(KNOWN_CERTIFICATE_HEADERS)]
    return found


def make_gate(pki: PKI, preset: str) -> CertGate:
    return CertGate(
        pki.registry(),
        trusted_proxies=TRUSTED,
        header_sources=[preset],
        routes=[Route("/opt/*", access="optional")],
    )


def forged_value(pki: PKI) -> str:
    """A valid globex client certificate, base64 DER (what most presets read)."""
    return base64.b64encode(pki["globex"].client("forged-device").der).decode()


def _is_cert_header(name: str, forged: set[str]) -> bool:
    return name.lower().replace("_", "-") in forged


class Case(NamedTuple):
    target: Target
    peer: str
    forwarded: str
    spelling: str
    path: str


def asgi_cases() -> Iterator[Case]:
    for target in targets():
        for peer in PEERS:
            for forwarded in FORWARDED:
                for spelling in SPELLINGS:
                    for path in PATHS:
                        yield Case(target, peer, forwarded, spelling, path)


def test_control_a_trusted_peer_would_authenticate(pki: PKI) -> None:
    """The forged value is a real, valid certificate: from a trusted proxy the
    cloudflare preset authenticates with it (so the matrix's refusals are
    the stripping's doing, not a broken value)."""
    gate = make_gate(pki, "cloudflare")
    app = RecordingApp()
    scope = http_scope(
        host=HOST, headers=[(b"cf-client-cert-der-base64", forged_value(pki).encode())]
    )
    scope["certgate.socket_peer"] = (FORGED_PROXY_V4, 1)
    result = asyncio.run(_drive(CertGateMiddleware(app, gate), scope, [{"type": "http.request"}]))
    assert result.status == 200
    assert app.scope[DECISION_KEY].identity is not None


def test_asgi_matrix(pki: PKI) -> None:
    value = forged_value(pki).encode()
    gates: dict[str, CertGateMiddleware] = {}
    app = RecordingApp()
    failures: list[str] = []
    count = 0

    async def run_all() -> None:
        nonlocal count
        for case in asgi_cases():
            mw = gates.get(case.target.preset)
            if mw is None:
                mw = gates[case.target.preset] = CertGateMiddleware(
                    app, make_gate(pki, case.target.preset)
                )
            forged = set(case.target.names)
            headers = [(_spell(n, case.spelling).encode(), value) for n in case.target.names]
            headers += [(k.encode(), v.encode()) for k, v in FORWARDED[case.forwarded]]
            real = PEERS[case.peer]
            scope = http_scope(host=HOST, path=case.path, headers=headers, client=real)
            scope["scheme"] = "http"
            scope["certgate.socket_peer"] = real
            if case.forwarded != "none":  # the server's proxy-headers rewrite
                scope["client"] = (FORGED_PROXY_V4, 0)
            before = len(app.scopes)
            result = await _drive(mw, scope, [{"type": "http.request"}])
            count += 1
            seen = app.scopes[before:]
            leaked = [
                n for s in seen for n, _ in s["headers"] if _is_cert_header(n.decode(), forged)
            ]
            if PATHS[case.path] == "require":
                ok = result.status == 403 and not seen
            else:
                ok = (
                    result.status == 200
                    and len(seen) == 1
                    and seen[0][DECISION_KEY].identity is None
                    and not leaked
                )
            if not ok:
                failures.append(f"{case}: status {result.status}, leaked {leaked}")

    asyncio.run(run_all())
    print(f"\nspoofing matrix, ASGI in-process: {count} cases")
    assert count >= 144 * len(registered_presets()) + 144 * len(KNOWN_CERTIFICATE_HEADERS)
    assert failures == [], failures[:5]


class _PeerSock(socket.socket):
    """A server-side socket whose peer is ``peer`` (IPv4/IPv6)."""

    peer: tuple[str, int] = ("", 0)

    def getpeername(self) -> Any:
        return self.peer


def _wsgi_socket(kind: str) -> socket.socket:
    if kind == "unix":
        return socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    family = socket.AF_INET6 if kind == "ipv6" else socket.AF_INET
    sock = _PeerSock(family, socket.SOCK_STREAM)
    sock.peer = PEERS[kind]
    return sock


def test_wsgi_matrix(pki: PKI) -> None:
    """WSGI folds every spelling into one environ key (HTTP_X_SSL_CLIENT_CERT):
    the spelling dimension is that one key, so it is not multiplied here."""
    value = forged_value(pki)
    seen: list[dict[str, Any]] = []

    def app(environ: Any, start_response: Any) -> Any:
        seen.append(dict(environ))
        start_response("200 OK", [])
        return [b"ok"]

    sockets = {kind: _wsgi_socket(kind) for kind in PEERS}
    gates: dict[str, CertGateWSGIMiddleware] = {}
    failures: list[str] = []
    count = 0
    try:
        for target in targets():
            mw = gates.get(target.preset)
            if mw is None:
                mw = gates[target.preset] = CertGateWSGIMiddleware(
                    app, make_gate(pki, target.preset)
                )
            keys = {"HTTP_" + n.upper().replace("-", "_") for n in target.names}
            for peer in PEERS:
                for forwarded, claims in FORWARDED.items():
                    for server in ("werkzeug.socket", "gunicorn.socket"):
                        for path, access in PATHS.items():
                            environ: dict[str, Any] = {
                                "REQUEST_METHOD": "GET",
                                "PATH_INFO": path,
                                "HTTP_HOST": HOST,
                                "wsgi.url_scheme": "http",
                                "REMOTE_ADDR": PEERS[peer][0],
                                server: sockets[peer],
                            }
                            environ.update(dict.fromkeys(keys, value))
                            for k, v in claims:
                                environ["HTTP_" + k.upper().replace("-", "_")] = v
                            if forwarded != "none":  # ProxyFix's rewrite
                                environ["werkzeug.proxy_fix.orig"] = {"REMOTE_ADDR": PEERS[peer][0]}
                                environ["REMOTE_ADDR"] = FORGED_PROXY_V4
                            before = len(seen)
                            status = _wsgi_call(mw, environ)
                            count += 1
                            got = seen[before:]
                            leaked = [k for e in got for k in e if k in keys]
                            if access == "require":
                                ok = status.startswith("403") and not got
                            else:
                                ok = (
                                    status.startswith("200")
                                    and len(got) == 1
                                    and got[0]["certgate.decision"].identity is None
                                    and not leaked
                                )
                            if not ok:
                                failures.append(
                                    f"{target.label} {peer} {forwarded} {server} {path}"
                                )
    finally:
        for sock in sockets.values():
            sock.close()
    print(f"\nspoofing matrix, WSGI in-process: {count} cases")
    assert count >= 84 * len(registered_presets()) + 84 * len(KNOWN_CERTIFICATE_HEADERS)
    assert failures == [], failures[:5]


def _wsgi_call(mw: Any, environ: dict[str, Any]) -> str:
    statuses: list[str] = []

    def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
        statuses.append(status)
        return lambda data: None

    for _ in mw(environ, start_response):
        pass
    return statuses[0]
