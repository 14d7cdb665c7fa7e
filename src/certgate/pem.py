"""Decoding of certificate encodings met in TLS stacks and forwarded headers.

Everything here is strict about structure and lenient about whitespace: PEM
folded with tabs or spaces (nginx ``$ssl_client_cert``), or with its newlines
lost, still decodes; anything that is not valid base64 or not a single DER
``SEQUENCE`` raises :class:`~certgate.errors.Rejected` with
``malformed_certificate``. Nothing here checks trust: that is
:mod:`certgate.verifier`'s job.
"""

from __future__ import annotations

import binascii

from cryptography import x509

from .errors import Rejected
from .reasons import Reason

MAX_CERTIFICATE_BYTES = 16 * 1024
"""Largest DER certificate accepted (real client certificates are 0.5-2 KiB)."""

MAX_PRESENTED_CERTIFICATES = 8
"""Most certificates accepted from one request (leaf plus intermediates)."""

MAX_PEM_TEXT = MAX_PRESENTED_CERTIFICATES * 4 * MAX_CERTIFICATE_BYTES
"""Longest PEM text :func:`pem_to_ders` scans (512 KiB: room for the largest
accepted chain, base64-encoded and folded, with text between the blocks)."""

_BEGIN = "-----BEGIN CERTIFICATE-----"
_END = "-----END CERTIFICATE-----"


def b64_to_der(value: str | bytes) -> bytes:
    """Decode standard base64 (whitespace ignored) into DER bytes.

    Raises ``Rejected(malformed_certificate)`` on bad base64 or an empty or
    oversized result.
    """
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    if not text or len(text) > MAX_CERTIFICATE_BYTES * 2:
        raise Rejected(Reason.MALFORMED_CERTIFICATE, "empty or oversized base64 certificate")
    try:
        # strict_mode (Python 3.11+) validates the alphabet and padding in C;
        # b64decode(validate=True) does it with a regex, 10x slower.
        der = binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError):
        der = _b64_folded(text)  # PEM bodies and folded headers carry whitespace
    _check_der_envelope(der)
    return der


def _b64_folded(text: str) -> bytes:
    compact = "".join(text.split())
    if not compact:
        raise Rejected(Reason.MALFORMED_CERTIFICATE, "empty base64 certificate")
    try:
        return binascii.a2b_base64(compact, strict_mode=True)
    except (binascii.Error, ValueError) as exc:
        raise Rejected(Reason.MALFORMED_CERTIFICATE, f"invalid base64: {exc}") from None


def pem_to_ders(text: str) -> list[bytes]:
    """Decode every ``CERTIFICATE`` block of ``text``, in order.

    A block runs from a BEGIN marker to the first END marker after it (a
    second BEGIN inside is part of its body, which then fails to decode).
    Raises ``Rejected(malformed_certificate)`` when ``text`` is longer than
    :data:`MAX_PEM_TEXT`, there is no block, a block is not base64 DER, or
    there are more than :data:`MAX_PRESENTED_CERTIFICATES` blocks. Time is
    linear in the length of ``text``.
    """
    if len(text) > MAX_PEM_TEXT:
        raise Rejected(Reason.MALFORMED_CERTIFICATE, f"PEM text of {len(text)} characters")
    blocks = _pem_blocks(text)
    if not blocks:
        raise Rejected(Reason.MALFORMED_CERTIFICATE, "no PEM CERTIFICATE block")
    return [b64_to_der(block) for block in blocks]


def _pem_blocks(text: str) -> list[str]:
    """The bodies of the ``CERTIFICATE`` blocks of ``text``.

    One forward pass of ``str.find``: each search starts where the previous
    one ended, so no character is scanned twice (a regular expression with a
    lazy body retried the scan to the end of the text from every BEGIN
    marker that had no END after it: quadratic).
    """
    blocks: list[str] = []
    pos = 0
    while True:
        begin = text.find(_BEGIN, pos)
        if begin < 0:
            return blocks
        body = begin + len(_BEGIN)
        end = text.find(_END, body)
        if end < 0:
            return blocks
        if len(blocks) == MAX_PRESENTED_CERTIFICATES:
            raise Rejected(
                Reason.MALFORMED_CERTIFICATE,
                f"more than {MAX_PRESENTED_CERTIFICATES} certificates presented",
            )
        blocks.append(text[body:end])
        pos = end + len(_END)


def pem_to_der(text: str) -> bytes:
    """Decode exactly one PEM certificate."""
    ders = pem_to_ders(text)
    if len(ders) != 1:
        raise Rejected(Reason.MALFORMED_CERTIFICATE, "expected exactly one PEM certificate")
    return ders[0]


def pem_list_to_ders(pems: list[str], what: str) -> list[bytes]:
    """Decode one PEM certificate per entry (a TLS chain as servers export it)."""
    if len(pems) > MAX_PRESENTED_CERTIFICATES:
        raise Rejected(
            Reason.MALFORMED_CERTIFICATE,
            f"more than {MAX_PRESENTED_CERTIFICATES} certificates in {what}",
        )
    return [pem_to_der(pem) for pem in pems]


def split_concatenated_der(blob: bytes) -> list[bytes]:
    """Split DER certificates that were concatenated back to back (HAProxy's
    ``ssl_c_chain_der``) by reading each outer ``SEQUENCE`` length."""
    out: list[bytes] = []
    pos = 0
    while pos < len(blob):
        end = pos + _der_total_length(blob, pos)
        out.append(blob[pos:end])
        pos = end
        if len(out) > MAX_PRESENTED_CERTIFICATES:
            raise Rejected(Reason.MALFORMED_CERTIFICATE, "too many concatenated certificates")
    return out


def load_certificate(der: bytes) -> x509.Certificate:
    """Parse DER into a certificate, mapping any parse failure to
    ``Rejected(malformed_certificate)``."""
    try:
        cert = x509.load_der_x509_certificate(der)
    except (ValueError, x509.InvalidVersion) as exc:  # InvalidVersion is no ValueError
        raise Rejected(Reason.MALFORMED_CERTIFICATE, f"unparseable DER: {exc}") from None
    # The signature is the certificate's last element, a BIT STRING whose
    # first content byte counts unused bits: 0 for every X.509 signature
    # (whole octets). cryptography accepts other counts whose padding bits
    # are zero, and the signature still verifies - so the same certificate
    # could be presented under another SHA-256 fingerprint, past a
    # fingerprint deny list or pin. Refused.
    signature = cert.signature
    count_at = len(der) - len(signature) - 1
    if count_at < 1 or der[count_at] != 0 or not der.endswith(signature):
        raise Rejected(
            Reason.MALFORMED_CERTIFICATE,
            "signature BIT STRING with unused bits (not the DER encoding X.509 requires)",
        )
    return cert


def _check_der_envelope(der: bytes) -> None:
    if len(der) > MAX_CERTIFICATE_BYTES:
        raise Rejected(Reason.MALFORMED_CERTIFICATE, f"certificate of {len(der)} bytes")
    if _der_total_length(der, 0) != len(der):
        raise Rejected(Reason.MALFORMED_CERTIFICATE, "trailing or missing bytes after DER")


def _der_total_length(buf: bytes, pos: int) -> int:
    """Length of the DER SEQUENCE starting at ``buf[pos]`` including its header."""
    if len(buf) - pos < 2 or buf[pos] != 0x30:
        raise Rejected(Reason.MALFORMED_CERTIFICATE, "not a DER SEQUENCE")
    header, length = _der_header(buf, pos)
    return header + length


def _der_header(buf: bytes, pos: int) -> tuple[int, int]:
    """(header length, content length) of the DER element at ``buf[pos]``."""
    if len(buf) - pos < 2:
        raise Rejected(Reason.MALFORMED_CERTIFICATE, "truncated DER")
    first = buf[pos + 1]
    if first < 0x80:
        header, length = 2, first
    else:
        count = first & 0x7F
        if count == 0 or count > 4 or len(buf) - pos < 2 + count:
            raise Rejected(Reason.MALFORMED_CERTIFICATE, "bad DER length")
        header = 2 + count
        length = int.from_bytes(buf[pos + 2 : pos + header], "big")
    total = header + length
    if total > len(buf) - pos or total > MAX_CERTIFICATE_BYTES:
        raise Rejected(Reason.MALFORMED_CERTIFICATE, "truncated or oversized DER")
    return header, length


def name_sizes(der: bytes) -> tuple[int, int]:
    """Encoded sizes of the issuer and subject names of certificate ``der``,
    read from the DER structure alone (no ``Name`` objects: building one
    costs time per attribute, which an attacker chooses).

    Walks ``Certificate -> tbsCertificate -> [version] serialNumber
    signature issuer validity subject`` (RFC 5280, 4.1); bytes without that
    structure are ``Rejected(malformed_certificate)``. Trust is never read
    from here: this only sizes the names.
    """
    outer, _ = _der_header(der, 0)
    tbs, _ = _der_header(der, outer)
    pos = outer + tbs
    if pos < len(der) and der[pos] == 0xA0:  # [0] EXPLICIT version
        pos += sum(_der_header(der, pos))
    for _ in range(2):  # serialNumber, signature
        pos += sum(_der_header(der, pos))
    issuer = sum(_der_header(der, pos))
    pos += issuer
    pos += sum(_der_header(der, pos))  # validity
    subject = sum(_der_header(der, pos))
    return issuer, subject
