"""Making untrusted text safe to print on a terminal or write to a log line.

Certificate subjects, SANs, file names and TOML values can hold any
character: an ESC sequence that recolours or rewrites the operator's
terminal, a newline that forges a second ``tenant: ...`` line, a Unicode
line separator or a bidi override that makes a log line read differently
from what it contains. :func:`safe_text` escapes every such character.

What is escaped: every character that :meth:`str.isprintable` rejects - the
C0 and C1 control characters, DEL, the Unicode line and paragraph
separators (U+2028, U+2029), format characters such as the bidi embeddings,
overrides and isolates (U+202A-U+202E, U+2066-U+2069), the marks U+200E,
U+200F, U+061C and the zero-width characters, every space other than the
ASCII space (U+00A0 included), surrogates, private-use and unassigned code
points. They are written as Python writes them in a ``repr``: ``\\xNN``,
``\\uNNNN`` or ``\\UNNNNNNNN``. Everything else, letters and symbols of any
script included, is kept as is.

What is not done: backslashes are not doubled, so the result is for humans
and log lines, not an encoding to decode back (a value may itself contain
the four characters ``\\x1b``). Use JSON (``json.dumps`` with its default
``ensure_ascii=True``) when a program must read the value back.
"""

from __future__ import annotations

__all__ = ["safe_text"]


def safe_text(value: object, limit: int | None = None) -> str:
    """``str(value)`` with every non-printable character escaped.

    ``limit``: keep at most that many characters of ``str(value)`` (before
    escaping) and mark a cut with ``...[N more]``.
    """
    text = value if isinstance(value, str) else str(value)
    extra = ""
    if limit is not None and len(text) > limit:
        extra = f"...[{len(text) - limit} more]"
        text = text[: max(limit, 0)]
    if not text.isprintable():
        text = "".join(char if char.isprintable() else _escape(char) for char in text)
    return text + extra


def _escape(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"
