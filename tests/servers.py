"""Start real servers (uvicorn, Werkzeug, gunicorn) on loopback for e2e tests."""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
from examples.devenv import DevEnv

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    port: int
    env: DevEnv
    log: Path
    proc: subprocess.Popen[bytes]
    kind: str = ""

    def url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.port}{path}"

    def client_context(self, identity: str | None, *, chain: bool = True) -> ssl.SSLContext:
        """TLS context trusting the dev server CA, presenting ``identity``.

        ``chain=False`` presents the leaf alone (no intermediates).
        """
        context = ssl.create_default_context(cafile=str(self.env.server_ca))
        if identity is not None:
            chain_file, key = self.env.client(identity)
            cert = chain_file if chain else self.env.path(f"{identity}.pem")
            context.load_cert_chain(cert, key)
        return context

    def get(
        self,
        identity: str | None,
        host: str,
        path: str = "/whoami",
        *,
        headers: dict[str, str] | None = None,
        chain: bool = True,
    ) -> httpx.Response:
        """One HTTPS request to 127.0.0.1 with ``Host: host`` (no SNI)."""
        context = self.client_context(identity, chain=chain)
        with httpx.Client(verify=context, timeout=10) as client:
            return client.get(self.url(path), headers={"Host": host, **(headers or {})})

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def serve(
    cmd: Sequence[str], env: DevEnv, port: int, extra_env: dict[str, str] | None = None
) -> Iterator[Server]:
    log = env.directory / f"server-{port}.log"
    environ = {
        **os.environ,
        "CERTGATE_CONFIG": str(env.config),
        "PYTHONPATH": str(ROOT),
        **(extra_env or {}),
    }
    with log.open("wb") as out:
        proc = subprocess.Popen(
            list(cmd), cwd=ROOT, env=environ, stdout=out, stderr=subprocess.STDOUT
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"server exited ({proc.returncode}): {log.read_text()}")
                with contextlib.suppress(OSError):
                    socket.create_connection(("127.0.0.1", port), 0.2).close()
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"server did not start: {log.read_text()}")
                time.sleep(0.1)
            yield Server(port=port, env=env, log=log, proc=proc)
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def uvicorn_cmd(env: DevEnv, port: int, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "certgate.servers.uvicorn",
        "examples.fastapi_app.app:create_app",
        "--factory",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--ssl-certfile",
        str(env.server_cert),
        "--ssl-keyfile",
        str(env.server_key),
        "--ssl-ca-certs",
        str(env.bundle),
        "--ssl-cert-reqs",
        "1",
        *extra,
    ]


def uvicorn_run_cmd(env: DevEnv, port: int) -> list[str]:
    """The FastAPI example through certgate.servers.uvicorn.run()."""
    return [
        sys.executable,
        str(ROOT / "examples" / "fastapi_app" / "serve.py"),
        "--env",
        str(env.directory),
        "--port",
        str(port),
    ]


def plain_uvicorn_cmd(env: DevEnv, port: int) -> list[str]:
    """Plain ``uvicorn`` CLI naming certgate's protocol classes (no deferred time checks)."""
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "examples.fastapi_app.app:create_app",
        "--factory",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--http",
        "certgate.servers.uvicorn:AutoTLSProtocol",
        "--ws",
        "certgate.servers.uvicorn:AutoWebSocketsTLSProtocol",
        "--ssl-certfile",
        str(env.server_cert),
        "--ssl-keyfile",
        str(env.server_key),
        "--ssl-ca-certs",
        str(env.bundle),
        "--ssl-cert-reqs",
        "1",
    ]


def werkzeug_cmd(env: DevEnv, port: int) -> list[str]:
    return [
        sys.executable,
        str(ROOT / "examples" / "flask_app" / "serve.py"),
        "--env",
        str(env.directory),
        "--port",
        str(port),
    ]


def gunicorn_cmd(env: DevEnv, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "-c",
        str(ROOT / "examples" / "flask_app" / "gunicorn.conf.py"),
        "--bind",
        f"127.0.0.1:{port}",
        "examples.flask_app.app:create_app()",
    ]
