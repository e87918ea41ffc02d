"""Documents → instruction–input–output triples → chat prompt–completion pairs.

ETLCH's three tasks are built from one CoNLL04-style document (entities + relations):
- ``ner``: typed entity list ``[{"type": "person", "text": "John Smith"}, ...]``
- ``kge``: relation triples ``[["John Smith", "works_for", "IBM"], ...]``, given the entities
- ``json``: one record ``{"entities": {type: [texts]}, "relations": [{"head", "relation", "tail"}]}``,
  given the entities and triples.
Training uses gold upstream outputs; at inference the chain is NER → KGE → JSON with the
model's own upstream predictions substituted (see ``chain_input``), as in the paper.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ie_helpers.errors import IEError

ENTITY_LABELS = {"Peop": "person", "Org": "organization", "Loc": "location", "Other": "other",
                 "Drug": "drug", "Adverse-Effect": "adverse_effect"}
RELATION_LABELS = {"Work_For": "works_for", "Live_In": "lives_in", "OrgBased_In": "based_in",
                   "Located_In": "located_in", "Kill": "killed", "Adverse-Effect": "causes_adverse_effect"}
ETLCH_TASKS = ("ner", "kge", "json")
SYSTEM_PROMPT = "You are an information extraction system. Answer with JSON only."


@dataclass(frozen=True)
class Example:
    task: str
    instruction: str
    input: str
    output: str
    doc_id: int = -1


def _span_text(tokens: list[str], s: int, e: int) -> str:
    return " ".join(tokens[s:e])


def gold_entities(doc: dict) -> list[dict]:
    return [{"type": ENTITY_LABELS.get(t, t.lower()), "text": _span_text(doc["tokens"], s, e)}
            for s, e, t in sorted(doc["entities"])]


def gold_triples(doc: dict) -> list[list[str]]:
    tok = doc["tokens"]
    return [[_span_text(tok, hs, he), RELATION_LABELS.get(r, r.lower()), _span_text(tok, ts, te)]
            for hs, he, ts, te, r in doc["relations"]]


def gold_record(doc: dict, entity_types: list[str]) -> dict:
    by_type: dict[str, list[str]] = {t: [] for t in entity_types}
    for ent in gold_entities(doc):
        by_type.setdefault(ent["type"], []).append(ent["text"])
    relations = [{"head": h, "relation": r, "tail": t} for h, r, t in gold_triples(doc)]
    return {"entities": by_type, "relations": relations}


def dumps(value) -> str:
    """Compact, stable JSON: the exact form targets are trained on."""
    return json.dumps(value, ensure_ascii=False)


def instructions(entity_types: list[str], relation_types: list[str]) -> dict[str, str]:
    ents, rels = ", ".join(entity_types), ", ".join(relation_types)
    return {
        "ner": (f"Extract the named entities of types {ents} from the text. Answer with a JSON list of "
                'objects with keys "type" and "text", in order of appearance; [] if none.'),
        "kge": (f"Extract knowledge-graph triples between the given entities, with relations from: {rels}. "
                "Answer with a JSON list of [head, relation, tail] lists; [] if none."),
        "json": ("Build one JSON record from the text, its entities and its triples: "
                 f'{{"entities": {{type: [texts]}} for types {ents}, "relations": '
                 '[{"head", "relation", "tail"}]}.'),
    }


def chain_input(task: str, text: str, ner_output: str | None = None, kge_output: str | None = None) -> str:
    """The user-visible input of each task; downstream tasks see the upstream outputs (gold or predicted)."""
    if task == "ner":
        return f"Text: {text}"
    if task == "kge":
        return f"Text: {text}\nEntities: {ner_output}"
    if task == "json":
        return f"Text: {text}\nEntities: {ner_output}\nTriples: {kge_output}"
    raise IEError(f"unknown task {task!r}: use ner, kge or json")


def etlch_examples(doc: dict, doc_id: int, tasks=ETLCH_TASKS, *, entity_types: list[str],
                   relation_types: list[str]) -> list[Example]:
    """The training triples of one document, with gold upstream outputs in the chained inputs."""
    text = " ".join(doc["tokens"])
    ner_out = dumps(gold_entities(doc))
    kge_out = dumps(gold_triples(doc))
    outputs = {"ner": ner_out, "kge": kge_out, "json": dumps(gold_record(doc, entity_types))}
    instr = instructions(entity_types, relation_types)
    return [Example(t, instr[t], chain_input(t, text, ner_out, kge_out), outputs[t], doc_id) for t in tasks]


def label_sets(docs: list[dict]) -> tuple[list[str], list[str]]:
    ents = sorted({ENTITY_LABELS.get(t, t.lower()) for d in docs for *_, t in d["entities"]})
    rels = sorted({RELATION_LABELS.get(r, r.lower()) for d in docs for *_, r in d["relations"]})
    return ents, rels


def prompt_messages(instruction: str, input_text: str, system: str | None = SYSTEM_PROMPT) -> list[dict]:
    msgs = [{"role": "system", "content": system}] if system else []
    return msgs + [{"role": "user", "content": f"{instruction}\n\n{input_text}"}]


def to_prompt_completion(example: Example, system: str | None = SYSTEM_PROMPT) -> dict:
    """Conversational prompt–completion record for TRL's SFTTrainer (loss on the completion only)."""
    return {"prompt": prompt_messages(example.instruction, example.input, system),
            "completion": [{"role": "assistant", "content": example.output}],
            "task": example.task}
