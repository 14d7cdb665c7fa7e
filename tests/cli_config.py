"""TOML configurations of real CA (and CRL) files for the command-line
tests (tests/test_cli_expiry.py, test_crl_expiry.py), and the CLI run in
this process."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from certgate.cli import main
from certgate.devpki import CA


@dataclass(frozen=True)
class ConfigTenant:
    """One ``[[tenants]]`` entry: id ``name``, host ``<name>.test``, root
    file ``<name>.pem``; an issuing CA in ``<name>-issuing.pem``, a CRL in
    ``<name>.crl`` (PEM), and further TOML lines of the entry."""

    name: str
    root: CA
    issuing: CA | None = None
    crl: x509.CertificateRevocationList | None = None
    extra: str = ""


def write_config(directory: Path, tenants: Sequence[ConfigTenant]) -> Path:
    """The tenants' files and ``certgate.toml`` in ``directory``; its path."""
    text = ""
    for t in tenants:
        (directory / f"{t.name}.pem").write_bytes(t.root.cert_pem)
        text += (
            f'[[tenants]]\nid = "{t.name}"\nhosts = ["{t.name}.test"]\nroots = ["{t.name}.pem"]\n'
        )
        if t.issuing is not None:
            (directory / f"{t.name}-issuing.pem").write_bytes(t.issuing.cert_pem)
            text += f'intermediates = ["{t.name}-issuing.pem"]\n'
        if t.crl is not None:
            (directory / f"{t.name}.crl").write_bytes(t.crl.public_bytes(Encoding.PEM))
            text += f'crls = ["{t.name}.crl"]\n'
        text += t.extra + "\n"
    path = directory / "certgate.toml"
    path.write_text(text)
    return path


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``certgate ARGS`` in this process: the exit code, stdout and stderr."""
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err
