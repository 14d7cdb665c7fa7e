"""Hostile text and hostile files: certificate subjects with terminal escape
sequences and forged lines, hostile tenant ids, deeply nested or endless
configuration files, and settings that switch certgate off."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import cast

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from certgate import CertGate, ConfigError, InMemoryRegistry, Tenant, load_config
from certgate.cli import main
from certgate.devpki import CA, IssuedCert
from tests.conftest import PKI

# A subject crafted to attack whoever reads `certgate check` output: clear
# the screen and recolour it (ESC [), end the line and forge a "tenant:"
# field (LF, CR, NEL U+0085, U+2028), and reverse the text that follows
# (U+202E). Certificate fields are UTF8String: any of these is encodable.
HOSTILE_CN = "dev\x1b[2J\x1b[31mred\u2028tenant: evil\u202elive"
HOSTILE_O = "Acme\n tenant: evil\r\x85tenant: evil2\u2066"
HOSTILE_DNS = "x\x1b]0;pwned\x07.acme.test"
HOSTILE_URI = "spiffe://acme.test/\x1b[1mdevice\nfingerprint_sha256: 00"

TEXT_KEYS = {
    "decision", "host", "tenant", "reason", "detail", "fingerprint_sha256", "source",
    "subject", "issuer", "subject_legacy", "issuer_legacy", "common_name", "serial",
    "fingerprint_sha1", "not_before", "not_after", "sans", "spiffe_id", "chain",
}  # fmt: skip


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.PEM)


def raw_controls(text: str) -> list[str]:
    """Characters in ``text`` that a terminal or log reader must never see raw
    (newlines between output lines excepted)."""
    return [char for char in text if not char.isprintable() and char != "\n"]


@pytest.fixture(scope="module")
def hostile_ca() -> CA:
    return CA.root("Hostile Test Root", organization="Acme")


@pytest.fixture(scope="module")
def hostile_leaf(hostile_ca: CA) -> IssuedCert:
    return hostile_ca.issue(
        HOSTILE_CN, organization=HOSTILE_O, dns=[HOSTILE_DNS], uri=[HOSTILE_URI]
    )


@pytest.fixture
def cli_config(tmp_path: Path, hostile_ca: CA, pki: PKI) -> Path:
    (tmp_path / "root.pem").write_bytes(pem(hostile_ca.cert))
    (tmp_path / "globex.pem").write_bytes(pem(pki["globex"].roots[0].cert))
    path = tmp_path / "certgate.toml"
    path.write_text(
        textwrap.dedent("""\
        [[tenants]]
        id = "acme"
        hosts = ["pay.acme.test"]
        roots = ["root.pem"]

        [[tenants]]
        id = "globex"
        hosts = ["api.globex.test"]
        roots = ["globex.pem"]
        """)
    )
    return path


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


# -- certgate check: text output ------------------------------------------


@pytest.mark.parametrize(
    "case",
    [
        ("pay.acme.test", 0, "acme"),
        ("api.globex.test", 1, "globex"),  # untrusted_chain: the verifier's detail
        ("nowhere\x1b[2J.test\ntenant: evil", 1, None),  # a hostile --host is echoed
    ],
    ids=["allowed", "rejected", "hostile-host"],
)
def test_check_text_output_escapes_a_hostile_certificate(
    tmp_path: Path,
    cli_config: Path,
    hostile_leaf: IssuedCert,
    capsys: pytest.CaptureFixture[str],
    case: tuple[str, int, str | None],
) -> None:
    host, code, tenant = case
    cert = tmp_path / "leaf.pem"
    cert.write_bytes(hostile_leaf.cert_pem)
    exit_code, out, err = run_cli(
        capsys, "check", str(cert), "--host", host, "--config", str(cli_config)
    )
    assert exit_code == code, err
    assert raw_controls(out) == [], out
    # splitlines() also breaks at CR, NEL, U+2028...: what a reader sees as lines
    lines = out.splitlines()
    assert lines == out.split("\n")[:-1]
    keys = [line.split(":", 1)[0] for line in lines]
    assert set(keys) <= TEXT_KEYS, lines
    assert keys.count("host") == 1
    assert keys.count("fingerprint_sha256") == 1
    assert [line.split()[-1] for line in lines if line.startswith("tenant:")] == (
        [tenant] if tenant else []
    )
    if tenant == "acme":
        # the hostile text is there, visibly escaped, on its own field's line
        (cn_line,) = [line for line in lines if line.startswith("common_name:")]
        assert cn_line.endswith("dev\\x1b[2J\\x1b[31mred\\u2028tenant: evil\\u202elive")
        (subject_line,) = [line for line in lines if line.startswith("subject:")]
        assert "\\0A tenant: evil\\0D\\C2\\85tenant: evil2" in subject_line
        (sans_line,) = [line for line in lines if line.startswith("sans:")]
        assert "x\\x1b]0;pwned\\x07.acme.test" in sans_line


def test_check_json_output_is_ascii_and_round_trips(
    tmp_path: Path,
    cli_config: Path,
    hostile_leaf: IssuedCert,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cert = tmp_path / "leaf.pem"
    cert.write_bytes(hostile_leaf.cert_pem)
    code, out, _ = run_cli(
        capsys, "check", str(cert), "--host", "pay.acme.test", "--config", str(cli_config), "--json"
    )
    assert code == 0
    assert out.isascii()
    assert raw_controls(out) == []
    report = json.loads(out)
    assert report["tenant"] == "acme"
    assert report["identity"]["common_name"] == HOSTILE_CN
    assert report["identity"]["sans"]["dns"] == [HOSTILE_DNS]


def test_identity_dn_strings_are_escaped_but_still_rfc4514(
    hostile_ca: CA, hostile_leaf: IssuedCert
) -> None:
    gate = CertGate(InMemoryRegistry([Tenant("acme", ("pay.acme.test",), (hostile_ca.cert,))]))
    decision = gate.check("pay.acme.test", [hostile_leaf.der])
    identity = decision.identity
    assert identity is not None
    for text in (identity.subject, identity.subject_legacy, *identity.as_dict()["chain"]):
        assert text.isprintable(), text
    assert x509.Name.from_rfc4514_string(identity.subject) == hostile_leaf.cert.subject
    assert identity.subject_legacy == (
        "/O=Acme\\x0a tenant: evil\\x0d\\xc2\\x85tenant: evil2\\xe2\\x81\\xa6"
        "/CN=dev\\x1b[2J\\x1b[31mred\\xe2\\x80\\xa8tenant: evil\\xe2\\x80\\xaelive"
    )
    assert identity.common_name == HOSTILE_CN  # the value itself is data, unchanged


# -- certgate: errors echoed -------------------------------------------------


def test_config_error_echoing_a_hostile_file_name_is_escaped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "certgate.toml"
    config.write_text(
        '[[tenants]]\nid = "acme"\nhosts = ["pay.acme.test"]\n'
        'roots = ["no\\u001b[2J\\nsuch\\u2028file.pem"]\n'
    )
    code, out, err = run_cli(capsys, "bundle", "--config", str(config))
    assert code == 2
    assert out == ""
    assert "configuration error" in err
    assert raw_controls(err) == [], err
    assert err.count("\n") == 1
    assert "no\\x1b[2J\\x0asuch\\u2028file.pem" in err


def test_config_error_echoing_a_hostile_key_is_escaped(tmp_path: Path) -> None:
    config = tmp_path / "certgate.toml"
    config.write_text('[certgate]\n"cache_size\\u001b[8m\\n" = 1\n')
    with pytest.raises(ConfigError) as info:
        load_config(config)
    message = str(info.value)
    assert "unknown key [certgate].cache_size\\x1b[8m\\x0a" in message
    assert raw_controls(message) == []


def test_check_errors_are_escaped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(
        capsys, "check", str(tmp_path / "a\x1b[2Jb.pem"), "--host", "x.test", "--config",
        str(tmp_path / "c\x1b[2Jd.toml"),
    )  # fmt: skip
    assert code == 2
    assert raw_controls(err) == [], err


# -- tenant ids ---------------------------------------------------------------


@pytest.mark.parametrize(
    "tenant_id",
    [
        "acme", "42", "org:123", "user@example.com", "eu.acme_corp-1", "A" * 128,
        "123e4567-e89b-12d3-a456-426614174000",
    ],
)  # fmt: skip
def test_tenant_id_grammar_accepts(pki: PKI, tenant_id: str) -> None:
    assert Tenant(tenant_id, ("x.test",), (pki["acme"].roots[0].cert,)).id == tenant_id


@pytest.mark.parametrize(
    "tenant_id",
    [
        "acme\ntenant: evil", "acme\n", "\x1b[31macme", "acme\u2028", "acme\u202e",
        "", " acme", "acme corp", "-acme", ".acme", "A" * 129, "a/b",
        "\uff41\uff43\uff4d\uff45", "acm\u00e9",  # fullwidth look-alike, non-ASCII
    ],
)  # fmt: skip
def test_tenant_id_grammar_refuses(pki: PKI, tenant_id: str) -> None:
    with pytest.raises(ConfigError, match="a tenant id is 1 to 128 characters") as info:
        Tenant(tenant_id, ("x.test",), (pki["acme"].roots[0].cert,))
    assert raw_controls(str(info.value)) == []


def test_tenant_id_with_a_newline_in_toml_is_a_config_error(tmp_path: Path, pki: PKI) -> None:
    (tmp_path / "root.pem").write_bytes(pem(pki["acme"].roots[0].cert))
    config = tmp_path / "certgate.toml"
    config.write_text(
        '[[tenants]]\nid = "acme\\ntenant: evil"\nhosts = ["pay.acme.test"]\nroots = ["root.pem"]\n'
    )
    with pytest.raises(ConfigError, match=r"tenant #1: invalid tenant id 'acme\\ntenant: evil'"):
        load_config(config)


# -- deeply nested TOML -------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["[" * 10_000 + "]" * 10_000, "{a = " * 10_000 + "1" + "}" * 10_000],
    ids=["arrays", "inline-tables"],
)
def test_deeply_nested_toml_is_a_config_error(tmp_path: Path, value: str) -> None:
    config = tmp_path / "certgate.toml"
    config.write_text(f"a = {value}\n")
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_config(config)


def test_non_utf8_toml_is_a_config_error(tmp_path: Path) -> None:
    config = tmp_path / "certgate.toml"
    config.write_bytes(b"[certgate]\n# \xff\xfe\n")
    with pytest.raises(ConfigError, match="invalid TOML: not UTF-8"):
        load_config(config)


# -- files that are not small regular files ----------------------------------

_LOAD = "import sys; from certgate import CertGate; CertGate.from_toml(sys.argv[1])"


def _load_in_subprocess(config: Path, *, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Load ``config`` in a child process with a time and memory bound (a
    regression would read /dev/zero forever or block on a FIFO)."""
    limit = "import resource; resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30)); "
    return subprocess.run(
        [sys.executable, "-c", limit + _LOAD, str(config)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _tenant_with_root(tmp_path: Path, root: str) -> Path:
    config = tmp_path / "certgate.toml"
    config.write_text(f'[[tenants]]\nid = "acme"\nhosts = ["pay.acme.test"]\nroots = ["{root}"]\n')
    return config


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="no /dev/zero")
def test_dev_zero_as_root_file_is_refused_at_once(tmp_path: Path) -> None:
    result = _load_in_subprocess(_tenant_with_root(tmp_path, "/dev/zero"))
    assert result.returncode == 1
    assert "ConfigError" in result.stderr
    assert "PEM file /dev/zero: not a regular file" in result.stderr


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="no /dev/zero")
def test_dev_zero_as_config_file_is_refused_at_once() -> None:
    result = _load_in_subprocess(Path("/dev/zero"))
    assert result.returncode == 1
    assert "config /dev/zero: not a regular file" in result.stderr


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs")
@pytest.mark.parametrize("which", ["root", "config"])
def test_fifo_is_refused_without_blocking(tmp_path: Path, which: str) -> None:
    fifo = tmp_path / "fifo.pem"
    os.mkfifo(fifo)
    config = _tenant_with_root(tmp_path, "fifo.pem") if which == "root" else fifo
    result = _load_in_subprocess(config)
    assert result.returncode == 1
    assert re.search(r"fifo\.pem: not a regular file", result.stderr), result.stderr


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="no /dev/zero")
def test_cli_check_of_dev_zero_is_refused_at_once(cli_config: Path) -> None:
    script = (
        "import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30)); "
        "from certgate.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, "check", "/dev/zero", "--host", "pay.acme.test",
         "--config", str(cli_config)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "certificate file /dev/zero: not a regular file" in result.stderr


def test_directory_as_root_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "certs").mkdir()
    with pytest.raises(ConfigError, match=r"tenant 'acme': PEM file .*certs: not a regular file"):
        load_config(_tenant_with_root(tmp_path, "certs"))


def test_symlink_loop_as_root_file_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "a.pem").symlink_to(tmp_path / "b.pem")
    (tmp_path / "b.pem").symlink_to(tmp_path / "a.pem")
    with pytest.raises(ConfigError, match=r"tenant 'acme': cannot read PEM file .*a\.pem"):
        load_config(_tenant_with_root(tmp_path, "a.pem"))


def test_nul_in_a_file_name_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read PEM file .*a\\x00b\.pem"):
        load_config(_tenant_with_root(tmp_path, "a\\u0000b.pem"))


def test_pem_file_over_one_mib_is_refused(tmp_path: Path, pki: PKI) -> None:
    root = pem(pki["acme"].roots[0].cert)
    padding = b"# padding\n" * ((1024 * 1024 - len(root)) // 10 + 1)  # text around PEM is legal
    (tmp_path / "root.pem").write_bytes(padding + root)
    assert (tmp_path / "root.pem").stat().st_size > 1024 * 1024
    with pytest.raises(ConfigError, match=r"PEM file .*root\.pem: \d+ bytes, more than 1048576"):
        load_config(_tenant_with_root(tmp_path, "root.pem"))
    (tmp_path / "root.pem").write_bytes(padding[: 1024 * 1024 - len(root) - 10] + root)
    assert load_config(_tenant_with_root(tmp_path, "root.pem")).registry.tenant_by_id("acme")


def test_config_file_over_16_mib_is_refused(tmp_path: Path, pki: PKI) -> None:
    (tmp_path / "root.pem").write_bytes(pem(pki["acme"].roots[0].cert))
    config = _tenant_with_root(tmp_path, "root.pem")
    with config.open("a") as handle:
        handle.write("# padding padding padding padding padding padding padding\n" * 300_000)
    assert config.stat().st_size > 16 * 1024 * 1024
    with pytest.raises(
        ConfigError, match=r"config .*certgate\.toml: \d+ bytes, more than 16777216"
    ):
        load_config(config)


# -- settings that switch certgate off --------------------------------------


def test_exempting_every_path_is_refused(pki: PKI, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"'/\*' exempts every path, which turns certgate off"):
        CertGate(pki.registry(), exempt_paths=["/healthz", "/*"])
    (tmp_path / "root.pem").write_bytes(pem(pki["acme"].roots[0].cert))
    config = tmp_path / "certgate.toml"
    config.write_text(
        '[certgate]\nexempt_paths = ["/*"]\n' + _tenant_with_root(tmp_path, "root.pem").read_text()
    )
    with pytest.raises(ConfigError, match="exempts every path"):
        CertGate.from_toml(config)
    # narrower prefixes and the root page alone are fine
    assert not CertGate(pki.registry(), exempt_paths=["/", "/public/*"]).rollout.trivial


@pytest.mark.parametrize(
    ("cidrs", "family"),
    [
        (["0.0.0.0/0"], "IPv4"),
        (["10.0.0.0/8", "::/0"], "IPv6"),
        (["::ffff:0:0/96"], "IPv4"),  # every IPv4 address, IPv4-mapped
        (["0.0.0.0/1", "128.0.0.0/1"], "IPv4"),  # together: everyone
        (["0.0.0.0/0.0.0.0"], "IPv4"),  # netmask notation
    ],
)
def test_trusting_every_peer_is_refused(
    pki: PKI, tmp_path: Path, cidrs: list[str], family: str
) -> None:
    message = rf"the ranges trust every {family} address, so any client could forge"
    with pytest.raises(ConfigError, match=message):
        CertGate(pki.registry(), trusted_proxies=cidrs, header_sources=["cloudflare"])
    (tmp_path / "root.pem").write_bytes(pem(pki["acme"].roots[0].cert))
    config = tmp_path / "certgate.toml"
    config.write_text(
        f'[certgate]\ntrusted_proxies = {json.dumps(cidrs)}\nheader_sources = ["cloudflare"]\n'
        + _tenant_with_root(tmp_path, "root.pem").read_text()
    )
    with pytest.raises(ConfigError, match=message):
        CertGate.from_toml(config)


def test_ipv4_mapped_proxy_range_trusts_its_ipv4_peers(pki: PKI) -> None:
    gate = CertGate(
        pki.registry(), trusted_proxies=["::ffff:10.1.0.0/112"], header_sources=["cloudflare"]
    )
    assert gate.trust.peer_is_trusted("10.1.2.3")
    assert gate.trust.peer_is_trusted("::ffff:10.1.2.3")
    assert not gate.trust.peer_is_trusted("10.2.0.1")


def test_a_hostile_reported_peer_cannot_forge_log_lines(
    pki: PKI, caplog: pytest.LogCaptureFixture
) -> None:
    """With ``trust_reported_peer`` the peer comes from ``REMOTE_ADDR``, which a
    rewriter may have filled from ``X-Forwarded-For``: it is logged escaped."""
    from certgate.wsgi import CertGateWSGIMiddleware, StartResponse

    gate = CertGate(
        pki.registry(),
        trusted_proxies=["10.0.0.0/8"],
        header_sources=["cloudflare"],
        trust_reported_peer=True,
    )
    forged = "203.0.113.9\x1b[2J\ncertgate: allowed tenant=acme"

    def app(environ: object, start_response: object) -> list[bytes]:
        raise AssertionError("a refused request reached the app")

    middleware = CertGateWSGIMiddleware(app, gate)
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/x",
        "HTTP_HOST": "pay.acme.test",
        "REMOTE_ADDR": forged,
        "HTTP_CF_CLIENT_CERT_DER_BASE64": "forged",
    }
    statuses: list[str] = []

    def start_response(status: str, headers: object, exc_info: object = None) -> object:
        statuses.append(status)
        return lambda data: None

    with caplog.at_level("INFO", logger="certgate"):
        middleware(environ, cast("StartResponse", start_response))
    assert statuses == ["403 Forbidden"]
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 2, messages  # the stripped header, the refusal
    for message in messages:
        assert "\x1b" not in message
        assert "\n" not in message
        assert "\\x1b[2J\\ncertgate: allowed" in message
