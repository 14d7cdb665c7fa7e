"""certgate.prometheus: the Prometheus observer, against a fresh CollectorRegistry."""

from __future__ import annotations

import importlib
import sys

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest

from certgate.errors import ConfigError
from certgate.events import STAGE_ROUTE, Observer
from certgate.prometheus import MAX_BOUND_CHILDREN, PrometheusObserver
from certgate.tenant import check_tenant_id

from .test_events import HOSTILE, decision, expiry

DECISIONS = "certgate_decisions_total"
LATENCY = "certgate_decision_latency_seconds"
EXPIRING = "certgate_expiring_certificates_total"


def labels(
    tenant: str = "acme",
    reason: str = "allowed",
    mode: str = "enforce",
    stage: str = "request",
    source: str = "asgi_tls",
) -> dict[str, str]:
    return {"tenant": tenant, "reason": reason, "mode": mode, "stage": stage, "source": source}


def count(registry: CollectorRegistry, **kw: str) -> float | None:
    return registry.get_sample_value(DECISIONS, labels(**kw))


def timed(registry: CollectorRegistry, stage: str, outcome: str) -> float | None:
    return registry.get_sample_value(f"{LATENCY}_count", {"stage": stage, "outcome": outcome})


def series(registry: CollectorRegistry, sample_name: str) -> list[dict[str, str]]:
    return [
        s.labels for metric in registry.collect() for s in metric.samples if s.name == sample_name
    ]


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def observer(registry: CollectorRegistry) -> PrometheusObserver:
    return PrometheusObserver(registry)


def test_is_an_observer(observer: PrometheusObserver) -> None:
    assert isinstance(observer, Observer)


def test_no_series_before_any_event(
    registry: CollectorRegistry, observer: PrometheusObserver
) -> None:
    assert series(registry, DECISIONS) == []
    assert series(registry, EXPIRING) == []


def test_allow_is_counted_and_timed(
    registry: CollectorRegistry, observer: PrometheusObserver
) -> None:
    observer.on_decision(decision(latency_s=0.002))
    observer.on_decision(decision(latency_s=0.004))
    assert count(registry) == 2
    assert timed(registry, "request", "allowed") == 2
    total = registry.get_sample_value(f"{LATENCY}_sum", {"stage": "request", "outcome": "allowed"})
    assert total == pytest.approx(0.006)
    assert (
        registry.get_sample_value(
            f"{LATENCY}_bucket", {"stage": "request", "outcome": "allowed", "le": "0.0025"}
        )
        == 1
    )
    assert timed(registry, "request", "refused") is None


def test_refusals_by_tenant_reason_mode_stage_source(
    registry: CollectorRegistry, observer: PrometheusObserver
) -> None:
    observer.on_decision(decision(reason="untrusted_chain"))
    observer.on_decision(decision(reason="untrusted_chain"))
    observer.on_decision(decision(reason="untrusted_chain", mode="report"))
    observer.on_decision(decision(tenant="globex", reason="expired", source="cloudflare"))
    observer.on_decision(decision(stage=STAGE_ROUTE, reason="policy_denied", policy="cn"))
    assert count(registry, reason="untrusted_chain") == 2
    assert count(registry, reason="untrusted_chain", mode="report") == 1
    assert count(registry, tenant="globex", reason="expired", source="cloudflare") == 1
    assert count(registry, reason="policy_denied", stage="route") == 1
    assert count(registry) is None  # no allow was counted
    assert timed(registry, "request", "refused") == 4  # report-only refusals are refusals
    assert timed(registry, "route", "refused") == 1
    assert len(series(registry, DECISIONS)) == 4


def test_no_tenant_and_no_source(registry: CollectorRegistry, observer: PrometheusObserver) -> None:
    observer.on_decision(decision(reason="unknown_tenant", tenant=None))
    observer.on_decision(
        decision(reason="no_certificate", source=None, fingerprint=None, subject=None)
    )
    assert count(registry, tenant="_none", reason="unknown_tenant") == 1
    assert count(registry, reason="no_certificate", source="none") == 1


def test_exempt_and_anonymous_allows(
    registry: CollectorRegistry, observer: PrometheusObserver
) -> None:
    observer.on_decision(
        decision(access="exempt", exempt=True, tenant=None, source=None, fingerprint=None)
    )
    observer.on_decision(decision(access="optional", source=None, fingerprint=None, subject=None))
    assert count(registry, tenant="_none", reason="exempt", source="none") == 1
    assert count(registry, reason="anonymous", source="none") == 1
    assert count(registry) is None
    assert timed(registry, "request", "allowed") == 1  # the exempt one is not timed


def test_values_outside_the_fixed_sets_become_other(
    registry: CollectorRegistry, observer: PrometheusObserver
) -> None:
    observer.on_decision(
        decision(reason=HOSTILE, mode=HOSTILE, stage=HOSTILE, source=HOSTILE, tenant=HOSTILE)
    )
    observer.on_decision(decision(tenant="x" * 129))  # longer than a tenant id may be
    assert (
        count(
            registry, tenant="_invalid", reason="other", mode="other", stage="other", source="other"
        )
        == 1
    )
    assert count(registry, tenant="_invalid") == 1
    assert timed(registry, "other", "refused") == 1
    text = generate_latest(registry).decode()
    assert "\x1b" not in text
    assert "INFO certgate" not in text


def test_tenant_label_false_folds_tenants(registry: CollectorRegistry) -> None:
    observer = PrometheusObserver(registry, tenant_label=False)
    for tenant in ("acme", "globex", "initech", None):
        observer.on_decision(decision(tenant=tenant))
        observer.on_expiring(expiry(tenant=tenant or "acme"))
    observer.on_decision(decision(tenant="globex", reason="expired"))
    assert count(registry, tenant="_all") == 4
    assert count(registry, tenant="_all", reason="expired") == 1
    assert count(registry, tenant="acme") is None
    assert {s["tenant"] for s in series(registry, DECISIONS)} == {"_all"}
    assert registry.get_sample_value(EXPIRING, {"tenant": "_all"}) == 4
    assert series(registry, EXPIRING) == [{"tenant": "_all"}]


def test_expiring_certificates_by_tenant(
    registry: CollectorRegistry, observer: PrometheusObserver
) -> None:
    observer.on_expiring(expiry())
    observer.on_expiring(expiry(fingerprint="cd" * 32))
    observer.on_expiring(expiry(tenant="globex"))
    assert registry.get_sample_value(EXPIRING, {"tenant": "acme"}) == 2
    assert registry.get_sample_value(EXPIRING, {"tenant": "globex"}) == 1
    assert series(registry, DECISIONS) == []


def test_free_text_never_makes_a_series(
    registry: CollectorRegistry, observer: PrometheusObserver
) -> None:
    observer.on_decision(decision())
    observer.on_decision(decision(reason="untrusted_chain"))
    baseline = (len(series(registry, DECISIONS)), len(series(registry, f"{LATENCY}_bucket")))
    for i in range(2_000):
        varied = {
            "host": f"h{i}.acme.test",
            "path": f"/p/{i}",
            "peer": f"10.0.{i // 256}.{i % 256}",
            "subject": f"CN=device-{i}",
            "fingerprint": f"{i:064x}",
            "detail": f"detail {i}",
            "policy": f"policy-{i}",
            "latency_s": i / 1e6,
        }
        observer.on_decision(decision(**varied))
        observer.on_decision(decision(reason="untrusted_chain", **varied))
    after = (len(series(registry, DECISIONS)), len(series(registry, f"{LATENCY}_bucket")))
    assert after == baseline
    assert count(registry) == 2_001
    assert count(registry, reason="untrusted_chain") == 2_001
    text = generate_latest(registry).decode()
    assert "h1999.acme.test" not in text
    assert "/p/1999" not in text
    assert "device-1999" not in text


def test_hostile_tenants_do_not_grow_the_bound_children(
    registry: CollectorRegistry, observer: PrometheusObserver
) -> None:
    n = MAX_BOUND_CHILDREN + 500
    for i in range(n):
        observer.on_decision(decision(tenant=f"!{i}"))  # outside the grammar
    assert count(registry, tenant="_invalid") == n
    assert len(series(registry, DECISIONS)) == 1
    assert len(observer._decisions.children) <= MAX_BOUND_CHILDREN


def test_custom_namespace_and_buckets(registry: CollectorRegistry) -> None:
    observer = PrometheusObserver(registry, namespace="edge", buckets=(0.01, 1.0))
    observer.on_decision(decision(latency_s=0.5))
    assert registry.get_sample_value("edge_decisions_total", labels()) == 1
    buckets = {s["le"] for s in series(registry, "edge_decision_latency_seconds_bucket")}
    assert buckets == {"0.01", "1.0", "+Inf"}
    assert (
        registry.get_sample_value(
            "edge_decision_latency_seconds_bucket",
            {"stage": "request", "outcome": "allowed", "le": "1.0"},
        )
        == 1
    )


def test_one_observer_per_registry_and_namespace(registry: CollectorRegistry) -> None:
    PrometheusObserver(registry)
    with pytest.raises(ValueError, match="Duplicated"):
        PrometheusObserver(registry)
    PrometheusObserver(registry, namespace="other")  # another namespace is fine


def test_default_registry_is_the_global_one() -> None:
    observer = PrometheusObserver()
    try:
        observer.on_decision(decision(tenant="default-registry-test"))
        assert REGISTRY.get_sample_value(DECISIONS, labels(tenant="default-registry-test")) == 1
    finally:
        for bound in (observer._decisions, observer._latency, observer._expiring):
            REGISTRY.unregister(bound.metric)


def test_missing_prometheus_client_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # import fails
    monkeypatch.delitem(sys.modules, "certgate.prometheus")
    with pytest.raises(ImportError, match=r"pip install 'certgate\[prometheus\]'"):
        importlib.import_module("certgate.prometheus")


@pytest.mark.parametrize(
    "tenant",
    ["acme", "org:123", "eu.acme", "a@b", "A-1_x", "x" * 128, "x" * 129, "_all", "-a", "", "a b"],
)
def test_tenant_grammar_agrees_with_the_registry(
    registry: CollectorRegistry, observer: PrometheusObserver, tenant: str
) -> None:
    try:
        check_tenant_id(tenant)
        expected = tenant
    except ConfigError:
        expected = "_invalid"
    observer.on_decision(decision(tenant=tenant))
    assert count(registry, tenant=expected) == 1
