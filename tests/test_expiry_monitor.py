"""Tenant CA expiry monitoring of a gate loaded from TOML: events, log
records and Prometheus metrics at load, at reload and periodically."""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from certgate import CertGate, ConfigError
from certgate.asgi import CertGateMiddleware
from certgate.devpki import CA
from certgate.prometheus import PrometheusObserver
from certgate.testing import RecordingObserver
from tests.reload_files import Files, eventually, tenant
from tests.test_asgi import RecordingApp

NOW = dt.datetime.now(dt.UTC)


def expiring(files: Files, name: str, days: float) -> CA:
    return files.ca(name, not_after=NOW + dt.timedelta(days=days))


@pytest.fixture
def files(tmp_path: Path) -> Files:
    files = Files(tmp_path)
    expiring(files, "soon", 5)  # critical (< 14 days)
    expiring(files, "month", 20)  # warning (< 30 days)
    expiring(files, "fine", 400)
    files.toml(
        "",
        tenant("soon", "soon.test", "soon.pem"),
        tenant("month", "month.test", "month.pem"),
        tenant("fine", "fine.test", "fine.pem"),
    )
    return files


def fingerprint(ca: CA) -> str:
    return hashlib.sha256(ca.der).hexdigest()


def test_expiry_is_checked_when_a_middleware_is_built_and_logged_with_fingerprints(
    files: Files, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = RecordingObserver()
    gate = CertGate.from_toml(files.config, observers=[recorder])
    assert recorder.trust_expiry == []  # loading alone (a CLI, a tool) checks nothing
    with caplog.at_level(logging.WARNING, logger="certgate"):
        CertGateMiddleware(RecordingApp(), gate)
    (event,) = recorder.trust_expiry
    assert event.trigger == "load"
    assert [(i.tenant, i.level) for i in event.items] == [
        ("soon", "critical"),
        ("month", "warning"),
        ("fine", "ok"),
    ]
    assert [i.tenant for i in event.late] == ["soon", "month"]
    records = [r for r in caplog.records if "expires soon" in r.message]
    assert len(records) == 2
    assert fingerprint(files.cas["soon"]) in records[0].message
    assert "critical" in records[0].message
    assert records[0].levelno == logging.WARNING
    for record in records:
        assert "PRIVATE" not in record.getMessage()
        assert record.certgate["fingerprint"] in record.getMessage()  # type: ignore[attr-defined]
    gate.close()


def test_thresholds_come_from_the_certgate_table_and_reloads_check_again(files: Files) -> None:
    files.write(
        "certgate.toml",
        files.config.read_text().replace(
            "[certgate]\n", "[certgate]\nexpiry_warning_days = 10\nexpiry_critical_days = 3\n"
        ),
    )
    recorder = RecordingObserver()
    gate = CertGate.from_toml(files.config, observers=[recorder])
    gate.start_monitor()
    assert [i.level for i in recorder.trust_expiry[0].items] == ["warning", "ok", "ok"]
    expiring(files, "gone", -1)
    files.toml(
        "expiry_critical_days = 30",
        tenant("gone", "gone.test", "gone.pem", 'ca_expired = "warn"'),
        tenant("soon", "soon.test", "soon.pem"),
    )
    gate.reload()
    reload_check = recorder.trust_expiry[-1]
    assert reload_check.trigger == "reload"
    assert (reload_check.warning_days, reload_check.critical_days) == (30, 30)
    assert [(i.tenant, i.level) for i in reload_check.items] == [
        ("gone", "expired"),
        ("soon", "critical"),
    ]
    gate.close()


def test_critical_days_above_warning_days_is_refused(files: Files) -> None:
    files.write(
        "certgate.toml",
        files.config.read_text().replace(
            "[certgate]\n", "[certgate]\nexpiry_warning_days = 10\nexpiry_critical_days = 20\n"
        ),
    )
    with pytest.raises(ConfigError, match="expiry_critical_days"):
        CertGate.from_toml(files.config)


def test_expiry_is_checked_periodically(files: Files) -> None:
    files.write(
        "certgate.toml",
        files.config.read_text().replace(
            "[certgate]\n", "[certgate]\nexpiry_check_interval = 0.1\n"
        ),
    )
    recorder = RecordingObserver()
    gate = CertGate.from_toml(files.config, observers=[recorder])
    gate.start_monitor()
    eventually(
        lambda: sum(e.trigger == "periodic" for e in recorder.trust_expiry) >= 2,
        "two periodic checks",
    )
    gate.close()
    time.sleep(0.2)  # a check that started before close() has ended
    closed = len(recorder.trust_expiry)
    time.sleep(0.3)  # three intervals: a closed gate is no longer checked
    assert len(recorder.trust_expiry) == closed


def test_prometheus_expiry_gauge_and_reload_metrics(files: Files) -> None:
    registry = CollectorRegistry()
    gate = CertGate.from_toml(files.config, observers=[PrometheusObserver(registry)])
    gate.start_monitor()

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    soon = value(
        "certgate_trust_expiry_seconds",
        tenant="soon",
        kind="root",
        fingerprint=fingerprint(files.cas["soon"]),
    )
    assert soon is not None
    assert 4 * 86400 < soon <= 5 * 86400
    assert value("certgate_config_reloads_total", outcome="ok") == 1  # the first load
    first = value("certgate_config_last_reload_success_timestamp_seconds")
    assert first is not None
    assert abs(first - time.time()) < 3600
    files.toml("", tenant("fine", "fine.test", "fine.pem"))
    gate.reload()
    assert value("certgate_config_reloads_total", outcome="ok") == 2
    gone = value(
        "certgate_trust_expiry_seconds",
        tenant="soon",
        kind="root",
        fingerprint=fingerprint(files.cas["soon"]),
    )
    assert gone is None  # no longer configured: the series is dropped
    files.write("certgate.toml", "[certgate\n")
    with pytest.raises(ConfigError):
        gate.reload()
    assert value("certgate_config_reloads_total", outcome="failed") == 1
    fine = value(
        "certgate_trust_expiry_seconds",
        tenant="fine",
        kind="root",
        fingerprint=fingerprint(files.cas["fine"]),
    )
    assert fine is not None
    assert fine > 399 * 86400
    gate.close()


def test_check_expiry_on_a_gate_made_in_python(files: Files) -> None:
    from certgate.config import load_config

    recorder = RecordingObserver()
    gate = CertGate(load_config(files.config).registry, observers=[recorder])
    event = gate.check_expiry()
    assert event.trigger == "call"
    assert event.config == ""
    assert [i.level for i in event.items] == ["critical", "warning", "ok"]
    assert recorder.trust_expiry == [event]


def test_crls_are_checked_against_their_next_update(tmp_path: Path) -> None:
    from certgate.pki import make_crl, read_revocations, write_crl

    files = Files(tmp_path)
    ca = files.ca("crl")
    db = read_revocations(tmp_path / "db.json", ca)
    write_crl(tmp_path / "fresh.crl", make_crl(ca, db, days=7))
    files.toml("", tenant("crl", "crl.test", "crl.pem", 'crls = ["fresh.crl"]'))
    registry = CollectorRegistry()
    recorder = RecordingObserver()
    gate = CertGate.from_toml(files.config, observers=[recorder, PrometheusObserver(registry)])
    gate.start_monitor()
    (crl,) = [item for item in recorder.trust_expiry[-1].items if item.kind == "crl"]
    assert crl.level == "ok"  # a weekly CRL: outside crl_warning_days (3), not the CAs' 30
    assert 6.9 < crl.days_left <= 7
    seconds = registry.get_sample_value(
        "certgate_trust_expiry_seconds",
        {"tenant": "crl", "kind": "crl", "fingerprint": crl.fingerprint},
    )
    assert seconds is not None
    assert 6.9 * 86400 < seconds <= 7 * 86400
    write_crl(tmp_path / "fresh.crl", make_crl(ca, db, days=2))
    gate.reload()
    (crl,) = [item for item in recorder.trust_expiry[-1].items if item.kind == "crl"]
    assert crl.level == "warning"  # inside crl_warning_days
    stale = make_crl(ca, db, days=1, now=NOW - dt.timedelta(days=2))
    write_crl(tmp_path / "fresh.crl", stale)
    files.toml("", tenant("crl", "crl.test", "crl.pem", 'crls = ["fresh.crl"]\ncrl_stale = "warn"'))
    gate.reload()
    (crl,) = [item for item in recorder.trust_expiry[-1].items if item.kind == "crl"]
    assert crl.level == "expired"
    gate.close()
