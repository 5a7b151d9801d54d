"""fingerprint(tool, args): the hash of a call's tool and normalised arguments that the
cluster counts for repetition detection. Byte for byte the Rust client's: canonical JSON
(sorted keys, no whitespace, minimal escapes, floats in shortest exponent form).
fingerprint_shape(tool, args): the hash of the tool and the arguments' keys and value types,
for shape velocity: a loop that changes a value on every call keeps its shape."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

# JSON integers the Rust side (serde_json) represents: i64 and u64.
_INT_MIN = -(2**63)
_INT_MAX = 2**64 - 1
# Floats with an integral value below this magnitude are written as integers.
_EXACT_INT_FLOAT_MAX = 2.0**53
# Nesting deeper than this is refused rather than exhausting the stack.
_DEPTH_MAX = 128

_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
}


def fingerprint(tool: str, args: Mapping[str, Any], ignore: Iterable[str] = ()) -> str:
    """Lowercase hex of the first 16 bytes of SHA-256(tool, newline, canonical JSON of args).

    `ignore` names top-level arguments left out: the ones that change on every call of a
    loop (a timestamp, a page counter, a request id), so a loop that varies only them is
    still seen repeating. The same as the fingerprint of `args` without those keys."""
    if not isinstance(tool, str):
        raise TypeError("tool must be a str")
    if isinstance(ignore, str):
        raise TypeError("ignore must be a collection of names, not one string")
    skip = set(ignore)
    if skip and isinstance(args, Mapping):
        args = {key: value for key, value in args.items() if key not in skip}
    out: list[str] = []
    _write(args, out, 0)
    return _digest(tool, "".join(out))


def fingerprint_shape(tool: str, args: Mapping[str, Any]) -> str:
    """Lowercase hex of the first 16 bytes of SHA-256(tool, newline, canonical JSON of the
    shape of args): calls that differ only in values (a page number, a timestamp, a
    reworded query) have one shape.

    The shape of an object is the object of the same keys with the shape of each value; of
    a list, the list of its items' distinct shapes, sorted by the code points of their
    canonical JSON; of None, a bool, a number and a str, the JSON strings "null", "bool",
    "number" and "string". The same values are refused as by `fingerprint`."""
    if not isinstance(tool, str):
        raise TypeError("tool must be a str")
    return _digest(tool, _shape(args, 0))


def _digest(tool: str, canonical: str) -> str:
    digest = hashlib.sha256(tool.encode("utf-8") + b"\n" + canonical.encode("utf-8"))
    return digest.digest()[:16].hex()


def canonical_json(value: Any) -> str:
    out: list[str] = []
    _write(value, out, 0)
    return "".join(out)


def _write(value: Any, out: list[str], depth: int) -> None:
    if depth > _DEPTH_MAX:
        raise ValueError(f"arguments nested deeper than {_DEPTH_MAX} levels")
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int):
        if not _INT_MIN <= value <= _INT_MAX:
            raise ValueError(f"integer {value} is outside the range of i64/u64")
        out.append(str(int(value)))
    elif isinstance(value, float):
        out.append(_float(value))
    elif isinstance(value, str):
        out.append(_string(value))
    elif isinstance(value, Mapping):
        _object(value, out, depth)
    elif isinstance(value, (list, tuple)):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _write(item, out, depth + 1)
        out.append("]")
    else:
        raise TypeError(
            f"{type(value).__name__} is not JSON: use dict, list, str, int, float, bool or None"
        )


def _shape(value: Any, depth: int) -> str:
    """The canonical JSON of the shape of `value`; checks what `_write` checks."""
    if depth > _DEPTH_MAX:
        raise ValueError(f"arguments nested deeper than {_DEPTH_MAX} levels")
    if value is None:
        return '"null"'
    if value is True or value is False:
        return '"bool"'
    if isinstance(value, (int, float)):
        _write(value, [], depth)
        return '"number"'
    if isinstance(value, str):
        return '"string"'
    if isinstance(value, Mapping):
        for key in value:
            if not isinstance(key, str):
                raise TypeError(f"object keys must be str, got {type(key).__name__}")
        items = (f"{_string(key)}:{_shape(value[key], depth + 1)}" for key in sorted(value))
        return "{" + ",".join(items) + "}"
    if isinstance(value, (list, tuple)):
        # Sorting str by code point is the Rust side's byte order of UTF-8.
        return "[" + ",".join(sorted({_shape(item, depth + 1) for item in value})) + "]"
    raise TypeError(
        f"{type(value).__name__} is not JSON: use dict, list, str, int, float, bool or None"
    )


def _object(value: Mapping[Any, Any], out: list[str], depth: int) -> None:
    for key in value:
        if not isinstance(key, str):
            raise TypeError(f"object keys must be str, got {type(key).__name__}")
    out.append("{")
    # Sorting by code point is the same order as sorting the UTF-8 bytes (the Rust side).
    for i, key in enumerate(sorted(value)):
        if i:
            out.append(",")
        out.append(_string(key))
        out.append(":")
        _write(value[key], out, depth + 1)
    out.append("}")


def _string(text: str) -> str:
    parts = ['"']
    for ch in text:
        escaped = _ESCAPES.get(ch)
        if escaped is not None:
            parts.append(escaped)
        elif ord(ch) < 0x20:
            parts.append(f"\\u{ord(ch):04x}")
        else:
            parts.append(ch)
    parts.append('"')
    return "".join(parts)


def _float(x: float) -> str:
    if not math.isfinite(x):
        raise ValueError(f"{x} is not a JSON number")
    if x == int(x) and abs(x) < _EXACT_INT_FLOAT_MAX:
        return str(int(x))
    sign, digits, exponent = Decimal(repr(x)).normalize().as_tuple()
    assert isinstance(exponent, int)
    text = "".join(str(d) for d in digits)
    # x = 0.d1d2...dn * 10^(exponent + n) = d1.d2...dn * 10^(exponent + n - 1)
    e = exponent + len(digits) - 1
    mantissa = text[0] if len(text) == 1 else f"{text[0]}.{text[1:]}"
    return f"{'-' if sign else ''}{mantissa}e{e}"
