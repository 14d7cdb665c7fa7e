"""Review i9-rv4 (hot reload and expiry monitoring): each finding as a test.

Real CA, CRL and TOML files are written in a temporary directory and loaded
with ``CertGate.from_toml``; requests go through the ASGI middleware with
the TLS transport certificate. The file watch is driven through the gate's
reloader (``changed()``, ``tick()``) so no test waits on the monitor
thread's timing.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
from pathlib import Path

import pytest

from certgate import CertGate, Reason
from certgate.asgi import CertGateMiddleware
from certgate.devpki import CA
from certgate.reload import Reloader
from certgate.rollout import Mode, Rollout
from certgate.testing import RecordingObserver
from tests.reload_files import A_HOST, B_HOST, Files, status, tenant
from tests.test_asgi import RecordingApp


def reloader_of(gate: CertGate) -> Reloader:
    reloader = gate._reloader
    assert reloader is not None
    return reloader


# -- finding 1: a failed reload never noticed the file it was missing ---------


def test_watch_retries_when_a_file_the_failed_config_names_appears(
    loaded: tuple[Files, CertGate, CertGateMiddleware],
) -> None:
    """The operator adds a tenant to the TOML first and copies its root a
    moment later: the watch's reload in between fails (file missing). The
    root file appearing must trigger the next reload - it is one of the
    files the (failed) configuration names - not wait for another TOML edit."""
    files, gate, mw = loaded
    reloader = reloader_of(gate)
    files.toml("", tenant("a", A_HOST, "a.pem"), tenant("c", B_HOST, "c.pem"))
    assert reloader.changed()
    reloader.reload_quietly("watch")  # fails: c.pem does not exist yet
    assert gate.version == 0
    assert not reloader.changed()  # the same broken set is not tried again
    c_root = files.ca("c")
    assert reloader.changed(), "c.pem appeared, but the watch does not look at it"
    reloader.reload_quietly("watch")
    assert gate.version == 1
    assert status(mw, c_root.issue("c-dev"), B_HOST)[0] == 200


# -- finding 2: symlink swaps that keep the old target were never seen ----------


def _swap_link(link: Path, target: str) -> None:
    tmp = link.with_name(link.name + ".tmp")
    os.symlink(target, tmp)
    os.replace(tmp, link)


def test_watch_sees_a_symlink_swap_that_keeps_the_old_release(files: Files) -> None:
    """``pki/current -> releases/v1`` swapped to ``releases/v2`` (the old
    release kept, as deploy tools do): the TOML names ``pki/current/a.pem``,
    so the file behind that name changed and the watch must reload."""
    old, new = files.dir / "pki" / "releases" / "v1", files.dir / "pki" / "releases" / "v2"
    old.mkdir(parents=True)
    new.mkdir(parents=True)
    first = files.ca("first")
    second = files.ca("second")
    (old / "a.pem").write_bytes(first.cert_pem)
    (new / "a.pem").write_bytes(second.cert_pem)
    os.symlink("releases/v1", files.dir / "pki" / "current")
    files.toml("", tenant("a", A_HOST, "pki/current/a.pem"))
    gate = CertGate.from_toml(files.config)
    try:
        mw = CertGateMiddleware(RecordingApp(), gate)
        reloader = reloader_of(gate)
        assert status(mw, first.issue("dev-1"), A_HOST)[0] == 200
        _swap_link(files.dir / "pki" / "current", "releases/v2")
        assert reloader.changed(), "the root behind pki/current/a.pem changed unseen"
        reloader.reload_quietly("watch")
        assert status(mw, second.issue("dev-2"), A_HOST)[0] == 200
        assert status(mw, first.issue("dev-3"), A_HOST) == (403, Reason.UNTRUSTED_CHAIN.value)
    finally:
        gate.close()


def test_watch_follows_a_kubernetes_configmap_swap(files: Files) -> None:
    """A ConfigMap volume: every file is ``name -> ..data/name`` and
    ``..data`` is swapped to a new timestamped directory (the old one is
    removed afterwards). Sound already; kept as a regression test."""
    first, second = files.ca("first"), files.ca("second")

    def publish(version: str, root: bytes) -> None:
        folder = files.dir / "cm" / version
        folder.mkdir(parents=True)
        (folder / "a.pem").write_bytes(root)
        (folder / "certgate.toml").write_text(tenant("a", A_HOST, "a.pem"))

    cm = files.dir / "cm"
    publish("..v1", first.cert_pem)
    os.symlink("..v1", cm / "..data")
    for name in ("a.pem", "certgate.toml"):
        os.symlink(f"..data/{name}", cm / name)
    gate = CertGate.from_toml(cm / "certgate.toml")
    try:
        mw = CertGateMiddleware(RecordingApp(), gate)
        reloader = reloader_of(gate)
        publish("..v2", second.cert_pem)
        _swap_link(cm / "..data", "..v2")
        assert reloader.changed()
        reloader.reload_quietly("watch")
        assert status(mw, second.issue("dev"), A_HOST)[0] == 200
        for leftover in (cm / "..v1").iterdir():
            leftover.unlink()
        (cm / "..v1").rmdir()
        assert not reloader.changed()  # the old directory going away is no change
    finally:
        gate.close()


# -- finding 3: run-time rollout changes lost to a reload --------------------


def test_a_mode_set_on_the_rollout_during_a_reload_is_not_lost(
    files: Files, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file says report; the operator switches to enforce at run time
    (``gate.rollout.set_mode("enforce")``) while a reload that changed
    ``[certgate]`` is building its snapshot (after it replayed the earlier
    changes, before the swap). The switch must survive the swap: losing it
    silently leaves the gate in report-only mode - open."""
    files.ca("a")
    files.toml('mode = "report"', tenant("a", A_HOST, "a.pem"))
    gate = CertGate.from_toml(files.config)
    try:
        real_replay = Rollout.replay

        def replay_then_operator_switches(self: Rollout, earlier: Rollout) -> None:
            real_replay(self, earlier)
            earlier.set_mode("enforce")  # the other thread, on gate.rollout (still the old one)

        monkeypatch.setattr(Rollout, "replay", replay_then_operator_switches)
        files.toml('mode = "report"\nexempt_paths = ["/healthz"]', tenant("a", A_HOST, "a.pem"))
        gate.reload()
        assert gate.rollout.mode is Mode.ENFORCE
    finally:
        gate.close()


def test_a_rollout_reference_kept_across_a_reload_still_changes_the_gate(files: Files) -> None:
    """An admin endpoint built with ``rollout = gate.rollout`` keeps working
    after a reload that changed ``[certgate]`` (a new rollout): its
    ``set_mode`` reaches the gate, not a rollout nobody reads any more."""
    files.ca("a")
    files.toml('mode = "report"', tenant("a", A_HOST, "a.pem"))
    gate = CertGate.from_toml(files.config)
    try:
        mw = CertGateMiddleware(RecordingApp(), gate)
        rollout = gate.rollout
        files.toml('mode = "report"\nrefusal_format = "text"', tenant("a", A_HOST, "a.pem"))
        gate.reload()
        rollout.set_mode("enforce")
        assert gate.rollout.mode is Mode.ENFORCE
        assert status(mw, None, A_HOST)[0] == 403
    finally:
        gate.close()


# -- finding 4: a same-size rewrite within the file system's timestamp tick ---


def test_watch_rechecks_a_file_rewritten_within_its_timestamp_granularity(
    loaded: tuple[Files, CertGate, CertGateMiddleware], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file rewritten in place (same inode) with the same size within the
    file system's timestamp granularity (a jiffy on ext4, a second on ext3
    and some NFS) keeps size, mtime and inode. A file modified that
    recently when it was loaded is looked at again once it is older than
    the granularity, so such a rewrite is not missed for good."""
    files, gate, mw = loaded
    monkeypatch.setattr("certgate.reload.RACY_SECONDS", 0.3)
    recorder = RecordingObserver()
    gate.observers.items = (*gate.observers.items, recorder)
    files.toml('exempt_paths = ["/aaaa"]', tenant("a", A_HOST, "a.pem"))
    reloader = reloader_of(gate)
    reloader.reload("call")
    assert status(mw, None, A_HOST, "/bbbb") == (403, Reason.NO_CERTIFICATE.value)
    info = os.stat(files.config)
    with open(files.config, "r+b") as handle:  # in place: same inode
        text = handle.read().replace(b"/aaaa", b"/bbbb")
        handle.seek(0)
        handle.write(text)
    os.utime(files.config, ns=(info.st_atime_ns, info.st_mtime_ns))  # the same tick
    assert os.stat(files.config).st_size == info.st_size
    reloader.watch_interval = 0.1
    time.sleep(0.35)
    reloader.tick(time.monotonic() + 1)
    assert status(mw, None, A_HOST, "/bbbb")[0] == 200
    reloads = len(recorder.reloads)
    reloader.tick(time.monotonic() + 2)
    assert len(recorder.reloads) == reloads  # looked at again once, not every tick


# -- finding 5 (design, for the lead): expiry warnings repeated at every reload ---


def test_reloads_that_change_nothing_about_a_ca_do_not_repeat_its_warning(
    files: Files, caplog: pytest.LogCaptureFixture
) -> None:
    ca = CA.root("Soon Root", not_after=dt.datetime.now(dt.UTC) + dt.timedelta(days=20))
    files.write("a.pem", ca.cert_pem)
    files.toml("", tenant("a", A_HOST, "a.pem"))
    gate = CertGate.from_toml(files.config)
    try:
        with caplog.at_level(logging.WARNING, logger="certgate"):
            gate.start_monitor()
            for _ in range(5):
                gate.reload()  # e.g. the watch, after a CRL file was rewritten
        warned = [r for r in caplog.records if "expires soon" in r.getMessage()]
        assert len(warned) == 1  # decided: a reload logs only levels that changed
        files.write(
            "a.pem",
            CA.root("Soon Root", not_after=dt.datetime.now(dt.UTC) + dt.timedelta(days=5)).cert_pem,
        )
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="certgate"):
            gate.reload()  # another CA, now critical: logged
            gate.check_expiry()  # not a reload: logs every late item again
        warned = [r for r in caplog.records if "expires soon" in r.getMessage()]
        assert len(warned) == 2
    finally:
        gate.close()
