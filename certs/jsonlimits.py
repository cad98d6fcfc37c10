"""JSON parsing with a bound on nesting depth, checked before the parser recurses.

`json.loads` recurses once per nesting level; with a raised interpreter recursion limit (some
libraries raise it on import) a hostile document nested 100 000 deep overflows the C stack and
kills the process. The scan below is iterative and linear, so depth is refused first.
"""

from __future__ import annotations

import json
from typing import Any

_OPEN, _CLOSE, _QUOTE, _ESCAPE = frozenset(b"[{"), frozenset(b"]}"), ord('"'), ord("\\")


class JsonTooDeep(ValueError):
    """The document nests deeper than allowed."""


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


def loads(raw: bytes | str, *, max_depth: int = 32) -> Any:
    """json.loads for untrusted documents: nesting bounded (JsonTooDeep), duplicate member
    names refused (JsonDuplicateKey); both are ValueErrors."""
    check_depth(raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw, max_depth)
    return json.loads(raw, object_pairs_hook=unique_keys)
