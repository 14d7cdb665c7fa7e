"""certgate.events: the log observer and the observer fan-out (Observers)."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from certgate.events import (
    STAGE_REQUEST,
    STAGE_ROUTE,
    DecisionEvent,
    ExpiryEvent,
    LogObserver,
    Observer,
    Observers,
)
from certgate.testing import RecordingObserver

FINGERPRINT = "ab" * 32

HOSTILE = "/x\r\nINFO certgate: allowed tenant=acme\x1b[31m\x00\u2028end"
"""Text that would forge a second log line or colour a terminal if logged raw."""


DECISION_FIELDS: dict[str, Any] = {
    "stage": STAGE_REQUEST,
    "reason": None,
    "mode": "enforce",
    "access": "require",
    "tenant": "acme",
    "source": "asgi_tls",
    "fingerprint": FINGERPRINT,
    "subject": "CN=device-1,O=Acme",
    "policy": None,
    "host": "pay.acme.test",
    "path": "/orders",
    "peer": "127.0.0.1",
    "detail": "",
    "latency_s": 0.0012,
    "exempt": False,
}
"""Every field of a DecisionEvent: an allow for tenant acme over TLS."""

EXPIRY_FIELDS: dict[str, Any] = {
    "tenant": "acme",
    "source": "asgi_tls",
    "fingerprint": FINGERPRINT,
    "subject": "CN=device-1,O=Acme",
    "not_after": "2026-12-05T00:00:00+00:00",
    "days_left": 9.5,
}


def decision(**changes: Any) -> DecisionEvent:
    """An allow for tenant acme over TLS; ``changes`` override fields."""
    return DecisionEvent(**{**DECISION_FIELDS, **changes})


def expiry(**changes: Any) -> ExpiryEvent:
    return ExpiryEvent(**{**EXPIRY_FIELDS, **changes})


def certgate_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "certgate"]


def log_one(caplog: pytest.LogCaptureFixture, event: DecisionEvent) -> logging.LogRecord:
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="certgate"):
        LogObserver().on_decision(event)
    records = certgate_records(caplog)
    assert len(records) == 1, [r.getMessage() for r in records]
    return records[0]


# --- LogObserver: levels and wording ------------------------------------------------


def test_log_observer_is_an_observer() -> None:
    assert isinstance(LogObserver(), Observer)


def test_allow_is_logged_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    record = log_one(caplog, decision())
    assert record.levelno == logging.DEBUG
    message = record.getMessage()
    assert message.startswith("certgate: allowed ")
    assert "tenant=acme" in message
    assert f"fingerprint={FINGERPRINT}" in message


def test_allow_is_not_logged_above_debug(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="certgate"):
        LogObserver().on_decision(decision())
    assert certgate_records(caplog) == []


@pytest.mark.parametrize(
    ("reason", "level"),
    [
        ("untrusted_chain", logging.WARNING),
        ("expired", logging.WARNING),
        ("policy_denied", logging.WARNING),
        ("unknown_tenant", logging.WARNING),
        ("no_certificate", logging.INFO),
        ("internal_error", logging.ERROR),
        ("trust_store_unavailable", logging.ERROR),
    ],
)
def test_refusal_levels_per_reason(
    caplog: pytest.LogCaptureFixture, reason: str, level: int
) -> None:
    record = log_one(caplog, decision(reason=reason, detail="why"))
    assert record.levelno == level
    message = record.getMessage()
    assert message.startswith("certgate: rejected ")
    assert f"reason={reason}" in message
    assert "report-only" not in message


@pytest.mark.parametrize(
    ("reason", "level"),
    [
        ("untrusted_chain", logging.WARNING),
        # raised to WARNING: a report-only refusal is what enforcing would do
        ("no_certificate", logging.WARNING),
        ("internal_error", logging.ERROR),
    ],
)
def test_report_only_refusal_wording_and_level(
    caplog: pytest.LogCaptureFixture, reason: str, level: int
) -> None:
    record = log_one(caplog, decision(reason=reason, mode="report"))
    assert record.levelno == level
    message = record.getMessage()
    assert message.startswith("certgate: would reject (report-only) ")
    assert f"reason={reason}" in message
    assert " rejected " not in message


def test_route_stage_and_policy_are_in_the_message(caplog: pytest.LogCaptureFixture) -> None:
    record = log_one(
        caplog,
        decision(stage=STAGE_ROUTE, reason="policy_denied", policy="common_name('alice')"),
    )
    message = record.getMessage()
    assert "stage=route" in message
    assert "policy=\"common_name('alice')\"" in message


# --- LogObserver: extra["certgate"] ---------------------------------------------------


@pytest.mark.parametrize(
    "event",
    [
        decision(),
        decision(reason="untrusted_chain", detail="no path to a root of tenant acme"),
        decision(reason="no_certificate", mode="report", fingerprint=None, subject=None),
        decision(stage=STAGE_ROUTE, reason="policy_denied", policy="san_dns('*.acme.test')"),
        decision(reason=None, access="exempt", exempt=True, tenant=None, fingerprint=None),
    ],
    ids=["allow", "refusal", "report", "route", "exempt"],
)
def test_extra_carries_every_field(caplog: pytest.LogCaptureFixture, event: DecisionEvent) -> None:
    record = log_one(caplog, event)
    extra = record.__dict__["certgate"]
    assert extra == event.as_dict()
    assert set(extra) == set(DECISION_FIELDS)
    # host, path and detail included, verbatim (the message is where text is escaped)
    assert extra["host"] == event.host
    assert extra["path"] == event.path
    assert extra["detail"] == event.detail
    assert extra["peer"] == event.peer
    assert extra["latency_s"] == event.latency_s


def test_extra_keeps_hostile_text_verbatim(caplog: pytest.LogCaptureFixture) -> None:
    event = decision(reason="untrusted_chain", host=HOSTILE, path=HOSTILE, detail=HOSTILE)
    extra = log_one(caplog, event).__dict__["certgate"]
    assert extra["host"] == extra["path"] == extra["detail"] == HOSTILE


# --- LogObserver: escaping ------------------------------------------------------------


@pytest.mark.parametrize("field", ["host", "path", "peer", "detail", "policy"])
def test_hostile_text_is_escaped_in_refusal_messages(
    caplog: pytest.LogCaptureFixture, field: str
) -> None:
    message = log_one(caplog, decision(reason="untrusted_chain", **{field: HOSTILE})).getMessage()
    assert "\n" not in message
    assert "\r" not in message
    assert "\x1b" not in message
    assert "\x00" not in message
    assert "\u2028" not in message
    assert "\\r\\n" in message  # escaped, not dropped


def test_hostile_path_is_escaped_in_allow_messages(caplog: pytest.LogCaptureFixture) -> None:
    message = log_one(caplog, decision(path=HOSTILE)).getMessage()
    assert "\n" not in message
    assert "\x1b" not in message
    assert "\\r\\n" in message


def test_long_text_is_truncated_in_the_message(caplog: pytest.LogCaptureFixture) -> None:
    event = decision(reason="untrusted_chain", path="/" + "p" * 10_000, detail="d" * 10_000)
    record = log_one(caplog, event)
    assert len(record.getMessage()) < 2_000
    assert record.__dict__["certgate"]["path"] == event.path  # the extra keeps it whole


def test_expiry_is_a_warning_with_every_field(caplog: pytest.LogCaptureFixture) -> None:
    event = expiry(subject=HOSTILE)
    with caplog.at_level(logging.DEBUG, logger="certgate"):
        LogObserver().on_expiring(event)
    (record,) = certgate_records(caplog)
    assert record.levelno == logging.WARNING
    message = record.getMessage()
    assert "expires in 9.5 days" in message
    assert "tenant=acme" in message
    assert "\n" not in message
    assert "\x1b" not in message
    assert record.__dict__["certgate"] == event.as_dict()
    assert set(record.__dict__["certgate"]) == set(EXPIRY_FIELDS)


# --- DecisionEvent --------------------------------------------------------------------


def test_allowed_and_blocked() -> None:
    assert decision().allowed
    assert not decision().blocked
    refused = decision(reason="untrusted_chain")
    assert not refused.allowed
    assert refused.blocked
    reported = decision(reason="untrusted_chain", mode="report")
    assert not reported.allowed  # a report-only refusal is not an allow
    assert not reported.blocked


def test_events_are_immutable() -> None:
    event = decision()
    with pytest.raises(AttributeError):
        event.reason = "expired"  # type: ignore[misc]


# --- Observers ------------------------------------------------------------------------


Recorder = RecordingObserver


class Raising:
    def __init__(self, exc: type[Exception] = RuntimeError) -> None:
        self.exc = exc
        self.calls = 0

    def on_decision(self, event: DecisionEvent) -> None:
        self.calls += 1
        raise self.exc("observer bug")

    def on_expiring(self, event: ExpiryEvent) -> None:
        self.calls += 1
        raise self.exc("observer bug")


def observer_failures(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in certgate_records(caplog) if "observer" in r.getMessage()]


def test_observers_are_called_in_order() -> None:
    seen: list[str] = []

    class Named(Recorder):
        def __init__(self, name: str) -> None:
            super().__init__()
            self.name = name

        def on_decision(self, event: DecisionEvent) -> None:
            seen.append(self.name)

    Observers((Named("a"), Named("b"), Named("c"))).decision(decision())
    assert seen == ["a", "b", "c"]


def test_raising_observer_is_logged_once_and_changes_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    before, after, bad = Recorder(), Recorder(), Raising()
    observers = Observers((before, bad, after))
    events = [decision(), decision(reason="untrusted_chain"), decision(path="/other")]
    with caplog.at_level(logging.DEBUG, logger="certgate"):
        for event in events:
            observers.decision(event)  # never raises
        observers.expiring(expiry())
    # every other observer saw every event, unchanged and in order
    assert before.decisions == events
    assert after.decisions == events
    assert all(a is b for a, b in zip(after.decisions, events, strict=True))
    assert after.expiring == [expiry()]
    assert bad.calls == 4
    (failure,) = observer_failures(caplog)  # once, for 4 failures of one kind
    assert failure.levelno == logging.ERROR
    assert "Raising raised RuntimeError" in failure.getMessage()
    assert failure.exc_info is not None


def test_each_failure_kind_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    first, second = Raising(RuntimeError), Raising(ValueError)
    observers = Observers((first, second, Raising(RuntimeError)))
    with caplog.at_level(logging.DEBUG, logger="certgate"):
        for _ in range(3):
            observers.decision(decision())
    # three (observer, exception type) pairs, each logged once
    assert len(observer_failures(caplog)) == 3


def test_a_raising_observer_does_not_stop_the_log_observer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    observers = Observers((Raising(), LogObserver()))
    with caplog.at_level(logging.DEBUG, logger="certgate"):
        observers.decision(decision(reason="expired"))
    messages = [r.getMessage() for r in certgate_records(caplog)]
    assert any(m.startswith("certgate: rejected reason=expired") for m in messages)
