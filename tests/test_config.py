"""The TOML configuration file, ``CertGate.from_toml`` and ``TomlRegistry.reload``."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from certgate import CertGate, ConfigError, Reason, Tenant, TomlRegistry, load_config
from certgate.devpki import CA
from tests.conftest import PKI


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.PEM)


@pytest.fixture
def pki_dir(tmp_path: Path, pki: PKI) -> Path:
    """PEM files of the conftest CAs under ``tmp_path/pki``."""
    folder = tmp_path / "pki"
    folder.mkdir()
    (folder / "acme-root.pem").write_bytes(pem(pki["acme"].roots[0].cert))
    (folder / "acme-issuing.pem").write_bytes(pem(pki["acme"].issuer.cert))
    (folder / "globex-root.pem").write_bytes(pem(pki["globex"].roots[0].cert))
    # one file holding both initech roots
    (folder / "initech-roots.pem").write_bytes(b"".join(pem(r.cert) for r in pki["initech"].roots))
    (folder / "initech-issuing.pem").write_bytes(pem(pki["initech"].issuer.cert))
    return folder


GOOD = """\
[certgate]
trusted_proxies = ["10.0.0.0/8", "192.168.1.1/32"]
header_sources = ["cloudflare"]
transport = false
exempt_paths = ["/healthz", "/public/*"]
cache_size = 123
max_chain_depth = 4
min_rsa_bits = 3072

[[tenants]]
id = "acme"
hosts = ["pay.acme.test", "*.acme.test"]
roots = ["pki/acme-root.pem"]
intermediates = ["pki/acme-issuing.pem"]

[[tenants]]
id = "globex"
hosts = ["API.Globex.Test"]
roots = ["pki/globex-root.pem"]

[[tenants]]
id = "initech"
hosts = ["initech.test"]
roots = ["pki/initech-roots.pem"]
intermediates = ["pki/initech-issuing.pem"]
"""

TENANT = """
[[tenants]]
id = "acme"
hosts = ["pay.acme.test"]
roots = ["pki/acme-root.pem"]
"""


def write(tmp_path: Path, text: str, name: str = "certgate.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_good_file_loads(tmp_path: Path, pki_dir: Path, pki: PKI) -> None:
    config = load_config(write(tmp_path, GOOD))
    registry = config.registry
    assert [t.id for t in registry.tenants()] == ["acme", "globex", "initech"]
    acme = registry.tenant_by_id("acme")
    assert acme is not None
    assert acme.hosts == ("pay.acme.test", "*.acme.test")
    assert acme.roots == (pki["acme"].roots[0].cert,)
    assert acme.intermediates == (pki["acme"].issuer.cert,)
    same_trust = Tenant("acme", (), (pki["acme"].roots[0].cert,), (pki["acme"].issuer.cert,))
    assert acme.trust_id == same_trust.trust_id
    globex = registry.tenant_by_id("globex")
    assert globex is not None
    assert globex.hosts == ("api.globex.test",)
    assert globex.intermediates == ()
    initech = registry.tenant_by_id("initech")
    assert initech is not None
    assert initech.roots == tuple(r.cert for r in pki["initech"].roots)
    assert registry.tenant_for_host("x.acme.test") is acme
    assert config.gate_kwargs == {
        "trusted_proxies": ("10.0.0.0/8", "192.168.1.1/32"),
        "header_sources": ("cloudflare",),
        "transport": False,
        "exempt_paths": ("/healthz", "/public/*"),
        "cache_size": 123,
        "max_chain_depth": 4,
        "min_rsa_bits": 3072,
    }


def test_paths_are_relative_to_the_toml_file(
    tmp_path: Path, pki_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, GOOD)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_config(path)
    assert len(config.registry.tenants()) == 3


def test_from_toml_applies_settings(tmp_path: Path, pki_dir: Path, pki: PKI) -> None:
    gate = CertGate.from_toml(write(tmp_path, GOOD))
    assert gate.trust.transport is False
    assert gate.cache.maxsize == 123
    assert gate.verifier.max_chain_depth == 4
    assert gate.verifier.min_rsa_bits == 3072
    assert [s.name for s in gate.trust.header_sources] == ["cloudflare"]
    assert gate.trust.peer_is_trusted("10.1.2.3")
    assert gate.trust.peer_is_trusted("192.168.1.1")
    assert not gate.trust.peer_is_trusted("192.168.1.2")
    assert gate.rollout.rule("/healthz").access == "exempt"
    assert gate.rollout.rule("/public/x").access == "exempt"
    assert gate.rollout.rule("/private").access == "require"
    # acme's intermediate comes from the file: the leaf alone verifies
    assert gate.check("pay.acme.test", [pki["acme"].client().der]).reason is None
    assert gate.check("pay.acme.test", pki["globex"].client().chain_ders).reason is (
        Reason.UNTRUSTED_CHAIN
    )


def test_from_toml_overrides(tmp_path: Path, pki_dir: Path) -> None:
    gate = CertGate.from_toml(write(tmp_path, GOOD), cache_size=7)
    assert gate.cache.maxsize == 7


def test_defaults_without_certgate_section(tmp_path: Path, pki_dir: Path) -> None:
    gate = CertGate.from_toml(write(tmp_path, TENANT))
    assert gate.trust.transport is True
    assert gate.trust.header_sources == ()
    assert not gate.trust.peer_is_trusted("10.1.2.3")
    assert gate.cache.maxsize == 10_000
    assert gate.verifier.max_chain_depth == 8
    assert gate.verifier.min_rsa_bits == 2048


def _error(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        CertGate.from_toml(path)
    return str(info.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "[certgate]\n[tenant]\nid = 'x'\n" + TENANT,
            r"unknown top-level key\(s\) \['tenant'\]",
            id="unknown-top-level-key",
        ),
        pytest.param(
            '[certgate]\ntrusted_proxy = ["10.0.0.0/8"]\n' + TENANT,
            r"unknown key \[certgate\]\.trusted_proxy .*trusted_proxies",
            id="typo-trusted_proxy",
        ),
        pytest.param(
            "[certgate]\ncache_size = '100'\n" + TENANT,
            r"\[certgate\]\.cache_size has the wrong type",
            id="wrong-type-str-for-int",
        ),
        pytest.param(
            "[certgate]\ncache_size = true\n" + TENANT,
            r"\[certgate\]\.cache_size has the wrong type",
            id="wrong-type-bool-for-int",
        ),
        pytest.param(
            "[certgate]\ntransport = 1\n" + TENANT,
            r"\[certgate\]\.transport has the wrong type",
            id="wrong-type-int-for-bool",
        ),
        pytest.param(
            "[certgate]\nexempt_paths = '/healthz'\n" + TENANT,
            r"\[certgate\]\.exempt_paths has the wrong type",
            id="wrong-type-str-for-list",
        ),
        pytest.param(
            "[certgate]\nexempt_paths = [1, 2]\n" + TENANT,
            r"\[certgate\]\.exempt_paths must be a list of strings",
            id="wrong-type-list-items",
        ),
        pytest.param(
            "certgate = 5\n" + TENANT,
            r"\[certgate\] must be a table",
            id="certgate-not-a-table",
        ),
        pytest.param(
            TENANT + "host = ['pay.acme.test']\n",
            r"tenant #1: unknown key\(s\) \['host'\]",
            id="unknown-tenant-key",
        ),
        pytest.param(
            "[[tenants]]\nid = 'acme'\nhosts = ['pay.acme.test']\n",
            r"tenant 'acme': 'roots' must not be empty",
            id="missing-roots",
        ),
        pytest.param(
            "[[tenants]]\nid = 'acme'\nhosts = ['pay.acme.test']\nroots = []\n",
            r"tenant 'acme': 'roots' must not be empty",
            id="empty-roots",
        ),
        pytest.param(
            "[[tenants]]\nid = 'acme'\nhosts = ['pay.acme.test']\nroots = 'pki/acme-root.pem'\n",
            r"tenant 'acme': 'roots' must be a list of strings",
            id="roots-not-a-list",
        ),
        pytest.param(
            "[[tenants]]\nhosts = ['pay.acme.test']\nroots = ['pki/acme-root.pem']\n",
            r"tenant #1: 'id' must be a non-empty string",
            id="missing-id",
        ),
        pytest.param(
            "[[tenants]]\nid = 'acme'\nroots = ['pki/acme-root.pem']\n",
            r"tenant 'acme': 'hosts' must not be empty",
            id="missing-hosts",
        ),
        pytest.param(
            "[[tenants]]\nid = 'acme'\nhosts = ['pay.acme.test']\nroots = ['pki/nope.pem']\n",
            r"tenant 'acme': cannot read .*nope\.pem",
            id="unreadable-pem",
        ),
        pytest.param(
            "[[tenants]]\nid = 'acme'\nhosts = ['pay.acme.test']\nroots = ['pki/junk.txt']\n",
            r"tenant 'acme': .*junk\.txt holds no valid PEM certificate",
            id="file-without-pem",
        ),
        pytest.param(
            "[[tenants]]\nid = 'acme'\nhosts = ['pay.acme.test']\nroots = ['pki/leaf.pem']\n",
            r"tenant 'acme': root .*not a CA certificate",
            id="non-ca-root",
        ),
        pytest.param(
            "[[tenants]]\nid = 'acme'\nhosts = ['a.*.test']\nroots = ['pki/acme-root.pem']\n",
            r"host pattern 'a\.\*\.test'",
            id="bad-host-pattern",
        ),
        pytest.param(
            TENANT + TENANT.replace('"acme"', '"acme2"'),
            r"host 'pay\.acme\.test' is claimed by tenants 'acme' and 'acme2'",
            id="host-claimed-twice",
        ),
        pytest.param(
            TENANT + TENANT.replace("pay.acme", "other.acme"),
            r"duplicate tenant id 'acme'",
            id="duplicate-id",
        ),
        pytest.param(
            "tenants = 5\n",
            r"'tenants' must be an array of tables",
            id="tenants-not-an-array",
        ),
        pytest.param(
            "[certgate\n" + TENANT,
            r"invalid TOML",
            id="invalid-toml",
        ),
        pytest.param(
            "[certgate]\ncache_size = 1\ncache_size = 2\n" + TENANT,
            r"invalid TOML",
            id="invalid-toml-duplicate-key",
        ),
        pytest.param(
            '[certgate]\nheader_sources = ["cloudflare"]\n' + TENANT,
            r"header sources are configured but trusted_proxies is empty",
            id="header-sources-without-proxies",
        ),
        pytest.param(
            '[certgate]\ntrusted_proxies = ["10.0.0.0/8"]\n' + TENANT,
            r"trusted_proxies is set but no header source is configured",
            id="proxies-without-header-sources",
        ),
        pytest.param(
            '[certgate]\ntrusted_proxies = ["10.0.0.1/8"]\nheader_sources = ["cloudflare"]\n'
            + TENANT,
            r"trusted_proxies: '10\.0\.0\.1/8' is not a CIDR range",
            id="cidr-host-bits-set",
        ),
        pytest.param(
            '[certgate]\ntrusted_proxies = ["10.0.0.0/33"]\nheader_sources = ["cloudflare"]\n'
            + TENANT,
            r"trusted_proxies: '10\.0\.0\.0/33' is not a CIDR range",
            id="cidr-bad-prefix",
        ),
        pytest.param(
            '[certgate]\ntrusted_proxies = ["proxy.internal"]\nheader_sources = ["cloudflare"]\n'
            + TENANT,
            r"trusted_proxies: 'proxy\.internal' is not a CIDR range",
            id="cidr-hostname",
        ),
        pytest.param(
            '[certgate]\ntrusted_proxies = ["10.0.0.0/8"]\nheader_sources = ["cloudflair"]\n'
            + TENANT,
            r"unknown header source 'cloudflair' \(known: .*cloudflare",
            id="unknown-header-source",
        ),
    ],
)
def test_config_errors(tmp_path: Path, pki_dir: Path, pki: PKI, text: str, expected: str) -> None:
    (pki_dir / "junk.txt").write_text("this is not a certificate\n")
    (pki_dir / "leaf.pem").write_bytes(pki["acme"].client().cert_pem)
    message = _error(write(tmp_path, text))
    assert re.search(expected, message), message


def test_missing_config_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=r"cannot read config .*nope\.toml"):
        load_config(missing)


def test_non_ca_root_message_names_the_file_and_subject(
    tmp_path: Path, pki_dir: Path, pki: PKI
) -> None:
    (pki_dir / "leaf.pem").write_bytes(pki["acme"].client("not-a-ca").cert_pem)
    path = write(
        tmp_path,
        "[[tenants]]\nid = 'acme'\nhosts = ['pay.acme.test']\nroots = ['pki/leaf.pem']\n",
    )
    message = _error(path)
    assert str(path) in message
    assert "CN=not-a-ca" in message


def test_ca_without_key_cert_sign_in_file(tmp_path: Path, pki_dir: Path) -> None:
    (pki_dir / "nosign.pem").write_bytes(CA.root("No Sign", key_cert_sign=False).cert_pem)
    path = write(
        tmp_path,
        "[[tenants]]\nid = 'acme'\nhosts = ['pay.acme.test']\nroots = ['pki/nosign.pem']\n",
    )
    assert "keyCertSign" in _error(path)


# -- TomlRegistry.reload -------------------------------------------------------


def test_reload_picks_up_a_changed_file(tmp_path: Path, pki_dir: Path, pki: PKI) -> None:
    path = write(tmp_path, TENANT)
    registry = TomlRegistry(path)
    gate = CertGate(registry)
    globex_client = pki["globex"].client()
    assert [t.id for t in registry.tenants()] == ["acme"]
    assert gate.check("api.globex.test", globex_client.chain_ders).reason is (Reason.UNKNOWN_TENANT)

    path.write_text(
        TENANT + "\n[[tenants]]\nid = 'globex'\nhosts = ['api.globex.test']\n"
        "roots = ['pki/globex-root.pem']\n"
    )
    registry.reload()
    assert [t.id for t in registry.tenants()] == ["acme", "globex"]
    assert gate.check("api.globex.test", globex_client.chain_ders).reason is None

    # acme now trusts globex's root instead of its own
    path.write_text(TENANT.replace("acme-root.pem", "globex-root.pem"))
    registry.reload()
    assert registry.tenant_by_id("globex") is None
    assert gate.check("pay.acme.test", pki["acme"].client().chain_ders).reason is (
        Reason.UNTRUSTED_CHAIN
    )


@pytest.mark.parametrize(
    "broken",
    [
        pytest.param("[[tenants]\n", id="invalid-toml"),
        pytest.param(TENANT.replace("acme-root.pem", "missing.pem"), id="missing-pem"),
        pytest.param(TENANT + TENANT, id="duplicate-id"),
        pytest.param(TENANT + "colour = 'red'\n", id="unknown-key"),
    ],
)
def test_reload_of_a_broken_file_keeps_previous_tenants(
    tmp_path: Path, pki_dir: Path, pki: PKI, broken: str
) -> None:
    path = write(tmp_path, TENANT)
    registry = TomlRegistry(path)
    gate = CertGate(registry)
    before = registry.tenants()
    path.write_text(broken)
    with pytest.raises(ConfigError):
        registry.reload()
    assert registry.tenants() == before
    assert gate.check("pay.acme.test", pki["acme"].client().chain_ders).reason is None


def test_reload_after_file_removed(tmp_path: Path, pki_dir: Path) -> None:
    path = write(tmp_path, TENANT)
    registry = TomlRegistry(path)
    path.unlink()
    with pytest.raises(ConfigError, match="cannot read config"):
        registry.reload()
    assert [t.id for t in registry.tenants()] == ["acme"]
