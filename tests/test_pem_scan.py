"""Issue 5, item 6: PEM scanning is linear in the input and bounded in size.

The old scanner, a regular expression with a lazy body, retried the scan to
the end of the text from every BEGIN marker without an END after it: 216 KB
of repeated BEGIN markers took 8.2-8.6 s. Each shape below is timed against
decoding an ordinary chain in the same run.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable

import pytest
from cryptography import x509

from certgate.errors import Rejected
from certgate.pem import MAX_PEM_TEXT, pem_to_ders
from tests.conftest import PKI

BEGIN = "-----BEGIN CERTIFICATE-----"
END = "-----END CERTIFICATE-----"
SIZE = 216_000


def _best_of(func: Callable[[], object], rounds: int = 3) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        with contextlib.suppress(Rejected, ValueError):
            func()
        best = min(best, time.perf_counter() - start)
    return best


def _fill(unit: str, size: int = SIZE) -> str:
    return unit * (size // len(unit))


SHAPES = {
    "repeated BEGIN": _fill(BEGIN),
    "repeated BEGIN, newlines": _fill(BEGIN + "\n"),
    "repeated END": _fill(END + "\n"),
    "BEGIN then END markers": BEGIN + _fill(END),
    "nested BEGINs, one END": _fill(BEGIN + "QUFB\n") + END,
    "giant whitespace": BEGIN + " \t\n" * (SIZE // 3) + END,
    "dashes": "-" * SIZE,
    "almost-markers": _fill("-----BEGIN CERTIFICATE----\n"),
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_adversarial_pem_is_refused_in_linear_time(pki: PKI, shape: str) -> None:
    text = SHAPES[shape]
    assert len(text) <= MAX_PEM_TEXT  # below the size bound: the scan itself must be fast
    ordinary = pki["acme"].client("pem-scan").chain_pem.decode()
    baseline = _best_of(lambda: pem_to_ders(ordinary * 4), rounds=20)
    with pytest.raises(Rejected) as refused:
        pem_to_ders(text)
    assert refused.value.reason == "malformed_certificate"
    cost = _best_of(lambda: pem_to_ders(text))
    # measured: 40-700 µs against ~50 µs for an ordinary eight-certificate
    # chain; the old scanner took 8.2 s for the first shape
    assert cost < max(100 * baseline, 0.02), (shape, cost, baseline)


def test_pem_text_size_is_bounded() -> None:
    with pytest.raises(Rejected, match="PEM text of"):
        pem_to_ders(" " * (MAX_PEM_TEXT + 1))


def test_block_semantics_are_unchanged(pki: PKI) -> None:
    device = pki["acme"].client("pem-semantics")
    chain = device.chain_pem.decode()
    assert pem_to_ders("junk\n" + chain + "trailer") == device.chain_ders
    # a BEGIN inside a block belongs to the block body, which is not base64
    with pytest.raises(Rejected, match="invalid base64"):
        pem_to_ders(BEGIN + "\n" + chain)
    with pytest.raises(Rejected, match="no PEM CERTIFICATE block"):
        pem_to_ders(chain.replace(END, ""))


def test_tenant_pem_loader_is_linear_too() -> None:
    """Tenant and configuration files load through ``cryptography``'s PEM
    parser; the same shapes cost it time proportional to their length."""
    small = {name: text[: len(text) // 8] for name, text in SHAPES.items()}
    for name, text in SHAPES.items():
        big = _best_of(functools.partial(x509.load_pem_x509_certificates, text.encode()))
        little = _best_of(functools.partial(x509.load_pem_x509_certificates, small[name].encode()))
        # eight times the input: linear ~8x, quadratic ~64x
        assert big < max(24 * little, 0.005), (name, big, little)
