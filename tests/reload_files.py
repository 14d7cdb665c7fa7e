"""Files and fixtures of the hot-reload tests (tests/test_reload.py,
test_review_i9_rv4.py, test_expiry_monitor.py): a configuration directory
of real CA and TOML files, a gate loaded from it behind the ASGI
middleware, and requests with the TLS transport certificate.

Fixtures ``files`` and ``loaded`` (registered by tests/conftest.py).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from certgate import CertGate
from certgate.asgi import CertGateMiddleware
from certgate.devpki import CA, IssuedCert
from tests.test_asgi import RecordingApp, http_scope, pem_chain, run_http

A_HOST = "a.reload.test"
B_HOST = "b.reload.test"


class Files:
    """A configuration directory: CA files and ``certgate.toml``, written
    atomically (a reader sees the old or the new file, never a part)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.config = directory / "certgate.toml"
        self.cas: dict[str, CA] = {}

    def ca(self, name: str, **kwargs: Any) -> CA:
        ca = CA.root(f"{name} Root", **kwargs)
        self.cas[name] = ca
        self.write(f"{name}.pem", ca.cert_pem)
        return ca

    def write(self, name: str, data: bytes | str) -> None:
        raw = data.encode() if isinstance(data, str) else data
        tmp = self.dir / f".{name}.tmp"
        tmp.write_bytes(raw)
        os.replace(tmp, self.dir / name)

    def toml(self, settings: str = "", *tenants: str) -> None:
        self.write("certgate.toml", f"[certgate]\n{settings}\n" + "".join(tenants))


def tenant(tid: str, host: str, roots: str, extra: str = "") -> str:
    return f'[[tenants]]\nid = "{tid}"\nhosts = ["{host}"]\nroots = ["{roots}"]\n{extra}\n'


def tls_scope(client: IssuedCert | None, host: str, path: str = "/") -> Any:
    scope = http_scope(host=host, path=path)
    scope["certgate.socket_peer"] = ("192.0.2.7", 50000)
    if client is not None:
        scope["extensions"] = {"tls": {"client_cert_chain": pem_chain(client)}}
    return scope


def status(
    mw: Any, client: IssuedCert | None, host: str, path: str = "/"
) -> tuple[int | None, str | None]:
    """The status and, for a problem+json refusal, the reason."""
    result = run_http(mw, tls_scope(client, host, path))
    problem = result.headers.get("content-type") == "application/problem+json"
    return result.status, result.reason if problem else None


def eventually(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    """Wait until ``check()`` holds (the monitor thread works on its own)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        time.sleep(0.02)


@pytest.fixture
def files(tmp_path: Path) -> Files:
    return Files(tmp_path)


@pytest.fixture
def loaded(files: Files) -> Iterator[tuple[Files, CertGate, CertGateMiddleware]]:
    files.ca("a")
    files.ca("b")
    files.toml("", tenant("a", A_HOST, "a.pem"))
    gate = CertGate.from_toml(files.config)
    yield files, gate, CertGateMiddleware(RecordingApp(), gate)
    gate.close()
