"""Issue 6 item 5: the Flask extension, decorators and test support.

Through Flask's test client - the client certificate goes in as the
``SSL_CLIENT_CERT`` environ keys a TLS server sets (``client_cert_environ``),
so the real middleware and verifier check it - and through Werkzeug's real
server over TLS at the end. The app under test is tests/flask_ext_app.py;
its policy is a tiny test class, independent of certgate.policy's rules.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from examples.devenv import DevEnv, make_dev_environment
from flask import Flask
from werkzeug.exceptions import HTTPException
from werkzeug.test import TestResponse

from certgate import CertGate
from certgate.errors import ConfigError, ServerSetupError
from certgate.flask import (
    CertGateFlask,
    CertGateState,
    authorize,
    client_cert_environ,
    get_gate,
    require_client_cert,
    require_identity,
)
from certgate.problem import problem_json
from certgate.reasons import Reason
from certgate.rollout import Mode, Route
from certgate.wsgi import CertGateWSGIMiddleware
from tests.conftest import PKI
from tests.flask_ext_app import SENSORS, build_app
from tests.servers import Server, free_port, serve

ACME = "pay.acme.test"
GLOBEX = "api.globex.test"
INITECH = "initech.test"
SENSOR_ROUTES = ("/sensor", "/async", "/items", "/things")


# -- helpers --------------------------------------------------------------------


def _pem(pki: PKI, tenant: str, cn: str) -> str:
    return pki[tenant].client(cn).chain_pem.decode()


def _get(
    app: Flask, path: str, host: str, pem: str | None = None, method: str = "GET"
) -> TestResponse:
    environ = client_cert_environ(pem) if pem is not None else {}
    return app.test_client().open(
        path, method=method, headers={"Host": host}, environ_overrides=environ
    )


def _reason(response: TestResponse) -> str:
    return response.headers["certgate-reason"]


def _toml(tmp_path: Path, pki: PKI, tenants: list[str], certgate: str = "") -> str:
    """A certgate TOML file for ``tenants`` of the test PKI."""
    lines = [f"[certgate]\n{certgate}\n"] if certgate else []
    for tenant_id in tenants:
        tenant = pki[tenant_id]
        roots = []
        for index, root in enumerate(tenant.roots):
            name = f"{tenant_id}-root-{index}.pem"
            (tmp_path / name).write_bytes(root.cert_pem)
            roots.append(name)
        inters = []
        for index, inter in enumerate(tenant.configured_intermediates):
            name = f"{tenant_id}-inter-{index}.pem"
            (tmp_path / name).write_bytes(inter.cert_pem)
            inters.append(name)
        lines.append(
            f'[[tenants]]\nid = "{tenant_id}"\nhosts = {json.dumps(list(tenant.hosts))}\n'
            f"roots = {json.dumps(roots)}\nintermediates = {json.dumps(inters)}\n"
        )
    path = tmp_path / f"certgate-{'-'.join(tenants)}.toml"
    path.write_text("\n".join(lines))
    return str(path)


def _headers(response: TestResponse) -> list[tuple[str, str]]:
    """Header names are case-insensitive (Werkzeug writes Content-Length)."""
    return sorted((name.lower(), value) for name, value in response.headers.items())


def gate_refusal_headers(app: Flask, reason: Reason) -> list[tuple[str, str]]:
    return list(get_gate(app).refusal(reason).headers)


def _optional(pki: PKI, **extra: Any) -> dict[str, Any]:
    return {"CERTGATE_REGISTRY": pki.registry(), "CERTGATE_ACCESS": "optional", **extra}


# -- several apps, one extension ---------------------------------------------------


def test_one_extension_serves_several_apps_each_with_its_own_tenants(
    pki: PKI, tmp_path: Path
) -> None:
    """Before issue 6 the extension kept the first app's gate on itself and
    handed it to the second app: app B, configured for Initech only, let
    Globex devices in and refused its own Initech devices."""
    extension = CertGateFlask()
    app_a = Flask("a")
    app_a.config["CERTGATE_CONFIG"] = _toml(tmp_path, pki, ["globex"])
    app_b = Flask("b")
    app_b.config["CERTGATE_CONFIG"] = _toml(tmp_path, pki, ["initech"])
    for app in (app_a, app_b):
        extension.init_app(app)
        app.add_url_rule("/whoami", "whoami", lambda: {"tenant": require_identity().tenant_id})

    globex, initech = _pem(pki, "globex", "till-3"), _pem(pki, "initech", "printer-9")
    assert _get(app_a, "/whoami", GLOBEX, globex).json == {"tenant": "globex"}
    assert _reason(_get(app_a, "/whoami", INITECH, initech)) == "unknown_tenant"
    assert _get(app_b, "/whoami", INITECH, initech).json == {"tenant": "initech"}
    refused = _get(app_b, "/whoami", GLOBEX, globex)
    assert refused.status_code == 403
    assert _reason(refused) == "unknown_tenant"

    state_a, state_b = app_a.extensions["certgate"], app_b.extensions["certgate"]
    assert isinstance(state_a, CertGateState)
    assert isinstance(state_b, CertGateState)
    assert state_a.gate is not state_b.gate
    assert state_a.extension is state_b.extension is extension
    assert extension.gate is None  # nothing per app on the extension object
    assert get_gate(app_a) is state_a.gate
    assert get_gate(app_b) is state_b.gate
    assert app_a.wsgi_app is state_a.middleware
    assert state_a.middleware.gate is state_a.gate


def test_gates_passed_to_init_app_stay_per_app(pki: PKI) -> None:
    extension = CertGateFlask()
    gate_a = CertGate(pki.registry(), access="optional")
    gate_b = CertGate(pki.registry())
    app_a, app_b = Flask("a"), Flask("b")
    extension.init_app(app_a, gate_a)
    extension.init_app(app_b, gate_b)
    assert get_gate(app_a) is gate_a
    assert get_gate(app_b) is gate_b
    # a constructor gate is the default for every app without its own
    shared = CertGate(pki.registry())
    default = CertGateFlask(gate=shared)
    app_c, app_d = Flask("c"), Flask("d")
    default.init_app(app_c)
    default.init_app(app_d, gate_a)
    assert get_gate(app_c) is shared
    assert get_gate(app_d) is gate_a


# -- settings from app.config ------------------------------------------------------


def test_app_config_overrides_the_toml(pki: PKI, tmp_path: Path) -> None:
    config = _toml(tmp_path, pki, ["acme"], 'exempt_paths = ["/"]\ncache_size = 7')
    app = build_app(
        {
            "CERTGATE_CONFIG": config,
            "CERTGATE_EXEMPT_PATHS": ["/things"],
            "CERTGATE_CACHE_SIZE": 0,
            "CERTGATE_REFUSAL_FORMAT": "text",
        }
    )
    gate = get_gate(app)
    assert gate.cache.maxsize == 0
    # "/" is no longer exempt (app.config replaced the TOML's list): refused
    refused = _get(app, "/", ACME)
    assert refused.status_code == 403
    assert refused.headers["content-type"] == "text/plain; charset=utf-8"
    assert _reason(refused) == "no_certificate"
    # "/things" is exempt now: the middleware lets it through, the decorator refuses
    assert _reason(_get(app, "/things", ACME)) == "no_certificate"
    sensor = _pem(pki, "acme", "sensor-17")
    assert _get(app, "/", ACME, sensor).json == {
        "view": "public",
        "cn": "sensor-17",
        "tenant": "acme",
    }


def test_toml_only_settings_apply(pki: PKI, tmp_path: Path) -> None:
    app = build_app({"CERTGATE_CONFIG": _toml(tmp_path, pki, ["acme"], 'exempt_paths = ["/"]')})
    assert _get(app, "/", ACME).json == {"view": "public", "cn": None, "tenant": None}
    assert _reason(_get(app, "/whoami", ACME)) == "no_certificate"


@pytest.mark.parametrize(
    "key", ["CERTGATE_TRUSTED_PROXY", "CERTGATE_MODES", "CERTGATE_EXEMPT", "CERTGATE_"]
)
def test_unknown_certgate_key_is_an_error_naming_it(pki: PKI, key: str) -> None:
    app = Flask(__name__)
    app.config.update(CERTGATE_REGISTRY=pki.registry(), **{key: ["10.0.0.0/8"]})
    wsgi_app = app.wsgi_app
    with pytest.raises(ConfigError, match=repr(key)):
        CertGateFlask(app)
    assert "certgate" not in app.extensions
    assert app.wsgi_app == wsgi_app


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("CERTGATE_TRUSTED_PROXIES", "10.0.0.0/8"),  # a string: one character at a time
        ("CERTGATE_EXEMPT_PATHS", "/healthz"),
        ("CERTGATE_TRANSPORT", "false"),  # truthy
        ("CERTGATE_CACHE_SIZE", "100"),
        ("CERTGATE_REGISTRY_TIMEOUT", True),
        ("CERTGATE_HEADER_SOURCES", [1]),
        ("CERTGATE_REFUSAL_FORMAT", 3),
        ("CERTGATE_POLICY", "common_name=sensor-17"),
        ("CERTGATE_TENANT_RESOLVER", "acme"),
        ("CERTGATE_ROUTES", ["/public/*"]),
    ],
)
def test_wrongly_typed_setting_is_an_error(pki: PKI, key: str, value: object) -> None:
    app = Flask(__name__)
    app.config.update(CERTGATE_REGISTRY=pki.registry(), **{key: value})
    with pytest.raises(ConfigError, match=key):
        CertGateFlask(app)


def test_gate_values_are_checked_by_the_gate(pki: PKI) -> None:
    app = Flask(__name__)
    app.config.update(CERTGATE_REGISTRY=pki.registry(), CERTGATE_MODE="enforcing")
    with pytest.raises(ConfigError, match="mode"):
        CertGateFlask(app)


def test_policy_setting_is_the_default_policy(pki: PKI) -> None:
    app = build_app({"CERTGATE_REGISTRY": pki.registry(), "CERTGATE_POLICY": SENSORS})
    assert _get(app, "/", ACME, _pem(pki, "acme", "sensor-17")).status_code == 200
    assert _reason(_get(app, "/", ACME, _pem(pki, "acme", "impostor-9"))) == "policy_denied"


def test_policy_setting_takes_a_policy_table(pki: PKI) -> None:
    table = {"common_name": ["sensor-17"]}
    app = build_app({"CERTGATE_REGISTRY": pki.registry(), "CERTGATE_POLICY": table})
    assert _get(app, "/", ACME, _pem(pki, "acme", "sensor-17")).status_code == 200
    assert _reason(_get(app, "/", ACME, _pem(pki, "acme", "impostor-9"))) == "policy_denied"
    bad = Flask(__name__)
    bad.config.update(CERTGATE_REGISTRY=pki.registry(), CERTGATE_POLICY={"common_nam": ["x"]})
    with pytest.raises(ConfigError, match=r"CERTGATE_POLICY.*common_nam"):
        CertGateFlask(bad)


def test_setting_set_to_none_counts_as_unset(pki: PKI) -> None:
    app = build_app({"CERTGATE_REGISTRY": pki.registry(), "CERTGATE_MODE": None})
    assert str(get_gate(app).rollout.mode) == "enforce"


def test_neither_gate_nor_config_is_a_setup_error() -> None:
    with pytest.raises(ServerSetupError, match="CERTGATE_CONFIG"):
        CertGateFlask(Flask(__name__))
    with pytest.raises(ServerSetupError, match="CERTGATE_CONFIG"):
        CertGateFlask().init_app(Flask(__name__))


def test_config_and_registry_together_is_an_error(pki: PKI, tmp_path: Path) -> None:
    app = Flask(__name__)
    app.config.update(
        CERTGATE_CONFIG=_toml(tmp_path, pki, ["acme"]), CERTGATE_REGISTRY=pki.registry()
    )
    with pytest.raises(ConfigError, match="both"):
        CertGateFlask(app)


def test_explicit_gate_wins_but_config_typos_still_fail(
    pki: PKI, caplog: pytest.LogCaptureFixture
) -> None:
    gate = CertGate(pki.registry())
    app = Flask(__name__)
    app.config["CERTGATE_MODE"] = "report"
    with caplog.at_level(logging.WARNING, logger="certgate"):
        CertGateFlask(app, gate)
    assert get_gate(app) is gate
    assert str(gate.rollout.mode) == "enforce"
    assert any("CERTGATE_MODE" in r.getMessage() for r in caplog.records)
    typo = Flask(__name__)
    typo.config["CERTGATE_MOD"] = "report"
    with pytest.raises(ConfigError, match="CERTGATE_MOD"):
        CertGateFlask(typo, gate)


# -- no double wrapping -------------------------------------------------------------


def test_init_app_twice_is_an_error_and_wraps_once(pki: PKI) -> None:
    gate = CertGate(pki.registry())
    extension = CertGateFlask()
    app = Flask(__name__)
    state = extension.init_app(app, gate)
    with pytest.raises(ServerSetupError, match="already installed"):
        extension.init_app(app, gate)
    with pytest.raises(ServerSetupError, match="already installed"):
        CertGateFlask(app, CertGate(pki.registry()))  # another extension object, too
    assert app.extensions["certgate"] is state
    assert not isinstance(state.middleware.app, CertGateWSGIMiddleware)
    assert app.wsgi_app is state.middleware
    # certgate's middleware put in by hand counts as installed
    manual = Flask(__name__)
    manual.wsgi_app = CertGateWSGIMiddleware(manual.wsgi_app, gate)  # type: ignore[method-assign,arg-type]
    with pytest.raises(ServerSetupError, match="already installed"):
        CertGateFlask(manual, gate)


# -- decorators: public beside certificate-only routes (access = "optional") -------


def test_public_and_protected_routes_without_a_certificate(pki: PKI) -> None:
    app = build_app(_optional(pki))
    assert _get(app, "/", ACME).json == {"view": "public", "cn": None, "tenant": None}
    expected_type, expected_body = problem_json(Reason.NO_CERTIFICATE)
    for path in ("/whoami", "/bare", *SENSOR_ROUTES, "/admin/panel", "/admin/deep/x", "/require"):
        response = _get(app, path, ACME)
        assert response.status_code == 403, path
        assert response.headers["content-type"] == expected_type, path
        assert response.data == expected_body, path
        assert _reason(response) == "no_certificate", path
    post = _get(app, "/items", ACME, method="POST")  # an async method of a MethodView
    assert post.status_code == 403
    assert _reason(post) == "no_certificate"


def test_protected_routes_with_certificates_and_policies(pki: PKI) -> None:
    app = build_app(_optional(pki))
    sensor = _pem(pki, "acme", "sensor-17")
    for path in ("/", "/whoami", "/bare", *SENSOR_ROUTES):
        response = _get(app, path, ACME, sensor)
        assert response.status_code == 200, (path, response.data)
        assert response.json is not None, path
        assert response.json["cn"] == "sensor-17", path
    assert _get(app, "/items", ACME, sensor, method="POST").json == {
        "view": "items-post", "cn": "sensor-17", "tenant": "acme",
    }  # fmt: skip
    assert _get(app, "/require", ACME, sensor).json == {"view": "require", "cn": "sensor-17"}
    for path in ("/admin/panel", "/admin/deep/x"):  # the blueprint wants tills
        assert _reason(_get(app, path, ACME, sensor)) == "policy_denied", path

    till = _pem(pki, "globex", "till-3")
    assert _get(app, "/admin/panel", GLOBEX, till).json == {
        "view": "panel", "cn": "till-3", "tenant": "globex",
    }  # fmt: skip
    assert _get(app, "/admin/deep/x", GLOBEX, till).status_code == 200
    for path in SENSOR_ROUTES:
        assert _reason(_get(app, path, GLOBEX, till)) == "policy_denied", path


def test_a_bad_certificate_is_refused_even_on_a_public_route(pki: PKI) -> None:
    app = build_app(_optional(pki))
    other_tenant = _pem(pki, "globex", "sensor-17")
    response = _get(app, "/", ACME, other_tenant)
    assert response.status_code == 403
    assert _reason(response) == "untrusted_chain"


def test_policy_denied_is_the_middlewares_refusal_and_the_rule_goes_to_the_log(
    pki: PKI, caplog: pytest.LogCaptureFixture
) -> None:
    """The decorator's policy_denied answer is byte for byte the one the
    middleware gives for a path policy; the failing rule is logged, never sent."""
    app = build_app(_optional(pki, CERTGATE_ROUTES=[Route("/guarded", policy=SENSORS)]))
    impostor = _pem(pki, "acme", "impostor-9")
    with caplog.at_level(logging.WARNING, logger="certgate"):
        by_decorator = _get(app, "/sensor", ACME, impostor)
        by_middleware = _get(app, "/guarded", ACME, impostor)
    assert by_decorator.status_code == by_middleware.status_code == 403
    assert by_decorator.data == by_middleware.data == problem_json(Reason.POLICY_DENIED)[1]
    assert _headers(by_decorator) == _headers(by_middleware)
    assert _headers(by_decorator) == sorted(gate_refusal_headers(app, Reason.POLICY_DENIED))
    assert by_decorator.json == {
        "type": "urn:certgate:reason:policy_denied",
        "title": "The client certificate is not allowed here",
        "status": 403,
        "reason": "policy_denied",
    }
    assert b"impostor" not in by_decorator.data
    assert b"test_cn_in" not in by_decorator.data
    route_logs = [
        r.getMessage()
        for r in caplog.records
        if "policy_denied" in r.getMessage() and "stage=route" in r.getMessage()
    ]
    assert len(route_logs) == 1
    assert "impostor-9" in route_logs[0]
    assert "test_cn_in['sensor-17']" in route_logs[0]


def test_report_only_runs_the_view_and_set_mode_enforces_at_run_time(
    pki: PKI, caplog: pytest.LogCaptureFixture
) -> None:
    app = build_app(_optional(pki, CERTGATE_MODE="report"))
    impostor = _pem(pki, "acme", "impostor-9")
    foreign = _pem(pki, "globex", "sensor-17")
    with caplog.at_level(logging.WARNING, logger="certgate"):
        # no certificate: the view runs without identity
        assert _get(app, "/whoami", ACME).json == {"view": "whoami", "cn": None, "tenant": None}
        # policy fails: the view runs, the (valid) identity is attached
        for path in SENSOR_ROUTES:
            response = _get(app, path, ACME, impostor)
            assert response.status_code == 200, path
            assert response.json is not None, path
            assert response.json["cn"] == "impostor-9", path
        # the middleware's refusal (another tenant's CA) is reported too: no identity
        assert _get(app, "/sensor", ACME, foreign).json == {
            "view": "sensor", "cn": None, "tenant": None,
        }  # fmt: skip
    reported = [r.getMessage() for r in caplog.records if "report-only" in r.getMessage()]
    assert any("reason=policy_denied" in m for m in reported)
    assert any("reason=untrusted_chain" in m for m in reported)
    assert any("reason=no_certificate" in m for m in reported)

    get_gate(app).rollout.set_mode("enforce")
    assert _reason(_get(app, "/sensor", ACME, impostor)) == "policy_denied"
    assert _reason(_get(app, "/whoami", ACME)) == "no_certificate"
    assert _reason(_get(app, "/sensor", ACME, foreign)) == "untrusted_chain"
    assert _get(app, "/sensor", ACME, _pem(pki, "acme", "sensor-17")).status_code == 200


def test_report_only_per_path_prefix(pki: PKI) -> None:
    app = build_app(_optional(pki, CERTGATE_ROUTES=[Route("/admin/*", mode=Mode.REPORT)]))
    sensor = _pem(pki, "acme", "sensor-17")
    # the blueprint's policy (tills only) fails, reported only under /admin/*
    assert _get(app, "/admin/panel", ACME, sensor).json == {
        "view": "panel", "cn": "sensor-17", "tenant": "acme",
    }  # fmt: skip
    assert _get(app, "/admin/deep/x", ACME).json == {"view": "deep", "cn": None, "tenant": None}
    # enforced everywhere else
    assert _reason(_get(app, "/whoami", ACME)) == "no_certificate"
    assert _reason(_get(app, "/sensor", ACME, _pem(pki, "acme", "impostor-9"))) == "policy_denied"


def test_refusal_format_text_is_used_by_the_decorators(pki: PKI) -> None:
    app = build_app(_optional(pki, CERTGATE_REFUSAL_FORMAT="text"))
    gate = get_gate(app)
    expected = gate.refusal(Reason.NO_CERTIFICATE)
    for path in ("/whoami", "/sensor", "/admin/panel", "/require"):
        response = _get(app, path, ACME)
        assert response.status_code == 403
        assert response.headers["content-type"] == "text/plain; charset=utf-8"
        assert response.data == expected.body
        assert response.data.startswith(b"403 Forbidden: no_certificate")
    denied = _get(app, "/sensor", ACME, _pem(pki, "acme", "impostor-9"))
    assert denied.data == gate.refusal(Reason.POLICY_DENIED).body
    # and the middleware answers in the same format
    middleware = _get(app, "/", ACME, _pem(pki, "globex", "x"))
    assert middleware.data == gate.refusal(Reason.UNTRUSTED_CHAIN).body
    assert middleware.headers["content-type"] == "text/plain; charset=utf-8"


# -- failing closed ------------------------------------------------------------------


def test_decorator_without_certgate_installed_refuses(caplog: pytest.LogCaptureFixture) -> None:
    app = Flask(__name__)

    @app.get("/x")
    @require_client_cert(SENSORS)
    def view() -> str:
        return "ran"

    @app.get("/y")
    def need() -> str:
        return require_identity().common_name or ""

    client = app.test_client()
    with caplog.at_level(logging.ERROR, logger="certgate"):
        refused = client.get("/x")
    assert refused.status_code == 403
    assert refused.data == problem_json(Reason.INTERNAL_ERROR)[1]
    assert any("without certgate installed" in r.getMessage() for r in caplog.records)
    assert client.get("/y").data == problem_json(Reason.NO_CERTIFICATE)[1]
    with pytest.raises(ServerSetupError, match="not installed"), app.app_context():
        get_gate()


def test_route_check_without_the_middlewares_decision_refuses(pki: PKI) -> None:
    """A request that did not pass the middleware (here a bare request
    context) has no decision: internal_error, in the gate's format."""
    app = build_app(_optional(pki, CERTGATE_REFUSAL_FORMAT="text"))
    with (
        app.test_request_context("/whoami", headers={"Host": ACME}),
        pytest.raises(HTTPException) as caught,
    ):
        authorize()
    response = caught.value.get_response()
    assert response.status_code == 403
    assert response.headers["certgate-reason"] == "internal_error"
    assert response.get_data() == get_gate(app).refusal(Reason.INTERNAL_ERROR).body


def test_host_rewritten_behind_certgate_withholds_the_identity_from_decorators(
    pki: PKI, caplog: pytest.LogCaptureFixture
) -> None:
    from werkzeug.middleware.proxy_fix import ProxyFix

    app = build_app(_optional(pki))
    state = app.extensions["certgate"]
    state.middleware.app = ProxyFix(state.middleware.app, x_host=1)
    sensor = _pem(pki, "acme", "sensor-17")
    client = app.test_client()
    ok = client.get(
        "/sensor", headers={"Host": ACME}, environ_overrides=client_cert_environ(sensor)
    )
    assert ok.status_code == 200
    with caplog.at_level(logging.ERROR, logger="certgate"):
        moved = client.get(
            "/sensor",
            headers={"Host": ACME, "X-Forwarded-Host": "eu.acme.test"},
            environ_overrides=client_cert_environ(sensor),
        )
    assert moved.status_code == 403
    assert _reason(moved) == "no_certificate"
    assert any("identity is withheld" in r.getMessage() for r in caplog.records)


def test_require_client_cert_takes_only_policies() -> None:
    with pytest.raises(TypeError, match="Policy"):
        require_client_cert("sensor-17")  # type: ignore[call-overload]


# -- test support ----------------------------------------------------------------


def test_client_cert_environ(pki: PKI) -> None:
    issued = pki["acme"].client("sensor-17")  # acme: leaf + issuing intermediate
    environ = client_cert_environ(issued.chain_pem)
    assert sorted(environ) == ["SSL_CLIENT_CERT", "SSL_CLIENT_CERT_CHAIN_0"]
    assert environ["SSL_CLIENT_CERT"].strip() == issued.cert_pem.decode().strip()
    assert client_cert_environ(issued.cert_pem.decode()).keys() == {"SSL_CLIENT_CERT"}
    with pytest.raises(ValueError, match="no PEM"):
        client_cert_environ("not a certificate")
    # a leaf without its intermediate does not verify for acme: a real check
    app = build_app(_optional(pki))
    leaf_only = _get(app, "/whoami", ACME, issued.cert_pem.decode())
    assert _reason(leaf_only) == "untrusted_chain"


def test_an_ssl_client_cert_header_from_the_client_is_not_a_certificate(pki: PKI) -> None:
    """Only the server sets ``SSL_CLIENT_CERT``; a client's header of that
    name arrives as ``HTTP_SSL_CLIENT_CERT`` and is ignored."""
    app = build_app(_optional(pki))
    pem = _pem(pki, "acme", "sensor-17").replace("\n", " ")
    response = app.test_client().get("/whoami", headers={"Host": ACME, "SSL-Client-Cert": pem})
    assert _reason(response) == "no_certificate"


# -- a real server ---------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env: DevEnv = make_dev_environment(tmp_path_factory.mktemp("flask-ext-pki"))
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "tests.flask_ext_app",
        "--env",
        str(env.directory),
        "--port",
        str(port),
    ]
    with serve(cmd, env, port) as running:
        yield running


def _body(response: httpx.Response) -> dict[str, Any]:
    data = response.json()
    assert isinstance(data, dict)
    return data


def test_real_server_mixed_routes_over_tls(tls_server: Server) -> None:
    server = tls_server
    assert _body(server.get(None, ACME, "/")) == {"view": "public", "cn": None, "tenant": None}
    assert _body(server.get("acme-device", ACME, "/"))["cn"] == "sensor-17"
    for path in ("/whoami", *SENSOR_ROUTES, "/admin/panel"):
        refused = server.get(None, ACME, path)
        assert refused.status_code == 403, path
        assert refused.headers["content-type"] == "application/problem+json"
        assert _body(refused)["reason"] == "no_certificate", path
    for path in ("/whoami", *SENSOR_ROUTES):
        ok = server.get("acme-device", ACME, path)
        assert ok.status_code == 200, (path, ok.text)
        assert _body(ok)["cn"] == "sensor-17"
    assert _body(server.get("globex-device", GLOBEX, "/admin/panel"))["cn"] == "till-3"
    denied = server.get("initech-device", INITECH, "/sensor")
    assert denied.status_code == 403
    assert denied.content == problem_json(Reason.POLICY_DENIED)[1]
    assert b"printer-9" not in denied.content
    log = server.log_text()
    assert "policy_denied" in log
    assert "printer-9" in log
    assert "test_cn_in" in log
    # another tenant's certificate is refused by the middleware, public route or not
    assert _body(server.get("acme-device", GLOBEX, "/"))["reason"] == "untrusted_chain"


def test_real_server_report_only_switched_at_run_time(tls_server: Server) -> None:
    server = tls_server
    try:
        assert _body(server.get(None, ACME, "/_rollout/report")) == {"mode": "report"}
        reported = server.get("initech-device", INITECH, "/sensor")
        assert reported.status_code == 200
        assert _body(reported) == {"view": "sensor", "cn": "printer-9", "tenant": "initech"}
        assert _body(server.get(None, ACME, "/whoami"))["cn"] is None
    finally:
        assert _body(server.get(None, ACME, "/_rollout/enforce")) == {"mode": "enforce"}
    assert server.get("initech-device", INITECH, "/sensor").status_code == 403
    assert "would reject (report-only)" in server.log_text()


def test_an_apps_403_handler_does_not_replace_the_refusal(pki: PKI) -> None:
    """The README promises the decorators' refusal is the gate's, whatever
    error handlers the app registers."""
    app = build_app(_optional(pki))
    app.register_error_handler(403, lambda error: ("custom", 403))
    app.register_error_handler(HTTPException, lambda error: ("custom", 500))
    response = _get(app, "/sensor", ACME, _pem(pki, "acme", "impostor-9"))
    assert response.status_code == 403
    assert response.data == problem_json(Reason.POLICY_DENIED)[1]
    assert _get(app, "/require", ACME).data == problem_json(Reason.NO_CERTIFICATE)[1]
