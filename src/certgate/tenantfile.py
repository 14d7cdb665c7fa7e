"""Editing the ``[[tenants]]`` of a TOML configuration file in place.

``certgate tenants add`` and ``certgate tenants remove`` change one tenant
and leave every other byte of the file as it was - comments, order,
formatting - because the standard library reads TOML but cannot write it:

* **add** appends one well-formed ``[[tenants]]`` table at the end of the
  file (TOML array-of-tables entries may be anywhere);
* **remove** cuts exactly the text of that tenant's table: from its
  ``[[tenants]]`` header (with the comment lines right above it) to the
  next table header that is not one of its sub-tables (``[tenants.policy]``),
  less the comment lines right above that header.

Either way the result is checked before anything is written: it must parse,
its parsed data must equal the old data plus (or minus) exactly that tenant,
and its tenants must load as they would in the middleware (files read, CA
vetting, one id and one host per tenant, shared anchors). A file the editor
cannot change safely (``tenants`` written as an inline array, a header it
cannot find) is refused, not rewritten. The file is replaced atomically (a
temporary file in the same directory, then ``os.replace``), keeping its
mode (and owner, where permitted); a symbolic link is followed and its
target replaced. A file changed by someone else meanwhile is not
overwritten. Not done: locking against a concurrent editor (the change
check narrows the window, it does not close it).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .config import (
    MAX_CONFIG_BYTES,
    _read_tenants,
    _tenant_entries,
    parse_toml,
    read_regular_file,
)
from .errors import ConfigError
from .registry import HostIndex
from .tenant import Tenant, check_tenant_id
from .vetting import quiet

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_KEY_PART = r"""(?:[A-Za-z0-9_-]+|"[^"\n]*"|'[^'\n]*')"""
_HEADER = re.compile(
    rf"[ \t]*(\[\[?)[ \t]*({_KEY_PART}(?:[ \t]*\.[ \t]*{_KEY_PART})*)[ \t]*\]\]?[ \t]*(?:#.*)?"
)
_COMMENT = re.compile(r"[ \t]*#.*")


def read_tenants(path: str | os.PathLike[str]) -> list[Tenant]:
    """The tenants of ``path`` as the middleware would load them (every
    check of :func:`~certgate.config.load_config` on ``[[tenants]]``), but
    without starting a CRL refresher or reading ``[certgate]``, and without
    logging CA vetting warnings (they are in each tenant's ``ca_warnings``)."""
    file = Path(path)
    text, _ = _read_text(file)
    return _load(file, parse_toml(text, file))


def add_tenant(path: str | os.PathLike[str], entry: Mapping[str, Any]) -> Tenant:
    """Append the ``[[tenants]]`` table ``entry`` (keys and values as in the
    file: ``id``, ``hosts``, ``roots``, ...) to ``path`` and return the new
    tenant. :class:`ConfigError`, and the file unchanged, when the result
    would not load (a duplicate id, a host already claimed, a CA that fails
    vetting, a missing file, ...) or cannot be written safely."""
    file = Path(path)
    text, original = _read_text(file)
    data = parse_toml(text, file)
    newline = "\r\n" if "\r\n" in text else "\n"
    lines = ["[[tenants]]", *(f"{_toml_key(k)} = {toml_value(v)}" for k, v in entry.items())]
    block = newline.join(lines) + newline
    prefix = text
    if prefix and not prefix.endswith("\n"):
        prefix += newline
    if prefix.strip():
        prefix += newline
    new_text = prefix + block
    appended = parse_toml(block, file).get("tenants")
    if (
        not isinstance(appended, list)
        or len(appended) != 1
        or appended[0].get("id") != entry.get("id")
    ):
        raise ConfigError(f"{file}: the new [[tenants]] table does not read back as written")
    expected = dict(data)
    expected["tenants"] = [*_tenant_entries(file, data), appended[0]]
    unsafe = (
        f"{file}: cannot append a [[tenants]] table safely (is 'tenants' written as an "
        "inline array?); add the tenant by hand"
    )
    try:
        new_data = parse_toml(new_text, file)
    except ConfigError as exc:
        raise ConfigError(f"{unsafe} ({exc})") from None
    if new_data != expected:
        raise ConfigError(unsafe)
    tenants = _load(file, new_data)
    _replace(file, new_text, original)
    return tenants[-1]


def remove_tenant(path: str | os.PathLike[str], tenant_id: str) -> None:
    """Remove the ``[[tenants]]`` table with id ``tenant_id`` from ``path``
    (see the module docstring). :class:`ConfigError`, and the file
    unchanged, when there is no such tenant, its table cannot be cut out
    exactly, or the rest would not load."""
    file = Path(path)
    check_tenant_id(tenant_id)
    text, original = _read_text(file)
    data = parse_toml(text, file)
    entries = _tenant_entries(file, data)
    matches = [
        i for i, e in enumerate(entries) if isinstance(e, Mapping) and e.get("id") == tenant_id
    ]
    if not matches:
        raise ConfigError(f"{file}: no tenant {tenant_id!r}")
    if len(matches) > 1:
        raise ConfigError(f"{file}: tenant id {tenant_id!r} appears {len(matches)} times")
    index = matches[0]
    spans = _tenant_spans(text)
    unsafe = ConfigError(
        f"{file}: cannot cut tenant {tenant_id!r} out of the file exactly (its [[tenants]] "
        "header was not found where the parser saw it); remove it by hand"
    )
    if len(spans) != len(entries):
        raise unsafe
    start, end = spans[index]
    new_text = text[:start] + text[end:]
    if end == len(text):  # the last table: no blank lines left at the end
        new_text = new_text.rstrip("\r\n \t") + ("\n" if new_text.strip() else "")
        if "\r\n" in text and new_text:
            new_text = new_text[:-1] + "\r\n"
    expected = dict(data)
    rest = [e for i, e in enumerate(entries) if i != index]
    if rest:
        expected["tenants"] = rest
    else:
        expected.pop("tenants", None)
    try:
        new_data = parse_toml(new_text, file)
    except ConfigError:
        raise unsafe from None
    if new_data != expected:
        raise unsafe
    _load(file, new_data)
    _replace(file, new_text, original)


def toml_value(value: object) -> str:
    """``value`` (a string, bool, int, finite float, list or dict of these)
    as a TOML value; dicts become inline tables. :class:`ConfigError`
    for anything else (``None``, a NaN, a lone surrogate in a string)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError(f"cannot write {value!r} to the TOML file")
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, Mapping):
        items = ", ".join(f"{_toml_key(k)} = {toml_value(v)}" for k, v in value.items())
        return "{ " + items + " }" if items else "{}"
    raise ConfigError(f"cannot write a {type(value).__name__} to the TOML file")


def _toml_key(key: object) -> str:
    if not isinstance(key, str):
        raise ConfigError(f"a TOML key must be a string, not {type(key).__name__}")
    return key if _BARE_KEY.fullmatch(key) else _toml_string(key)


def _toml_string(text: str) -> str:
    """A TOML basic string: quote, backslash, control characters and every
    other non-printable character escaped."""
    out = ['"']
    for char in text:
        code = ord(char)
        if char in '"\\':
            out.append("\\" + char)
        elif 0xD800 <= code <= 0xDFFF:
            raise ConfigError(f"cannot write {text[:80]!r} to the TOML file (not Unicode text)")
        elif char.isprintable():
            out.append(char)
        else:
            out.append(f"\\u{code:04X}" if code < 0x10000 else f"\\U{code:08X}")
    out.append('"')
    return "".join(out)


def _read_text(file: Path) -> tuple[str, bytes]:
    data = read_regular_file(file, MAX_CONFIG_BYTES, "config")
    try:
        return data.decode("utf-8"), data
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{file}: invalid TOML: not UTF-8 ({exc.reason})") from None


def _load(file: Path, data: Mapping[str, Any]) -> list[Tenant]:
    """The tenants of ``data`` with every load-time check (relative file
    names resolve from ``file``'s directory, as when it is loaded)."""
    with quiet():  # warnings are the caller's to show (the new tenant's ca_warnings)
        tenants = _read_tenants(file, data)
    try:
        HostIndex.build(tenants)
    except ConfigError as exc:
        raise ConfigError(f"{file}: {exc}") from None
    return tenants


def _tenant_spans(text: str) -> list[tuple[int, int]]:
    """The ``(start, end)`` offsets of each ``[[tenants]]`` table's text,
    in order (see the module docstring). Header-like lines inside
    multi-line strings or arrays are not told apart here: the caller checks
    the result by parsing it."""
    lines = text.splitlines(keepends=True)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line))
    headers: list[tuple[int, bool, str]] = []  # line number, array table, dotted name
    for number, line in enumerate(lines):
        match = _HEADER.fullmatch(line.rstrip("\r\n"))
        if match is not None:
            name = ".".join(_unquote(p) for p in _split_key(match.group(2)))
            headers.append((number, match.group(1) == "[[", name))
    spans: list[tuple[int, int]] = []
    for position, (number, is_array, name) in enumerate(headers):
        if not (is_array and name == "tenants"):
            continue
        end_line = len(lines)
        for later, later_array, later_name in headers[position + 1 :]:
            if later_name.startswith("tenants.") and not (later_array and later_name == "tenants"):
                continue
            end_line = _attached_comments(lines, later)
            break
        spans.append((offsets[_attached_comments(lines, number)], offsets[end_line]))
    return spans


def _attached_comments(lines: Sequence[str], number: int) -> int:
    """The first line of the comment block right above line ``number`` (no
    blank line between), or ``number``."""
    while number > 0 and _COMMENT.fullmatch(lines[number - 1].rstrip("\r\n")):
        number -= 1
    return number


def _split_key(dotted: str) -> list[str]:
    return [part.strip() for part in re.findall(_KEY_PART, dotted)]


def _unquote(part: str) -> str:
    if len(part) >= 2 and part[0] == part[-1] and part[0] in "\"'":
        return part[1:-1]
    return part


def _replace(file: Path, text: str, original: bytes) -> None:
    """Write ``text`` over ``file`` (its symlink target) atomically, keeping
    its mode and, where permitted, its owner; refuse if the file no longer
    holds ``original``."""
    target = Path(os.path.realpath(file))
    info = os.stat(target)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), info.st_mode & 0o7777)
            if (info.st_uid, info.st_gid) != (os.geteuid(), os.getegid()):
                with contextlib.suppress(PermissionError):
                    os.fchown(handle.fileno(), info.st_uid, info.st_gid)
            handle.write(text.encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())
        if read_regular_file(target, MAX_CONFIG_BYTES, "config") != original:
            raise ConfigError(f"{file} changed while it was being edited; try again")
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
