"""Start real servers (uvicorn, Werkzeug, gunicorn) on loopback for e2e tests."""

from __future__ import annotations

import contextlib
import ssl
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
from examples.devenv import DevEnv, fastapi_uvicorn_cmd, free_port, running

ROOT = Path(__file__).resolve().parents[1]

__all__ = ["Server", "free_port", "serve", "trust_header_source"]


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


def trust_header_source(env: DevEnv, proxies: str) -> DevEnv:
    """Rewrite ``env``'s certgate.toml to believe the Cloudflare header from
    the ``proxies`` CIDR range (a TOML string)."""
    text = env.config.read_text().replace(
        "[certgate]\n",
        f'[certgate]\ntrusted_proxies = ["{proxies}"]\nheader_sources = ["cloudflare"]\n',
    )
    env.config.write_text(text)
    return env


@contextlib.contextmanager
def serve(
    cmd: Sequence[str], env: DevEnv, port: int, extra_env: dict[str, str] | None = None
) -> Iterator[Server]:
    log = env.directory / f"server-{port}.log"
    variables = {"CERTGATE_CONFIG": str(env.config), **(extra_env or {})}
    with running(cmd, port, log, variables) as proc:
        yield Server(port=port, env=env, log=log, proc=proc)


def uvicorn_cmd(env: DevEnv, port: int, *extra: str) -> list[str]:
    return fastapi_uvicorn_cmd(env, port, *extra)


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
    return fastapi_uvicorn_cmd(
        env, port,
        "--http", "certgate.servers.uvicorn:AutoTLSProtocol",
        "--ws", "certgate.servers.uvicorn:AutoWebSocketsTLSProtocol",
        launcher="uvicorn",
    )  # fmt: skip


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
