"""Reloading a gate's TOML file without a restart (certgate.reload).

Every test writes real CA, CRL and TOML files, loads them with
``CertGate.from_toml`` and sends requests through the ASGI middleware with
the TLS transport certificate (the ``tls`` scope extension), so what is
checked is what a server would answer.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from certgate import CertGate, ConfigError, InMemoryRegistry, Reason, TomlRegistry
from certgate.asgi import GATE_KEY, CertGateMiddleware
from certgate.devpki import CA
from certgate.events import ReloadEvent
from certgate.pki import make_crl, read_revocations, revoke, write_crl
from certgate.reload import MONITOR, file_stamps
from certgate.rollout import Access, Route
from certgate.testing import RecordingObserver
from certgate.wsgi import CertGateWSGIMiddleware
from tests.reload_files import A_HOST, B_HOST, Files, eventually, status, tenant, tls_scope
from tests.test_asgi import RecordingApp, run_http


def test_reload_adds_a_tenant_and_applies_changed_settings(
    loaded: tuple[Files, CertGate, CertGateMiddleware],
) -> None:
    files, gate, mw = loaded
    a_dev, b_dev = files.cas["a"].issue("a-dev"), files.cas["b"].issue("b-dev")
    assert status(mw, a_dev, A_HOST)[0] == 200
    assert status(mw, b_dev, B_HOST) == (403, Reason.UNKNOWN_TENANT.value)
    assert status(mw, None, A_HOST, "/healthz") == (403, Reason.NO_CERTIFICATE.value)
    files.toml(
        'exempt_paths = ["/healthz"]\nrefusal_format = "text"',
        tenant("a", A_HOST, "a.pem"),
        tenant("b", B_HOST, "b.pem"),
    )
    event = gate.reload()
    assert (event.ok, event.version, event.tenants, event.settings_changed) == (1, 1, 2, True)
    assert status(mw, b_dev, B_HOST)[0] == 200  # the new tenant is reachable
    assert status(mw, None, A_HOST, "/healthz")[0] == 200  # the new exempt path
    refused = run_http(mw, tls_scope(b_dev, A_HOST))
    assert refused.status == 403
    assert refused.headers.get("content-type", "").startswith("text/plain")  # new format


def test_a_bad_reload_keeps_the_last_good_state_and_says_why(
    files: Files, caplog: pytest.LogCaptureFixture
) -> None:
    files.ca("a")
    files.toml("", tenant("a", A_HOST, "a.pem"))
    recorder = RecordingObserver()
    gate = CertGate.from_toml(files.config, observers=[recorder])
    mw = CertGateMiddleware(RecordingApp(), gate)
    device = files.cas["a"].issue("dev")
    leaf_ca = files.cas["a"].issue("not-a-ca")  # a leaf named as a root: refused by vetting
    files.write("leaf.pem", leaf_ca.cert_pem)
    broken = {
        "invalid TOML": "[certgate\n",
        "unknown key [certgate].trusted_proxy": '[certgate]\ntrusted_proxy = ["10.0.0.0/8"]\n',
        "not a CA certificate": "[certgate]\n" + tenant("a", A_HOST, "leaf.pem"),
        "missing.pem": "[certgate]\n" + tenant("a", A_HOST, "missing.pem"),
        "trusted_proxies is empty": '[certgate]\nheader_sources = ["cloudflare"]\n'
        + tenant("a", A_HOST, "a.pem"),
    }
    for why, text in broken.items():
        files.write("certgate.toml", text)
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="certgate"), pytest.raises(ConfigError) as exc:
            gate.reload()
        assert why in str(exc.value)
        assert gate.version == 0
        assert status(mw, device, A_HOST)[0] == 200  # still served by the last good config
        failures = [r for r in caplog.records if "failed, still serving version 0" in r.message]
        assert failures
        assert why in failures[0].message
        assert recorder.reloads[-1].ok is False
        assert why in (recorder.reloads[-1].error or "")
    assert [e.trigger for e in recorder.reloads] == ["load"] + ["call"] * len(broken)
    gate.close()


def test_a_changed_root_is_never_answered_from_the_memo_or_cache(
    loaded: tuple[Files, CertGate, CertGateMiddleware],
) -> None:
    files, gate, mw = loaded
    device = files.cas["a"].issue("memo-dev")
    for _ in range(3):  # the second allow is remembered, the third answered from the memo
        assert status(mw, device, A_HOST)[0] == 200
    assert gate._memo
    assert any(entry is not None for entry in gate._memo.values())
    files.toml("", tenant("a", A_HOST, "b.pem"))  # tenant a now trusts b's root only
    gate.reload()
    assert status(mw, device, A_HOST) == (403, Reason.UNTRUSTED_CHAIN.value)
    assert status(mw, files.cas["b"].issue("b-dev"), A_HOST)[0] == 200


def test_a_revocation_reaches_the_next_request_after_a_reload(
    files: Files,
) -> None:
    ca = files.ca("a")
    db_path = files.dir / "revoked.json"
    db = read_revocations(db_path, ca)
    write_crl(files.dir / "a.crl", make_crl(ca, db))
    files.toml("", tenant("a", A_HOST, "a.pem", 'crls = ["a.crl"]'))
    gate = CertGate.from_toml(files.config)
    mw = CertGateMiddleware(RecordingApp(), gate)
    device = ca.issue("to-revoke")
    for _ in range(3):
        assert status(mw, device, A_HOST)[0] == 200
    cached = gate.cache
    revoke(ca, db, cert=device.cert)
    write_crl(files.dir / "a.crl", make_crl(ca, db))
    event = gate.reload()
    assert not event.settings_changed
    assert gate.cache is cached  # kept: keyed by trust_id, which the new CRL changed
    assert status(mw, device, A_HOST) == (403, Reason.REVOKED.value)
    assert status(mw, ca.issue("still-fine"), A_HOST)[0] == 200
    gate.close()


def test_unchanged_settings_keep_their_parts_changed_ones_replay_runtime_changes(
    loaded: tuple[Files, CertGate, CertGateMiddleware],
) -> None:
    files, gate, mw = loaded
    gate.rollout.set_route(Route("/public/*", access=Access.OPTIONAL))  # set in code
    gate.rollout.set_mode("report", tenant="a")
    rollout, trust, cache = gate.rollout, gate.trust, gate.cache
    files.toml("", tenant("a", A_HOST, "a.pem"), tenant("b", B_HOST, "b.pem"))
    assert gate.reload().settings_changed is False
    assert (gate.rollout, gate.trust, gate.cache) == (rollout, trust, cache)
    files.toml("cache_size = 50", tenant("a", A_HOST, "a.pem"))
    assert gate.reload().settings_changed is True
    assert gate.rollout is not rollout
    assert gate.trust is not trust
    assert gate.cache is not cache
    assert gate.cache.maxsize == 50
    # the code's route and tenant mode were applied again on the file's rollout
    assert status(mw, None, A_HOST, "/public/x")[0] == 200
    assert gate.rollout.tenant_mode("a") == "report"
    assert status(mw, files.cas["b"].issue("b-dev"), A_HOST)[0] == 200  # report-only for a


def test_overrides_and_assigned_values_survive_reloads(files: Files) -> None:
    files.ca("a")
    files.toml('mode = "report"', tenant("a", A_HOST, "a.pem"))
    gate = CertGate.from_toml(files.config, mode="enforce")
    mw = CertGateMiddleware(RecordingApp(), gate)
    from certgate.policy import common_name

    gate.policy = common_name("alice")
    files.toml('mode = "report"\ncache_size = 7', tenant("a", A_HOST, "a.pem"))
    gate.reload()
    assert gate.rollout.mode == "enforce"
    assert status(mw, files.cas["a"].issue("bob"), A_HOST) == (403, Reason.POLICY_DENIED.value)
    assert status(mw, files.cas["a"].issue("alice"), A_HOST)[0] == 200
    gate.close()


def test_a_request_in_flight_keeps_its_snapshot(files: Files) -> None:
    """The app reloads the gate while handling a request (a reload racing
    the request); the request's route-level gate is still its snapshot."""
    files.ca("a")
    files.ca("b")
    files.toml("", tenant("a", A_HOST, "a.pem"))
    gate = CertGate.from_toml(files.config)
    seen: list[tuple[int, int, str | None]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        files.toml("", tenant("a", A_HOST, "b.pem"))
        gate.reload()
        pinned = scope[GATE_KEY]
        decision = pinned.check(A_HOST, [device.der])
        seen.append((pinned.version, gate.version, decision.reason))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    device = files.cas["a"].issue("in-flight")
    mw = CertGateMiddleware(app, gate)
    assert status(mw, device, A_HOST)[0] == 200
    assert seen == [(0, 1, None)]  # checked under version 0: a's root still trusted
    assert gate.check(A_HOST, [device.der]).reason == Reason.UNTRUSTED_CHAIN
    gate.close()


def test_the_wsgi_middleware_follows_reloads(files: Files) -> None:
    files.ca("a")
    files.ca("b")
    files.toml("", tenant("a", A_HOST, "a.pem"))
    gate = CertGate.from_toml(files.config)
    calls: list[int] = []

    def app(environ: Any, start_response: Any) -> list[bytes]:
        calls.append(environ[GATE_KEY].version)
        start_response("200 OK", [])
        return [b"ok"]

    mw = CertGateWSGIMiddleware(app, gate)
    started: list[str] = []

    def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
        started.append(status)
        return lambda data: None

    def request(host: str, path: str = "/") -> str:
        environ = {"HTTP_HOST": host, "PATH_INFO": path, "REMOTE_ADDR": "192.0.2.1"}
        list(mw(environ, start_response))
        return started[-1]

    assert request(A_HOST, "/healthz").startswith("403")
    files.toml('exempt_paths = ["/healthz"]', tenant("a", A_HOST, "a.pem"))
    gate.reload()
    assert request(A_HOST, "/healthz").startswith("200")
    assert calls == [1]
    gate.close()


def test_a_gate_not_loaded_from_toml_cannot_reload() -> None:
    gate = CertGate(InMemoryRegistry())
    with pytest.raises(ConfigError, match="not loaded from a TOML file"):
        gate.reload()
    gate.start_monitor()  # nothing to monitor: no error


def test_the_file_watch_reloads_once_per_change(files: Files) -> None:
    files.ca("a")
    files.ca("b")
    files.toml("watch_interval = 0.1", tenant("a", A_HOST, "a.pem"))
    recorder = RecordingObserver()
    gate = CertGate.from_toml(files.config, observers=[recorder])
    mw = CertGateMiddleware(RecordingApp(), gate)  # starts the monitor
    b_dev = files.cas["b"].issue("b-dev")
    # a CA file named by the TOML changes: a's root becomes b's
    files.write("a.pem", files.cas["b"].cert_pem)
    eventually(lambda: gate.version == 1, "the changed CA file reloaded")
    assert status(mw, b_dev, A_HOST)[0] == 200
    files.write("certgate.toml", "[certgate\n")  # broken: one failed reload, not one per poll
    eventually(lambda: any(not e.ok for e in recorder.reloads), "the broken file tried")
    stamps = file_stamps([files.config])
    time.sleep(0.6)  # six polls: none tries the same broken file again
    assert file_stamps([files.config]) == stamps
    assert [e.ok for e in recorder.reloads].count(False) == 1
    assert status(mw, b_dev, A_HOST)[0] == 200  # still the last good configuration
    files.ca("c")  # (a.pem holds b's root now: tenant b gets another)
    files.toml("watch_interval = 0.1", tenant("a", A_HOST, "a.pem"), tenant("b", B_HOST, "c.pem"))
    eventually(lambda: gate.version == 2, "the fixed file reloaded")
    assert [e.trigger for e in recorder.reloads if e.ok] == ["load", "watch", "watch"]
    gate.close()
    assert gate._reloader is not None
    assert gate._reloader not in set(MONITOR._items)


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP on this platform")
def test_reload_on_signal_twice_still_reloads_once_per_signal(files: Files) -> None:
    files.ca("a")
    files.toml("", tenant("a", A_HOST, "a.pem"))
    gate = CertGate.from_toml(files.config)
    previous = signal.getsignal(signal.SIGHUP)
    try:
        gate.reload_on_signal()
        gate.reload_on_signal()  # e.g. an app factory run twice: no second handler
        os.kill(os.getpid(), signal.SIGHUP)
        eventually(lambda: gate.version >= 1, "the SIGHUP reload")
        time.sleep(0.5)  # a second, chained handler would have queued another reload
        assert gate.version == 1
    finally:
        signal.signal(signal.SIGHUP, previous)
        gate.close()


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP on this platform")
def test_sighup_reloads_in_the_monitor_thread(files: Files) -> None:
    files.ca("a")
    files.toml("", tenant("a", A_HOST, "a.pem"))
    gate = CertGate.from_toml(files.config)
    previous = signal.getsignal(signal.SIGHUP)
    try:
        gate.reload_on_signal()
        files.toml('mode = "report"', tenant("a", A_HOST, "a.pem"))
        os.kill(os.getpid(), signal.SIGHUP)
        eventually(lambda: gate.version == 1, "the SIGHUP reload")
        assert gate.rollout.mode == "report"
    finally:
        signal.signal(signal.SIGHUP, previous)
        gate.close()
    errors: list[BaseException] = []

    def elsewhere() -> None:
        try:
            gate.reload_on_signal()
        except ConfigError as exc:
            errors.append(exc)

    thread = threading.Thread(target=elsewhere)
    thread.start()
    thread.join()
    assert errors
    assert "main thread" in str(errors[0])


def test_reload_events_and_log_lines(files: Files, caplog: pytest.LogCaptureFixture) -> None:
    files.ca("a")
    files.toml("", tenant("a", A_HOST, "a.pem"))
    recorder = RecordingObserver()
    with caplog.at_level(logging.INFO, logger="certgate"):
        gate = CertGate.from_toml(files.config, observers=[recorder])
        gate.reload()
    loaded, reloaded = recorder.reloads
    assert isinstance(loaded, ReloadEvent)
    assert (loaded.trigger, loaded.version, loaded.ok) == ("load", 0, True)
    assert (reloaded.trigger, reloaded.version, reloaded.settings_changed) == ("call", 1, False)
    assert reloaded.config == str(files.config)
    messages = [r.message for r in caplog.records]
    assert any("loaded (version 0, 1 tenants" in m for m in messages)
    assert any("reloaded (call) (version 1" in m for m in messages)
    gate.close()


def test_per_tenant_handshakes_follow_the_gates_registry(files: Files) -> None:
    from certgate.servers.tenant_contexts import TenantContexts

    files.ca("a")
    files.ca("b")
    server = CA.root("server CA").server(["localhost"])
    paths = server.write_files(files.dir, "server")
    files.toml("", tenant("a", A_HOST, "a.pem"))
    gate = CertGate.from_toml(files.config)
    contexts = TenantContexts(gate, paths["cert"], paths["key"])
    assert contexts.tenant_for(B_HOST) is None
    files.toml("", tenant("a", A_HOST, "a.pem"), tenant("b", B_HOST, "b.pem"))
    gate.reload()
    found = contexts.tenant_for(B_HOST)
    assert found is not None
    assert found.id == "b"
    gate.close()


def test_fetched_crls_survive_a_reload_and_the_refresher_follows(tmp_path: Path) -> None:
    from tests.test_crl import HOST, Chain, CrlServer, build_crl, reason

    chain, server = Chain(), CrlServer()
    try:
        server.serve(build_crl(chain.issuing, [chain.leaf.cert.serial_number], number=1))
        (tmp_path / "root.pem").write_bytes(chain.root.cert_pem)
        (tmp_path / "issuing.pem").write_bytes(chain.issuing.cert_pem)
        files = Files(tmp_path)
        crl_tenant = (
            f'[[tenants]]\nid = "crl"\nhosts = ["{HOST}"]\nroots = ["root.pem"]\n'
            f'intermediates = ["issuing.pem"]\ncrl_urls = ["{server.url}"]\ncrl_refresh = 600\n'
        )
        files.toml("", crl_tenant)
        gate = CertGate.from_toml(files.config)
        first = gate.registry
        assert isinstance(first, TomlRegistry)
        refresher = first.crl_refresher
        assert refresher is not None
        eventually(lambda: reason(gate, chain.leaf) == "revoked", "the CRL fetched")
        fetched_before = server.requests
        files.toml("cache_size = 99", crl_tenant)  # settings and registry both new
        gate.reload()
        second = gate.registry
        assert isinstance(second, TomlRegistry)
        assert second is not first
        assert second.crl_refresher is refresher
        assert refresher.registry is second
        assert reason(gate, chain.leaf) == "revoked"  # at once: no fetch was needed
        assert reason(gate, chain.other) is None
        assert server.requests == fetched_before  # crl_refresh is 600 s: nothing refetched
        # a newer CRL fetched later reaches the reloaded tenants
        server.serve(build_crl(chain.issuing, [chain.other.cert.serial_number], number=2))
        refresher.refresh()
        assert reason(gate, chain.other) == "revoked"
        assert reason(gate, chain.leaf) is None
    finally:
        gate.close()
        server.server.shutdown()
        server.server.server_close()
