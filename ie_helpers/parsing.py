"""Parse untrusted model output into entities, triples and records.

Nothing here raises on bad model output: every parser returns a `ParseResult`
saying whether the text was strict JSON, leniently recoverable JSON, or neither.

Strict means RFC 8259 JSON: no NaN/Infinity, no number that overflows a float,
no raw control characters inside strings, no trailing commas. The lenient path
recovers what a model commonly gets wrong: it tolerates raw control characters
in strings, drops trailing commas before a closing bracket, and decodes every
non-finite number (NaN, Infinity, -Infinity, 1e999999) as None, so the field
holding one counts as missing and its entity or triple is skipped, never
reported as the text "nan" or "inf".
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from dataclasses import dataclass
from typing import Any

# Bounds the lenient scan so adversarial text ("[[[[..." x 1e6) stays fast.
MAX_LENIENT_CANDIDATES = 256
# Trailing commas dropped per parse, over all candidates: each drop costs a re-decode.
MAX_TRAILING_COMMA_REPAIRS = 32

_JSON_WHITESPACE = " \t\n\r"
_WHITESPACE_RUN = re.compile(r"[ \t\n\r]*")
_CLOSING_BRACKETS = ("]", "}")
# Characters after which a comma is not a separator following a value.
_NO_VALUE_BEFORE = ("[", "{", ",", ":")


def _finite_float(literal: str) -> float:
    number = float(literal)
    if not math.isfinite(number):
        raise ValueError(f"number overflows a float: {literal[:32]}")
    return number


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _finite_float_or_none(literal: str) -> float | None:
    number = float(literal)
    return number if math.isfinite(number) else None


def _constant_as_none(_name: str) -> None:
    return None


_STRICT_DECODER = json.JSONDecoder(parse_float=_finite_float, parse_constant=_reject_constant)
_LENIENT_DECODER = json.JSONDecoder(
    parse_float=_finite_float_or_none, parse_constant=_constant_as_none, strict=False
)


@dataclass(frozen=True)
class ParseResult:
    """Outcome of parsing one model output.

    strict: the whole stripped text is one JSON value.
    lenient: strict, or the first JSON object/array embedded in the text decodes.
    value: the decoded value (None when lenient is False).
    error: short reason when lenient is False, else None.
    """

    value: Any
    strict: bool
    lenient: bool
    error: str | None


def parse_json(text: Any) -> ParseResult:
    """Parse model output as JSON, strictly and then leniently; never raises."""
    as_text, problem = _coerce_text(text)
    if problem:
        return _failure(problem)
    stripped = as_text.strip()
    if not stripped:
        return _failure("empty output")
    try:
        return ParseResult(_STRICT_DECODER.decode(stripped), strict=True, lenient=True, error=None)
    except Exception:  # ValueError (also non-finite numbers), RecursionError on deep nesting, ...
        pass
    return _parse_embedded_json(stripped)


def parse_entities(text: Any) -> tuple[list[tuple[str, str]], ParseResult]:
    """(type, text) pairs from `[{"type", "text"}, ...]` or `{type: [texts]}` output."""
    result = parse_json(text)
    return _entities_from(result.value), result


def parse_triples(text: Any) -> tuple[list[tuple[str, str, str]], ParseResult]:
    """(head, relation, tail) from `[[h, r, t], ...]` or `[{"head", "relation", "tail"}, ...]`."""
    result = parse_json(text)
    return _triples_from(result.value), result


def parse_record(text: Any) -> tuple[dict, ParseResult]:
    """Entities and triples of a JSON-extraction record.

    Expected: {"entities": {"person": [..], "organization": [..], "location": [..],
    "other": [..]}, "relations": [{"head", "relation", "tail"}, ...]}.
    Returns {"entities": [(type, text)], "triples": [(head, rel, tail)]}; parts that
    are missing or malformed come back as empty lists.
    """
    result = parse_json(text)
    value = result.value if isinstance(result.value, dict) else {}
    record = {
        "entities": _entities_from(value.get("entities")),
        "triples": _triples_from(value.get("relations")),
    }
    return record, result


def normalise_mention(s: Any) -> str:
    """Lowercase, collapse whitespace and strip surrounding punctuation/quotes."""
    if s is None:
        return ""
    text = " ".join(str(s).lower().split())
    start, end = 0, len(text)
    while start < end and _is_edge_junk(text[start]):
        start += 1
    while end > start and _is_edge_junk(text[end - 1]):
        end -= 1
    return text[start:end]


def _is_edge_junk(char: str) -> bool:
    # Unicode punctuation (P*) covers ASCII and typographic quotes, brackets, dashes.
    return char.isspace() or char == "`" or unicodedata.category(char).startswith("P")


def _coerce_text(text: Any) -> tuple[str, str | None]:
    if text is None:
        return "", "no output (None)"
    if isinstance(text, (bytes, bytearray)):
        return bytes(text).decode("utf-8", errors="replace"), None
    if not isinstance(text, str):
        return "", f"output is {type(text).__name__}, not text"
    return text, None


def _failure(reason: str) -> ParseResult:
    return ParseResult(value=None, strict=False, lenient=False, error=reason)


def _parse_embedded_json(text: str) -> ParseResult:
    """First '{' or '[' from which a whole JSON value decodes (fences and prose skipped)."""
    position = _next_bracket(text, 0)
    repairs_left = MAX_TRAILING_COMMA_REPAIRS
    for _ in range(MAX_LENIENT_CANDIDATES):
        if position < 0:
            return _failure("no JSON object or array found")
        result, repairs_left = _decode_candidate(text, position, repairs_left)
        if result is not None:
            return result
        position = _next_bracket(text, position + 1)
    return _failure("no decodable JSON in the first candidates")


def _decode_candidate(text: str, position: int, repairs_left: int) -> tuple[ParseResult | None, int]:
    """Leniently decode the value at `position`, dropping trailing commas while repairs last.

    Returns (result, repairs_left); result is None when the next bracket should be tried.
    """
    while True:
        try:
            value, _end = _LENIENT_DECODER.raw_decode(text, position)
            return ParseResult(value, strict=False, lenient=True, error=None), repairs_left
        except json.JSONDecodeError as err:
            # A value that runs off the end is truncated output: every later bracket
            # is inside it, so decoding one would only salvage a fragment.
            if err.pos >= len(text) or err.msg.startswith("Unterminated string"):
                return _failure("truncated JSON"), repairs_left
            repaired = _without_trailing_comma(text, err.pos) if repairs_left else None
            if repaired is None:
                return None, repairs_left
            text, repairs_left = repaired, repairs_left - 1
        except Exception:  # RecursionError on pathological nesting
            return None, repairs_left


def _without_trailing_comma(text: str, error_pos: int) -> str | None:
    """`text` minus the trailing comma that caused a decode error at `error_pos`, else None."""
    comma = _trailing_comma_index(text, error_pos)
    return None if comma is None else text[:comma] + text[comma + 1 :]


def _trailing_comma_index(text: str, error_pos: int) -> int | None:
    # Python < 3.13 reports a trailing comma at the closing bracket, 3.13+ at the comma.
    at_bracket = text[error_pos : error_pos + 1] in _CLOSING_BRACKETS
    comma = _last_non_space(text, error_pos) if at_bracket else error_pos
    if comma < 0 or text[comma : comma + 1] != ",":
        return None
    before = _last_non_space(text, comma)
    after = _WHITESPACE_RUN.match(text, comma + 1).end()
    if before < 0 or text[before] in _NO_VALUE_BEFORE or text[after : after + 1] not in _CLOSING_BRACKETS:
        return None  # "[,]", "[1,,]", '{"a":,}' elide a value; not a trailing comma
    return comma


def _last_non_space(text: str, end: int) -> int:
    """Index of the last non-JSON-whitespace character before `end`, -1 if none."""
    return len(text[:end].rstrip(_JSON_WHITESPACE)) - 1


def _next_bracket(text: str, start: int) -> int:
    brace, bracket = text.find("{", start), text.find("[", start)
    if brace < 0 or bracket < 0:
        return max(brace, bracket)
    return min(brace, bracket)


def _as_field(value: Any) -> str | None:
    """A JSON scalar as a stripped non-empty string; None for anything else."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None  # str() would turn it into the entity "nan" or "inf"
    if isinstance(value, (str, int, float)):
        field = str(value).strip()
        return field or None
    return None


def _entities_from(value: Any) -> list[tuple[str, str]]:
    if isinstance(value, list):
        return [pair for item in value if (pair := _entity_from_item(item))]
    if isinstance(value, dict):
        if "type" in value and "text" in value:  # a single entity object
            pair = _entity_from_item(value)
            return [pair] if pair else []
        return _entities_from_type_map(value)
    return []


def _entity_from_item(item: Any) -> tuple[str, str] | None:
    if not isinstance(item, dict):
        return None
    entity_type, mention = _as_field(item.get("type")), _as_field(item.get("text"))
    if entity_type is None or mention is None:
        return None
    return entity_type, mention


def _entities_from_type_map(type_map: dict) -> list[tuple[str, str]]:
    pairs = []
    for raw_type, mentions in type_map.items():
        entity_type = _as_field(raw_type)
        if entity_type is None:
            continue
        if not isinstance(mentions, list):
            mentions = [mentions]
        pairs.extend((entity_type, m) for m in map(_as_field, mentions) if m is not None)
    return pairs


def _triples_from(value: Any) -> list[tuple[str, str, str]]:
    if not isinstance(value, list):
        return []
    return [triple for item in value if (triple := _triple_from_item(item))]


def _triple_from_item(item: Any) -> tuple[str, str, str] | None:
    if isinstance(item, dict):
        parts = [item.get("head"), item.get("relation"), item.get("tail")]
    elif isinstance(item, list) and len(item) == 3:
        parts = item
    else:
        return None
    fields = [_as_field(part) for part in parts]
    if any(field is None for field in fields):
        return None
    return fields[0], fields[1], fields[2]
