"""Readers for the clinical corpora's formats, and their conversion to sentence items.

Document readers (brat standoff, 2010 i2b2/n2c2 concept + relation files, RadGraph JSON) return
documents with character offsets::

    {"id", "text", "entities": [{"id", "type", "spans": [(start, end), ...], "text"}],
     "relations": [{"type", "head", "tail"}], "n_attributes_ignored", "n_other_lines_ignored"}

(spans end-exclusive; more than one span = a discontinuous entity; ``head``/``tail`` are entity ids).
A reader that knows the corpus's own tokens and sentences (i2b2: whitespace tokens, one sentence
per line; RadGraph: ``text.split()``) adds ``token_spans`` and, for i2b2, ``sentence_spans``.

:func:`documents_to_sentences` (in ``sentence_items``, re-exported here) turns documents into the sentence
items of ``data.read_unified_json`` -- ``{"tokens", "entities": [(start, end, type)], "relations":
[(hs, he, ts, te, type)]}``, token offsets, end exclusive -- and counts what it had to change or drop.
:func:`with_bio_tags` adds the IOB2 ``tags`` the NER code reads.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import zipfile
from pathlib import Path

from ie_helpers.errors import IEError
from ie_helpers.sentence_items import (  # noqa: F401 - moved to sentence_items; callers keep using formats.*
    COUNT_KEYS,
    Span,
    documents_to_sentences,
    regex_sentence_spans,
    regex_token_spans,
    with_bio_tags,
)

# --------------------------------------------------------------------------- brat standoff

_ENTITY_LINE = re.compile(r"(T\d+)\t(\S+) (\d+ \d+(?:;\d+ \d+)*)\t(.*)")
_RELATION_LINE = re.compile(r"(R\d+)\t(\S+) Arg1:(\S+) Arg2:(\S+)\s*")
_ENTITY_FORMAT = r"'T<n>\t<type> <start> <end>[;<start> <end>]\t<text>'"
_RELATION_FORMAT = r"'R<n>\t<type> Arg1:T<n> Arg2:T<n>'"
_ATTRIBUTE_KINDS = "AM"  # attributes and (old-style) modifiers
_OTHER_IGNORED_KINDS = "#NE*"  # notes, normalisations, events, equivalences


def _same_text(a: str, b: str) -> bool:
    # Whitespace is not compared: brat writes a line break inside an entity as a space, and joins the
    # fragments of a discontinuous entity with a space where DDI's converter sometimes joins them with none.
    return "".join(a.split()) == "".join(b.split())


def _read_text_exactly(path: Path) -> str:
    """The file's characters as brat counts them: no newline translation (a CRLF is two characters)."""
    with open(path, encoding="utf-8", newline="") as f:
        return f.read()


def _parse_entity_line(m: re.Match, text: str, where: str) -> dict:
    eid, etype, span_text, ann_text = m.groups()
    spans = [tuple(int(x) for x in part.split(" ")) for part in span_text.split(";")]
    for start, end in spans:
        if not 0 <= start < end <= len(text):
            raise IEError(f"{where}: entity {eid} span {start} {end} is outside its text of {len(text)} "
                          "characters (or empty); fix the offsets or pair the .ann with its own .txt")
    found = " ".join(text[s:e] for s, e in spans)
    if not _same_text(found, ann_text):
        raise IEError(f"{where}: entity {eid} text {ann_text!r} does not match the .txt there ({found!r}); "
                      "fix the offsets or pair the .ann with its own .txt")
    return {"id": eid, "type": etype, "spans": spans, "text": ann_text}


def read_brat(txt_path, ann_path, *, doc_id: str | None = None) -> dict:
    """One brat document. T and R lines are read; A/M (attributes) and #/N/E/* lines are counted and ignored."""
    txt_path, ann_path = Path(txt_path), Path(ann_path)
    text = _read_text_exactly(txt_path)
    entities, relations, relation_lines = {}, [], {}
    n_attributes = n_other = 0
    for lineno, line in enumerate(ann_path.read_text(encoding="utf-8").split("\n"), start=1):
        line = line.rstrip("\r")
        where = f"{ann_path}:{lineno}"
        if not line.strip():
            continue
        kind = line[0]
        if kind == "T":
            m = _ENTITY_LINE.fullmatch(line)
            if not m:
                raise IEError(f"{where}: malformed entity line {line!r}; expected {_ENTITY_FORMAT}")
            entity = _parse_entity_line(m, text, where)
            if entity["id"] in entities:
                raise IEError(f"{where}: entity id {entity['id']} is used twice; give each T line its own id")
            entities[entity["id"]] = entity
        elif kind == "R":
            m = _RELATION_LINE.fullmatch(line)
            if not m:
                raise IEError(f"{where}: malformed relation line {line!r}; expected {_RELATION_FORMAT}")
            relations.append({"type": m[2], "head": m[3], "tail": m[4]})
            relation_lines[len(relations) - 1] = where
        elif kind in _ATTRIBUTE_KINDS:
            n_attributes += 1
        elif kind in _OTHER_IGNORED_KINDS:
            n_other += 1
        else:
            raise IEError(f"{where}: unknown annotation line {line[:40]!r}; brat lines start with "
                          "T, R, A, M, N, E, # or *")
    for k, rel in enumerate(relations):  # an R line may name a T line further down
        for arg in (rel["head"], rel["tail"]):
            if arg not in entities:
                raise IEError(f"{relation_lines[k]}: relation argument {arg} is not an entity (T line) of "
                              f"{ann_path.name}; add the entity or drop the relation")
    return {"id": doc_id or txt_path.stem, "text": text, "entities": list(entities.values()),
            "relations": relations, "n_attributes_ignored": n_attributes, "n_other_lines_ignored": n_other}


def read_brat_folder(folder) -> list[dict]:
    """Every ``*.ann`` under ``folder`` (recursively) with its sibling ``.txt``, in path order.

    A document's id is its path relative to ``folder`` without the suffix (``DrugBank/Aspirin_ddi``).
    """
    folder = Path(folder)
    anns = sorted(folder.rglob("*.ann"))
    if not anns:
        raise IEError(f"no brat .ann files under {folder}; give the folder that holds the .txt/.ann pairs")
    docs = []
    for ann in anns:
        txt = ann.with_suffix(".txt")
        if not txt.is_file():
            raise IEError(f"{ann} has no matching {txt.name}; put each .txt next to its .ann")
        docs.append(read_brat(txt, ann, doc_id=ann.relative_to(folder).with_suffix("").as_posix()))
    return docs


# --------------------------------------------------------------------------- 2010 i2b2 / n2c2


_CONCEPT_LINE = re.compile(r'c="(.*)" (\d+):(\d+) (\d+):(\d+)\|\|t="([^"]+)"\s*')
_I2B2_RELATION_LINE = re.compile(r'c="(.*?)" (\d+):(\d+) (\d+):(\d+)\|\|r="([^"]+)"\|\|'
                                 r'c="(.*)" (\d+):(\d+) (\d+):(\d+)\s*')
_CONCEPT_FORMAT = "'c=\"<text>\" <line>:<token> <line>:<token>||t=\"<type>\"'"
_I2B2_RELATION_FORMAT = "'c=\"<text>\" <l>:<t> <l>:<t>||r=\"<type>\"||c=\"<text>\" <l>:<t> <l>:<t>'"


def _whitespace_tokens(text: str) -> list[Span]:
    return [m.span() for m in re.finditer(r"\S+", text)]


def _i2b2_lines(text: str) -> tuple[list[Span], list[list[Span]]]:
    """Char range of each line and the char spans of its whitespace tokens (both over the whole text)."""
    line_spans, line_tokens, offset = [], [], 0
    for line in text.split("\n"):
        line_spans.append((offset, offset + len(line)))
        line_tokens.append([(offset + s, offset + e) for s, e in _whitespace_tokens(line)])
        offset += len(line) + 1
    return line_spans, line_tokens


def _i2b2_char_span(position: tuple[str, ...], line_tokens: list[list[Span]], where: str) -> Span:
    """1-based line, 0-based token, inclusive end → char span; IEError if the position is not in the text."""
    l1, t1, l2, t2 = (int(x) for x in position)
    for line, token in ((l1, t1), (l2, t2)):
        if not (1 <= line <= len(line_tokens) and 0 <= token < len(line_tokens[line - 1])):
            raise IEError(f"{where}: position {line}:{token} is not a token of the .txt (lines are 1-based, "
                          "tokens 0-based and whitespace-separated); pair the file with its own .txt")
    start, end = line_tokens[l1 - 1][t1][0], line_tokens[l2 - 1][t2][1]
    if end <= start:
        raise IEError(f"{where}: concept ends ({l2}:{t2}) before it starts ({l1}:{t1}); fix the positions")
    return start, end


def read_i2b2_2010(txt_path, con_path, rel_path=None, *, doc_id: str | None = None) -> dict:
    """A 2010 i2b2/VA document: ``.txt`` (one sentence per line, whitespace tokens), ``.con``, optional ``.rel``.

    Entity spans become character offsets; the document keeps the corpus's own tokens and sentences
    (``token_spans``, ``sentence_spans`` = its lines) so :func:`documents_to_sentences` does not re-split.
    Concept text is compared case-insensitively (the ``.con`` files are lower-cased).
    """
    txt_path, con_path = Path(txt_path), Path(con_path)
    text = txt_path.read_text(encoding="utf-8")
    line_spans, line_tokens = _i2b2_lines(text)
    entities, by_position = [], {}
    for lineno, line in enumerate(con_path.read_text(encoding="utf-8").split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{con_path}:{lineno}"
        m = _CONCEPT_LINE.fullmatch(line.rstrip("\r"))
        if not m:
            raise IEError(f"{where}: malformed concept line {line[:80]!r}; expected {_CONCEPT_FORMAT}")
        start, end = _i2b2_char_span(m.groups()[1:5], line_tokens, where)
        found = text[start:end]
        if not _same_text(found.lower(), m[1].lower()):
            raise IEError(f"{where}: concept text {m[1]!r} does not match the .txt there ({found!r}); "
                          "fix the positions or pair the .con with its own .txt")
        entity = {"id": f"T{len(entities) + 1}", "type": m[6], "spans": [(start, end)], "text": found}
        entities.append(entity)
        by_position.setdefault(m.groups()[1:5], entity["id"])
    relations = []
    if rel_path is not None:
        rel_path = Path(rel_path)
        for lineno, line in enumerate(rel_path.read_text(encoding="utf-8").split("\n"), start=1):
            if not line.strip():
                continue
            where = f"{rel_path}:{lineno}"
            m = _I2B2_RELATION_LINE.fullmatch(line.rstrip("\r"))
            if not m:
                raise IEError(f"{where}: malformed relation line {line[:80]!r}; expected {_I2B2_RELATION_FORMAT}")
            args = [m.groups()[1:5], m.groups()[7:11]]
            for arg in args:
                if arg not in by_position:
                    raise IEError(f"{where}: relation argument {arg[0]}:{arg[1]} {arg[2]}:{arg[3]} is not a "
                                  f"concept of {con_path.name}; pair the .rel with its own .con")
            relations.append({"type": m[6], "head": by_position[args[0]], "tail": by_position[args[1]]})
    token_spans = [span for tokens in line_tokens for span in tokens]
    sentence_spans = [span for span, tokens in zip(line_spans, line_tokens) if tokens]
    return {"id": doc_id or txt_path.stem, "text": text, "entities": entities, "relations": relations,
            "n_attributes_ignored": 0, "n_other_lines_ignored": 0, "token_spans": token_spans,
            "sentence_spans": sentence_spans}


def read_i2b2_folder(folder) -> list[dict]:
    """An i2b2 2010 folder: ``txt/``, ``concept/`` (or ``concepts/``), ``rel/`` as released, or
    ``name.txt``, ``name.con``, ``name.rel`` side by side. A missing ``.rel`` means no relations."""
    folder = Path(folder)
    released = (folder / "txt").is_dir()
    txts = sorted((folder / "txt" if released else folder).glob("*.txt"))
    if not txts:
        raise IEError(f"no .txt files in {folder} or {folder / 'txt'}; give the i2b2 folder "
                      "(txt/ + concept/ + rel/, or .txt/.con/.rel side by side)")
    concept_dir = next((folder / d for d in ("concept", "concepts") if (folder / d).is_dir()), folder)
    docs = []
    for txt in txts:
        con = (concept_dir if released else folder) / f"{txt.stem}.con"
        rel = (folder / "rel" if released else folder) / f"{txt.stem}.rel"
        if not con.is_file():
            raise IEError(f"{txt} has no concept file {con}; put the .con files there")
        docs.append(read_i2b2_2010(txt, con, rel if rel.is_file() else None))
    return docs


# --------------------------------------------------------------------------- RadGraph


def read_radgraph(json_path) -> list[dict]:
    """RadGraph JSON: {doc_id: {"text", "entities": {id: {"tokens", "label", "start_ix", "end_ix",
    "relations": [[type, target_id]]}}}}, token indices inclusive over ``text.split()``.

    The doubly annotated test file has ``labeler_1``/``labeler_2`` instead of ``entities``; the first
    labeler is read. Documents keep their whitespace tokens (``token_spans``).
    """
    json_path = Path(json_path)
    try:
        raw = json.loads(json_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise IEError(f"{json_path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(raw, dict):
        raise IEError(f"{json_path}: expected a JSON object of doc_id → document; give a RadGraph json file")
    return [_radgraph_document(doc_id, doc, json_path) for doc_id, doc in raw.items()]


def _radgraph_document(doc_id: str, doc: dict, json_path: Path) -> dict:
    where = f"{json_path}: document {doc_id!r}"
    try:
        text = doc["text"]
        annotated = doc["entities"] if "entities" in doc else doc["labeler_1"]["entities"]
    except (KeyError, TypeError):
        raise IEError(f"{where}: expected keys 'text' and 'entities' (or 'labeler_1'); "
                      "give a RadGraph json file") from None
    token_spans = _whitespace_tokens(text)
    entities, relations = [], []
    for eid, ent in annotated.items():
        try:
            first, last = int(ent["start_ix"]), int(ent["end_ix"])
            label, ent_text, ent_relations = ent["label"], ent["tokens"], ent.get("relations", [])
        except (KeyError, TypeError, ValueError) as e:
            raise IEError(f"{where}, entity {eid}: malformed ({type(e).__name__}: {e}); expected tokens, "
                          "label, start_ix, end_ix, relations") from None
        if not 0 <= first <= last < len(token_spans):
            raise IEError(f"{where}, entity {eid}: tokens {first}..{last} outside the text's "
                          f"{len(token_spans)} tokens; pair the annotations with their own text")
        start, end = token_spans[first][0], token_spans[last][1]
        if not _same_text(text[start:end], ent_text):
            raise IEError(f"{where}, entity {eid}: text {ent_text!r} does not match tokens {first}..{last} "
                          f"({text[start:end]!r}); pair the annotations with their own text")
        entities.append({"id": str(eid), "type": label, "spans": [(start, end)], "text": text[start:end]})
        relations += [{"type": rel, "head": str(eid), "tail": str(target)} for rel, target in ent_relations]
    known = {e["id"] for e in entities}
    for rel in relations:
        if rel["tail"] not in known:
            raise IEError(f"{where}: relation {rel['type']} from {rel['head']} points to unknown entity "
                          f"{rel['tail']}; fix the target id")
    return {"id": str(doc_id), "text": text, "entities": entities, "relations": relations,
            "n_attributes_ignored": 0, "n_other_lines_ignored": 0, "token_spans": token_spans}


# --------------------------------------------------------------------------- BIO TSV


def read_conll(path) -> list[dict]:
    """CoNLL-style token-per-line file (token first column, tag last), blank line between sentences.

    IO tags (no B-) are converted to IOB2. ``-DOCSTART-`` lines are skipped.
    """
    from ie_helpers.ner import io_to_bio

    sentences, tokens, tags = [], [], []
    with open(path, encoding="utf-8") as f:
        for lineno, raw in enumerate(f, start=1):
            line = raw.rstrip("\n").rstrip("\r")
            if not line.strip():
                if tokens:
                    sentences.append({"tokens": tokens, "tags": tags})
                    tokens, tags = [], []
                continue
            if line.startswith("-DOCSTART-"):
                continue
            cols = line.split("\t") if "\t" in line else line.split(" ")
            cols = [c.strip() for c in cols if c.strip()]
            tag = cols[-1] if len(cols) >= 2 else ""
            if len(cols) < 2 or not (tag == "O" or tag[:2] in {"B-", "I-"}):
                raise IEError(f"{path}:{lineno}: malformed line {line[:60]!r}: expected 'token<TAB>tag' "
                              "with a tag O, B-TYPE or I-TYPE")
            tokens.append(cols[0])
            tags.append(tag)
    if tokens:
        sentences.append({"tokens": tokens, "tags": tags})
    for s in sentences:
        s["tags"] = io_to_bio(s["tags"])
    return sentences


# The clinical authors' converted files (token<TAB>tag, blank line between sentences) are exactly this format.
read_conll_bio_tsv = read_conll


def bio_sentences_to_items(sentences: list[dict]) -> list[dict]:
    """BIO sentences → sentence items with ``entities`` from the tags (no relations); ``tags`` kept."""
    from ie_helpers.ner import spans_from_bio

    return [{"tokens": s["tokens"], "entities": spans_from_bio(s["tags"]), "relations": [], "tags": s["tags"]}
            for s in sentences]


# --------------------------------------------------------------------------- corpora: zip, folders, dispatch


def unpack_zip_once(zip_path, dest) -> Path:
    """Unpack ``zip_path`` into ``dest`` unless it is there; atomic (a temp folder renamed into place)."""
    dest = Path(dest)
    if dest.is_dir():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with zipfile.ZipFile(zip_path) as z:
            z.extractall(tmp)
        tmp.rename(dest)
    except zipfile.BadZipFile:
        raise IEError(f"{zip_path} is not a readable zip file; delete it and rerun to fetch it again") from None
    except OSError:
        if not dest.is_dir():  # otherwise a concurrent run unpacked it first, which is as good
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def split_documents(docs: list[dict], dev_share: float = 0.1, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(train, dev): ``round(dev_share * n)`` documents picked by a seeded shuffle of the sorted ids; order kept."""
    ids = sorted(d["id"] for d in docs)
    random.Random(seed).shuffle(ids)
    dev_ids = set(ids[:round(dev_share * len(ids))])
    return [d for d in docs if d["id"] not in dev_ids], [d for d in docs if d["id"] in dev_ids]


def load_brat_zip_split(zip_path, unpack_dir, folder: str, part: str = "all", *,
                        dev_share: float = 0.1, seed: int = 0) -> tuple[list[dict], dict]:
    """Sentence items (with ``tags``) and counts for the brat documents under ``folder`` of a zip.

    ``part``: ``"all"`` documents, or the ``"train"``/``"dev"`` side of :func:`split_documents`.
    """
    root = unpack_zip_once(zip_path, unpack_dir)
    if not (root / folder).is_dir():
        raise IEError(f"{zip_path} has no folder {folder}; the zip is not the expected release")
    docs = read_brat_folder(root / folder)
    if part in ("train", "dev"):
        docs = split_documents(docs, dev_share, seed)[part == "dev"]
    elif part != "all":
        raise IEError(f"unknown part {part!r} of {folder}; use 'all', 'train' or 'dev'")
    sentences, counts = documents_to_sentences(docs)
    sentences, counts["entities_untagged_overlap"] = with_bio_tags(sentences)
    return sentences, counts


def conversion_note(name: str, counts: dict) -> str:
    """One line for a report: what turning documents into tagged sentences changed."""
    return (f"{name}: {counts['documents']} documents → {counts['sentences']} sentences (regex split); "
            f"dropped {counts['entities_total'] - counts['entities_kept']} of {counts['entities_total']} "
            f"entities and {counts['relations_total'] - counts['relations_kept']} of {counts['relations_total']} "
            f"relations (across sentences or duplicates); {counts['discontinuous_merged']} discontinuous "
            f"entities merged to their covering span; {counts.get('entities_untagged_overlap', 0)} nested "
            "entities left out of the NER tags")


USER_FORMATS = ("brat", "i2b2", "radgraph", "bio_tsv")


def load_user_corpus(path, format: str) -> tuple[list[dict], dict]:
    """A user's corpus → sentence items ``{"tokens", "entities", "relations", "tags"}`` and counts.

    ``format``: ``"brat"`` (a folder of ``.txt`` + ``.ann``, searched recursively), ``"i2b2"`` (a folder,
    see :func:`read_i2b2_folder`), ``"radgraph"`` (a json file) or ``"bio_tsv"`` (token<TAB>tag file).
    """
    path = Path(path).expanduser()
    if format not in USER_FORMATS:
        raise IEError(f"unknown corpus format {format!r}; use one of {', '.join(USER_FORMATS)}")
    if not path.exists():
        raise IEError(f"{path} does not exist; give the {format} corpus's path")
    if format == "bio_tsv":
        items = bio_sentences_to_items(read_conll(path))
        n_entities = sum(len(s["entities"]) for s in items)
        counts = {**dict.fromkeys(COUNT_KEYS, 0), "sentences": len(items), "entities_total": n_entities,
                  "entities_kept": n_entities, "entities_untagged_overlap": 0}
        return items, counts
    reader = {"brat": read_brat_folder, "i2b2": read_i2b2_folder, "radgraph": read_radgraph}[format]
    sentences, counts = documents_to_sentences(reader(path))
    sentences, counts["entities_untagged_overlap"] = with_bio_tags(sentences)
    return sentences, counts
