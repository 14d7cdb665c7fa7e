"""Review r3 (hostile files, settings and text): findings reproduced through
the public interface - the ``certgate`` command and ``load_config``."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from examples.devenv import DevEnv, make_dev_environment

from certgate import CertGate, ConfigError, load_config
from certgate.asgi import CertGateMiddleware
from certgate.cli import main
from certgate.devpki import CA
from tests.test_asgi import RecordingApp, http_scope, run_http


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> DevEnv:
    return make_dev_environment(tmp_path_factory.mktemp("r3-pki"))


def check(capsys: pytest.CaptureFixture[str], env: DevEnv, *extra: str) -> tuple[int, str, str]:
    code = main(
        [
            "check",
            str(env.path("acme-device-chain.pem")),
            "--host",
            "pay.acme.test",
            "--config",
            str(env.config),
            *extra,
        ]
    )
    out, err = capsys.readouterr()
    return code, out, err


# -- --at outside the range of datetime: bad usage, not a verdict -----------


@pytest.mark.parametrize("at", ["9999-12-31T23:59:59-12:00", "0001-01-01T00:00:00+01:00"])
def test_at_out_of_range_is_bad_usage_not_a_certificate_verdict(
    capsys: pytest.CaptureFixture[str], env: DevEnv, at: str
) -> None:
    # Before: exit 1 with "reason: malformed_certificate" - the operator's
    # typo reported as a defect of the device's certificate.
    code, out, err = check(capsys, env, "--at", at)
    assert (code, out) == (2, ""), out
    assert "--at" in err
    assert "malformed_certificate" not in err


def test_at_extremes_inside_the_range_still_work(
    capsys: pytest.CaptureFixture[str], env: DevEnv
) -> None:
    code, out, _ = check(capsys, env, "--at", "9999-12-31T23:59:59Z")
    assert code == 1
    assert "reason:              expired" in out


# -- text output on a terminal that is not UTF-8 -----------------------------


@pytest.mark.parametrize("encoding", ["ascii", "latin-1"])
def test_text_output_survives_a_stdout_that_cannot_encode_the_subject(
    tmp_path: Path, encoding: str
) -> None:
    # A device's CN in CJK script (perfectly printable) crashed `certgate
    # check` with a UnicodeEncodeError traceback (exit 1, i.e. "rejected")
    # on a stdout that is not UTF-8 (LANG=...ISO-8859-1, PYTHONIOENCODING).
    ca = CA.root("Tokyo Root", organization="Acme")
    leaf = ca.issue("センサー-17", organization="株式会社")
    (tmp_path / "root.pem").write_bytes(ca.cert.public_bytes(Encoding.PEM))
    (tmp_path / "leaf.pem").write_bytes(leaf.cert_pem)
    config = tmp_path / "certgate.toml"
    config.write_text('[[tenants]]\nid = "acme"\nhosts = ["pay.acme.test"]\nroots = ["root.pem"]\n')
    result = subprocess.run(
        [sys.executable, "-m", "certgate", "check", str(tmp_path / "leaf.pem"),
         "--host", "pay.acme.test", "--config", str(config)],
        capture_output=True,
        env={**os.environ, "PYTHONIOENCODING": encoding},
        timeout=120,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    assert b"Traceback" not in result.stderr
    out = result.stdout.decode(encoding)
    assert "decision:            allowed" in out
    (cn_line,) = [line for line in out.splitlines() if line.startswith("common_name:")]
    assert cn_line.split()[-1] == "\\u30bb\\u30f3\\u30b5\\u30fc-17"


# -- TOML whose parse time is quadratic in its size ---------------------------


def _load_seconds(path: Path) -> float:
    start = time.perf_counter()
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    elapsed = time.perf_counter() - start
    assert "dotted" in str(caught.value) or "unknown" in str(caught.value), caught.value
    return elapsed


@pytest.mark.parametrize("shape", ["key", "table", "quoted-key"])
def test_a_long_dotted_key_is_refused_without_parsing_it(tmp_path: Path, shape: str) -> None:
    # tomllib's parse time grows with the square of the number of parts of
    # a dotted key or table name: 48 KB of "a.a.a...=1" took ~6 s, 128 KB
    # ~70 s, and the 16 MiB size limit allows hours of start-up.
    parts = 24_000
    text = {
        "key": ".".join(["a"] * parts) + " = 1\n",
        "table": "[" + ".".join(["a"] * parts * 3) + "]\n",  # ~3 s before
        "quoted-key": ".".join(['"a"'] * parts) + " = 1\n",
    }[shape]
    hostile = tmp_path / "hostile.toml"
    hostile.write_text(text)
    # the same number of bytes of ordinary, flat TOML (refused as unknown keys)
    baseline = tmp_path / "baseline.toml"
    baseline.write_text("".join(f"k{i} = 1\n" for i in range(len(text) // 8)))
    ordinary = min(_load_seconds(baseline) for _ in range(3))
    elapsed = _load_seconds(hostile)
    assert elapsed < max(0.5, 10 * ordinary), (elapsed, ordinary)


def test_a_refused_dotted_key_names_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[certgate]\n" + ".".join(["x"] * 9) + " = 1\n")
    with pytest.raises(ConfigError, match=r"dotted key or table name of more than 8 parts"):
        load_config(path)
    path.write_text("[certgate]\n" + ".".join(["x"] * 8) + " = 1\n")
    with pytest.raises(ConfigError, match=r"unknown key \[certgate\]\.x"):
        load_config(path)


@pytest.mark.parametrize("where", ["top", "tenant"])
def test_unknown_keys_by_the_thousand_give_a_one_line_message(tmp_path: Path, where: str) -> None:
    # The message listed every unknown key: 200,000 of them in a 16 MiB file
    # made a 2 MB exception message (and log record, and terminal screenful).
    keys = "".join(f"k{i:05d} = 1\n" for i in range(20_000))
    path = tmp_path / "c.toml"
    path.write_text(keys if where == "top" else '[[tenants]]\nid = "acme"\n' + keys)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert len(message) < len(str(path)) + 200, message[:300]
    assert "'k00000', 'k00001', 'k00002', 'k00003', 'k00004', ... (19995 more)" in message


def test_dots_inside_strings_and_values_do_not_count(tmp_path: Path, env: DevEnv) -> None:
    # A host of 100 labels, file names and comments full of dots, floats:
    # none of them is a dotted key.
    long_host = ".".join(["a"] * 100) + ".acme.test"
    root = env.path("acme-root.pem")
    path = tmp_path / "c.toml"
    path.write_text(
        "# a.b.c.d.e.f.g.h.i.j.k.l.m.n.o.p.q.r.s.t.u.v.w.x.y.z.a.b.c.d.e.f.g.h.i\n"
        "[certgate]\n"
        "registry_timeout = 2.5  # " + ".".join(str(i) for i in range(40)) + "\n"
        "certgate.cache_size = 5\n"
        '[[tenants]]\nid = "acme"\n'
        f'hosts = ["{long_host}", \'{"b." * 60}acme.test\']\n'
        f'roots = ["""{root}"""]\n'
        f"intermediates = ['''{env.path('acme-issuing.pem')}''']\n"
    )  # fmt: skip
    with pytest.raises(ConfigError, match="unknown key"):  # [certgate].certgate
        load_config(path)
    path.write_text(path.read_text().replace("certgate.cache_size = 5\n", ""))
    config = load_config(path)
    assert config.gate_kwargs["registry_timeout"] == 2.5
    assert config.registry.tenant_for_host(long_host) is not None


# -- README: what exempt paths are compared with ------------------------------


@pytest.mark.parametrize(
    ("exempt", "path", "root_path", "status"),
    [
        ("/api/healthz", "/api/healthz", "/api", 200),  # uvicorn --root-path /api
        ("/healthz", "/api/healthz", "/api", 403),
        ("/public/*", "/public/a", "", 200),
        ("/public/*", "/public/../admin", "", 403),
        ("/public/*", "/public//x", "", 403),
        ("/public/*", "/public/./x", "", 403),
    ],
)
def test_exempt_paths_match_the_path_the_server_reports(
    make_gate: Callable[..., CertGate], exempt: str, path: str, root_path: str, status: int
) -> None:
    app = RecordingApp()
    scope = http_scope(host="pay.acme.test", path=path)
    scope["root_path"] = root_path
    result = run_http(CertGateMiddleware(app, gate=make_gate(exempt_paths=[exempt])), scope)
    assert result.status == status
    if status == 403:
        assert result.reason == "no_certificate"
        assert app.scopes == []
