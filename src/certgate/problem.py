"""The body of a refusal: one format for the middleware, dependencies and
decorators.

The default is an RFC 9457 ``application/problem+json`` document that names
the reason and nothing else: no tenant, no certificate subject, no verifier
message, no policy (those go to the ``certgate`` logger). ``"text"`` and
``"html"`` are built in; a callable taking the :class:`~certgate.reasons.Reason`
and returning ``(content_type, body)`` makes any other. Whatever the format,
the status code and the reason code are certgate's: the code is in the
body of every built-in format and in the ``Certgate-Reason`` response header.
"""

from __future__ import annotations

import html
import json
import logging
import re
from collections.abc import Callable
from http import HTTPStatus
from typing import NamedTuple

from .errors import ConfigError
from .reasons import Reason

CONTENT_TYPE = "application/problem+json"
REASON_HEADER = "certgate-reason"

logger = logging.getLogger("certgate")

BodyMaker = Callable[[Reason], tuple[str, bytes]]
"""A custom refusal body: ``reason -> (content_type, body)``."""


class RefusalResponse(NamedTuple):
    """A rendered refusal: status, headers (lowercase names) and body."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes

    @property
    def status_line(self) -> str:
        """``"403 Forbidden"`` - for WSGI ``start_response``."""
        return f"{self.status} {HTTPStatus(self.status).phrase}"


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


def problem_json(reason: Reason) -> tuple[str, bytes]:
    """The default body: ``application/problem+json``."""
    return CONTENT_TYPE, json.dumps(problem_document(reason), separators=(",", ":")).encode()


def plain_text(reason: Reason) -> tuple[str, bytes]:
    """``403 Forbidden: no_certificate - A client certificate is required``."""
    text = f"{status_line(reason)}: {reason.value} - {reason.summary}\n"
    return "text/plain; charset=utf-8", text.encode()


def html_page(reason: Reason) -> tuple[str, bytes]:
    """A minimal HTML page naming the status, the summary and the reason code."""
    title = html.escape(status_line(reason))
    page = (
        f"<!doctype html>\n<html><head><meta charset=utf-8><title>{title}</title></head>"
        f"<body><h1>{title}</h1><p>{html.escape(reason.summary)}</p>"
        f"<p><code>{html.escape(reason.value)}</code></p></body></html>\n"
    )
    return "text/html; charset=utf-8", page.encode()


FORMATS: dict[str, BodyMaker] = {
    "problem+json": problem_json,
    "text": plain_text,
    "html": html_page,
}


class Refusals:
    """Renders refusals in one format (built once per reason for the
    built-in formats; a custom body maker is called per refusal, and one that
    fails or returns the wrong types gives the default body, logged)."""

    def __init__(self, body: str | BodyMaker = "problem+json") -> None:
        if isinstance(body, str):
            maker = FORMATS.get(body)
            if maker is None:
                raise ConfigError(
                    f"refusal_format {body[:40]!r} is unknown: use one of "
                    f"{', '.join(FORMATS)}, or a callable reason -> (content_type, body)"
                )
            self._custom: BodyMaker | None = None
            self._rendered = {reason: _render(reason, *maker(reason)) for reason in Reason}
        elif callable(body):
            self._custom = body
            self._rendered = {reason: _render(reason, *problem_json(reason)) for reason in Reason}
        else:
            raise ConfigError("refusal_format must be a format name or a callable")

    def __call__(self, reason: Reason) -> RefusalResponse:
        if self._custom is None:
            return self._rendered[reason]
        try:
            content_type, body = self._custom(reason)
            if not isinstance(content_type, str) or not isinstance(body, bytes):
                raise TypeError("the refusal body maker must return (str, bytes)")
            return _render(reason, content_type, body)
        except Exception as exc:
            logger.error("certgate: refusal_format callable failed: %r", exc, exc_info=exc)
            return self._rendered[reason]


_HEADER_VALUE = re.compile(r"[\x21-\x7e](?:[\x20-\x7e\t]*[\x21-\x7e])?")
"""A header value every server sends as it is: printable ASCII, inner spaces
and tabs (no control character, no non-ASCII character, no edge space)."""


def _render(reason: Reason, content_type: str, body: bytes) -> RefusalResponse:
    if not _HEADER_VALUE.fullmatch(content_type):
        raise ConfigError(
            f"refusal content type {content_type[:60]!r} is not a header value "
            "(printable ASCII, spaces and tabs inside)"
        )
    return RefusalResponse(
        reason.status,
        (
            ("content-type", content_type),
            ("content-length", str(len(body))),
            ("cache-control", "no-store"),
            (REASON_HEADER, reason.value),
        ),
        body,
    )


_DEFAULT = Refusals()


def problem_body(reason: Reason) -> bytes:
    """The default (problem+json) body for ``reason``."""
    return _DEFAULT(reason).body


def problem_headers(reason: Reason) -> list[tuple[str, str]]:
    """The default headers for ``reason``."""
    return list(_DEFAULT(reason).headers)
