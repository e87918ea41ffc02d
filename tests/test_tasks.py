"""Tests for ie_helpers.tasks: gold targets, chained inputs, chat prompt–completion records."""

import json

import pytest

from ie_helpers import parsing
from ie_helpers.errors import IEError
from ie_helpers.tasks import (
    ETLCH_TASKS,
    SYSTEM_PROMPT,
    chain_input,
    dumps,
    etlch_examples,
    gold_entities,
    gold_triples,
    instructions,
    label_sets,
    prompt_messages,
    to_prompt_completion,
)

# entities deliberately listed out of order: targets must follow the text
DOC = {
    "tokens": ["John", "Smith", "works", "for", "IBM", "in", "New", "York", "."],
    "entities": [(6, 8, "Loc"), (0, 2, "Peop"), (4, 5, "Org")],
    "relations": [(0, 2, 4, 5, "Work_For"), (4, 5, 6, 8, "OrgBased_In")],
}
TEXT = "John Smith works for IBM in New York ."
ENTITY_TYPES = ["location", "organization", "other", "person"]
RELATION_TYPES = ["based_in", "works_for"]

NER = [{"type": "person", "text": "John Smith"}, {"type": "organization", "text": "IBM"},
       {"type": "location", "text": "New York"}]
KGE = [["John Smith", "works_for", "IBM"], ["IBM", "based_in", "New York"]]
RECORD = {"entities": {"location": ["New York"], "organization": ["IBM"], "other": [], "person": ["John Smith"]},
          "relations": [{"head": "John Smith", "relation": "works_for", "tail": "IBM"},
                        {"head": "IBM", "relation": "based_in", "tail": "New York"}]}


def _examples(tasks=ETLCH_TASKS):
    return etlch_examples(DOC, 7, tasks, entity_types=ENTITY_TYPES, relation_types=RELATION_TYPES)


def test_etlch_examples_outputs():
    ex = _examples()
    assert [e.task for e in ex] == ["ner", "kge", "json"]
    assert all(e.doc_id == 7 for e in ex)
    assert json.loads(ex[0].output) == NER
    assert json.loads(ex[1].output) == KGE
    assert json.loads(ex[2].output) == RECORD
    # every empty type is present in the record, in the given order
    assert list(json.loads(ex[2].output)["entities"]) == ENTITY_TYPES


def test_etlch_examples_chained_inputs_contain_gold_upstream():
    ner, kge, js = _examples()
    assert ner.input == f"Text: {TEXT}"
    assert "Entities:" not in ner.input
    assert kge.input == f"Text: {TEXT}\nEntities: {ner.output}"
    assert js.input == f"Text: {TEXT}\nEntities: {ner.output}\nTriples: {kge.output}"


def test_etlch_examples_task_subset():
    ex = _examples(("kge",))
    assert len(ex) == 1 and ex[0].task == "kge" and json.loads(ex[0].output) == KGE


def test_chain_input_uses_given_upstream_outputs():
    predicted_ner, predicted_kge = '[{"type": "person", "text": "Jon"}]', "garbage ]["
    kge = chain_input("kge", "some text", predicted_ner, predicted_kge)
    assert kge.startswith("Text: some text") and predicted_ner in kge and predicted_kge not in kge
    js = chain_input("json", "some text", predicted_ner, predicted_kge)
    assert predicted_ner in js and predicted_kge in js
    assert js.index(predicted_ner) < js.index(predicted_kge)
    assert chain_input("ner", "some text", predicted_ner, predicted_kge) == "Text: some text"
    with pytest.raises(IEError):
        chain_input("summarise", "x")


def test_instructions_name_the_label_sets():
    instr = instructions(ENTITY_TYPES, RELATION_TYPES)
    assert set(instr) == set(ETLCH_TASKS)
    assert "location, organization, other, person" in instr["ner"]
    assert "based_in, works_for" in instr["kge"]
    assert "person" in instr["json"]
    assert _examples()[1].instruction == instr["kge"]


def test_gold_outputs_round_trip_through_the_parsers():
    # the training targets must be read back exactly by the parsers used for scoring
    ner, kge, js = _examples()
    pairs, res = parsing.parse_entities(ner.output)
    assert res.strict and pairs == [(e["type"], e["text"]) for e in NER]
    triples, res = parsing.parse_triples(kge.output)
    assert res.strict and triples == [tuple(t) for t in KGE]
    record, res = parsing.parse_record(js.output)
    assert res.strict
    assert sorted(record["entities"]) == sorted((e["type"], e["text"]) for e in NER)
    assert record["triples"] == [tuple(t) for t in KGE]


def test_label_mapping_and_label_sets():
    doc = {"tokens": ["Aspirin", "causes", "nausea", "in", "Zürich"],
           "entities": [(0, 1, "Drug"), (2, 3, "Adverse-Effect"), (4, 5, "Venue")],
           "relations": [(0, 1, 2, 3, "Adverse-Effect"), (0, 1, 4, 5, "Sold In")]}
    assert gold_entities(doc) == [{"type": "drug", "text": "Aspirin"},
                                  {"type": "adverse_effect", "text": "nausea"},
                                  {"type": "venue", "text": "Zürich"}]
    assert gold_triples(doc)[0] == ["Aspirin", "causes_adverse_effect", "nausea"]
    assert gold_triples(doc)[1][1] == "sold in"
    ents, rels = label_sets([doc, DOC])
    assert ents == ["adverse_effect", "drug", "location", "organization", "person", "venue"]
    assert rels == ["based_in", "causes_adverse_effect", "sold in", "works_for"]
    assert "Zürich" in dumps(gold_entities(doc))  # not escaped to \\u00fc


def test_to_prompt_completion_roles():
    ex = _examples()[2]
    rec = to_prompt_completion(ex)
    assert rec["task"] == "json"
    assert [m["role"] for m in rec["prompt"]] == ["system", "user"]
    assert rec["prompt"][0]["content"] == SYSTEM_PROMPT
    user = rec["prompt"][1]["content"]
    assert user.startswith(ex.instruction) and user.endswith(ex.input)
    assert ex.output not in user  # the answer is not leaked into the prompt
    assert rec["completion"] == [{"role": "assistant", "content": ex.output}]
    for m in rec["prompt"] + rec["completion"]:
        assert set(m) == {"role", "content"} and isinstance(m["content"], str)


def test_prompt_without_system_message():
    rec = to_prompt_completion(_examples()[0], system=None)
    assert [m["role"] for m in rec["prompt"]] == ["user"]
    assert prompt_messages("do it", "Text: x", system="S") == [
        {"role": "system", "content": "S"}, {"role": "user", "content": "do it\n\nText: x"}]
