"""The spoofing matrix through real servers (the in-process matrix is
tests/test_spoofing_matrix.py).

A client that is not a trusted proxy sends every preset's certificate
headers - each a valid forgery: from a trusted peer it authenticates as
``globex`` (checked in-process first, per preset) - straight to a real
server over plain HTTP, the way an app behind a proxy is served:

* uvicorn through ``python -m certgate.servers.uvicorn`` over TCP IPv4,
  TCP IPv6 (``::1``) and a unix socket (``--uds``, no ``trust_unix_socket``),
  with ``--proxy-headers`` and ``FORWARDED_ALLOW_IPS="*"`` (uvicorn rewrites
  ``scope["client"]`` from the forged ``X-Forwarded-For``);
* gunicorn (sync workers, certgate's hooks, ``--forwarded-allow-ips "*"``)
  over TCP IPv4 and a unix socket, with Werkzeug's ``ProxyFix`` rewriting
  ``REMOTE_ADDR`` in front of certgate;
* Werkzeug's own server over TCP IPv4, with ``ProxyFix``.

``trusted_proxies`` is ``10.0.0.0/8`` and ``fd00::/8``; the forged
``X-Forwarded-For`` / ``Forwarded`` / ``X-Real-IP`` claim addresses inside
them. On a ``require`` path every case is certgate's ``403 no_certificate``
(the app is never called); on an ``optional`` path the app is called with
no identity and sees none of the certificate headers, in any spelling.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from examples.devenv import DevEnv, free_port, make_dev_environment

from certgate import CertGate
from certgate.asgi import DECISION_KEY, CertGateMiddleware
from certgate.sources import registered_names
from tests.test_asgi import RecordingApp, http_scope, run_http

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

ROOT = Path(__file__).resolve().parents[1]
HOST = "api.globex.test"
TRUSTED = '["10.0.0.0/8", "fd00::/8"]'
PATHS = {"/whoami": "require", "/opt/x": "optional"}
FORWARDED: dict[str, list[tuple[str, str]]] = {
    "none": [],
    "xff-v4": [("X-Forwarded-For", "10.1.2.3")],
    "xff-v6": [("X-Forwarded-For", "fd00::1")],
    "forwarded": [("Forwarded", "for=10.1.2.3;proto=https")],
    "x-real-ip": [("X-Real-IP", "fd00::1")],
    "all": [
        ("X-Forwarded-For", "10.1.2.3, fd00::1"),
        ("Forwarded", 'for="[fd00::1]";proto=https, for=10.1.2.3'),
        ("X-Real-IP", "10.1.2.3"),
        ("X-Forwarded-Proto", "https"),
    ],
}
SPELLINGS = ("canonical", "upper", "mixed", "underscore")
PRESETS = (
    "apache", "aws-alb", "azure", "caddy", "cloudflare", "envoy", "gcp", "haproxy",
    "ingress-nginx", "istio", "nginx", "rfc9440", "traefik", "xfcc",
)  # fmt: skip
"""Every built-in preset (other tests register custom sources in this process)."""


def forgeries(der: bytes) -> dict[str, list[tuple[str, str]]]:
    """Per preset, the headers its edge would send for the certificate ``der``."""
    b64 = base64.b64encode(der).decode()
    pem = (
        "-----BEGIN CERTIFICATE-----\n"
        + "\n".join(b64[i : i + 64] for i in range(0, len(b64), 64))
        + "\n-----END CERTIFICATE-----\n"
    )
    digest = hashlib.sha256(der).hexdigest()
    xfcc = [("x-forwarded-client-cert", f'Hash={digest};Cert="{quote(pem, safe="")}"')]
    nginx = [("x-ssl-client-cert", quote(pem, safe="")), ("x-ssl-client-verify", "SUCCESS")]
    return {
        "cloudflare": [("cf-client-cert-der-base64", b64), ("cf-client-cert-sha256", digest)],
        "rfc9440": [("client-cert", f":{b64}:")],
        "nginx": nginx,
        "ingress-nginx": [("ssl-client-cert", nginx[0][1]), ("ssl-client-verify", "SUCCESS")],
        "envoy": xfcc,
        "xfcc": xfcc,
        "istio": xfcc,
        "traefik": [("x-forwarded-tls-client-cert", b64)],
        "aws-alb": [("x-amzn-mtls-clientcert", quote(pem, safe="+=/"))],
        "azure": [("x-arr-clientcert", b64)],
        "gcp": [
            ("x-client-cert-leaf", f":{b64}:"),
            ("x-client-cert-present", "true"),
            ("x-client-cert-chain-verified", "true"),
        ],
        "caddy": [("x-client-cert", b64)],
        "haproxy": [("x-ssl-client-cert", b64), ("x-ssl-client-verify", "0")],
        "apache": [
            ("x-ssl-client-cert", pem.strip().replace("\n", " ")),
            ("x-ssl-client-verify", "SUCCESS"),
        ],
    }


def _spell(name: str, how: str) -> str:
    if how == "upper":
        return name.upper()
    if how == "underscore":
        return name.replace("-", "_")
    if how == "canonical":
        return name
    return "-".join(part.capitalize() for part in name.split("-"))


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> DevEnv:
    env = make_dev_environment(tmp_path_factory.mktemp("spoof-pki"))
    presets = ", ".join(f'"{p}"' for p in PRESETS)
    text = env.config.read_text().replace(
        "[certgate]\n",
        f"[certgate]\ntrusted_proxies = {TRUSTED}\nheader_sources = [{presets}]\n"
        "transport = false\n",
    )
    routes = '[[certgate.routes]]\npath = "/opt/*"\naccess = "optional"\n\n[[tenants]]'
    env.config.write_text(text.replace("[[tenants]]", routes, 1))
    return env


def _der(env: DevEnv) -> bytes:
    import ssl

    return ssl.PEM_cert_to_DER_cert(env.path("globex-device.pem").read_text())


def test_every_forgery_authenticates_from_a_trusted_peer(env: DevEnv) -> None:
    """Control: each preset's forged headers are a valid presentation, so the
    real-server refusals below are the stripping's doing."""
    forged = forgeries(_der(env))
    assert sorted(forged) == list(PRESETS)
    assert set(PRESETS) <= set(registered_names())
    for preset, headers in forged.items():
        config = env.directory / f"control-{preset}.toml"
        config.write_text(
            env.config.read_text().replace("header_sources = [", f'header_sources = ["{preset}", ')
        )
        gate = CertGate.from_toml(config)
        app = RecordingApp()
        scope = http_scope(
            host=HOST, headers=[(n.encode(), v.encode()) for n, v in headers], path="/whoami"
        )
        scope["certgate.socket_peer"] = ("10.1.2.3", 1)
        result = run_http(CertGateMiddleware(app, gate), scope)
        assert result.status == 200, (preset, result.body)
        identity = app.scope[DECISION_KEY].identity
        assert identity is not None, preset
        assert identity.tenant_id == "globex", preset


@contextlib.contextmanager
def _process(cmd: list[str], env: DevEnv, log: Path, ready: tuple[str, object]) -> Iterator[None]:
    variables = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "CERTGATE_CONFIG": str(env.config),
        "CERTGATE_ENV": str(env.directory),
        "FORWARDED_ALLOW_IPS": "*",
    }
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=variables, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 30
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"{cmd[:4]} exited: {log.read_text()}")
                with contextlib.suppress(OSError):
                    if ready[0] == "unix":
                        probe = socket.socket(socket.AF_UNIX)
                        probe.settimeout(0.2)
                        probe.connect(str(ready[1]))
                    else:
                        probe = socket.create_connection(ready[1], 0.2)  # type: ignore[arg-type]
                    probe.close()
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{cmd[:4]} did not start: {log.read_text()}")
                time.sleep(0.05)
            yield
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def _targets(env: DevEnv, sockdir: Path) -> dict[str, tuple[list[str], tuple[str, object], str]]:
    """name -> (command, how to reach it, base URL)."""
    uvicorn = [sys.executable, "-m", "certgate.servers.uvicorn", "tests.spoof_echo_app:asgi_app",
               "--factory", "--proxy-headers", "--forwarded-allow-ips", "*", "--log-level",
               "warning"]  # fmt: skip
    gunicorn_conf = sockdir / "gunicorn.conf.py"
    gunicorn_conf.write_text(
        "from certgate.servers.gunicorn import on_starting, post_worker_init  # noqa: F401\n"
        "workers = 1\nforwarded_allow_ips = '*'\n"
    )
    gunicorn = [sys.executable, "-m", "gunicorn", "-c", str(gunicorn_conf)]
    p4, p6, pg, pw = free_port(), free_port(), free_port(), free_port()
    uds, gds = sockdir / "uvicorn.sock", sockdir / "gunicorn.sock"
    wsgi = "tests.spoof_echo_app:wsgi_app()"
    return {
        "uvicorn-ipv4": (
            [*uvicorn, "--host", "127.0.0.1", "--port", str(p4)],
            ("tcp", ("127.0.0.1", p4)), f"http://127.0.0.1:{p4}",
        ),
        "uvicorn-ipv6": (
            [*uvicorn, "--host", "::1", "--port", str(p6)],
            ("tcp", ("::1", p6)), f"http://[::1]:{p6}",
        ),
        "uvicorn-uds": ([*uvicorn, "--uds", str(uds)], ("unix", uds), "http://localhost"),
        "gunicorn-ipv4": (
            [*gunicorn, "--bind", f"127.0.0.1:{pg}", wsgi],
            ("tcp", ("127.0.0.1", pg)), f"http://127.0.0.1:{pg}",
        ),
        "gunicorn-uds": ([*gunicorn, "--bind", f"unix:{gds}", wsgi], ("unix", gds), "http://localhost"),
        "werkzeug-ipv4": (
            [sys.executable, str(ROOT / "tests" / "spoof_echo_app.py"), str(pw)],
            ("tcp", ("127.0.0.1", pw)), f"http://127.0.0.1:{pw}",
        ),
    }  # fmt: skip


def _leaks(seen: list[list[str]], forged: set[str]) -> list[str]:
    found = []
    for name, _ in seen:
        key = name.lower().removeprefix("http_").replace("_", "-")
        if key in forged:
            found.append(name)
    return found


def _run_target(
    name: str, reach: tuple[str, object], base: str, env: DevEnv
) -> tuple[int, list[str]]:
    forged = forgeries(_der(env))
    transport = httpx.HTTPTransport(uds=str(reach[1])) if reach[0] == "unix" else None
    failures: list[str] = []
    count = 0
    with httpx.Client(transport=transport, timeout=20) as client:
        for preset, headers in sorted(forged.items()):
            names = {n for n, _ in headers}
            for forwarded, extra in FORWARDED.items():
                for spelling in SPELLINGS:
                    sent = [(_spell(n, spelling), v) for n, v in headers]
                    for path, access in PATHS.items():
                        response = client.get(base + path, headers=[("Host", HOST), *sent, *extra])
                        count += 1
                        case = f"{name} {preset} {forwarded} {spelling} {path}"
                        kind = response.headers.get("content-type", "")
                        if access == "require":
                            ok = (
                                response.status_code == 403
                                and kind == "application/problem+json"
                                and response.json().get("reason") == "no_certificate"
                            )
                        else:
                            body = response.json() if kind == "application/json" else {}
                            leaked = _leaks(body.get("headers", []), names)
                            ok = (
                                response.status_code == 200
                                and "headers" in body
                                and body.get("tenant") is None
                                and not leaked
                            )
                        if not ok:
                            failures.append(f"{case}: {response.status_code} {response.text[:200]}")
    return count, failures


def test_forged_headers_through_real_servers(env: DevEnv, tmp_path: Path) -> None:
    targets = _targets(env, tmp_path)
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        for name, (cmd, reach, _) in targets.items():
            stack.enter_context(_process(cmd, env, tmp_path / f"{name}.log", reach))
        with ThreadPoolExecutor(len(targets)) as pool:
            results = dict(
                zip(
                    targets,
                    pool.map(lambda t: _run_target(t[0], t[1][1], t[1][2], env), targets.items()),
                    strict=True,
                )
            )
    count = sum(c for c, _ in results.values())
    failures = [f for _, fs in results.values() for f in fs]
    print(f"\nspoofing matrix, real servers: {count} cases in {time.monotonic() - started:.1f} s")
    expected = len(PRESETS) * len(FORWARDED) * len(SPELLINGS) * len(PATHS)
    assert count == expected * len(targets)
    assert failures == [], failures[:5]
