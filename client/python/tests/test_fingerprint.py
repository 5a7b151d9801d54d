"""fingerprint() and fingerprint_shape() give the Rust client's output: hand-checked
canonical JSON cases here, and the cross-language vectors in client/fingerprint_vectors.json
and client/shape_vectors.json."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import pytest

import tollgate
from tollgate._fingerprint import _shape, canonical_json

VECTORS = Path(__file__).resolve().parents[2] / "fingerprint_vectors.json"
SHAPE_VECTORS = Path(__file__).resolve().parents[2] / "shape_vectors.json"

CANONICAL = [
    ({}, "{}"),
    ({"b": 1, "a": 2}, '{"a":2,"b":1}'),
    ({"é": 1, "z": 2, "Z": 3}, '{"Z":3,"z":2,"é":1}'),
    ({"a": [1, {"d": None, "c": True}], "b": False}, '{"a":[1,{"c":true,"d":null}],"b":false}'),
    (("x", 1), '["x",1]'),
    (
        'quote" back\\ \b\f\n\r\t \x00 \x1f \x7f ü',
        '"quote\\" back\\\\ \\b\\f\\n\\r\\t \\u0000 \\u001f \x7f ü"',
    ),
    (-42, "-42"),
    (2**64 - 1, "18446744073709551615"),
    (-(2**63), "-9223372036854775808"),
    (1.0, "1"),
    (-0.0, "0"),
    (0.5, "5e-1"),
    (1.25, "1.25e0"),
    (1e21, "1e21"),
    (-1.5e-7, "-1.5e-7"),
    (123.456, "1.23456e2"),
    (2.0**53, "9.007199254740992e15"),
    (0.1, "1e-1"),
]


@pytest.mark.parametrize(("value", "expected"), CANONICAL)
def test_canonical_json(value: Any, expected: str) -> None:
    assert canonical_json(value) == expected


def test_fingerprint_is_the_truncated_sha256_of_tool_newline_json() -> None:
    args = {"query": "weather in Paris", "limit": 5}
    expected = hashlib.sha256(b'search\n{"limit":5,"query":"weather in Paris"}').hexdigest()[:32]
    assert tollgate.fingerprint("search", args) == expected
    assert tollgate.fingerprint("search", {"limit": 5, "query": "weather in Paris"}) == expected
    assert tollgate.fingerprint("search", {"limit": 5.0, "query": "weather in Paris"}) == expected
    assert tollgate.fingerprint("fetch", args) != expected
    assert len(expected) == 32


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ({"x": math.nan}, ValueError),
        ({"x": math.inf}, ValueError),
        ({"x": 2**64}, ValueError),
        ({"x": -(2**63) - 1}, ValueError),
        ({"x": {1, 2}}, TypeError),
        ({"x": b"bytes"}, TypeError),
        ({1: "non-string key"}, TypeError),
        ({"x": object()}, TypeError),
    ],
)
def test_what_json_cannot_say_is_an_error(args: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        tollgate.fingerprint("tool", args)
    with pytest.raises(error):
        tollgate.fingerprint_shape("tool", args)


SHAPES: list[tuple[Any, str]] = [
    ({}, "{}"),
    ([], "[]"),
    (None, '"null"'),
    (
        {"q": "news", "page": 2, "on": True, "x": None},
        '{"on":"bool","page":"number","q":"string","x":"null"}',
    ),
    ([3, "a", 1.5, "b", None], '["null","number","string"]'),
    ([{"b": 1}, {"a": 1}, {"b": 2}], '[{"a":"number"},{"b":"number"}]'),
    (([1], [], ["x"]), '[["number"],["string"],[]]'),
    ({'é"': [1]}, '{"é\\"":["number"]}'),
]


@pytest.mark.parametrize(("value", "expected"), SHAPES)
def test_shape_json(value: Any, expected: str) -> None:
    assert _shape(value, 0) == expected


def test_shape_cross_language_vectors() -> None:
    vectors = json.loads(SHAPE_VECTORS.read_text(encoding="utf-8"))
    assert len(vectors) >= 10
    for vector in vectors:
        assert tollgate.fingerprint_shape(vector["tool"], vector["args"]) == vector["shape"], vector
        canonical = f"{vector['tool']}\n{vector['canonical']}".encode()
        assert hashlib.sha256(canonical).hexdigest()[:32] == vector["shape"], vector


def test_a_loop_that_varies_a_value_keeps_its_shape() -> None:
    shapes = {tollgate.fingerprint_shape("search", {"q": f"news {n}", "page": n}) for n in range(5)}
    assert len(shapes) == 1
    assert tollgate.fingerprint_shape("search", {"q": "news"}) not in shapes
    assert tollgate.fingerprint_shape("fetch", {"q": "news", "page": 1}) not in shapes


def test_cross_language_vectors() -> None:
    vectors = json.loads(VECTORS.read_text(encoding="utf-8"))
    assert len(vectors) >= 12
    for vector in vectors:
        got = tollgate.fingerprint(vector["tool"], vector["args"], vector.get("ignore", ()))
        assert got == vector["fingerprint"], vector


def test_ignored_arguments_make_a_varying_loop_repeat() -> None:
    pages = {tollgate.fingerprint("search", {"q": "news", "page": n}, ["page"]) for n in range(5)}
    assert pages == {tollgate.fingerprint("search", {"q": "news"})}
    # Only the named arguments: another query is another call.
    other = tollgate.fingerprint("search", {"q": "sports", "page": 1}, ["page"])
    assert other not in pages
    with pytest.raises(TypeError):
        tollgate.fingerprint("search", {"q": "news"}, "page")
