"""certgate.text.safe_text: what is escaped and what is kept."""

from __future__ import annotations

import pytest

from certgate.text import safe_text


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("\x1b[31m", "\\x1b[31m"),  # C0: ESC
        ("a\nb\rc\td\x00", "a\\x0ab\\x0dc\\x09d\\x00"),
        ("\x7f", "\\x7f"),  # DEL
        ("\x85\x9b", "\\x85\\x9b"),  # C1: NEL, CSI
        ("\u2028\u2029", "\\u2028\\u2029"),  # line / paragraph separators
        ("\u202a\u202b\u202c\u202d\u202e", "\\u202a\\u202b\\u202c\\u202d\\u202e"),  # bidi
        ("\u2066\u2067\u2068\u2069", "\\u2066\\u2067\\u2068\\u2069"),  # bidi isolates
        ("\u200e\u200f\u061c", "\\u200e\\u200f\\u061c"),  # direction marks
        ("\u200b\ufeff\xa0", "\\u200b\\ufeff\\xa0"),  # invisible and non-ASCII spaces
        ("\udcff", "\\udcff"),  # a lone surrogate (would not even encode)
        ("\U000e0001", "\\U000e0001"),  # a language tag (format character)
    ],
)
def test_escapes(raw: str, shown: str) -> None:
    assert safe_text(raw) == shown
    assert safe_text(raw).isprintable()


@pytest.mark.parametrize(
    "text", ["CN=dev1,O=Acme", "Ünïcødé 名前 ☃ 😀", "a\\x1b b", "", "spaces are kept"]
)
def test_keeps_printable_text(text: str) -> None:
    assert safe_text(text) == text


def test_non_strings_and_limit() -> None:
    assert safe_text(42) == "42"
    assert safe_text(None) == "None"
    assert safe_text("abcdef", 3) == "abc...[3 more]"
    assert safe_text("\x1b" * 5, 2) == "\\x1b\\x1b...[3 more]"
    assert safe_text("abc", 3) == "abc"
