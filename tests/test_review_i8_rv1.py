"""Adversarial review of issue 8 (forwarded-header sources and header trust)."""

from __future__ import annotations

import hashlib
from urllib.parse import quote

from tests.conftest import PKI
from tests.test_sources_servers import ask, gate_for, pem


def test_xfcc_uri_san_injection_forges_the_rightmost_element(pki: PKI) -> None:
    """An attacker's own certificate (one Envoy did not verify, or any CA that
    signs what it is asked) carries the URI SAN ``x,Cert=<victim's PEM>``.
    Envoy (APPEND_FORWARD or SANITIZE_SET, ``cert: true, uri: true``) writes
    ``Hash=..;Cert="<attacker>";URI=x,Cert=<victim>`` - Hash, Cert, Chain
    first, URI and DNS unquoted last - and the rightmost element certgate
    reads is the victim's certificate, which nobody proved possession of."""
    victim = pki["globex"].client("victim")
    attacker = pki["initech"].client("attacker")
    san = f"x,Cert={quote(pem(victim), safe='')}"
    envoy_element = ";".join(
        [
            f"Hash={hashlib.sha256(attacker.der).hexdigest()}",
            f'Cert="{quote(pem(attacker), safe="")}"',
            'Subject="CN=attacker"',
            f"URI={san}",
        ]
    )
    status = ask(gate_for(pki, "envoy"), {"x-forwarded-client-cert": envoy_element})
    assert status == (403, "malformed_header")
