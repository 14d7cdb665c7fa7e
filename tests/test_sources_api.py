"""The header-source API: the README's custom source, TOML inline tables,
hostile input sizes, random garbage (never a 500), the WSGI path."""

from __future__ import annotations

import random
import re
import time
from pathlib import Path
from typing import Any

import pytest

from certgate import CertGate, ConfigError, load_config
from certgate.sources import header_source, registered_names
from certgate.wsgi import CertGateWSGIMiddleware, Environ, StartResponse
from tests.conftest import PKI
from tests.test_sources_servers import ask, b64, gate_for, nginx_escaped

README = Path(__file__).parent.parent / "README.md"


def test_readme_custom_source_example(pki: PKI) -> None:
    text = README.read_text(encoding="utf-8")
    match = re.search(r"<!-- custom-source -->\n```python\n(.*?)```", text, re.S)
    assert match is not None
    code = match.group(1)
    assert len(code.strip().splitlines()) <= 20
    namespace: dict[str, Any] = {"registry": pki.registry()}
    exec(compile(code, "README.md", "exec"), namespace)
    gate: CertGate = namespace["gate"]
    own = pki["globex"].client()
    assert ask(gate, {"x-my-edge-cert": b64(own.der)}) == (200, "globex")
    assert ask(gate, {"x-my-edge-cert": b64(pki["initech"].client().der)}) == (
        403,
        "untrusted_chain",
    )
    assert ask(gate, {"x-my-edge-cert": [b64(own.der)] * 2}) == (403, "malformed_header")
    assert ask(gate, {"x-my-edge-cert": b64(own.der)}, peer="192.0.2.1") == (403, "no_certificate")
    assert "my-edge" in registered_names()
    with pytest.raises(ConfigError, match="already registered"):
        namespace["register"]("nginx", namespace["MyEdgeSource"])


def _toml(tmp_path: Path, pki: PKI, sources: str) -> Path:
    root = tmp_path / "globex-root.pem"
    root.write_bytes(pki["globex"].roots[0].cert_pem)
    path = tmp_path / "certgate.toml"
    path.write_text(
        "[certgate]\n"
        'trusted_proxies = ["10.0.0.0/8"]\n'
        f"header_sources = {sources}\n"
        '[[tenants]]\nid = "globex"\nhosts = ["api.globex.test"]\nroots = ["globex-root.pem"]\n'
    )
    return path


def test_toml_inline_tables(tmp_path: Path, pki: PKI) -> None:
    sources = (
        '["caddy", {preset = "nginx", cert_header = "x-client-cert-2", '
        'verify_header = "x-client-verify-2"}, {preset = "haproxy", verify_status = false}]'
    )
    config = load_config(_toml(tmp_path, pki, sources))
    gate = CertGate(config.registry, **config.gate_kwargs)
    names = gate.trust.header_names
    assert "x-client-cert" in names
    assert "x-client-cert-2" in names
    assert "x-client-verify-2" in names
    assert "x-ssl-client-verify" not in names  # haproxy's status is off
    own = pki["globex"].client()
    headers = {"x-client-cert-2": nginx_escaped(own), "x-client-verify-2": "SUCCESS"}
    assert ask(gate, headers) == (200, "globex")
    headers["x-client-verify-2"] = "FAILED:x"
    assert ask(gate, headers) == (403, "proxy_verify_failed")
    assert ask(gate, {"x-ssl-client-cert": b64(own.der)}) == (200, "globex")


@pytest.mark.parametrize(
    ("sources", "message"),
    [
        ('[{cert_header = "x"}]', "'preset' key"),
        ("[3]", "'preset' key"),
        ('[{preset = "nope"}]', "unknown header source"),
        ('[{preset = "nginx", verfy_status = false}]', "unknown option"),
        ('[{preset = "nginx", verify_status = "no"}]', "true or false"),
        ('[{preset = "nginx", cert_header = "x_y"}]', "not a header name"),
    ],
)
def test_toml_bad_entries(tmp_path: Path, pki: PKI, sources: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(_toml(tmp_path, pki, sources))


_PRESETS = sorted(set(registered_names()) - {"my-edge"})


def _all_headers(preset: str, value: str) -> dict[str, str]:
    return dict.fromkeys(header_source(preset).header_names, value)


@pytest.mark.parametrize("preset", _PRESETS)
def test_hostile_megabyte_inputs_are_fast(pki: PKI, preset: str) -> None:
    """1 MB of the characters each parser cares about, in every header the
    preset reads: refused quickly, never a 500. Compared with a baseline
    request measured in the same run."""
    gate = gate_for(pki, preset)
    own = pki["globex"].client()
    start = time.perf_counter()
    ask(gate, _all_headers(preset, b64(own.der)))
    baseline = time.perf_counter() - start
    patterns = [
        "A" * 1_000_000,
        '"\\' * 500_000,
        ";a=" * 333_333,
        "," * 1_000_000,
        "-----BEGIN CERTIFICATE-----" * 37_000,
        "%" * 1_000_000,
        ":" + "A" * 999_998 + ":",
        ";".join(["DNS=a"] * 100_000),
        # just under the header bound: the parsers themselves must be linear
        ('a="' + '\\"' * 100_000 + '"' + ";b=c" * 30_000)[:500_000],
        ("By=a," * 100_000)[:500_000],
        ":" + "A" * 499_996 + ":",
    ]
    for pattern in patterns:
        start = time.perf_counter()
        status, reason = ask(gate, _all_headers(preset, pattern))
        elapsed = time.perf_counter() - start
        assert status in (400, 403), (preset, pattern[:20], reason)
        assert elapsed < max(1.0, 50 * baseline), (preset, pattern[:20], elapsed)


@pytest.mark.parametrize("preset", _PRESETS)
def test_random_garbage_never_500(pki: PKI, preset: str) -> None:
    rng = random.Random(f"certgate-{preset}")
    gate = gate_for(pki, preset)
    names = header_source(preset).header_names
    alphabet = "".join(chr(c) for c in range(32, 127)) + "\t\xff\x80"
    own = pki["globex"].client()
    seeds = [b64(own.der), nginx_escaped(own), f":{b64(own.der)}:", own.cert_pem.decode()]
    for _ in range(150):
        headers: dict[str, str] = {}
        for name in names:
            if rng.random() < 0.3:
                continue
            if rng.random() < 0.5:
                value = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 80)))
            else:  # a valid value with a few bytes flipped
                chars = list(rng.choice(seeds).replace("\n", " "))
                for _ in range(rng.randint(1, 4)):
                    chars[rng.randrange(len(chars))] = rng.choice(alphabet)
                value = "".join(chars)
            headers[name] = value
        status, reason = ask(gate, headers)
        assert status in (200, 400, 403), (preset, headers, reason)


def test_wsgi_middleware_reads_the_preset_headers(pki: PKI) -> None:
    """The WSGI path: a trusted peer's nginx headers, and the status header
    checked (gunicorn-less environ: REMOTE_ADDR trusted via trust_reported_peer)."""
    gate = CertGate(
        pki.registry(),
        trusted_proxies=["10.0.0.0/8"],
        header_sources=["nginx"],
        trust_reported_peer=True,
    )
    seen: list[str] = []

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        seen.append(environ["certgate.identity"].tenant_id)
        start_response("200 OK", [])
        return [b"ok"]

    middleware = CertGateWSGIMiddleware(app, gate)
    own = pki["globex"].client()

    def call(verify: str) -> str:
        status: list[str] = []
        environ = {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": "/",
            "HTTP_HOST": "api.globex.test",
            "REMOTE_ADDR": "10.0.0.1",
            "HTTP_X_SSL_CLIENT_CERT": nginx_escaped(own),
            "HTTP_X_SSL_CLIENT_VERIFY": verify,
            "wsgi.url_scheme": "http",
        }

        def start_response(line: str, headers: list[tuple[str, str]], exc: Any = None) -> Any:
            status.append(line)
            return lambda data: None

        middleware(environ, start_response)
        return status[0]

    assert call("SUCCESS").startswith("200")
    assert call("FAILED:x").startswith("403")
    assert seen == ["globex"]
