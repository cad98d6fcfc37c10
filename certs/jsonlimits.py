"""JSON parsing with a bound on nesting depth, checked before the parser recurses.

`json.loads` recurses once per nesting level; with a raised interpreter recursion limit (some
libraries raise it on import) a hostile document nested 100 000 deep overflows the C stack and
kills the process. The scan below is iterative and linear, so depth is refused first.

`max_values` bounds how many arrays, objects and separators a document may hold: string contents
are skipped with one regular expression and the structural bytes counted with `bytes.count`
(all in C), so `[0,0,0,...]` of several MiB is refused in milliseconds instead of costing the
half second that parsing it (or the byte-by-byte depth scan) would.
"""

from __future__ import annotations

import json
import re
from typing import Any

_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')

_OPEN, _CLOSE, _QUOTE, _ESCAPE = frozenset(b"[{"), frozenset(b"]}"), ord('"'), ord("\\")


class JsonTooDeep(ValueError):
    """The document nests deeper than allowed."""


class JsonTooLarge(ValueError):
    """The document holds more values than allowed."""


class JsonDuplicateKey(ValueError):
    """An object names the same member twice (parsers disagree on which one wins)."""


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """object_pairs_hook refusing duplicate member names."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise JsonDuplicateKey(f"duplicate field {key!r}")
        out[key] = value
    return out


def check_depth(raw: bytes, max_depth: int = 32) -> None:
    found = nesting_depth(raw)
    if found > max_depth:
        raise JsonTooDeep(f"JSON nested {found} levels deep, more than the {max_depth} allowed")


def nesting_depth(raw: bytes) -> int:
    depth = deepest = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == _ESCAPE:
                escaped = True
            elif byte == _QUOTE:
                in_string = False
        elif byte == _QUOTE:
            in_string = True
        elif byte in _OPEN:
            depth += 1
            deepest = max(deepest, depth)
        elif byte in _CLOSE:
            depth -= 1
    return deepest


def check_values(raw: bytes, max_values: int) -> bytes:
    """Refuse more than `max_values` containers and separators; returns `raw` with every string
    emptied (what is left to scan for depth)."""
    skeleton = _STRING.sub(b'""', raw)
    found = sum(skeleton.count(c) for c in (b",", b"[", b"{", b":"))
    if found > max_values:
        raise JsonTooLarge(f"JSON holds {found} values or more, more than the {max_values} allowed")
    return skeleton


def loads(raw: bytes | str, *, max_depth: int = 32, max_values: int | None = None) -> Any:
    """json.loads for untrusted documents: nesting bounded (JsonTooDeep), the number of values
    bounded when `max_values` is given (JsonTooLarge), duplicate member names refused
    (JsonDuplicateKey); all are ValueErrors."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    if max_values is not None:
        data = check_values(data, max_values)
    check_depth(data, max_depth)
    return json.loads(raw, object_pairs_hook=unique_keys)
