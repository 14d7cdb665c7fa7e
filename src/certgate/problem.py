"""RFC 9457 ``application/problem+json`` bodies for rejections.

The body names the reason and nothing else: no tenant, no certificate
subject, no verifier message. Those go to the ``certgate`` logger.
"""

from __future__ import annotations

import json
from http import HTTPStatus

from .reasons import Reason

CONTENT_TYPE = "application/problem+json"


def problem_document(reason: Reason) -> dict[str, object]:
    return {
        "type": f"urn:certgate:reason:{reason.value}",
        "title": reason.summary,
        "status": reason.status,
        "reason": reason.value,
    }


def status_line(reason: Reason) -> str:
    """``"403 Forbidden"`` - for WSGI ``start_response``."""
    return f"{reason.status} {HTTPStatus(reason.status).phrase}"


_BODIES = {
    reason: json.dumps(problem_document(reason), separators=(",", ":")).encode()
    for reason in Reason
}


def problem_body(reason: Reason) -> bytes:
    return _BODIES[reason]


def problem_headers(reason: Reason) -> list[tuple[str, str]]:
    return [
        ("content-type", CONTENT_TYPE),
        ("content-length", str(len(_BODIES[reason]))),
        ("cache-control", "no-store"),
    ]
