"""End to end through REAL proxies: nginx, HAProxy, Caddy and Apache httpd
(Debian packages) terminate mTLS on loopback and forward to certgate-protected
apps over plain HTTP (uvicorn through ``certgate.servers.uvicorn``, and
gunicorn), driven by httpx and curl.

Each proxy starts once per test run (a module fixture parametrized by proxy)
with these listeners, all from the README snippets in tests/proxy_configs/:

* ``strict``   the recommended snippet -> uvicorn app (preset, status checked)
* ``no_ca``    the snippet that forwards unverified certificates -> same app
* ``opt_out``  the same no-CA snippet -> uvicorn app with ``verify_status = false``
* ``gunicorn`` / ``gunicorn_no_ca`` the two snippets -> gunicorn app
* ``echo`` / ``echo_no_ca`` the two snippets -> an upstream that echoes the
  headers it received (what the proxy really sends, byte for byte)

PKI: examples/devenv.py. ``globex-device`` is issued by its tenant's root,
``initech-device`` by an intermediate configured on its tenant, and
``acme-device`` by an intermediate the tenant does NOT configure (it passes
only where the proxy forwards the chain). ``rogue-device`` is from a CA no
tenant trusts.
"""

from __future__ import annotations

import base64
import shutil
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote

import httpx
import pytest
from examples.devenv import DevEnv, free_port, make_dev_environment

from tests.proxies import (
    EchoUpstream,
    Listener,
    Proxy,
    gunicorn_upstream,
    proxy_config,
    snippet,
    start_proxy,
    uvicorn_upstream,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

README = Path(__file__).resolve().parents[1] / "README.md"


@dataclass(frozen=True)
class Spec:
    """What one proxy is and does, as the tests expect it."""

    kind: str
    preset: str
    strict: str  # snippet file names
    no_ca: str
    cert_header: str
    forwards_chain: bool
    verify_status: bool  # does the proxy send a verify status?

    @property
    def toml_opt_out(self) -> str:
        if not self.verify_status:
            return f'"{self.preset}"'
        return f'{{preset = "{self.preset}", verify_status = false}}'


SPECS = {
    "nginx": Spec("nginx", "nginx", "nginx.conf", "nginx-no-ca.conf",
                  "x-ssl-client-cert", forwards_chain=False, verify_status=True),
    "haproxy": Spec("haproxy", "haproxy", "haproxy.cfg", "haproxy-no-ca.cfg",
                    "x-ssl-client-cert", forwards_chain=True, verify_status=True),
    "caddy": Spec("caddy", "caddy", "Caddyfile", "Caddyfile-no-ca",
                  "x-client-cert", forwards_chain=False, verify_status=False),
    "apache": Spec("apache", "apache", "apache.conf", "apache-no-ca.conf",
                   "x-ssl-client-cert", forwards_chain=True, verify_status=True),
}  # fmt: skip


@dataclass
class Stack:
    """A running proxy with its listeners; the apps behind them start in the
    ``apps`` fixture (the echo tests need none)."""

    spec: Spec
    proxy: Proxy
    env: DevEnv
    upstreams: dict[str, int]
    base: Path

    def get(
        self,
        listener: str,
        identity: str | None,
        host: str,
        *,
        path: str = "/whoami",
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        return self.proxy.get(listener, identity, host, path, headers=headers)


@pytest.fixture(scope="module", params=sorted(SPECS))
def proxy_stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    spec = SPECS[request.param]
    base = tmp_path_factory.mktemp(f"proxy-{spec.kind}")
    env = make_dev_environment(base / "pki")
    upstreams = {name: free_port() for name in ("uvicorn", "opt_out", "gunicorn")}
    with EchoUpstream() as echo:
        listeners = [
            Listener("strict", spec.strict, upstreams["uvicorn"]),
            Listener("no_ca", spec.no_ca, upstreams["uvicorn"]),
            Listener("opt_out", spec.no_ca, upstreams["opt_out"]),
            Listener("gunicorn", spec.strict, upstreams["gunicorn"]),
            Listener("gunicorn_no_ca", spec.no_ca, upstreams["gunicorn"]),
            Listener("echo", spec.strict, echo.port),
            Listener("echo_no_ca", spec.no_ca, echo.port),
        ]
        with start_proxy(spec.kind, base / "proxy", env, listeners) as proxy:
            yield Stack(spec, proxy, env, upstreams, base)


@pytest.fixture(scope="module")
def stack(proxy_stack: Stack) -> Iterator[Stack]:
    """``proxy_stack`` with its three apps running: uvicorn and gunicorn with the
    proxy's preset, and uvicorn with ``verify_status = false``."""
    stack = proxy_stack
    spec, env = stack.spec, stack.env
    checked = proxy_config(env, "checked", f'"{spec.preset}"')
    opt_out = proxy_config(env, "opt-out", spec.toml_opt_out)
    with (
        uvicorn_upstream(checked, stack.upstreams["uvicorn"]),
        uvicorn_upstream(opt_out, stack.upstreams["opt_out"]),
        gunicorn_upstream(checked, stack.upstreams["gunicorn"]),
    ):
        yield stack


def _reason(response: httpx.Response) -> str:
    assert response.headers["content-type"] == "application/problem+json", response.text
    return str(response.json()["reason"])


def _leaf_der(env: DevEnv, identity: str) -> bytes:
    return ssl.PEM_cert_to_DER_cert(env.path(f"{identity}.pem").read_text())


APPS = ["strict", "gunicorn"]
"""The listeners in front of a verify-status-checking app (uvicorn, gunicorn)."""


# -- own tenant, other tenant, no certificate -----------------------------------


@pytest.mark.parametrize("listener", APPS)
def test_own_tenant_gets_its_identity(stack: Stack, listener: str) -> None:
    response = stack.get(listener, "globex-device", "api.globex.test")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["tenant_id"] == "globex"
    assert body["common_name"] == "till-3"
    assert body["source"] == stack.spec.preset
    assert body["chain"][0] == "CN=till-3,O=Globex"
    # leaf only, intermediate configured on the tenant
    initech = stack.get(listener, "initech-device", "initech.test")
    assert initech.status_code == 200, initech.text
    assert initech.json()["common_name"] == "printer-9"


@pytest.mark.parametrize("listener", APPS)
def test_chain_forwarding(stack: Stack, listener: str) -> None:
    """acme's devices need their intermediate: it reaches certgate only
    through proxies that forward the chain."""
    response = stack.get(listener, "acme-device", "pay.acme.test")
    if stack.spec.forwards_chain:
        assert response.status_code == 200, response.text
        assert response.json()["chain"] == [
            "CN=sensor-17,O=Acme",
            "CN=Acme Issuing CA,O=Acme",
            "CN=Acme Root CA,O=Acme",
        ]
    else:
        assert _reason(response) == "untrusted_chain"


@pytest.mark.parametrize("listener", APPS)
def test_other_tenants_device_is_refused(stack: Stack, listener: str) -> None:
    for identity, host in [
        ("globex-device", "pay.acme.test"),
        ("initech-device", "api.globex.test"),
        ("globex-device", "initech.test"),
    ]:
        response = stack.get(listener, identity, host)
        assert response.status_code == 403, (identity, host, response.text)
        assert _reason(response) == "untrusted_chain", (identity, host)


@pytest.mark.parametrize("listener", APPS)
def test_no_certificate(stack: Stack, listener: str) -> None:
    response = stack.get(listener, None, "api.globex.test")
    assert response.status_code == 403
    assert _reason(response) == "no_certificate"
    assert stack.get(listener, None, "api.globex.test", path="/healthz").json() == {"ok": True}


# -- certificates the proxy could not verify ------------------------------------


def test_recommended_snippet_refuses_unknown_ca_at_the_edge(proxy_stack: Stack) -> None:
    """With the recommended snippet, a certificate from a CA no tenant has
    never reaches the app: nginx answers 400 itself, the others fail the
    handshake."""
    if proxy_stack.spec.kind == "nginx":
        response = proxy_stack.get("strict", "rogue-device", "api.globex.test")
        assert response.status_code == 400
        assert "SSL certificate error" in response.text
        return
    with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
        proxy_stack.get("strict", "rogue-device", "api.globex.test")


@pytest.mark.parametrize("listener", ["no_ca", "gunicorn_no_ca"])
def test_failed_verify_status_is_refused(stack: Stack, listener: str) -> None:
    """The no-CA snippet forwards an unverifiable certificate with a failed
    status (nginx/Apache ``FAILED:...``, HAProxy ``21``): 403
    proxy_verify_failed. Caddy sends no status: certgate's own verification
    refuses it."""
    response = stack.get(listener, "rogue-device", "api.globex.test")
    assert response.status_code == 403, response.text
    expected = "proxy_verify_failed" if stack.spec.verify_status else "untrusted_chain"
    assert _reason(response) == expected
    # a client cannot overwrite the status the proxy sets
    forged = stack.get(
        listener, "rogue-device", "api.globex.test",
        headers={"X-SSL-Client-Verify": "SUCCESS"},
    )  # fmt: skip
    assert _reason(forged) == expected


def test_verify_status_opt_out(stack: Stack) -> None:
    """``verify_status = false`` (edges that forward unverified certificates
    on purpose, certgate alone knowing the tenants' CAs): certgate's own
    verification decides."""
    ok = stack.get("opt_out", "globex-device", "api.globex.test")
    assert ok.status_code == 200, ok.text
    assert ok.json()["tenant_id"] == "globex"
    assert _reason(stack.get("opt_out", "rogue-device", "api.globex.test")) == "untrusted_chain"
    assert _reason(stack.get("opt_out", "globex-device", "pay.acme.test")) == "untrusted_chain"
    assert _reason(stack.get("opt_out", None, "api.globex.test")) == "no_certificate"


# -- forged headers ---------------------------------------------------------------


def _forged_headers(env: DevEnv, identity: str) -> dict[str, str]:
    """Every certificate header of every preset, carrying ``identity``'s leaf
    in that preset's encoding, plus passing statuses."""
    der = _leaf_der(env, identity)
    pem = env.path(f"{identity}.pem").read_text()
    b64 = base64.b64encode(der).decode()
    return {
        "X-SSL-Client-Cert": quote(pem, safe=""),
        "X-SSL-Client-Verify": "SUCCESS",
        "X-SSL-Client-Chain": b64,
        "X-Client-Cert": b64,
        "X_SSL_Client_Cert": quote(pem, safe=""),
        "X_Client_Cert": b64,
    }


@pytest.mark.parametrize("listener", [*APPS, "no_ca", "opt_out"])
def test_forged_certificate_header_never_authenticates(stack: Stack, listener: str) -> None:
    """A client sending certificate headers through the proxy: without a
    client certificate they are removed (403 no_certificate); with one, the
    app sees the presented certificate, never the forged one."""
    forged = _forged_headers(stack.env, "globex-device")
    response = stack.get(listener, None, "api.globex.test", headers=forged)
    assert response.status_code == 403, response.text
    assert _reason(response) == "no_certificate"
    if listener in ("no_ca", "opt_out"):
        return
    # initech's real device, globex's forged certificate, at globex's host
    mixed = stack.get(listener, "initech-device", "api.globex.test", headers=forged)
    assert _reason(mixed) == "untrusted_chain"
    mine = stack.get(listener, "initech-device", "initech.test", headers=forged)
    assert mine.status_code == 200
    assert mine.json()["common_name"] == "printer-9"


# -- what the proxies really send (byte for byte) ---------------------------------


def _echo(stack: Stack, listener: str, identity: str | None) -> dict[str, str]:
    response = stack.get(
        listener, identity, "api.globex.test", headers={"X-SSL-Client-Cert": "forged"}
    )
    assert response.status_code == 200, response.text
    return {name.lower(): value for name, value in response.json()}


def test_real_header_encoding(proxy_stack: Stack) -> None:
    env, kind = proxy_stack.env, proxy_stack.spec.kind
    pem = env.path("acme-device.pem").read_text()
    der = _leaf_der(env, "acme-device")
    issuing = ssl.PEM_cert_to_DER_cert(env.path("acme-issuing.pem").read_text())
    sent = _echo(proxy_stack, "echo", "acme-device")
    value = sent[proxy_stack.spec.cert_header]
    if kind == "nginx":
        # $ssl_client_escaped_cert: percent-encoded PEM, trailing newline kept
        assert unquote(value) == pem
        assert value.startswith("-----BEGIN%20CERTIFICATE-----%0A")
        assert sent["x-ssl-client-verify"] == "SUCCESS"
    elif kind == "haproxy":
        assert base64.b64decode(value, validate=True) == der
        # ssl_c_chain_der: the intermediates the client sent, without the leaf
        assert base64.b64decode(sent["x-ssl-client-chain"], validate=True) == issuing
        assert sent["x-ssl-client-verify"] == "0"
    elif kind == "caddy":
        assert base64.b64decode(value, validate=True) == der
    elif kind == "apache":
        # mod_headers turns each newline of the PEM into a space (kept at the end)
        assert value == pem.replace("\n", " ")
        intermediate = env.path("acme-issuing.pem").read_text()
        assert sent["x-ssl-client-chain-0"] == intermediate.replace("\n", " ")
        assert sent["x-ssl-client-verify"] == "SUCCESS"
    # no certificate: no certificate header (the client's "forged" is gone)
    assert proxy_stack.spec.cert_header not in _echo(proxy_stack, "echo", None)


def test_real_failed_status(proxy_stack: Stack) -> None:
    sent = _echo(proxy_stack, "echo_no_ca", "rogue-device")
    rogue_der = _leaf_der(proxy_stack.env, "rogue-device")
    value = sent[proxy_stack.spec.cert_header]
    if proxy_stack.spec.kind == "nginx":
        assert ssl.PEM_cert_to_DER_cert(unquote(value)) == rogue_der
    elif proxy_stack.spec.kind == "apache":
        assert value == proxy_stack.env.path("rogue-device.pem").read_text().replace("\n", " ")
    else:
        assert base64.b64decode(value, validate=True) == rogue_der
    status = sent.get("x-ssl-client-verify")
    if proxy_stack.spec.kind in ("nginx", "apache"):
        # no CA at all: every certificate is FAILED (never GENEROUS here)
        assert status == "FAILED:unable to verify the first certificate"
        ok = _echo(proxy_stack, "echo_no_ca", "globex-device")["x-ssl-client-verify"]
        assert ok == "FAILED:unable to verify the first certificate"
    elif proxy_stack.spec.kind == "haproxy":
        assert status == "21"  # X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE
        assert sent["x-ssl-client-chain"] == ""  # sent, empty: no intermediates
    else:
        assert status is None
    none = _echo(proxy_stack, "echo_no_ca", None)
    assert none.get("x-ssl-client-verify") == {"nginx": "NONE", "apache": "NONE"}.get(
        proxy_stack.spec.kind
    )


# -- curl ------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_through_the_proxy(stack: Stack) -> None:
    ok = stack.proxy.curl("strict", "globex-device", "api.globex.test")
    assert ok["tenant_id"] == "globex"
    assert ok["source"] == stack.spec.preset
    refused = stack.proxy.curl("strict", "globex-device", "pay.acme.test")
    assert refused["reason"] == "untrusted_chain"
    assert stack.proxy.curl("strict", None, "api.globex.test")["reason"] == "no_certificate"
    header = _forged_headers(stack.env, "globex-device")["X-SSL-Client-Cert"]
    forged = stack.proxy.curl(
        "gunicorn", None, "api.globex.test", "-H", f"X-SSL-Client-Cert: {header}"
    )
    assert forged["reason"] == "no_certificate"


# -- README -------------------------------------------------------------------------


def test_readme_shows_the_tested_snippets(proxy_stack: Stack) -> None:
    text = README.read_text()
    for name in (proxy_stack.spec.strict, proxy_stack.spec.no_ca):
        assert snippet(name).strip() in text, f"README lacks tests/proxy_configs/{name} verbatim"
    assert f'header_sources  = ["{proxy_stack.spec.preset}"]' in text
    if proxy_stack.spec.verify_status:
        assert f"header_sources  = [{proxy_stack.spec.toml_opt_out}]" in text
