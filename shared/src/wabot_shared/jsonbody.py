"""Parsing webhook JSON into a tree every later step can store.

What a body may contain and what PostgreSQL's ``jsonb`` (and a re-encoding
with orjson) accept differ in three ways, and each difference used to turn a
202 into a message that was never stored:

* ``NaN`` and ``Infinity`` are not JSON (RFC 8259); Python's ``json`` accepts
  them, jsonb does not. They are refused as malformed JSON, like any other
  syntax error: no real sender (Evolution is JavaScript, whose
  ``JSON.stringify`` never writes them) produces them.
* Numbers that are valid JSON but do not fit a double (``1e400``) or a 64-bit
  integer cannot be re-encoded faithfully. They become ``null`` and their
  presence is recorded as an issue, so the message is still stored.
* U+0000 in a string is valid JSON, but PostgreSQL text and jsonb cannot hold
  it; nor can they hold a lone UTF-16 surrogate (``"\ud800"``), which JSON's
  grammar allows and UTF-8 cannot encode. Both are replaced by U+FFFD,
  deterministically, so a redelivery maps to the same row, and recorded.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

import orjson

ISSUE_NUMBER_OUT_OF_RANGE = "number_out_of_range"
ISSUE_NUL_REPLACED = "nul_replaced"
ISSUE_SURROGATE_REPLACED = "surrogate_replaced"

_INT64 = 2**63
# Cheap pre-checks on the raw bytes, so the common body is parsed once by
# orjson and never walked.
_EXPONENT = re.compile(rb"[0-9][eE][+-]?[0-9]{3,}")
# orjson reads an integer beyond 64 bits as a (lossy) float; such a run of
# digits (or one inside a string, which costs only the slower parse) sends the
# body to the exact parser.
_LONG_INTEGER = re.compile(rb"[0-9]{20,}")
_NUL_ESCAPE = b"\\u0000"
# Far deeper than any real payload (quoted messages nest a few levels), and
# shallow enough for the recursive walks below to stay within Python's stack.
_MAX_DEPTH = 200


class MalformedJson(ValueError):
    """The body is not a JSON document."""


@dataclass(frozen=True, slots=True)
class ParsedJson:
    """A parsed document and what had to be changed to make it storable."""

    value: Any
    issues: frozenset[str]


def _constant(name: str) -> Any:
    raise MalformedJson(f"{name} is not valid JSON")


def _float(text: str) -> float | None:
    value = float(text)
    return value if math.isfinite(value) else None


def _int(text: str) -> int | None:
    # Python refuses integers over 4,300 digits; anything past int64 cannot be
    # re-encoded by orjson nor kept exact by most readers anyway.
    if len(text) > 20:
        return None
    value = int(text)
    return value if -_INT64 <= value < _INT64 else None


class _Counter:
    __slots__ = ("out_of_range",)

    def __init__(self) -> None:
        self.out_of_range = False


def _slow_parse(raw: bytes | bytearray) -> tuple[Any, bool]:
    """Python's parser with hooks: NaN refused, out-of-range numbers nulled."""
    counter = _Counter()

    def on_float(text: str) -> float | None:
        value = _float(text)
        if value is None:
            counter.out_of_range = True
        return value

    def on_int(text: str) -> int | None:
        value = _int(text)
        if value is None:
            counter.out_of_range = True
        return value

    try:
        value = json.loads(raw, parse_constant=_constant, parse_float=on_float, parse_int=on_int)
    except MalformedJson:
        raise
    except (ValueError, RecursionError, UnicodeDecodeError) as exc:
        raise MalformedJson(type(exc).__name__) from None
    return value, counter.out_of_range


_SURROGATE = re.compile("[\ud800-\udfff]")


def _without_nul(node: Any, depth: int = 0) -> Any:
    if isinstance(node, str):
        return node.replace("\x00", "\ufffd") if "\x00" in node else node
    if depth > _MAX_DEPTH:
        raise MalformedJson("nested too deeply")
    if isinstance(node, dict):
        return {_without_nul(k): _without_nul(v, depth + 1) for k, v in node.items()}
    if isinstance(node, list):
        return [_without_nul(v, depth + 1) for v in node]
    return node


def _without_surrogates(node: Any, depth: int = 0) -> Any:
    if isinstance(node, str):
        return _SURROGATE.sub("\ufffd", node)
    if depth > _MAX_DEPTH:
        raise MalformedJson("nested too deeply")
    if isinstance(node, dict):
        return {_without_surrogates(k): _without_surrogates(v, depth + 1) for k, v in node.items()}
    if isinstance(node, list):
        return [_without_surrogates(v, depth + 1) for v in node]
    return node


def parse_json(raw: bytes | bytearray) -> ParsedJson:
    """Parse ``raw``; raises :class:`MalformedJson` if it is not JSON.

    The result re-encodes with :func:`dumps` and is accepted by jsonb.
    """
    issues: set[str] = set()
    value: Any = None
    # orjson refuses NaN (good) but also valid out-of-range numbers; the slower
    # exact parser tells the two apart.
    exact = bool(_LONG_INTEGER.search(raw))
    if not exact:
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError:
            exact = True
        else:
            # Defensive: orjson refuses infinities today; keep it true if not.
            exact = bool(_EXPONENT.search(raw)) and _has_non_finite(value)
    if exact:
        value, out_of_range = _slow_parse(raw)
        if out_of_range:
            issues.add(ISSUE_NUMBER_OUT_OF_RANGE)
        # orjson refuses lone surrogates; only the exact parser lets them through.
        if b"\\u" in raw:
            cleaned = _without_surrogates(value)
            if cleaned != value:
                issues.add(ISSUE_SURROGATE_REPLACED)
            value = cleaned
    if _NUL_ESCAPE in raw:
        cleaned = _without_nul(value)
        if cleaned != value:
            issues.add(ISSUE_NUL_REPLACED)
        value = cleaned
    return ParsedJson(value, frozenset(issues))


def _has_non_finite(node: Any, depth: int = 0) -> bool:
    if isinstance(node, float):
        return not math.isfinite(node)
    if depth > _MAX_DEPTH:
        raise MalformedJson("nested too deeply")
    if isinstance(node, dict):
        return any(_has_non_finite(v, depth + 1) for v in node.values())
    if isinstance(node, list):
        return any(_has_non_finite(v, depth + 1) for v in node)
    return False


def dumps(value: Any) -> str:
    """Compact JSON text of a tree returned by :func:`parse_json`."""
    return orjson.dumps(value).decode()
