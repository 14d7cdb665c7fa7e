"""CertGateWSGIMiddleware: the same trust rules as the ASGI adapter, for WSGI.

Driven with hand-built environs and with ``werkzeug.test.Client``; the real
``ProxyFix`` is put in front to show that a rewritten ``REMOTE_ADDR`` does not
make a forged header trusted.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import socket
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, cast

import pytest
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.test import Client, EnvironBuilder

from certgate import CertGate, InMemoryRegistry, Reason, Tenant
from certgate.decision import Decision
from certgate.devpki import IssuedCert
from certgate.problem import problem_body
from certgate.wsgi import (
    DECISION_KEY,
    IDENTITY_KEY,
    CertGateWSGIMiddleware,
    Environ,
    environ_key,
    identity_from_environ,
    socket_peer,
)
from tests.conftest import PKI

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

GateFactory = Callable[..., CertGate]

CF_KEY = "HTTP_CF_CLIENT_CERT_DER_BASE64"
CF_SHA_KEY = "HTTP_CF_CLIENT_CERT_SHA256"
UNTRUSTED = "203.0.113.7"
TRUSTED = "10.1.2.3"


class RecordingApp:
    def __init__(self) -> None:
        self.environs: list[Environ] = []

    def __call__(self, environ: Environ, start_response: Any) -> Iterable[bytes]:
        self.environs.append(dict(environ))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"app"]

    @property
    def environ(self) -> Environ:
        assert len(self.environs) == 1
        return self.environs[0]


class Response:
    def __init__(self) -> None:
        self.status = ""
        self.headers: dict[str, str] = {}
        self.body = b""

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: Any = None, /
    ) -> Callable[[bytes], object]:
        self.status = status
        self.headers = {k.lower(): v for k, v in headers}
        return lambda data: None

    @property
    def code(self) -> int:
        return int(self.status.split(" ", 1)[0])

    @property
    def reason(self) -> str:
        assert self.headers["content-type"] == "application/problem+json"
        document = json.loads(self.body)
        assert isinstance(document, dict)
        reason = document["reason"]
        assert isinstance(reason, str)
        return reason


def call(app: Any, environ: Environ) -> Response:
    response = Response()
    chunks = app(environ, response.start_response)
    response.body = b"".join(chunks)
    return response


def make_environ(
    *,
    host: str | None = "api.globex.test",
    path: str = "/",
    remote_addr: str | None = UNTRUSTED,
    **extra: object,
) -> Environ:
    environ: Environ = {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "443",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_X_OTHER": "kept",
        "wsgi.url_scheme": "https",
    }
    if host is not None:
        environ["HTTP_HOST"] = host
    if remote_addr is not None:
        environ["REMOTE_ADDR"] = remote_addr
    environ.update(extra)
    return environ


def cf_env(client: IssuedCert, sha: str | None = None) -> dict[str, str]:
    env = {CF_KEY: base64.b64encode(client.der).decode()}
    if sha is not None:
        env[CF_SHA_KEY] = sha
    return env


def ssl_env(client: IssuedCert) -> dict[str, str]:
    end = "-----END CERTIFICATE-----\n"
    pems = [p + end for p in client.chain_pem.decode().split(end) if p.strip()]
    env = {"SSL_CLIENT_CERT": pems[0]}
    env.update({f"SSL_CLIENT_CERT_CHAIN_{i}": pem for i, pem in enumerate(pems[1:])})
    return env


def wsgi(app: CertGateWSGIMiddleware) -> WSGIApplication:
    """certgate's StartResponse protocol types ``exc_info`` with an optional
    traceback, typeshed's does not, so mypy refuses the middleware where a
    ``WSGIApplication`` is expected (Werkzeug's Client, ProxyFix)."""
    return cast("WSGIApplication", app)


def cf_gate(make_gate: GateFactory, **kwargs: Any) -> CertGate:
    # These environs model a server that reports the real TCP peer in
    # REMOTE_ADDR; test_reported_peer_needs_opt_in covers the default.
    kwargs.setdefault("trust_reported_peer", True)
    return make_gate(trusted_proxies=["10.0.0.0/8"], header_sources=["cloudflare"], **kwargs)


def test_reported_peer_needs_opt_in(pki: PKI, make_gate: GateFactory) -> None:
    """With no server socket in the environ, REMOTE_ADDR may have been
    rewritten (mod_remoteip, custom middleware): not believed by default."""
    app = RecordingApp()
    mw = CertGateWSGIMiddleware(app, cf_gate(make_gate, trust_reported_peer=False))
    environ = make_environ(remote_addr=TRUSTED, **cf_env(pki["globex"].client()))
    assert_rejected(call(mw, environ), app, Reason.NO_CERTIFICATE)
    assert CF_KEY not in environ


def assert_rejected(response: Response, app: RecordingApp, reason: Reason) -> None:
    assert response.code == reason.status
    assert response.reason == reason.value
    assert response.body == problem_body(reason)
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["content-length"] == str(len(response.body))
    assert app.environs == []


def test_environ_key() -> None:
    assert environ_key("Cf-Client-Cert-Der-Base64") == CF_KEY
    assert environ_key("cf_client_cert_sha256") == CF_SHA_KEY


# -- forwarded headers from untrusted and trusted peers -------------------------


def test_untrusted_cloudflare_header_removed_and_ignored(pki: PKI, make_gate: GateFactory) -> None:
    app = RecordingApp()
    mw = CertGateWSGIMiddleware(app, cf_gate(make_gate))
    client = pki["globex"].client()
    environ = make_environ(**cf_env(client, hashlib.sha256(client.der).hexdigest()))
    assert_rejected(call(mw, environ), app, Reason.NO_CERTIFICATE)
    assert CF_KEY not in environ
    assert CF_SHA_KEY not in environ
    assert environ["HTTP_X_OTHER"] == "kept"


def test_untrusted_cloudflare_header_removed_before_app(pki: PKI, make_gate: GateFactory) -> None:
    app = RecordingApp()
    mw = CertGateWSGIMiddleware(app, cf_gate(make_gate, exempt_paths=["/healthz"]))
    environ = make_environ(path="/healthz", **cf_env(pki["globex"].client(), "00" * 32))
    response = call(mw, environ)
    assert response.status == "200 OK"
    assert response.body == b"app"
    assert CF_KEY not in app.environ
    assert CF_SHA_KEY not in app.environ
    assert app.environ["HTTP_X_OTHER"] == "kept"
    assert identity_from_environ(app.environ) is None
    assert app.environ[DECISION_KEY] == Decision(exempt=True, access="exempt")


def test_untrusted_header_removed_when_transport_allows(pki: PKI, make_gate: GateFactory) -> None:
    app = RecordingApp()
    mw = CertGateWSGIMiddleware(app, cf_gate(make_gate))
    transport = pki["acme"].client("transport")
    environ = make_environ(
        host="pay.acme.test", **ssl_env(transport), **cf_env(pki["globex"].client("forged"))
    )
    assert call(mw, environ).status == "200 OK"
    assert CF_KEY not in app.environ
    identity = identity_from_environ(app.environ)
    assert identity is not None
    assert identity.source == "wsgi_environ"
    assert identity.common_name == "transport"


def test_trusted_cloudflare_header_accepted(pki: PKI, make_gate: GateFactory) -> None:
    app = RecordingApp()
    mw = CertGateWSGIMiddleware(app, cf_gate(make_gate))
    client = pki["globex"].client("cf-wsgi")
    sha = hashlib.sha256(client.der).hexdigest().upper()
    response = call(mw, make_environ(remote_addr=TRUSTED, **cf_env(client, sha)))
    assert response.status == "200 OK"
    identity = identity_from_environ(app.environ)
    assert identity is not None
    assert identity.tenant_id == "globex"
    assert identity.source == "cloudflare"
    assert identity.common_name == "cf-wsgi"
    assert app.environ[IDENTITY_KEY] is identity
    assert app.environ[CF_KEY] == base64.b64encode(client.der).decode()


def test_trusted_cloudflare_sha_mismatch(pki: PKI, make_gate: GateFactory) -> None:
    app = RecordingApp()
    mw = CertGateWSGIMiddleware(app, cf_gate(make_gate))
    environ = make_environ(remote_addr=TRUSTED, **cf_env(pki["globex"].client(), "ab" * 32))
    assert_rejected(call(mw, environ), app, Reason.FINGERPRINT_MISMATCH)


def test_trusted_proxy_transport_certificate_not_used(pki: PKI, make_gate: GateFactory) -> None:
    app = RecordingApp()
    mw = CertGateWSGIMiddleware(app, cf_gate(make_gate))
    environ = make_environ(
        host="pay.acme.test", remote_addr=TRUSTED, **ssl_env(pki["acme"].client())
    )
    assert_rejected(call(mw, environ), app, Reason.NO_CERTIFICATE)


def test_repeated_header_via_werkzeug_client(pki: PKI, make_gate: GateFactory) -> None:
    app = RecordingApp()
    mw = CertGateWSGIMiddleware(app, cf_gate(make_gate))
    value = base64.b64encode(pki["globex"].client().der).decode()
    client = Client(wsgi(mw))
    headers = [("Cf-Client-Cert-Der-Base64", value), ("Cf-Client-Cert-Der-Base64", value)]
    response = client.get(
        "/",
        base_url="https://api.globex.test",
        headers=headers,
        environ_base={"REMOTE_ADDR": TRUSTED},
    )
    assert response.status_code == 403
    assert response.json == json.loads(problem_body(Reason.MALFORMED_HEADER))
    single = client.get(
        "/",
        base_url="https://api.globex.test",
        headers=headers[:1],
        environ_base={"REMOTE_ADDR": TRUSTED},
    )
    assert single.status_code == 200
    assert single.text == "app"


def test_underscore_spelling_is_the_same_environ_key(pki: PKI, make_gate: GateFactory) -> None:
    # WSGI folds "-" and "_": a client's "Cf_Client_Cert_Der_Base64" lands on the
    # same key and is removed too.
    builder = EnvironBuilder(
        path="/healthz",
        base_url="https://api.globex.test",
        headers=[("Cf_Client_Cert_Der_Base64", "AAAA")],
        environ_base={"REMOTE_ADDR": UNTRUSTED},
    )
    environ = builder.get_environ()
    assert environ[CF_KEY] == "AAAA"
    app = RecordingApp()
    mw = CertGateWSGIMiddleware(app, cf_gate(make_gate, exempt_paths=["/healthz"]))
    assert call(mw, environ).status == "200 OK"
    assert CF_KEY not in app.environ


# -- ProxyFix in front -------------------------------------------------------------


def test_proxyfix_forged_forwarded_for_does_not_trust_header(
    pki: PKI, make_gate: GateFactory
) -> None:
    app = RecordingApp()
    inner = CertGateWSGIMiddleware(app, cf_gate(make_gate, exempt_paths=["/healthz"]))
    wrapped = ProxyFix(wsgi(inner), x_for=1)
    client = Client(wrapped)
    headers = {
        "X-Forwarded-For": "10.0.0.1",
        "Cf-Client-Cert-Der-Base64": base64.b64encode(pki["globex"].client().der).decode(),
    }
    refused = client.get(
        "/",
        base_url="https://api.globex.test",
        headers=headers,
        environ_base={"REMOTE_ADDR": UNTRUSTED},
    )
    assert refused.status_code == 403
    assert refused.json is not None
    assert refused.json["reason"] == "no_certificate"
    exempt = client.get(
        "/healthz",
        base_url="https://api.globex.test",
        headers=headers,
        environ_base={"REMOTE_ADDR": UNTRUSTED},
    )
    assert exempt.status_code == 200
    seen = app.environ
    assert seen["REMOTE_ADDR"] == "10.0.0.1"  # ProxyFix did rewrite it ...
    assert seen["werkzeug.proxy_fix.orig"]["REMOTE_ADDR"] == UNTRUSTED
    assert (
        socket_peer(seen, trust_reported=True) == UNTRUSTED
    )  # ... but certgate used the real peer
    assert CF_KEY not in seen


def test_proxyfix_real_proxy_stays_trusted(pki: PKI, make_gate: GateFactory) -> None:
    app = RecordingApp()
    wrapped = ProxyFix(wsgi(CertGateWSGIMiddleware(app, cf_gate(make_gate))), x_for=1)
    headers = {
        "X-Forwarded-For": "198.51.100.20",
        "Cf-Client-Cert-Der-Base64": base64.b64encode(pki["globex"].client("pf").der).decode(),
    }
    response = Client(wrapped).get(
        "/",
        base_url="https://api.globex.test",
        headers=headers,
        environ_base={"REMOTE_ADDR": TRUSTED},
    )
    assert response.status_code == 200
    assert app.environ["REMOTE_ADDR"] == "198.51.100.20"
    identity = identity_from_environ(app.environ)
    assert identity is not None
    assert identity.source == "cloudflare"
    assert identity.common_name == "pf"


# -- socket peer --------------------------------------------------------------------


@pytest.fixture
def tcp_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        with socket.create_connection(listener.getsockname()) as client:
            server, _ = listener.accept()
            with server:
                yield server, client


def test_socket_peer_prefers_server_socket(
    pki: PKI, make_gate: GateFactory, tcp_pair: tuple[socket.socket, socket.socket]
) -> None:
    server, _ = tcp_pair
    environ = make_environ(remote_addr=TRUSTED)
    environ["gunicorn.socket"] = server
    assert socket_peer(environ) == "127.0.0.1"
    app = RecordingApp()
    mw = CertGateWSGIMiddleware(app, cf_gate(make_gate))
    environ.update(cf_env(pki["globex"].client()))
    # REMOTE_ADDR claims a trusted proxy, the socket says 127.0.0.1: untrusted.
    assert_rejected(call(mw, environ), app, Reason.NO_CERTIFICATE)
    assert CF_KEY not in environ
    trusting = CertGateWSGIMiddleware(
        app,
        make_gate(
            trusted_proxies=["127.0.0.0/8"], header_sources=["cloudflare"], trust_reported_peer=True
        ),
    )
    environ = make_environ(remote_addr=UNTRUSTED, **cf_env(pki["globex"].client()))
    environ["werkzeug.socket"] = server
    assert call(trusting, environ).status == "200 OK"


def test_socket_peer_fallbacks() -> None:
    assert socket_peer({"REMOTE_ADDR": "1.2.3.4"}, trust_reported=True) == "1.2.3.4"
    assert socket_peer({"REMOTE_ADDR": "1.2.3.4"}) is None  # not believed by default
    assert socket_peer({"REMOTE_ADDR": ""}, trust_reported=True) is None
    assert socket_peer({}, trust_reported=True) is None
    assert socket_peer({"REMOTE_ADDR": 5}, trust_reported=True) is None
    orig = {"werkzeug.proxy_fix.orig": {"REMOTE_ADDR": "5.6.7.8"}, "REMOTE_ADDR": "1.2.3.4"}
    assert socket_peer(orig, trust_reported=True) == "5.6.7.8"
    unconnected = socket.socket()
    with unconnected:
        # A server socket that cannot name its peer: unknown, never REMOTE_ADDR.
        environ = {"gunicorn.socket": unconnected, "REMOTE_ADDR": "1.2.3.4"}
        assert socket_peer(environ, trust_reported=True) is None


# -- SSL_CLIENT_CERT transport source ----------------------------------------------------


def test_ssl_client_cert_own_tenant(pki: PKI, make_gate: GateFactory) -> None:
    app = RecordingApp()
    mw = CertGateWSGIMiddleware(app, make_gate())
    client = pki["acme"].client("apache-device")
    assert call(mw, make_environ(host="pay.acme.test", **ssl_env(client))).status == "200 OK"
    identity = identity_from_environ(app.environ)
    assert identity is not None
    assert identity.tenant_id == "acme"
    assert identity.source == "wsgi_environ"
    assert identity.common_name == "apache-device"
    assert [c.subject for c in identity.chain][1:] == [
        client.issuers[0].subject,
        pki["acme"].roots[0].cert.subject,
    ]


@pytest.mark.parametrize("host", ["api.globex.test", "initech.test"])
def test_ssl_client_cert_other_tenant(pki: PKI, make_gate: GateFactory, host: str) -> None:
    app = RecordingApp()
    mw = CertGateWSGIMiddleware(app, make_gate())
    environ = make_environ(host=host, **ssl_env(pki["acme"].client()))
    assert_rejected(call(mw, environ), app, Reason.UNTRUSTED_CHAIN)


def test_ssl_client_cert_without_needed_intermediate(pki: PKI, make_gate: GateFactory) -> None:
    app = RecordingApp()
    mw = CertGateWSGIMiddleware(app, make_gate())
    environ = make_environ(
        host="pay.acme.test", SSL_CLIENT_CERT=ssl_env(pki["acme"].client())["SSL_CLIENT_CERT"]
    )
    assert_rejected(call(mw, environ), app, Reason.UNTRUSTED_CHAIN)


def test_ssl_client_cert_leaf_only_with_configured_intermediate(
    pki: PKI, make_gate: GateFactory
) -> None:
    app = RecordingApp()
    mw = CertGateWSGIMiddleware(app, make_gate())
    pem = pki["initech"].client().cert_pem.decode()
    assert call(mw, make_environ(host="initech.test", SSL_CLIENT_CERT=pem)).status == "200 OK"


def test_ssl_client_cert_non_string(make_gate: GateFactory) -> None:
    app = RecordingApp()
    mw = CertGateWSGIMiddleware(app, make_gate())
    environ = make_environ(SSL_CLIENT_CERT=b"-----BEGIN CERTIFICATE-----")
    assert_rejected(call(mw, environ), app, Reason.MALFORMED_CERTIFICATE)


# -- status lines, Host, registry -----------------------------------------------------------


def test_status_lines(pki: PKI, make_gate: GateFactory) -> None:
    app = RecordingApp()
    mw = CertGateWSGIMiddleware(app, make_gate())
    env = ssl_env(pki["acme"].client())
    assert call(mw, make_environ()).status == "403 Forbidden"
    assert call(mw, make_environ(host=None, **env)).status == "400 Bad Request"
    failing = CertGateWSGIMiddleware(app, CertGate(FailingRegistry()))
    assert call(failing, make_environ(host="pay.acme.test", **env)).status == (
        "503 Service Unavailable"
    )
    assert app.environs == []


def test_missing_host(pki: PKI, make_gate: GateFactory) -> None:
    app = RecordingApp()
    mw = CertGateWSGIMiddleware(app, make_gate())
    environ = make_environ(host=None, **ssl_env(pki["acme"].client()))
    assert_rejected(call(mw, environ), app, Reason.INVALID_HOST)


def test_unknown_host(pki: PKI, make_gate: GateFactory) -> None:
    app = RecordingApp()
    mw = CertGateWSGIMiddleware(app, make_gate())
    environ = make_environ(host="nobody.test", **ssl_env(pki["acme"].client()))
    assert_rejected(call(mw, environ), app, Reason.UNKNOWN_TENANT)


def test_identity_from_environ() -> None:
    assert identity_from_environ({}) is None
    assert identity_from_environ({IDENTITY_KEY: "not an identity"}) is None


class FailingRegistry:
    blocking = False

    def tenant_for_host(self, host: str) -> Tenant | None:
        raise OSError("registry unreachable")

    def tenant_by_id(self, tenant_id: str) -> Tenant | None:
        raise OSError("registry unreachable")


class AsyncRegistry:
    def __init__(self, inner: InMemoryRegistry, fail: bool = False) -> None:
        self.inner = inner
        self.fail = fail

    async def tenant_for_host(self, host: str) -> Tenant | None:
        await asyncio.sleep(0)
        if self.fail:
            raise ConnectionError("db down")
        return self.inner.tenant_for_host(host)

    async def tenant_by_id(self, tenant_id: str) -> Tenant | None:
        return self.inner.tenant_by_id(tenant_id)


def test_registry_failure_is_503(pki: PKI) -> None:
    app = RecordingApp()
    mw = CertGateWSGIMiddleware(app, CertGate(FailingRegistry()))
    environ = make_environ(host="pay.acme.test", **ssl_env(pki["acme"].client()))
    response = call(mw, environ)
    assert_rejected(response, app, Reason.TRUST_STORE_UNAVAILABLE)
    assert response.status == "503 Service Unavailable"


@pytest.mark.parametrize("fail", [False, True])
def test_async_registry_under_wsgi(pki: PKI, fail: bool) -> None:
    app = RecordingApp()
    mw = CertGateWSGIMiddleware(app, CertGate(AsyncRegistry(pki.registry(), fail=fail)))
    environ = make_environ(host="pay.acme.test", **ssl_env(pki["acme"].client()))
    response = call(mw, environ)
    if fail:
        assert_rejected(response, app, Reason.TRUST_STORE_UNAVAILABLE)
    else:
        assert response.status == "200 OK"
        identity = identity_from_environ(app.environ)
        assert identity is not None
        assert identity.tenant_id == "acme"


def test_exempt_path_under_werkzeug_client(make_gate: GateFactory) -> None:
    app = RecordingApp()
    client = Client(wsgi(CertGateWSGIMiddleware(app, make_gate(exempt_paths=["/healthz"]))))
    assert client.get("/healthz").status_code == 200
    refused = client.get("/healthz/x")
    assert refused.status_code == 403
    assert refused.json is not None
    assert refused.json["reason"] == "no_certificate"
    assert len(app.environs) == 1
