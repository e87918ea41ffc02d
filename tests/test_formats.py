"""Tests for ie_helpers.formats: brat, i2b2 2010, RadGraph and BIO TSV readers, documents → sentences,
the user-corpus dispatcher, and the DDI dataset (a tiny zip always; the real zip when the mirror has it).

Fixtures are hand-written under tests/fixtures/clinical/; the real-data test is skipped without a mirror.
"""

import hashlib
import os
import shutil
import time
import zipfile
from pathlib import Path

import pytest

from ie_helpers import data, formats
from ie_helpers.data import DATASETS, ManifestEntry, load_split
from ie_helpers.errors import IEError
from ie_helpers.formats import (
    documents_to_sentences,
    load_user_corpus,
    read_brat,
    read_conll_bio_tsv,
    read_i2b2_2010,
    read_radgraph,
    regex_sentence_spans,
    split_documents,
    unpack_zip_once,
    with_bio_tags,
)

FIX = Path(__file__).resolve().parent / "fixtures" / "clinical"
BRAT_TXT, BRAT_ANN = FIX / "brat" / "note1.txt", FIX / "brat" / "note1.ann"
REPO = Path(__file__).resolve().parents[1]


def _one_line(msg: str) -> str:
    assert "\n" not in msg, f"IEError messages must be one line: {msg!r}"
    return msg


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------- brat


def test_read_brat_fixture():
    doc = read_brat(BRAT_TXT, BRAT_ANN)
    assert doc["id"] == "note1"
    assert doc["entities"] == [
        {"id": "T1", "type": "DRUG", "spans": [(0, 7)], "text": "Aspirin"},
        {"id": "T2", "type": "DRUG", "spans": [(32, 40)], "text": "warfarin"},
        {"id": "T3", "type": "GROUP", "spans": [(48, 52), (62, 70)], "text": "beta blockers"},
        {"id": "T4", "type": "GROUP", "spans": [(56, 69)], "text": "alpha blocker"},
        {"id": "T5", "type": "DRUG", "spans": [(80, 89)], "text": "Ibuprofen"},
    ]
    assert doc["relations"] == [{"type": "EFFECT", "head": "T1", "tail": "T2"},
                                {"type": "ADVISE", "head": "T3", "tail": "T5"}]
    assert doc["n_attributes_ignored"] == 1 and doc["n_other_lines_ignored"] == 1


def test_read_brat_malformed_line_names_file_and_line():
    with pytest.raises(IEError) as exc:
        read_brat(FIX / "bad.txt", FIX / "bad.ann")
    msg = _one_line(str(exc.value))
    assert "bad.ann:2" in msg and "malformed entity line" in msg and "T<n>" in msg


@pytest.mark.parametrize("ann, problem", [
    ("T1\tDRUG 0 7\tAspirin\nT2\tDRUG 32 40\twarfarine\n", "does not match"),
    ("T1\tDRUG 0 7\tAspirin\nT2\tDRUG 32 4000\twarfarin\n", "outside its text"),
    ("T1\tDRUG 0 7\tAspirin\nR1\tEFFECT Arg1:T1 Arg2:T9\n", "T9 is not an entity"),
    ("T1\tDRUG 0 7\tAspirin\nR1\tEFFECT T1 T2\n", "malformed relation line"),
    ("T1\tDRUG 0 7\tAspirin\nX1\tsomething\n", "unknown annotation line"),
])
def test_read_brat_bad_annotation_names_file_and_line(tmp_path, ann, problem):
    txt = tmp_path / "n.txt"
    shutil.copy(BRAT_TXT, txt)
    with pytest.raises(IEError) as exc:
        read_brat(txt, _write(tmp_path / "n.ann", ann))
    msg = _one_line(str(exc.value))
    assert "n.ann:2" in msg and problem in msg


def test_read_brat_keeps_crlf_offsets(tmp_path):
    txt = tmp_path / "w.txt"
    txt.write_bytes(b"First line.\r\nAspirin here.\r\n")
    doc = read_brat(txt, _write(tmp_path / "w.ann", "T1\tDRUG 13 20\tAspirin\n"))
    assert doc["entities"][0]["spans"] == [(13, 20)]


# --------------------------------------------------------------------------- documents → sentences


def test_brat_fixture_to_sentences_and_counts():
    sentences, counts = documents_to_sentences([read_brat(BRAT_TXT, BRAT_ANN)])
    assert [s["tokens"] for s in sentences] == [
        ["Aspirin", "increases", "the", "effect", "of", "warfarin", "."],
        ["Avoid", "beta", "or", "alpha", "blockers", "with", "it", "."],
        ["Ibuprofen", "was", "given", "twice", "daily", "."],
    ]
    assert [s["entities"] for s in sentences] == [
        [(0, 1, "DRUG"), (5, 6, "DRUG")],
        [(1, 5, "GROUP"), (3, 5, "GROUP")],  # discontinuous "beta ... blockers" → covering span
        [(0, 1, "DRUG")],
    ]
    assert [s["relations"] for s in sentences] == [[(0, 1, 5, 6, "EFFECT")], [], []]
    assert {s["doc_id"] for s in sentences} == {"note1"}
    assert counts == {"documents": 1, "sentences": 3, "entities_total": 5, "entities_kept": 5,
                      "entities_cross_sentence": 0, "entities_without_token": 0,
                      "entities_expanded_to_tokens": 1, "discontinuous_merged": 1, "entities_duplicate": 0,
                      "relations_total": 2, "relations_kept": 1, "relations_cross_sentence": 1,
                      "relations_entity_dropped": 0, "relations_duplicate": 0}


def test_entity_across_sentences_is_dropped_with_its_relation():
    text = "Take Drug A. Then drug B daily."
    doc = {"id": "d", "text": text, "relations": [{"type": "INT", "head": "T1", "tail": "T2"}],
           "entities": [{"id": "T1", "type": "DRUG", "spans": [(5, 18)], "text": "Drug A. Then"},
                        {"id": "T2", "type": "DRUG", "spans": [(18, 24)], "text": "drug B"},
                        {"id": "T3", "type": "DRUG", "spans": [(18, 24)], "text": "drug B"}]}
    sentences, counts = documents_to_sentences([doc])
    assert [s["entities"] for s in sentences] == [[], [(1, 3, "DRUG")]]
    assert counts["entities_cross_sentence"] == 1 and counts["entities_duplicate"] == 1
    assert counts["entities_kept"] == 1 and counts["relations_entity_dropped"] == 1
    assert counts["relations_kept"] == 0


def test_sentence_rule():
    text = "Dose 2.5 mg. then more. Stop now!\nnext line e.g. Warfarin"
    assert [text[a:b] for a, b in regex_sentence_spans(text)] == [
        "Dose 2.5 mg. then more.", " Stop now!\n", "next line e.g.", " Warfarin"]


def test_bio_tags_keep_the_shortest_of_overlapping_entities():
    sentences, _ = documents_to_sentences([read_brat(BRAT_TXT, BRAT_ANN)])
    tagged, omitted = with_bio_tags(sentences)
    assert omitted == 1
    assert tagged[1]["tags"] == ["O", "O", "O", "B-GROUP", "I-GROUP", "O", "O", "O"]
    assert tagged[1]["entities"] == sentences[1]["entities"]  # entities stay complete
    assert "tags" not in sentences[1]  # inputs are not changed


# --------------------------------------------------------------------------- i2b2 2010


I2B2 = FIX / "i2b2"
I2B2_ITEMS = [
    {"tokens": ["Admission", "Date", ":", "2010-01-01"], "entities": [], "relations": []},
    {"tokens": ["The", "patient", "had", "chest", "pain", "and", "was", "given", "aspirin", "."],
     "entities": [(3, 5, "problem"), (8, 9, "treatment")], "relations": [(8, 9, 3, 5, "TrAP")]},
    {"tokens": ["CT", "scan", "showed", "no", "bleeding", "."],
     "entities": [(0, 2, "test"), (4, 5, "problem")], "relations": [(0, 2, 4, 5, "TeRP")]},
]


def _core(items):
    return [{k: s[k] for k in ("tokens", "entities", "relations")} for s in items]


def test_read_i2b2_fixture():
    doc = read_i2b2_2010(I2B2 / "record-1.txt", I2B2 / "record-1.con", I2B2 / "record-1.rel")
    assert [(e["type"], e["text"]) for e in doc["entities"]] == [
        ("problem", "chest pain"), ("treatment", "aspirin"), ("test", "CT scan"), ("problem", "bleeding")]
    text = doc["text"]
    assert [text[s:e] for ent in doc["entities"] for s, e in ent["spans"]] == [
        "chest pain", "aspirin", "CT scan", "bleeding"]
    assert doc["relations"] == [{"type": "TrAP", "head": "T2", "tail": "T1"},
                                {"type": "TeRP", "head": "T3", "tail": "T4"}]
    sentences, counts = documents_to_sentences([doc])
    assert _core(sentences) == I2B2_ITEMS  # its own lines and whitespace tokens: "2010-01-01" stays one token
    assert counts["relations_kept"] == 2 and counts["entities_kept"] == 4


@pytest.mark.parametrize("con, problem", [
    ('c="chest pain" 2:3 2:4||t="problem"\nc="aspirin" 2:8||t="treatment"\n', "malformed concept line"),
    ('c="chest pain" 2:3 2:4||t="problem"\nc="aspirin" 9:8 9:8||t="treatment"\n', "not a token"),
    ('c="chest pain" 2:3 2:4||t="problem"\nc="heparin" 2:8 2:8||t="treatment"\n', "does not match"),
])
def test_read_i2b2_bad_concept_names_file_and_line(tmp_path, con, problem):
    with pytest.raises(IEError) as exc:
        read_i2b2_2010(I2B2 / "record-1.txt", _write(tmp_path / "r.con", con))
    msg = _one_line(str(exc.value))
    assert "r.con:2" in msg and problem in msg


def test_read_i2b2_relation_to_unknown_concept(tmp_path):
    rel = _write(tmp_path / "r.rel", 'c="aspirin" 2:8 2:8||r="TrAP"||c="pain" 2:4 2:4\n')
    with pytest.raises(IEError, match=r"r\.rel:1: .*not a concept of record-1\.con"):
        read_i2b2_2010(I2B2 / "record-1.txt", I2B2 / "record-1.con", rel)


# --------------------------------------------------------------------------- RadGraph and BIO TSV


def test_read_radgraph_fixture():
    (doc,) = read_radgraph(FIX / "radgraph.json")
    assert doc["id"] == "report-1"
    assert [(e["id"], e["type"], e["text"]) for e in doc["entities"]] == [
        ("1", "OBS-DP", "Mild"), ("2", "OBS-DP", "cardiomegaly"), ("3", "ANAT-DP", "pleural"),
        ("4", "OBS-DA", "effusion")]
    assert doc["relations"] == [{"type": "modify", "head": "1", "tail": "2"},
                                {"type": "located_at", "head": "4", "tail": "3"}]
    sentences, _ = documents_to_sentences([doc])
    assert _core(sentences) == [
        {"tokens": ["FINDINGS", ":", "Mild", "cardiomegaly", "."],
         "entities": [(2, 3, "OBS-DP"), (3, 4, "OBS-DP")], "relations": [(2, 3, 3, 4, "modify")]},
        {"tokens": ["No", "pleural", "effusion", "."],
         "entities": [(1, 2, "ANAT-DP"), (2, 3, "OBS-DA")], "relations": [(2, 3, 1, 2, "located_at")]},
    ]


def test_read_radgraph_token_mismatch(tmp_path):
    bad = _write(tmp_path / "rg.json", '{"r": {"text": "No effusion .", "entities": {"1": {"tokens": "edema", '
                                       '"label": "OBS-DA", "start_ix": 1, "end_ix": 1, "relations": []}}}}')
    with pytest.raises(IEError, match=r"rg\.json: document 'r', entity 1: text 'edema' does not match"):
        read_radgraph(bad)


def test_read_conll_bio_tsv_is_the_conll_reader():
    assert read_conll_bio_tsv is data.read_conll
    assert read_conll_bio_tsv(FIX / "bio.tsv") == [
        {"tokens": ["Patient", "denies", "chest", "pain", "."], "tags": ["O", "O", "B-problem", "I-problem", "O"]},
        {"tokens": ["Aspirin", "given", "."], "tags": ["B-treatment", "O", "O"]},
    ]


# --------------------------------------------------------------------------- load_user_corpus


def test_load_user_corpus_brat():
    items, counts = load_user_corpus(FIX / "brat", "brat")
    assert len(items) == 3 and items[0]["doc_id"] == "note1"
    assert items[0]["tags"] == ["B-DRUG", "O", "O", "O", "O", "B-DRUG", "O"]
    assert counts["relations_cross_sentence"] == 1 and counts["entities_untagged_overlap"] == 1


def test_load_user_corpus_i2b2_side_by_side_and_released_layout(tmp_path):
    items, _ = load_user_corpus(I2B2, "i2b2")
    assert _core(items) == I2B2_ITEMS
    assert items[1]["tags"][3:5] == ["B-problem", "I-problem"]
    for sub, suffix in (("txt", ".txt"), ("concept", ".con"), ("rel", ".rel")):
        (tmp_path / sub).mkdir()
        shutil.copy(I2B2 / f"record-1{suffix}", tmp_path / sub)
    released, _ = load_user_corpus(tmp_path, "i2b2")
    assert _core(released) == I2B2_ITEMS


def test_load_user_corpus_radgraph_and_bio_tsv():
    items, counts = load_user_corpus(FIX / "radgraph.json", "radgraph")
    assert [s["tags"] for s in items] == [["O", "O", "B-OBS-DP", "B-OBS-DP", "O"], ["O", "B-ANAT-DP", "B-OBS-DA", "O"]]
    assert counts["relations_kept"] == 2
    items, counts = load_user_corpus(FIX / "bio.tsv", "bio_tsv")
    assert [s["entities"] for s in items] == [[(2, 4, "problem")], [(0, 1, "treatment")]]
    assert all(s["relations"] == [] for s in items) and counts["entities_total"] == 2


def test_load_user_corpus_bad_requests(tmp_path):
    with pytest.raises(IEError, match="unknown corpus format 'xml'.*brat, i2b2, radgraph, bio_tsv"):
        load_user_corpus(FIX / "brat", "xml")
    with pytest.raises(IEError, match="does not exist"):
        load_user_corpus(tmp_path / "nope", "brat")
    with pytest.raises(IEError, match="no brat .ann files"):
        load_user_corpus(tmp_path, "brat")


# --------------------------------------------------------------------------- DDI: zip, dev split, load_split


def test_split_documents_is_seeded_disjoint_and_complete():
    docs = [{"id": f"d{k:02d}"} for k in range(30)]
    train, dev = split_documents(docs, 0.1, seed=0)
    assert len(dev) == 3 and len(train) == 27
    assert {d["id"] for d in train} | {d["id"] for d in dev} == {d["id"] for d in docs}
    assert split_documents(list(reversed(docs)), 0.1, seed=0)[1] == list(reversed(dev))  # by id, not order
    assert split_documents(docs, 0.1, seed=1)[1] != dev


def _tiny_ddi_zip(path: Path, n_train: int = 10) -> Path:
    names = [f"DDICorpusBrat/Train/DrugBank/drug{k}" for k in range(n_train)] + ["DDICorpusBrat/Test/MedLine/m0"]
    with zipfile.ZipFile(path, "w") as z:
        for name in names:
            z.write(BRAT_TXT, name + ".txt")
            z.write(BRAT_ANN, name + ".ann")
    return path


def test_unpack_zip_once_is_atomic_and_reused(tmp_path):
    zip_path = _tiny_ddi_zip(tmp_path / "c.zip")
    dest = unpack_zip_once(zip_path, tmp_path / "cache" / "unpacked")
    assert (dest / "DDICorpusBrat" / "Test" / "MedLine" / "m0.ann").is_file()
    assert [p.name for p in dest.parent.iterdir()] == ["unpacked"]  # no temp folder left
    marker = _write(dest / "marker", "x")
    assert unpack_zip_once(zip_path, dest) == dest and marker.exists()  # not unpacked again
    with pytest.raises(IEError, match="not a readable zip"):
        unpack_zip_once(_write(tmp_path / "bad.zip", "no zip"), tmp_path / "cache" / "other")
    assert not (tmp_path / "cache" / "other").exists()


def test_load_split_ddi_from_a_tiny_zip(tmp_path, monkeypatch):
    mirror, cache = tmp_path / "mirror", tmp_path / "cache"
    (mirror / "ddi").mkdir(parents=True)
    zip_path = _tiny_ddi_zip(mirror / "ddi" / "DDICorpus-2013-BRAT.zip")
    sha = hashlib.sha256(zip_path.read_bytes()).hexdigest()
    entry = ManifestEntry("ddi/DDICorpus-2013-BRAT.zip", "o/r", "0" * 40, "x.zip", sha, 1)
    monkeypatch.setattr(data, "read_manifest", lambda *a, **k: {entry.local_path: entry})
    monkeypatch.setenv("IE_DATA_DIR", str(mirror))
    monkeypatch.setenv("IE_CACHE_DIR", str(cache))
    parts = {split: load_split("ddi", split, allow_download=False) for split in ("train", "dev", "test")}
    docs = {split: {s["doc_id"] for s in items} for split, (items, _) in parts.items()}
    assert (len(docs["train"]), len(docs["dev"]), len(docs["test"])) == (9, 1, 1)
    assert not docs["train"] & docs["dev"]
    items, prov = parts["test"]
    assert (prov.source, prov.sha256, prov.n_items) == ("mirror", sha, 3)
    assert "1 documents → 3 sentences" in prov.warnings[0] and "1 discontinuous" in prov.warnings[0]
    assert items[0]["tags"] == ["B-DRUG", "O", "O", "O", "O", "B-DRUG", "O"]
    assert list((cache / "data" / "ddi").iterdir()) == [cache / "data" / "ddi" / f"unpacked-{sha[:16]}"]


def test_ddi_is_registered_on_the_pinned_zip():
    spec = DATASETS["ddi"]
    assert spec["format"] == "brat_zip" and set(spec["splits"]) == {"train", "dev", "test"}
    assert data.read_manifest()["ddi/DDICorpus-2013-BRAT.zip"].sha256.startswith("57c03cdbd3b8")


def _real_ddi_mirror() -> Path:
    candidates = [os.environ.get("IE_DATA_DIR"), str(REPO.parent / "shared" / "data")]
    for mirror in filter(None, candidates):
        if (Path(mirror) / "ddi" / "DDICorpus-2013-BRAT.zip").is_file():
            return Path(mirror)
    pytest.skip("real data mirror with ddi/DDICorpus-2013-BRAT.zip not available: set IE_DATA_DIR")


def test_real_ddi_counts_match_the_readme(monkeypatch, tmp_path):
    monkeypatch.setenv("IE_DATA_DIR", str(_real_ddi_mirror()))
    zip_path, source, _ = data.locate_file("ddi/DDICorpus-2013-BRAT.zip", allow_download=False)
    root = unpack_zip_once(zip_path, tmp_path / "ddi")
    expected = {"Train": (714, 14765, 4021, 38), "Test": (303, 3726, 979, 11)}
    for folder, (n_docs, n_entities, n_relations, n_discontinuous) in expected.items():
        docs = formats.read_brat_folder(root / "DDICorpusBrat" / folder)
        assert len(docs) == n_docs
        assert sum(len(d["entities"]) for d in docs) == n_entities
        assert sum(len(d["relations"]) for d in docs) == n_relations
        assert sum(len(e["spans"]) > 1 for d in docs for e in d["entities"]) == n_discontinuous
        assert {e["type"] for d in docs for e in d["entities"]} == {"DRUG", "BRAND", "GROUP", "DRUG_N"}
        assert {r["type"] for d in docs for r in d["relations"]} == {"MECHANISM", "EFFECT", "ADVISE", "INT"}

    started = time.perf_counter()
    train, prov = load_split("ddi", "train", allow_download=False)
    seconds = time.perf_counter() - started
    dev, _ = load_split("ddi", "dev", allow_download=False)
    test, _ = load_split("ddi", "test", allow_download=False)
    print(f"ddi train load {seconds:.2f} s; {prov.warnings[0]}")
    train_docs, dev_docs = {s["doc_id"] for s in train}, {s["doc_id"] for s in dev}
    assert len(dev_docs) == 71 and len(train_docs) == 643 and not train_docs & dev_docs
    assert len({s["doc_id"] for s in test}) == 303
    for s in train + dev + test:
        assert len(s["tags"]) == len(s["tokens"])
        assert all(0 <= a < b <= len(s["tokens"]) for a, b, _ in s["entities"])
