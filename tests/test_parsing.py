import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # no packaging config yet

from ie_helpers.parsing import (  # noqa: E402
    MAX_LENIENT_CANDIDATES,
    ParseResult,
    normalise_mention,
    parse_entities,
    parse_json,
    parse_record,
    parse_triples,
)

ENTITIES_JSON = '[{"type": "person", "text": "Barack Obama"}, {"type": "location", "text": "Hawaii"}]'


# --- parse_json: strict / lenient flags -------------------------------------------


@pytest.mark.parametrize(
    "text, value",
    [
        ('{"a": 1}', {"a": 1}),
        ("  [1, 2]\n", [1, 2]),
        ('"just a string"', "just a string"),
        ('{"a": "x]}[{\\"y"}', {"a": 'x]}[{"y'}),  # brackets and quotes inside a string
        (b'{"a": "\xc3\xa9"}', {"a": "é"}),
    ],
)
def test_whole_json_is_strict_and_lenient(text, value):
    assert parse_json(text) == ParseResult(value=value, strict=True, lenient=True, error=None)


@pytest.mark.parametrize(
    "text, value",
    [
        ("```json\n" + ENTITIES_JSON + "\n```", [{"type": "person", "text": "Barack Obama"}, {"type": "location", "text": "Hawaii"}]),
        ('Here is the JSON: {"a": [1, {"b": 2}]}', {"a": [1, {"b": 2}]}),
        ('{"a": 1}\nI hope this helps!', {"a": 1}),
        ('Sure! {"s": "use [ and { freely"} done', {"s": "use [ and { freely"}),
        ('Types {person, org} then {"a": 1}', {"a": 1}),  # a non-JSON brace is skipped
        ('{"a": 1} {"b": 2}', {"a": 1}),  # first success wins
        ("```\n[[\"h\", \"r\", \"t\"]]\n```", [["h", "r", "t"]]),
    ],
)
def test_embedded_json_is_lenient_only(text, value):
    result = parse_json(text)
    assert (result.strict, result.lenient, result.error) == (False, True, None)
    assert result.value == value


@pytest.mark.parametrize(
    "text, error",
    [
        (None, "no output (None)"),
        ("", "empty output"),
        ("   \n", "empty output"),
        (42, "output is int, not text"),
        (3.5, "output is float, not text"),
        (["[1]"], "output is list, not text"),
        ("no json here at all", "no JSON object or array found"),
        ('[{"type": "person", "text": "Obama"}, {"ty', "truncated JSON"),
        ('{"entities": {"person": ["Obama"', "truncated JSON"),
        ("Here you go: [1, 2,", "truncated JSON"),
    ],
)
def test_unparseable_outputs_are_reported_not_raised(text, error):
    assert parse_json(text) == ParseResult(value=None, strict=False, lenient=False, error=error)


def test_truncated_list_does_not_salvage_an_inner_object():
    # The first inner object would decode, but it is only a fragment of a truncated list.
    result = parse_json('[{"type": "person", "text": "Obama"}, {"type": "loc')
    assert not result.lenient and result.value is None


@pytest.mark.parametrize(
    "text",
    [
        "[" * 100_000,
        "{" * 100_000,
        '["' + "[" * 100_000,
        "x [ " * 50_000,
        "[" + "1" * 5000 + "]",  # int longer than Python's digit limit
        "\ud800\x00\uffff garbage {]",
        b"\xff\xfe\x00 not utf8",
    ],
)
def test_pathological_text_never_raises(text):
    result = parse_json(text)
    assert result.strict is False and result.lenient is False and result.value is None
    assert isinstance(result.error, str) and result.error


@pytest.mark.parametrize(
    "text, value",
    [
        ("[NaN]", [None]),
        ('{"a": Infinity, "b": 1}', {"a": None, "b": 1}),
        ("[-Infinity, 2.5]", [None, 2.5]),
        ("[1e999999, -1e999999, 1e308]", [None, None, 1e308]),
    ],
)
def test_non_finite_numbers_are_not_strict_and_leniently_become_none(text, value):
    assert parse_json(text) == ParseResult(value=value, strict=False, lenient=True, error=None)


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e999999", "-1E999999"])
def test_non_finite_number_never_becomes_an_entity_or_triple(number):
    text = f'[{{"type": "person", "text": {number}}}, {{"type": "location", "text": "Paris"}}]'
    entities, result = parse_entities(text)
    assert entities == [("location", "Paris")]
    assert (result.strict, result.lenient) == (False, True)
    assert parse_entities(f'{{"number": [{number}, 3.5]}}')[0] == [("number", "3.5")]
    assert parse_triples(f'[["a", "r", {number}], ["a", "r", "b"]]')[0] == [("a", "r", "b")]
    assert not parse_json(number).lenient  # a bare number is not an object or array


@pytest.mark.parametrize(
    "text, value",
    [
        (ENTITIES_JSON[:-1] + ",]", [{"type": "person", "text": "Barack Obama"}, {"type": "location", "text": "Hawaii"}]),
        ('[1, 2 ,\n ]', [1, 2]),
        ('{"person": ["Ada", "Alan",],}', {"person": ["Ada", "Alan"]}),
        ('Output: [{"a": 1,}, [2,],]', [{"a": 1}, [2]]),
        ('{"s": "x,]", "t": [1,],}', {"s": "x,]", "t": [1]}),  # a ",]" inside a string is kept
    ],
)
def test_lenient_keeps_every_element_before_a_trailing_comma(text, value):
    result = parse_json(text)
    assert (result.strict, result.lenient, result.error) == (False, True, None)
    assert result.value == value


@pytest.mark.parametrize("text", ["[,]", "[1,,]", '{"a":,}', "{,}"])
def test_elided_values_are_not_trailing_commas(text):
    assert not parse_json(text).lenient


def test_trailing_comma_entities_are_all_kept():
    entities, result = parse_entities(ENTITIES_JSON[:-1] + ", ]")
    assert entities == [("person", "Barack Obama"), ("location", "Hawaii")]
    assert (result.strict, result.lenient) == (False, True)


@pytest.mark.parametrize("control", ["\n", "\t", "\r", "\x00", "\x1f"])
def test_raw_control_characters_in_strings_are_lenient_only(control):
    text = f'[{{"type": "person", "text": "Ada{control}Lovelace"}}, {{"type": "location", "text": "London"}}]'
    entities, result = parse_entities(text)
    assert entities == [("person", f"Ada{control}Lovelace"), ("location", "London")]
    assert (result.strict, result.lenient) == (False, True)
    assert parse_json('["Ada\\nLovelace"]').strict  # the escaped form stays strict JSON


_GARBLE_PIECES = [
    "[", "]", "{", "}", '"', ",", ":", " ", "\n", "\\", "\\u", "\x00", "\ud800", "NaN", "Infinity", "-",
    "1e999999", "1", "0.5", "e", "true", "null", "type", "text", "head", "```json", "é", "\uffff",
]
_VALID_SAMPLES = [
    ENTITIES_JSON,
    '{"entities": {"person": ["Ada"]}, "relations": [["a", "r", "b"]]}',
    '[["h", "r", "t"]]',
]


def _garbled_text(rng: random.Random) -> str:
    if rng.random() < 0.5:
        return "".join(rng.choice(_GARBLE_PIECES) for _ in range(rng.randint(0, 40)))
    chars = list(rng.choice(_VALID_SAMPLES))
    for _ in range(rng.randint(1, 6)):
        index = rng.randrange(len(chars) + 1)
        if rng.random() < 0.5 and index < len(chars):
            del chars[index]
        else:
            chars.insert(index, rng.choice(_GARBLE_PIECES))
    return "".join(chars)


def test_random_garbled_text_never_raises():
    rng = random.Random(20240611)
    for _ in range(400):
        text = _garbled_text(rng)
        for parse in (parse_entities, parse_triples, parse_record):
            _, result = parse(text)
            assert isinstance(result, ParseResult)
            assert result.lenient or (result.value is None and result.error)
            assert not result.strict or result.lenient


def test_lenient_scan_gives_up_after_bounded_candidates():
    junk = "[x] " * (MAX_LENIENT_CANDIDATES + 5)
    assert parse_json(junk + '{"a": 1}').error == "no decodable JSON in the first candidates"
    assert parse_json("[x] " * 3 + '{"a": 1}').value == {"a": 1}


# --- parse_entities -----------------------------------------------------------------


def test_entities_from_list_of_objects():
    entities, result = parse_entities(ENTITIES_JSON)
    assert entities == [("person", "Barack Obama"), ("location", "Hawaii")]
    assert result.strict


def test_entities_strip_and_skip_malformed_items():
    text = """[
        {"type": " person ", "text": "  Ada Lovelace "},
        "not a dict", 7, null, ["person", "x"],
        {"type": "person"},
        {"text": "no type"},
        {"type": null, "text": "x"},
        {"type": "org", "text": {"nested": 1}},
        {"type": "org", "text": ["a"]},
        {"type": "org", "text": true},
        {"type": "date", "text": 2024},
        {"type": "org", "text": "   "}
    ]"""
    entities, result = parse_entities(text)
    assert entities == [("person", "Ada Lovelace"), ("date", "2024")]
    assert result.strict


def test_entities_from_type_map_form():
    text = 'Output: {"person": ["Ada", " Alan "], "location": "London", "org": [], "bad": [1.5, null, {}]}'
    entities, result = parse_entities(text)
    assert entities == [("person", "Ada"), ("person", "Alan"), ("location", "London"), ("bad", "1.5")]
    assert (result.strict, result.lenient) == (False, True)


def test_single_entity_object_is_one_entity():
    entities, _ = parse_entities('{"type": "person", "text": "Ada"}')
    assert entities == [("person", "Ada")]


@pytest.mark.parametrize("text", ['"Ada"', "42", "[1, 2, 3]", '[["person", "Ada"]]', "nonsense", None, 12, "[{}]"])
def test_entities_wrong_shapes_give_empty_list(text):
    entities, result = parse_entities(text)
    assert entities == []
    assert isinstance(result, ParseResult)


# --- parse_triples ------------------------------------------------------------------


def test_triples_from_lists_and_objects():
    text = '[["Ada", "born in", "London"], {"head": "Alan", "relation": "works for", "tail": "NPL"}]'
    triples, result = parse_triples(text)
    assert triples == [("Ada", "born in", "London"), ("Alan", "works for", "NPL")]
    assert result.strict


def test_triples_skip_malformed_items():
    text = """```json
    [["a", "r"], ["a", "r", "b", "extra"], ["a", null, "b"], "a r b", 5,
     {"head": "a", "relation": "r"}, {"head": ["a"], "relation": "r", "tail": "b"},
     [" x ", " rel ", " y "]]
    ```"""
    triples, result = parse_triples(text)
    assert triples == [("x", "rel", "y")]
    assert (result.strict, result.lenient) == (False, True)


@pytest.mark.parametrize("text", ['{"head": "a", "relation": "r", "tail": "b"}', '"x"', "", None, b"\x00"])
def test_triples_non_list_gives_empty(text):
    triples, _ = parse_triples(text)
    assert triples == []


# --- parse_record -------------------------------------------------------------------


def test_record_full():
    text = """{"entities": {"person": ["Ada Lovelace"], "organization": [], "location": ["London"], "other": ["Analytical Engine"]},
               "relations": [{"head": "Ada Lovelace", "relation": "born_in", "tail": "London"}]}"""
    record, result = parse_record(text)
    assert record == {
        "entities": [("person", "Ada Lovelace"), ("location", "London"), ("other", "Analytical Engine")],
        "triples": [("Ada Lovelace", "born_in", "London")],
    }
    assert result.strict


@pytest.mark.parametrize(
    "text, expected",
    [
        ('{"entities": {"person": ["Ada"]}}', {"entities": [("person", "Ada")], "triples": []}),
        ('{"relations": [["a", "r", "b"]]}', {"entities": [], "triples": [("a", "r", "b")]}),
        ('{"entities": "oops", "relations": {"head": "a"}}', {"entities": [], "triples": []}),
        ("[1, 2]", {"entities": [], "triples": []}),
        ('{"entities": {"person": ["Ada"', {"entities": [], "triples": []}),
        (None, {"entities": [], "triples": []}),
    ],
)
def test_record_partial_or_wrong(text, expected):
    record, _ = parse_record(text)
    assert record == expected


def test_record_accepts_entity_list_form_inside():
    record, _ = parse_record('{"entities": [{"type": "person", "text": "Ada"}], "relations": []}')
    assert record["entities"] == [("person", "Ada")]


# --- normalise_mention --------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("  Barack   OBAMA ", "barack obama"),
        ('"New York."', "new york"),
        ("“Zürich”", "zürich"),
        ("(U.S.)", "u.s"),
        ("`code`", "code"),
        ("O'Brien's", "o'brien's"),
        ("Ada\n\tLovelace", "ada lovelace"),
        ("...", ""),
        ("", ""),
        (None, ""),
        (2024, "2024"),
    ],
)
def test_normalise_mention(raw, expected):
    assert normalise_mention(raw) == expected
