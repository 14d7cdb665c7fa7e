"""Start real TLS-terminating proxies (nginx, HAProxy, Caddy, Apache httpd)
on loopback in front of certgate-protected apps, for the proxy e2e tests.

The proxy-side configuration comes from the snippets in
``tests/proxy_configs/`` - the text the README shows. A snippet is written for
production (``listen 8443``, ``/etc/certgate/...``, upstream
``127.0.0.1:8000``); :func:`instantiate` swaps those for a free loopback port,
the test PKI's directory and the upstream's port, and fails if a snippet no
longer contains what it swaps (so README and tests cannot drift apart
silently). Each proxy gets a wrapper (pid file, logs, modules, ... in a tmp
directory) that is test-only.

A missing proxy binary skips the tests with a loud reason on a developer
machine, and fails them in CI (``CI=true``: the test command installs the
packages, so a missing binary there is a broken set-up).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from examples.devenv import DevEnv, free_port, running

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "tests" / "proxy_configs"
APACHE_MODULES = Path("/usr/lib/apache2/modules")
START_TIMEOUT = 45.0
"""Seconds a proxy or app may take to accept connections (the machine is shared)."""

BINARIES = {
    "nginx": "/usr/sbin/nginx",
    "haproxy": "/usr/sbin/haproxy",
    "caddy": "/usr/bin/caddy",
    "apache": "/usr/sbin/apache2",
}

__all__ = [
    "BINARIES",
    "CONFIGS",
    "App",
    "EchoUpstream",
    "Listener",
    "Proxy",
    "gunicorn_upstream",
    "instantiate",
    "require_binary",
    "snippet",
    "start_proxy",
    "uvicorn_upstream",
]


def require_binary(kind: str) -> str:
    """The path of proxy ``kind``'s binary; skip loudly when it is missing
    (fail instead when ``CI=true``)."""
    path = BINARIES[kind]
    if os.access(path, os.X_OK):
        return path
    message = (
        f"REAL-PROXY TESTS NOT RUN: {path} ({kind}) is missing. "
        "Run `python3 dev.py setup` as root (it installs nginx, haproxy, caddy and apache2)."
    )
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message + " CI=true: a missing proxy is a failure, not a skip.")
    print(f"\n*** {message} ***", file=sys.stderr)
    pytest.skip(message)


def snippet(name: str) -> str:
    """The text of ``tests/proxy_configs/NAME`` (what the README shows)."""
    return (CONFIGS / name).read_text()


def _swap(text: str, old: str, new: str, name: str) -> str:
    if old not in text:
        raise AssertionError(f"proxy snippet {name} no longer contains {old!r}")
    return text.replace(old, new)


@dataclass(frozen=True)
class Listener:
    """One proxy listener: ``snippet`` (a file in tests/proxy_configs/)
    forwarding to the app on ``upstream`` (a loopback port)."""

    name: str
    snippet: str
    upstream: int
    port: int = field(default_factory=free_port)


def instantiate(kind: str, listener: Listener, pki: Path, index: int) -> str:
    """``listener``'s snippet with test ports and paths swapped in."""
    text = snippet(listener.snippet)
    name = listener.snippet
    text = _swap(text, "/etc/certgate/", f"{pki}/", name)
    text = _swap(text, "127.0.0.1:8000", f"127.0.0.1:{listener.upstream}", name)
    port = str(listener.port)
    if kind == "nginx":
        text = _swap(text, "listen 8443 ssl;", f"listen 127.0.0.1:{port} ssl;", name)
    elif kind == "haproxy":
        text = _swap(text, "bind :8443 ", f"bind 127.0.0.1:{port} ", name)
        text = _swap(text, "certgate_mtls", f"certgate_mtls_{index}", name)
        text = _swap(text, "certgate_app", f"certgate_app_{index}", name)
    elif kind == "caddy":
        text = _swap(text, "https://:8443 {", f"https://:{port} {{\n\tbind 127.0.0.1", name)
    elif kind == "apache":
        text = _swap(text, "<VirtualHost *:8443>", f"<VirtualHost 127.0.0.1:{port}>", name)
    else:
        raise ValueError(kind)
    return text


def _wrapper(kind: str, directory: Path, listeners: Sequence[Listener], pki: Path) -> Path:
    """Write the test-only main configuration around the snippets; its path."""
    body = "\n".join(instantiate(kind, lis, pki, i) for i, lis in enumerate(listeners))
    logs = directory / "logs"
    logs.mkdir(exist_ok=True)
    if kind == "nginx":
        path = directory / "nginx.conf"
        temp = directory / "temp"
        temp.mkdir(exist_ok=True)
        path.write_text(f"""\
daemon off;
master_process off;
user root;
worker_processes 1;
pid {directory}/nginx.pid;
error_log {logs}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {logs}/access.log;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
{body}
}}
""")
    elif kind == "haproxy":
        path = directory / "haproxy.cfg"
        path.write_text(f"""\
global
    log stderr format raw local0 info

defaults
    mode http
    log global
    option httplog
    timeout connect 10s
    timeout client 60s
    timeout server 60s

{body}
""")
    elif kind == "caddy":
        path = directory / "Caddyfile"
        path.write_text(f"""\
{{
	admin off
	auto_https off
	storage file_system {directory}/caddy-data
	servers {{
		protocols h1 h2
	}}
	log {{
		output stderr
		level INFO
	}}
}}

{body}
""")
    elif kind == "apache":
        path = directory / "apache2.conf"
        modules = ["mpm_event", "authz_core", "ssl", "headers", "proxy", "proxy_http"]
        loads = "\n".join(f"LoadModule {m}_module {APACHE_MODULES}/mod_{m}.so" for m in modules)
        listens = "\n".join(f"Listen 127.0.0.1:{lis.port} https" for lis in listeners)
        path.write_text(f"""\
ServerRoot {directory}
DefaultRuntimeDir {directory}
PidFile {directory}/apache2.pid
Mutex file:{directory} default
ServerName localhost
User www-data
Group www-data
ErrorLog {logs}/error.log
LogLevel info ssl:info
{loads}
{listens}
SSLSessionCache none

{body}
""")
    else:
        raise ValueError(kind)
    return path


def _command(kind: str, binary: str, config: Path) -> list[str]:
    if kind == "nginx":
        return [binary, "-c", str(config), "-p", str(config.parent)]
    if kind == "haproxy":
        return [binary, "-f", str(config), "-db"]
    if kind == "caddy":
        return [binary, "run", "--config", str(config), "--adapter", "caddyfile"]
    if kind == "apache":
        return [binary, "-X", "-f", str(config), "-DFOREGROUND"]
    raise ValueError(kind)


@dataclass
class Proxy:
    """A running proxy: ``ports[listener name]`` on 127.0.0.1."""

    kind: str
    directory: Path
    ports: dict[str, int]
    proc: subprocess.Popen[bytes]
    env: DevEnv

    def log_tail(self, lines: int = 40) -> str:
        """The end of the proxy's output and error log (for failure messages)."""
        chunks = []
        for path in sorted(self.directory.glob("*.out")) + sorted(
            (self.directory / "logs").glob("*.log")
        ):
            text = path.read_text(errors="replace").splitlines()[-lines:]
            chunks.append(f"--- {path.name}\n" + "\n".join(text))
        return "\n".join(chunks)

    def get(
        self,
        listener: str,
        identity: str | None,
        host: str,
        path: str = "/whoami",
        *,
        headers: Mapping[str, str] | None = None,
        chain: bool = True,
    ) -> httpx.Response:
        """One HTTPS request through ``listener`` with SNI and Host ``host``,
        presenting ``identity`` (``NAME-chain.pem``, or ``NAME.pem`` alone
        with ``chain=False``)."""
        context = ssl.create_default_context(cafile=str(self.env.server_ca))
        if identity is not None:
            chain_file, key = self.env.client(identity)
            cert = chain_file if chain else self.env.path(f"{identity}.pem")
            context.load_cert_chain(cert, key)
        url = f"https://127.0.0.1:{self.ports[listener]}{path}"
        with httpx.Client(verify=context, timeout=30) as client:
            return client.get(
                url,
                headers={"Host": host, **(headers or {})},
                extensions={"sni_hostname": host},
            )

    def curl(
        self, listener: str, identity: str | None, host: str, *extra: str
    ) -> dict[str, object]:
        """``curl`` through ``listener`` (``--resolve`` so SNI and Host are
        ``host``); the JSON body."""
        port = self.ports[listener]
        cmd = [
            "curl", "-sS", "--max-time", "30", "--cacert", str(self.env.server_ca),
            "--resolve", f"{host}:{port}:127.0.0.1",
        ]  # fmt: skip
        if identity is not None:
            chain_file, key = self.env.client(identity)
            cmd += ["--cert", str(chain_file), "--key", str(key)]
        done = subprocess.run(
            [*cmd, *extra, f"https://{host}:{port}/whoami"],
            capture_output=True,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            raise AssertionError(f"curl failed ({done.returncode}): {done.stderr!r}")
        return dict(json.loads(done.stdout))


def _accepts_tls(port: int) -> bool:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=2) as raw,
            context.wrap_socket(raw, server_hostname="localhost"),
        ):
            return True
    except (OSError, ssl.SSLError):
        return False


@contextlib.contextmanager
def start_proxy(
    kind: str, directory: Path, env: DevEnv, listeners: Sequence[Listener]
) -> Iterator[Proxy]:
    """Run proxy ``kind`` with ``listeners`` until the block ends.

    Waits until every listener completes a TLS handshake; raises with the
    proxy's log tail if it exits or does not get there in time. Stopped with
    SIGTERM (SIGKILL after 10 s)."""
    binary = require_binary(kind)
    directory.mkdir(parents=True, exist_ok=True)
    pki = env.directory
    combined = pki / "server-and-key.pem"  # HAProxy: certificate and key in one file
    if not combined.exists():
        combined.write_bytes(env.server_cert.read_bytes() + env.server_key.read_bytes())
    config = _wrapper(kind, directory, listeners, pki)
    if kind == "apache":
        # The worker drops to www-data after reading its files as root.
        with contextlib.suppress(OSError):
            shutil.chown(directory, "www-data")
    environ = {
        **os.environ,
        "HOME": str(directory),
        "XDG_DATA_HOME": str(directory / "xdg-data"),
        "XDG_CONFIG_HOME": str(directory / "xdg-config"),
    }
    out_path = directory / f"{kind}.out"
    with out_path.open("wb") as out:
        proc = subprocess.Popen(
            _command(kind, binary, config),
            cwd=directory,
            env=environ,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        proxy = Proxy(kind, directory, {lis.name: lis.port for lis in listeners}, proc, env)
        try:
            deadline = time.monotonic() + START_TIMEOUT
            waiting = [lis.port for lis in listeners]
            while waiting:
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"{kind} exited with {proc.returncode} at start-up "
                        f"(config {config}):\n{proxy.log_tail()}"
                    )
                waiting = [port for port in waiting if not _accepts_tls(port)]
                if waiting and time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{kind} did not accept TLS on {waiting} within "
                        f"{START_TIMEOUT:.0f} s:\n{proxy.log_tail()}"
                    )
                if waiting:
                    time.sleep(0.1)
            yield proxy
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)


# -- upstream apps ---------------------------------------------------------------


@dataclass
class App:
    """A certgate-protected example app on plain HTTP at 127.0.0.1:``port``."""

    kind: str
    port: int
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def proxy_config(env: DevEnv, name: str, header_source: str) -> Path:
    """A copy of ``env``'s certgate.toml trusting 127.0.0.1 for
    ``header_source`` (a TOML value: ``"nginx"`` or an inline table)."""
    text = env.config.read_text().replace(
        "[certgate]\n",
        f'[certgate]\ntrusted_proxies = ["127.0.0.1/32"]\nheader_sources = [{header_source}]\n',
        1,
    )
    path = env.directory / f"certgate-{name}.toml"
    path.write_text(text)
    return path


@contextlib.contextmanager
def uvicorn_upstream(config: Path, port: int | None = None) -> Iterator[App]:
    """The FastAPI example through ``python -m certgate.servers.uvicorn``
    without TLS (the proxy terminates it), on ``port`` (default: a free one)."""
    port = port or free_port()
    log = config.with_suffix(f".uvicorn-{port}.log")
    cmd = [
        sys.executable, "-m", "certgate.servers.uvicorn", "examples.fastapi_app.app:create_app",
        "--factory", "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    with running(cmd, port, log, {"CERTGATE_CONFIG": str(config)}):
        yield App("uvicorn", port, log)


@contextlib.contextmanager
def gunicorn_upstream(config: Path, port: int | None = None) -> Iterator[App]:
    """The Flask example on gunicorn without TLS, with certgate's hooks."""
    port = port or free_port()
    log = config.with_suffix(f".gunicorn-{port}.log")
    settings = config.with_suffix(f".gunicorn-{port}.conf.py")
    settings.write_text(
        "from certgate.servers.gunicorn import on_starting, post_worker_init  # noqa: F401\n"
        f"bind = '127.0.0.1:{port}'\n"
        "workers = 1\n"
    )
    cmd = [
        sys.executable, "-m", "gunicorn", "-c", str(settings),
        "examples.flask_app.app:create_app()",
    ]  # fmt: skip
    with running(cmd, port, log, {"CERTGATE_CONFIG": str(config)}):
        yield App("gunicorn", port, log)


class EchoUpstream:
    """A plain-HTTP upstream that answers every request with the request's
    headers as JSON ``[[name, value], ...]`` (raw names and values, in
    order): what a proxy really sends."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                pairs = [[k, v] for k, v in self.headers.raw_items()]
                body = json.dumps(pairs).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> EchoUpstream:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
