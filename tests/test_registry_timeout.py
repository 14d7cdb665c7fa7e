"""A hung trust registry, and internal errors (issue 5, item 8).

A registry lookup that never returns must not hang the request: past
``registry_timeout`` the request gets ``503 trust_store_unavailable``, on
every path (ASGI and WSGI middleware, ``CertGate.decide``) and for every
kind of registry (blocking, coroutine). An unexpected error inside certgate
is ``internal_error``, never ``untrusted_chain``.

Every hanging registry here waits on an event that only the test's teardown
sets, so a lookup that is not bounded hangs the test (each call runs in a
helper thread joined with a generous limit, so such a failure is reported,
not waited out).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest
from examples.devenv import DevEnv, fastapi_uvicorn_cmd, make_dev_environment

from certgate import CertGate, ConfigError, InMemoryRegistry, Reason, RequestFacts, Tenant
from certgate.asgi import CertGateMiddleware
from certgate.lookups import LOOKUP_THREADS
from certgate.problem import problem_body
from certgate.wsgi import CertGateWSGIMiddleware
from tests.conftest import PKI
from tests.servers import free_port, serve
from tests.test_asgi import RecordingApp, http_scope, pem_chain, run_http
from tests.test_cache import tls_facts
from tests.test_wsgi import RecordingApp as WSGIRecordingApp
from tests.test_wsgi import call, make_environ, ssl_env

T = TypeVar("T")

TIMEOUT = 0.3
"""registry_timeout of these tests, in seconds."""
LIMIT = TIMEOUT + 10.0
"""How long a bounded call may take on a loaded machine; an unbounded one
never returns."""
ACME = "pay.acme.test"


class HangingRegistry:
    """A blocking registry whose lookups wait until ``release`` is set, then
    answer from ``inner``."""

    blocking = True

    def __init__(self, inner: InMemoryRegistry) -> None:
        self.inner = inner
        self.release = threading.Event()
        self.calls = 0
        self._lock = threading.Lock()

    def tenant_for_host(self, host: str) -> Tenant | None:
        with self._lock:
            self.calls += 1
        self.release.wait()
        return self.inner.tenant_for_host(host)

    def tenant_by_id(self, tenant_id: str) -> Tenant | None:
        self.release.wait()
        return self.inner.tenant_by_id(tenant_id)


class AsyncHangingRegistry:
    """A coroutine registry whose lookups never complete (until cancelled)."""

    def __init__(self) -> None:
        self.cancelled = 0

    async def tenant_for_host(self, host: str) -> Tenant | None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return None

    async def tenant_by_id(self, tenant_id: str) -> Tenant | None:
        return await self.tenant_for_host(tenant_id)


@pytest.fixture
def hanging(pki: PKI) -> Iterator[HangingRegistry]:
    registry = HangingRegistry(pki.registry())
    yield registry
    registry.release.set()  # free the pool threads stuck in it


def bounded(fn: Callable[[], T], limit: float = LIMIT) -> tuple[T, float]:
    """``fn()`` and its duration; fails (instead of hanging) past ``limit``."""
    out: list[T] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    start = time.monotonic()
    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(limit)
    elapsed = time.monotonic() - start
    assert not worker.is_alive(), f"still waiting on the registry after {elapsed:.1f} s"
    if errors:
        raise errors[0]
    return out[0], elapsed


def assert_timed_out(elapsed: float) -> None:
    # At least the deadline (it is what fired), and then promptly.
    assert TIMEOUT * 0.9 <= elapsed < LIMIT, elapsed


# -- each path, each kind of registry ------------------------------------------------------


def test_decide_with_a_hung_blocking_registry(pki: PKI, hanging: HangingRegistry) -> None:
    gate = CertGate(hanging, registry_timeout=TIMEOUT)
    decision, elapsed = bounded(lambda: gate.decide(tls_facts(ACME, pki["acme"].client())))
    assert decision.reason is Reason.TRUST_STORE_UNAVAILABLE
    assert decision.status == 503
    assert decision.detail == f"registry lookup timed out after {TIMEOUT:g} s"
    assert_timed_out(elapsed)


def test_asgi_with_a_hung_blocking_registry(pki: PKI, hanging: HangingRegistry) -> None:
    app = RecordingApp()
    mw = CertGateMiddleware(app, CertGate(hanging, registry_timeout=TIMEOUT))
    scope = http_scope(host=ACME, tls_chain=pem_chain(pki["acme"].client()))
    result, elapsed = bounded(lambda: run_http(mw, scope))
    assert (result.status, result.reason) == (503, "trust_store_unavailable")
    assert result.body == problem_body(Reason.TRUST_STORE_UNAVAILABLE)
    assert app.scopes == []
    assert_timed_out(elapsed)


def test_asgi_with_a_hung_coroutine_registry(pki: PKI) -> None:
    registry = AsyncHangingRegistry()
    app = RecordingApp()
    mw = CertGateMiddleware(app, CertGate(registry, registry_timeout=TIMEOUT))
    scope = http_scope(host=ACME, tls_chain=pem_chain(pki["acme"].client()))
    result, elapsed = bounded(lambda: run_http(mw, scope))
    assert (result.status, result.reason) == (503, "trust_store_unavailable")
    assert app.scopes == []
    assert registry.cancelled == 1  # the coroutine was cancelled, not left pending
    assert_timed_out(elapsed)


def test_wsgi_with_a_hung_blocking_registry(pki: PKI, hanging: HangingRegistry) -> None:
    app = WSGIRecordingApp()
    mw = CertGateWSGIMiddleware(app, CertGate(hanging, registry_timeout=TIMEOUT))
    environ = make_environ(host=ACME, **ssl_env(pki["acme"].client()))
    response, elapsed = bounded(lambda: call(mw, environ))
    assert response.status == "503 Service Unavailable"
    assert response.reason == "trust_store_unavailable"
    assert app.environs == []
    assert_timed_out(elapsed)


def test_wsgi_with_a_hung_coroutine_registry(pki: PKI) -> None:
    registry = AsyncHangingRegistry()
    app = WSGIRecordingApp()
    mw = CertGateWSGIMiddleware(app, CertGate(registry, registry_timeout=TIMEOUT))
    environ = make_environ(host=ACME, **ssl_env(pki["acme"].client()))
    response, elapsed = bounded(lambda: call(mw, environ))
    assert response.status == "503 Service Unavailable"
    assert response.reason == "trust_store_unavailable"
    assert registry.cancelled == 1
    assert_timed_out(elapsed)


def test_resolver_lookup_by_id_is_bounded_too(pki: PKI, hanging: HangingRegistry) -> None:
    gate = CertGate(hanging, registry_timeout=TIMEOUT, tenant_resolver=lambda facts: "acme")
    decision, elapsed = bounded(lambda: gate.decide(tls_facts(ACME, pki["acme"].client())))
    assert decision.reason is Reason.TRUST_STORE_UNAVAILABLE
    assert_timed_out(elapsed)


def test_a_timeout_is_one_error_line(
    pki: PKI, hanging: HangingRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="certgate")
    gate = CertGate(hanging, registry_timeout=TIMEOUT)
    bounded(lambda: gate.decide(tls_facts(ACME, pki["acme"].client())))
    records = [r for r in caplog.records if r.name == "certgate"]
    assert len(records) == 1, [r.getMessage() for r in records]
    assert records[0].levelno == logging.ERROR
    message = records[0].getMessage()
    assert "reason=trust_store_unavailable" in message
    assert f"timed out after {TIMEOUT:g} s" in message
    assert records[0].exc_info is None


def test_a_registry_that_answers_in_time_is_unaffected(pki: PKI, hanging: HangingRegistry) -> None:
    hanging.release.set()
    gate = CertGate(hanging, registry_timeout=TIMEOUT)
    decision = gate.decide(tls_facts(ACME, pki["acme"].client()))
    assert decision.allowed
    assert decision.tenant_id == "acme"


def test_a_registry_raising_timeout_error_itself_is_a_registry_failure(
    pki: PKI, caplog: pytest.LogCaptureFixture
) -> None:
    class SlowDb:
        def tenant_for_host(self, host: str) -> Tenant | None:
            raise TimeoutError("db statement timeout")

        def tenant_by_id(self, tenant_id: str) -> Tenant | None:
            raise TimeoutError("db statement timeout")

    caplog.set_level(logging.ERROR, logger="certgate")
    decision = CertGate(SlowDb()).decide(tls_facts(ACME, pki["acme"].client()))
    assert decision.reason is Reason.TRUST_STORE_UNAVAILABLE
    assert decision.detail == "TimeoutError"  # the registry's error, not certgate's deadline
    assert any(r.exc_info for r in caplog.records)


# -- a store that stays hung -----------------------------------------------------------------


def test_a_hung_store_ties_up_a_bounded_number_of_threads_and_recovers(
    pki: PKI, hanging: HangingRegistry
) -> None:
    gate = CertGate(hanging, registry_timeout=TIMEOUT)
    burst = LOOKUP_THREADS + 8
    before = set(threading.enumerate())

    def one(_: int) -> Reason | None:
        return gate.decide(tls_facts(ACME, pki["acme"].client())).reason

    def all_of_them() -> list[Reason | None]:
        with ThreadPoolExecutor(burst) as callers:
            return list(callers.map(one, range(burst)))

    reasons, _ = bounded(all_of_them, LIMIT * 2)
    assert reasons == [Reason.TRUST_STORE_UNAVAILABLE] * burst
    # Lookups beyond the pool's threads waited in its queue and, once their
    # caller gave up, were dropped without running.
    assert hanging.calls <= LOOKUP_THREADS
    new = set(threading.enumerate()) - before  # this gate's pool (callers have ended)
    assert 0 < len(new) <= LOOKUP_THREADS
    assert all(t.daemon and t.name.startswith("certgate-registry") for t in new)
    # The store comes back: the stuck threads finish and lookups work again.
    hanging.release.set()
    decision, _ = bounded(lambda: gate.decide(tls_facts(ACME, pki["acme"].client())))
    assert decision.allowed


# -- configuration ---------------------------------------------------------------------------


def test_default_timeout_and_validation(pki: PKI) -> None:
    assert CertGate(pki.registry()).registry_timeout == 5.0
    assert CertGate(pki.registry(), registry_timeout=2).registry_timeout == 2.0
    bad_values: list[Any] = [0, -1, 0.0, float("nan"), float("inf"), 10_000, True, "5", None]
    for bad in bad_values:
        with pytest.raises(ConfigError, match="registry_timeout"):
            CertGate(pki.registry(), registry_timeout=bad)


def test_timeout_from_toml(tmp_path: Path) -> None:
    env = make_dev_environment(tmp_path)
    text = env.config.read_text()
    env.config.write_text(text.replace("[certgate]\n", "[certgate]\nregistry_timeout = 0.25\n"))
    assert CertGate.from_toml(env.config).registry_timeout == 0.25
    for bad in ("0", "-2", '"5"', "true", "nan"):
        env.config.write_text(
            text.replace("[certgate]\n", f"[certgate]\nregistry_timeout = {bad}\n")
        )
        with pytest.raises(ConfigError, match="registry_timeout"):
            CertGate.from_toml(env.config)


# -- through a real server -------------------------------------------------------------------

SERVER_TIMEOUT = 0.5


def test_hung_registry_under_uvicorn(tmp_path: Path) -> None:
    env: DevEnv = make_dev_environment(tmp_path)
    text = env.config.read_text()
    env.config.write_text(
        text.replace("[certgate]\n", f"[certgate]\nregistry_timeout = {SERVER_TIMEOUT}\n")
    )
    port = free_port()
    cmd = fastapi_uvicorn_cmd(env, port)
    cmd[cmd.index("examples.fastapi_app.app:create_app")] = "tests.hung_registry_app:create_app"
    with serve(cmd, env, port) as server:
        assert server.get("acme-device", ACME).status_code == 200
        start = time.monotonic()
        hung = server.get("globex-device", "api.globex.test")  # its lookup never returns
        elapsed = time.monotonic() - start
        assert hung.status_code == 503
        assert hung.json()["reason"] == "trust_store_unavailable"
        assert SERVER_TIMEOUT * 0.9 <= elapsed < SERVER_TIMEOUT + 8, elapsed
        # The server is not stuck: other tenants are served meanwhile.
        assert server.get("acme-device", ACME).json()["tenant_id"] == "acme"
        assert "registry lookup timed out after 0.5 s" in server.log_text()


# -- internal errors are not attacks ---------------------------------------------------------


class WrongTypeRegistry:
    """A registry with a bug: it returns a row, not a Tenant."""

    blocking = False

    def tenant_for_host(self, host: str) -> Any:
        return {"id": "acme", "roots": []}

    def tenant_by_id(self, tenant_id: str) -> Any:
        return "acme"


def test_registry_returning_the_wrong_type_is_internal_error(
    pki: PKI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="certgate")
    app = RecordingApp()
    mw = CertGateMiddleware(app, CertGate(WrongTypeRegistry()))
    result = run_http(mw, http_scope(host=ACME, tls_chain=pem_chain(pki["acme"].client())))
    assert (result.status, result.reason) == (403, "internal_error")
    assert result.body == problem_body(Reason.INTERNAL_ERROR)
    assert app.scopes == []
    assert any(r.levelno == logging.ERROR and r.exc_info for r in caplog.records)
    assert not any("untrusted_chain" in r.getMessage() for r in caplog.records)


def test_resolver_bug_is_internal_error(pki: PKI) -> None:
    def resolver(facts: RequestFacts) -> str | None:
        raise ValueError("bug in the resolver")

    gate = CertGate(pki.registry(), tenant_resolver=resolver)
    decision = gate.decide(tls_facts(ACME, pki["acme"].client()))
    assert decision.reason is Reason.INTERNAL_ERROR
    assert decision.status == 403
    assert decision.detail == "internal error: ValueError"
    wsgi = CertGateWSGIMiddleware(WSGIRecordingApp(), CertGate(WrongTypeRegistry()))
    response = call(wsgi, make_environ(host=ACME, **ssl_env(pki["acme"].client())))
    assert (response.status, response.reason) == ("403 Forbidden", "internal_error")


def test_registry_raising_stays_trust_store_unavailable(pki: PKI) -> None:
    class Down:
        blocking = False

        def tenant_for_host(self, host: str) -> Tenant | None:
            raise ConnectionError("db down")

        def tenant_by_id(self, tenant_id: str) -> Tenant | None:
            raise ConnectionError("db down")

    decision = CertGate(Down()).decide(tls_facts(ACME, pki["acme"].client()))
    assert decision.reason is Reason.TRUST_STORE_UNAVAILABLE


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_worker_gets_working_lookup_threads(pki: PKI, hanging: HangingRegistry) -> None:
    """gunicorn --preload: a gate that used its pool in the master still
    looks tenants up in a worker forked afterwards (the master's threads do
    not exist there)."""
    hanging.release.set()
    gate = CertGate(hanging, registry_timeout=2.0)
    facts = tls_facts(ACME, pki["acme"].client())
    assert gate.decide(facts).allowed  # the parent's pool has a thread now
    pid = os.fork()
    if pid == 0:  # the child: report through the exit status only
        code = 2
        try:
            code = 0 if gate.decide(facts).allowed else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
