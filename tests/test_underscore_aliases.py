"""Issue 5, item 7: underscore spellings of certificate headers under WSGI.

WSGI folds ``Cf-Client-Cert-Der-Base64`` and ``Cf_Client_Cert_Der_Base64``
into one environ key. A trusted proxy sets the dashed name (and strips a
client's copy of it) but may pass the underscore spelling through; if the
server maps that into the environ, a client's forged certificate is believed.
These tests run real gunicorn and Werkzeug servers on loopback with a
Cloudflare header source trusted from 127.0.0.1 (the test client plays the
proxy and the attacker behind it).
"""

from __future__ import annotations

import base64
import hashlib
import os
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from examples.devenv import DevEnv, make_dev_environment

from certgate import CertGate
from certgate.servers import gunicorn
from certgate.wsgi import CertGateWSGIMiddleware, Environ, StartResponse
from tests.conftest import PKI
from tests.servers import ROOT, Server, free_port, serve, trust_header_source, werkzeug_cmd

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

EXAMPLE_CONF = ROOT / "examples" / "flask_app" / "gunicorn.conf.py"
APP = "examples.flask_app.app:create_app()"
DASHED = "Cf-Client-Cert-Der-Base64"
UNDERSCORE = "Cf_Client_Cert_Der_Base64"

# The example's settings with only the TLS hook: a gunicorn.conf.py written
# before certgate checked header_map.
NO_HEADER_HOOKS_CONF = """\
import os
import ssl

from certgate.servers.gunicorn import ssl_context  # noqa: F401

_env = os.environ["CERTGATE_ENV"]
workers = 1
certfile = os.path.join(_env, "server.pem")
keyfile = os.path.join(_env, "server.key")
ca_certs = os.path.join(_env, "tenants-bundle.pem")
cert_reqs = ssl.CERT_OPTIONAL
"""

# Only the per-worker hook (a configuration with its own on_starting).
WORKER_HOOK_ONLY_CONF = NO_HEADER_HOOKS_CONF.replace(
    "import ssl_context", "import post_worker_init, ssl_context"
)


@pytest.fixture(scope="module")
def proxy_env(tmp_path_factory: pytest.TempPathFactory) -> DevEnv:
    """The dev PKI with the Cloudflare header source trusted from loopback."""
    env = trust_header_source(
        make_dev_environment(tmp_path_factory.mktemp("alias-pki")), "127.0.0.1/32"
    )
    for name, body in (
        ("no-hooks.conf.py", NO_HEADER_HOOKS_CONF),
        ("worker-hook.conf.py", WORKER_HOOK_ONLY_CONF),
    ):
        env.path(name).write_text(body)
    return env


def _b64(env: DevEnv, identity: str) -> str:
    der = ssl.PEM_cert_to_DER_cert(env.path(f"{identity}.pem").read_text())
    return base64.b64encode(der).decode()


def _gunicorn(conf: Path, port: int, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "gunicorn", "-c", str(conf),
        "--bind", f"127.0.0.1:{port}", *extra, APP,
    ]  # fmt: skip


@pytest.fixture
def gunicorn_server(proxy_env: DevEnv, request: pytest.FixtureRequest) -> Iterator[Server]:
    conf, *extra = request.param
    port = free_port()
    cmd = _gunicorn(proxy_env.path(conf) if conf != "example" else EXAMPLE_CONF, port, *extra)
    with serve(cmd, proxy_env, port, {"CERTGATE_ENV": str(proxy_env.directory)}) as running:
        yield running


def _reason(response: httpx.Response) -> str:
    assert response.headers["content-type"] == "application/problem+json", response.text
    return str(response.json()["reason"])


# -- gunicorn refuses to start with an unsafe mapping -------------------------


@pytest.mark.parametrize(
    ("conf", "setting", "exit_code", "message"),
    [
        ("example", ("--header-map", "dangerous"), 1, "header_map = 'dangerous'"),
        ("example", ("--forwarder-headers", "SCRIPT_NAME,CF_CLIENT_CERT_DER_BASE64"), 1,
         "forwarder_headers names certificate header(s) ['CF_CLIENT_CERT_DER_BASE64']"),
        ("example", ("--forwarder-headers", "*"), 1, "forwarder_headers contains '*'"),
        # post_worker_init alone: the worker refuses to boot, gunicorn halts.
        ("worker-hook.conf.py", ("--header-map", "dangerous"), 3, "header_map = 'dangerous'"),
    ],
)  # fmt: skip
def test_gunicorn_hooks_refuse_to_start_with_underscore_mapping(
    proxy_env: DevEnv, conf: str, setting: tuple[str, str], exit_code: int, message: str
) -> None:
    path = EXAMPLE_CONF if conf == "example" else proxy_env.path(conf)
    try:
        done = subprocess.run(
            _gunicorn(path, free_port(), *setting),
            check=False,
            cwd=ROOT,
            env={
                **os.environ,
                "PYTHONPATH": str(ROOT),
                "CERTGATE_ENV": str(proxy_env.directory),
                "CERTGATE_CONFIG": str(proxy_env.config),
            },
            capture_output=True,
            text=True,
            timeout=60,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"gunicorn kept running with {setting}: {exc.stderr!r}")
    assert done.returncode == exit_code, done.stderr
    assert "UnsafeHeaderHandling" in done.stderr
    assert message in done.stderr


# -- requests through gunicorn ------------------------------------------------


@pytest.mark.parametrize(
    "gunicorn_server", [("no-hooks.conf.py", "--header-map", "dangerous")], indirect=True
)
def test_dangerous_header_map_without_hooks_never_believes_the_alias(
    gunicorn_server: Server, proxy_env: DevEnv
) -> None:
    """The attack: gunicorn maps ``Cf_Client_Cert_Der_Base64`` onto the key of
    the dashed header. Without the hooks certgate cannot know the setting, so
    it must not believe either spelling (before the fix: 200 as a device)."""
    forged = {UNDERSCORE: _b64(proxy_env, "globex-device")}
    response = gunicorn_server.get(None, "api.globex.test", headers=forged)
    assert response.status_code == 403, response.text
    assert _reason(response) == "malformed_header"
    dashed = gunicorn_server.get(None, "api.globex.test", headers={DASHED: forged[UNDERSCORE]})
    assert _reason(dashed) == "malformed_header"
    # Exempt paths still answer; no header: the usual no_certificate.
    health = gunicorn_server.get(None, "api.globex.test", "/healthz", headers=forged)
    assert health.status_code == 200
    assert health.json() == {"ok": True}
    assert _reason(gunicorn_server.get(None, "api.globex.test")) == "no_certificate"
    log = gunicorn_server.log_text()
    assert "header_map was not checked in this worker" in log
    assert forged[UNDERSCORE] not in log


@pytest.mark.parametrize(
    "gunicorn_server",
    [("no-hooks.conf.py", "--forwarder-headers", "SCRIPT_NAME,CF_CLIENT_CERT_DER_BASE64")],
    indirect=True,
)
def test_forwarder_headers_alias_without_hooks_is_refused(
    gunicorn_server: Server, proxy_env: DevEnv
) -> None:
    """gunicorn maps an underscore name listed in forwarder_headers from a
    forwarded_allow_ips peer (127.0.0.1 by default) whatever header_map says."""
    forged = {UNDERSCORE: _b64(proxy_env, "globex-device")}
    response = gunicorn_server.get(None, "api.globex.test", headers=forged)
    assert response.status_code == 403, response.text
    assert _reason(response) == "malformed_header"


@pytest.mark.parametrize("gunicorn_server", [("example",)], indirect=True)
def test_default_header_map_with_hooks(gunicorn_server: Server, proxy_env: DevEnv) -> None:
    """With the hooks loaded and gunicorn's default ``drop``: the underscore
    spelling never reaches the environ; the proxy's dashed header works."""
    globex = _b64(proxy_env, "globex-device")
    alias = gunicorn_server.get(None, "api.globex.test", headers={UNDERSCORE: globex})
    assert alias.status_code == 403
    assert _reason(alias) == "no_certificate"
    dashed = gunicorn_server.get(None, "api.globex.test", headers={DASHED: globex})
    assert dashed.status_code == 200, dashed.text
    assert dashed.json()["source"] == "cloudflare"
    assert dashed.json()["tenant_id"] == "globex"
    # Both spellings: only the dashed one counts (not folded into "a,b").
    both = gunicorn_server.get(
        None,
        "initech.test",
        headers={DASHED: _b64(proxy_env, "initech-device"), UNDERSCORE: globex},
    )
    assert both.status_code == 200, both.text
    assert both.json()["common_name"] == "printer-9"


@pytest.mark.parametrize("gunicorn_server", [("no-hooks.conf.py",)], indirect=True)
def test_unchecked_gunicorn_fails_closed_for_forwarded_headers(
    gunicorn_server: Server, proxy_env: DevEnv
) -> None:
    """Default header_map but hooks not loaded: certgate cannot know the
    setting, so even the dashed header is not believed (documented)."""
    response = gunicorn_server.get(
        None, "api.globex.test", headers={DASHED: _b64(proxy_env, "globex-device")}
    )
    assert response.status_code == 403
    assert _reason(response) == "malformed_header"


# -- Werkzeug's development server --------------------------------------------


def test_werkzeug_server_drops_the_alias(proxy_env: DevEnv) -> None:
    port = free_port()
    globex = _b64(proxy_env, "globex-device")
    with serve(werkzeug_cmd(proxy_env, port), proxy_env, port) as server:
        alias = server.get(None, "api.globex.test", headers={UNDERSCORE: globex})
        assert alias.status_code == 403
        assert _reason(alias) == "no_certificate"
        dashed = server.get(None, "api.globex.test", headers={DASHED: globex})
        assert dashed.status_code == 200, dashed.text
        assert dashed.json()["source"] == "cloudflare"


# -- in process: the middleware and the recorded gunicorn settings ------------


def _gate(pki: PKI, *names: Any) -> CertGate:
    return CertGate(
        pki.registry(),
        trusted_proxies=["10.0.0.0/8"],
        header_sources=["cloudflare", *names],
        exempt_paths=["/open"],
        trust_reported_peer=True,
    )


def _call(mw: CertGateWSGIMiddleware, environ: dict[str, Any]) -> tuple[str, bytes]:
    seen: list[str] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        seen.append(status)
        return lambda data: None

    body = b"".join(mw(environ, start_response))
    return seen[0], body


def _app(environ: Environ, start_response: StartResponse) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"app"]


def _gunicorn_environ(pki: PKI, path: str = "/x") -> dict[str, Any]:
    der = pki["globex"].issuer.issue("inproc").der
    return {
        "gunicorn.socket": object(),  # no socket peer: REMOTE_ADDR, trust_reported_peer
        "REMOTE_ADDR": "10.0.0.1",
        "HTTP_HOST": "api.globex.test",
        "PATH_INFO": path,
        "HTTP_CF_CLIENT_CERT_DER_BASE64": base64.b64encode(der).decode(),
        "HTTP_CF_CLIENT_CERT_SHA256": hashlib.sha256(der).hexdigest(),
    }


def test_middleware_needs_checked_gunicorn_settings(
    pki: PKI, monkeypatch: pytest.MonkeyPatch
) -> None:
    mw = CertGateWSGIMiddleware(_app, _gate(pki))
    monkeypatch.setattr(gunicorn, "_checked", None)
    status, body = _call(mw, _gunicorn_environ(pki))
    assert status.startswith("403")
    assert b'"reason":"malformed_header"' in body
    # Exempt path: passes, with the unreadable headers deleted.
    environ = _gunicorn_environ(pki, "/open")
    assert _call(mw, environ)[0].startswith("200")
    assert "HTTP_CF_CLIENT_CERT_DER_BASE64" not in environ
    assert "HTTP_CF_CLIENT_CERT_SHA256" not in environ
    # The worker hook checked a safe configuration: believed.
    gunicorn.post_worker_init(SimpleNamespace(cfg=SimpleNamespace(header_map="drop")))
    assert gunicorn.checked_header_handling() is not None
    assert _call(mw, _gunicorn_environ(pki))[0].startswith("200")


def test_custom_header_source_listed_in_forwarder_headers(
    pki: PKI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hook checks the well-known certificate headers; a gate with its
    own header source re-checks the recorded settings against its names."""

    class Custom:
        name = "custom"
        header_names = ("x-my-client-cert",)

        def extract(self, headers: Any) -> None:
            return None

    handling = gunicorn.check_header_handling(
        SimpleNamespace(header_map="refuse", forwarder_headers=["X_MY_CLIENT_CERT"])
    )
    monkeypatch.setattr(gunicorn, "_checked", handling)
    mw = CertGateWSGIMiddleware(_app, _gate(pki, Custom()))
    environ = {**_gunicorn_environ(pki), "HTTP_X_MY_CLIENT_CERT": "x"}
    status, body = _call(mw, environ)
    assert status.startswith("403")
    assert b'"reason":"malformed_header"' in body


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"header_map": "dangerous"}, "header_map = 'dangerous'"),
        ({}, "header_map = 'legacy'"),  # gunicorn < 22 has no header_map
        ({"header_map": "drop", "forwarder_headers": "*"}, "contains '*'"),
        ({"header_map": "drop", "forwarder_headers": ["x_ssl_client_cert"]}, "X_SSL_CLIENT_CERT"),
    ],
)
def test_check_header_handling_rejects(settings: dict[str, Any], problem: str) -> None:
    with pytest.raises(gunicorn.UnsafeHeaderHandling, match=problem.replace("*", r"\*")):
        gunicorn.check_header_handling(SimpleNamespace(**settings))


def test_check_header_handling_accepts_safe_settings() -> None:
    for header_map in ("drop", "refuse", " Drop "):
        handling = gunicorn.check_header_handling(
            SimpleNamespace(header_map=header_map, forwarder_headers=["SCRIPT_NAME", "PATH_INFO"])
        )
        assert handling.header_map in gunicorn.SAFE_HEADER_MAPS
