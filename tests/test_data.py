"""Tests for ie_helpers.data: readers, manifest, file lookup (mirror/cache/checksum), splits, sampling.

Everything runs on tiny hand-written fixtures under tests/fixtures/ie_data/ and tmp dirs; no
network access (downloads are disabled or the manifest is monkeypatched). The two real-data tests
run only when IE_DATA_DIR points at a mirror that has the files.
"""

import hashlib
import json
import os
import re
from pathlib import Path

import pytest

from ie_helpers import data
from ie_helpers.data import (
    DATASETS,
    ManifestEntry,
    load_split,
    locate_file,
    nested_sample,
    read_conll,
    read_jsonl_classification,
    read_manifest,
    read_unified_json,
    reader_for,
)
from ie_helpers.errors import IEError

FIX = Path(__file__).resolve().parent / "fixtures" / "ie_data"
REAL_DATA_SKIP = "real data mirror not available: set IE_DATA_DIR"


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _assert_one_line(msg: str) -> None:
    assert "\n" not in msg, f"IEError messages must be one line: {msg!r}"


def _assert_valid_iob2(tags: list[str]) -> None:
    prev = "O"
    for i, tag in enumerate(tags):
        assert tag == "O" or re.fullmatch(r"[BI]-\S+", tag), f"bad tag {tag!r} at {i}"
        if tag.startswith("I-"):
            assert prev != "O" and prev[2:] == tag[2:], f"I- tag {tag!r} after {prev!r} at {i}"
        prev = tag


# --------------------------------------------------------------------------- readers


def test_read_unified_json_fixture():
    docs = read_unified_json(FIX / "unified.json")
    assert len(docs) == 2
    assert docs[0]["tokens"] == ["John", "Smith", "works", "for", "IBM", "in", "Armonk", "."]
    assert docs[0]["entities"] == [(0, 2, "Peop"), (4, 5, "Org"), (6, 7, "Loc")]
    assert docs[0]["relations"] == [(0, 2, 4, 5, "Work_For"), (4, 5, 6, 7, "OrgBased_In")]
    assert all(isinstance(x, int) for s, e, _ in docs[0]["entities"] for x in (s, e))
    assert docs[1] == {"tokens": ["Nothing", "to", "see", "here", "."], "entities": [], "relations": []}


def test_read_unified_json_syntax_error_names_file_and_line(tmp_path):
    bad = _write(tmp_path / "bad.json", '[\n  {"tokens": ["a"], "entities": [], "relations": []},\n'
                                        '  {"tokens": ["b"] "entities": [], "relations": []}\n]\n')
    with pytest.raises(IEError) as exc:
        read_unified_json(bad)
    msg = str(exc.value)
    assert f"{bad}:3" in msg
    _assert_one_line(msg)


@pytest.mark.parametrize("doc, expected", [
    ({"tokens": ["a"], "entities": []}, "document 1"),                                  # no relations key
    ({"tokens": ["a", "b"], "entities": [[0, 1]], "relations": []}, "document 1"),       # 2-element entity
    ({"tokens": ["a", "b"], "entities": [[1, 5, "Peop"]], "relations": []}, "outside"),  # span past the end
    ({"tokens": ["a", "b"], "entities": [[1, 1, "Peop"]], "relations": []}, "outside"),  # empty span
])
def test_read_unified_json_bad_document(tmp_path, doc, expected):
    good = {"tokens": ["x"], "entities": [[0, 1, "Loc"]], "relations": []}
    bad = _write(tmp_path / "docs.json", json.dumps([good, doc]))
    with pytest.raises(IEError) as exc:
        read_unified_json(bad)
    assert str(bad) in str(exc.value) and expected in str(exc.value)


def test_read_unified_json_not_a_list(tmp_path):
    with pytest.raises(IEError, match="JSON list"):
        read_unified_json(_write(tmp_path / "obj.json", '{"tokens": []}'))


def test_read_conll_bio_tab_separated():
    sents = read_conll(FIX / "bio_tab.conll")
    # -DOCSTART- skipped, two blank lines in a row do not create an empty sentence,
    # the last sentence has no trailing blank line, a tab-separated token may contain a space.
    assert [s["tokens"] for s in sents] == [
        ["John", "Smith", "visited", "New York", "."],
        ["IBM", "hired", "Ann", "Lee", "and", "Bob"],
    ]
    assert sents[0]["tags"] == ["B-PER", "I-PER", "O", "B-LOC", "O"]
    # valid IOB2 passes through unchanged (B-PER after I-PER stays a new entity)
    assert sents[1]["tags"] == ["B-ORG", "O", "B-PER", "I-PER", "O", "B-PER"]


def test_read_conll_io_space_separated_converted_to_iob2():
    sents = read_conll(FIX / "io_space.conll")
    assert len(sents) == 2
    assert all("-DOCSTART-" not in s["tokens"] for s in sents)
    assert sents[0]["tokens"] == ["Acme", "Corp", "hired", "Maria", "Lopez", "in", "Boston", "."]
    assert sents[0]["tags"] == ["B-ORG", "I-ORG", "O", "B-PER", "I-PER", "O", "B-LOC", "O"]
    # the tag is the LAST column; adjacent entities of different types each get a B-
    assert sents[1]["tokens"] == ["Globex", "Lisbon", "bank"]
    assert sents[1]["tags"] == ["B-ORG", "B-LOC", "B-ORG"]
    for s in sents:
        assert len(s["tokens"]) == len(s["tags"])
        _assert_valid_iob2(s["tags"])


@pytest.mark.parametrize("bad_line", ["oops", "Smith\tPERSON", "Smith X-PER", "Smith\t"])
def test_read_conll_malformed_line_names_file_and_line(tmp_path, bad_line):
    bad = _write(tmp_path / "bad.conll", f"John\tB-PER\nSmith\tI-PER\n\n{bad_line}\nok\tO\n")
    with pytest.raises(IEError) as exc:
        read_conll(bad)
    msg = str(exc.value)
    assert f"{bad}:4" in msg
    _assert_one_line(msg)


def test_read_conll_trailing_whitespace_after_tag(tmp_path):
    f = _write(tmp_path / "ws.conll", "John\tB-PER \nSmith\tI-PER\t\nsaid\tO \n")
    assert read_conll(f)[0]["tags"] == ["B-PER", "I-PER", "O"]


def test_read_jsonl_classification_fixture():
    items = read_jsonl_classification(FIX / "classification.jsonl")
    assert items == [
        {"text": "We fine-tune BERT on the corpus.", "label": "method"},
        {"text": "Accuracy improves by 3 points.", "label": "result"},
        {"text": "Prior work [1] did this.", "label": "2"},  # labels are strings
    ]


@pytest.mark.parametrize("bad_line", ['{"text": "no label"}', "{not json", '["text", "label"]', "42"])
def test_read_jsonl_malformed_line_names_file_and_line(tmp_path, bad_line):
    bad = _write(tmp_path / "bad.jsonl", '{"text": "a", "label": "x"}\n\n' + bad_line + "\n")
    with pytest.raises(IEError) as exc:
        read_jsonl_classification(bad)
    msg = str(exc.value)
    assert f"{bad}:3" in msg
    _assert_one_line(msg)


def test_reader_for_suffix():
    assert reader_for(Path("x.json")) is read_unified_json
    assert reader_for(Path("x.jsonl")) is read_jsonl_classification
    assert reader_for(Path("x.tsv")) is read_conll
    assert reader_for(Path("x.conll")) is read_conll


# --------------------------------------------------------------------------- manifest


def test_read_manifest_real_file():
    manifest = read_manifest()
    assert len(manifest) >= 200
    url_re = re.compile(r"https://raw\.githubusercontent\.com/[\w.-]+/[\w.-]+/[0-9a-f]{40}/\S+")
    for local_path, entry in manifest.items():
        assert entry.local_path == local_path
        assert url_re.fullmatch(entry.url), entry.url
        assert entry.url == (f"https://raw.githubusercontent.com/{entry.repo}/{entry.commit}/"
                             f"{entry.path_in_source}")
        assert re.fullmatch(r"[0-9a-f]{64}", entry.sha256), local_path
        assert entry.bytes > 0
    # every registered split is pinned
    for name, spec in DATASETS.items():
        for split, path in spec["splits"].items():
            pinned = [k for k in manifest if k.startswith(path)] if path.endswith("/") else [path]
            assert pinned and all(p in manifest for p in pinned), f"{name}/{split}: {path} missing from MANIFEST.tsv"


def test_read_manifest_malformed_line(tmp_path):
    m = _write(tmp_path / "M.tsv", "local_path\tsource_repo@commit\tpath_in_source\tsha256\tbytes\n"
                                   "a/x.json\towner/repo@abc\tp/x.json\t" + "0" * 64 + "\t12\n"
                                   "a/y.json\towner/repo@abc\tp/y.json\t12\n")
    with pytest.raises(IEError) as exc:
        read_manifest(m)
    assert f"{m}:3" in str(exc.value)


def test_read_manifest_bad_bytes_column(tmp_path):
    m = _write(tmp_path / "M.tsv", "header\n"
                                   "a/x.json\towner/repo@abc\tp/x.json\t" + "0" * 64 + "\tlots\n")
    with pytest.raises(IEError, match=":2"):
        read_manifest(m)


# --------------------------------------------------------------------------- locate_file / load_split


@pytest.fixture
def no_data(tmp_path, monkeypatch):
    """An empty mirror and an empty cache: nothing can be found locally."""
    mirror, cache = tmp_path / "mirror", tmp_path / "cache"
    mirror.mkdir()
    cache.mkdir()
    monkeypatch.setenv("IE_DATA_DIR", str(mirror))
    monkeypatch.setenv("IE_CACHE_DIR", str(cache))
    return mirror, cache


def test_locate_file_checksum_mismatch_in_mirror(no_data):
    mirror, _ = no_data
    _write(mirror / "conll04" / "train.json", "[]")
    with pytest.raises(IEError) as exc:
        locate_file("conll04/train.json", allow_download=False)
    msg = str(exc.value)
    assert "checksum" in msg and "conll04/train.json" in msg
    _assert_one_line(msg)


def test_locate_file_checksum_mismatch_in_cache(no_data):
    _, cache = no_data
    _write(cache / "data" / "conll04" / "test.json", "[]")
    with pytest.raises(IEError, match="checksum"):
        locate_file("conll04/test.json", allow_download=False)


def test_locate_file_missing_everywhere_names_ie_data_dir(no_data):
    with pytest.raises(IEError) as exc:
        locate_file("conll04/train.json", allow_download=False)
    msg = str(exc.value)
    assert "IE_DATA_DIR" in msg and "conll04/train.json" in msg
    assert "https://raw.githubusercontent.com/" in msg  # the pinned source is named as the other fix
    _assert_one_line(msg)


def test_locate_file_not_in_manifest(no_data):
    with pytest.raises(IEError, match="MANIFEST"):
        locate_file("nope/train.json", allow_download=False)


@pytest.fixture
def tiny_manifest(monkeypatch, no_data):
    """Register the unified.json fixture as dataset 'tiny' with its real sha256 (no network needed)."""
    sha = hashlib.sha256((FIX / "unified.json").read_bytes()).hexdigest()
    entry = ManifestEntry("tiny/train.json", "owner/repo", "0" * 40, "train.json", sha, 1)
    monkeypatch.setattr(data, "read_manifest", lambda *a, **k: {"tiny/train.json": entry})
    monkeypatch.setitem(DATASETS, "tiny", {"format": "unified_json", "splits": {"train": "tiny/train.json"}})
    return no_data, entry


def test_locate_file_mirror_then_cache(tiny_manifest):
    (mirror, cache), entry = tiny_manifest
    cached = _write(cache / "data" / "tiny" / "train.json", (FIX / "unified.json").read_text("utf-8"))
    path, source, got = locate_file("tiny/train.json", allow_download=False)
    assert (path, source, got) == (cached, "cache", entry)
    mirrored = _write(mirror / "tiny" / "train.json", (FIX / "unified.json").read_text("utf-8"))
    path, source, _ = locate_file("tiny/train.json", allow_download=False)
    assert (path, source) == (mirrored, "mirror")  # the mirror wins over the cache


def test_load_split_provenance_from_mirror(tiny_manifest):
    (mirror, _), entry = tiny_manifest
    _write(mirror / "tiny" / "train.json", (FIX / "unified.json").read_text("utf-8"))
    docs, prov = load_split("tiny", "train", allow_download=False)
    assert len(docs) == 2 and prov.n_items == 2
    assert (prov.dataset, prov.split, prov.source) == ("tiny", "train", "mirror")
    assert prov.sha256 == entry.sha256 and prov.url == entry.url
    assert prov.warnings == []


def test_load_split_synthetic_fallback(no_data):
    docs, prov = load_split("conll04", "train", allow_synthetic=True, allow_download=False, synthetic_size=7)
    assert prov.source == "synthetic" and prov.sha256 == ""
    assert len(docs) == prov.n_items == 7
    assert len(prov.warnings) == 1 and "synthetic" in prov.warnings[0] and "IE_DATA_DIR" in prov.warnings[0]
    for d in docs:
        assert all(0 <= s < e <= len(d["tokens"]) for s, e, _ in d["entities"])
        assert d["relations"]
    # different splits use different seeds; same split is reproducible
    again, _ = load_split("conll04", "train", allow_synthetic=True, allow_download=False, synthetic_size=7)
    test, _ = load_split("conll04", "test", allow_synthetic=True, allow_download=False, synthetic_size=7)
    assert again == docs and test != docs


def test_load_split_synthetic_ner(no_data):
    sents, prov = load_split("fin-sec", "train", allow_synthetic=True, allow_download=False, synthetic_size=5)
    assert prov.source == "synthetic" and len(sents) == 5
    for s in sents:
        assert len(s["tokens"]) == len(s["tags"])
        _assert_valid_iob2(s["tags"])


def test_load_split_no_synthetic_without_permission(no_data):
    with pytest.raises(IEError, match="IE_DATA_DIR"):
        load_split("conll04", "train", allow_synthetic=False, allow_download=False)


def test_load_split_no_synthetic_for_classification(no_data):
    with pytest.raises(IEError, match="IE_DATA_DIR"):
        load_split("chemprot", "train", allow_synthetic=True, allow_download=False)


def test_load_split_checksum_error_never_falls_back_to_synthetic(no_data):
    mirror, _ = no_data
    _write(mirror / "conll04" / "train.json", "[]")
    with pytest.raises(IEError, match="checksum"):
        load_split("conll04", "train", allow_synthetic=True, allow_download=False)


def test_load_split_unknown_dataset_and_split():
    with pytest.raises(IEError) as exc:
        load_split("conll2099", "train", allow_download=False)
    assert "conll2099" in str(exc.value) and "conll04" in str(exc.value)
    with pytest.raises(IEError) as exc:
        load_split("fin-sec", "dev", allow_download=False)
    assert "'dev'" in str(exc.value) and "train, test" in str(exc.value)


def test_load_split_user_file():
    path = FIX / "unified.json"
    docs, prov = load_split(str(path), "test")
    assert len(docs) == 2
    assert prov.source == "user-file" and prov.dataset == "unified" and prov.split == "test"
    assert prov.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- sampling


def test_nested_sample_deterministic_and_nested():
    items = list(range(50))
    a5, a10 = nested_sample(items, 5, seed=3), nested_sample(items, 10, seed=3)
    assert a5 == nested_sample(items, 5, seed=3)
    assert a10[:5] == a5
    assert len(set(a10)) == 10 and set(a10) <= set(items)
    assert nested_sample(items, 10, seed=4) != a10  # the seed matters
    assert a10 != items[:10]  # it is a shuffle, not a head
    assert sorted(nested_sample(items, 50, seed=0)) == items
    assert nested_sample(items, 0, seed=0) == []


def test_nested_sample_too_many_names_the_size():
    with pytest.raises(IEError) as exc:
        nested_sample(list(range(7)), 8, seed=0, what="training documents")
    msg = str(exc.value)
    assert "8" in msg and "7" in msg and "training documents" in msg


def test_nested_sample_negative():
    with pytest.raises(IEError):
        nested_sample([1, 2, 3], -1, seed=0)


# --------------------------------------------------------------------------- real data (optional)


def _real_mirror(rel: str) -> Path:
    mirror = os.environ.get("IE_DATA_DIR")
    if not mirror or not (Path(mirror) / rel).is_file():
        pytest.skip(REAL_DATA_SKIP)
    return Path(mirror)


def test_real_conll04_train():
    _real_mirror("conll04/train.json")
    docs, prov = load_split("conll04", "train", allow_download=False)
    assert len(docs) == 922 and prov.n_items == 922
    assert prov.source == "mirror"
    assert prov.sha256 == read_manifest()["conll04/train.json"].sha256  # verified on load
    assert {t for d in docs for *_, t in d["entities"]} == {"Peop", "Org", "Loc", "Other"}


def test_real_fin_sec_train_is_valid_iob2():
    _real_mirror("fin-sec/train.conll")
    sents, prov = load_split("fin-sec", "train", allow_download=False)
    assert prov.source == "mirror" and prov.sha256 == read_manifest()["fin-sec/train.conll"].sha256
    assert len(sents) == 1164
    assert all("-DOCSTART-" not in s["tokens"] for s in sents)
    for s in sents:
        assert len(s["tokens"]) == len(s["tags"]) > 0
        _assert_valid_iob2(s["tags"])
    assert {t[2:] for s in sents for t in s["tags"] if t != "O"} == {"PER", "ORG", "LOC", "MISC"}


def test_read_webnlg_fixture():
    from ie_helpers.data import read_webnlg

    items = read_webnlg(FIX / "webnlg_small.xml")
    assert [i["eid"] for i in items] == ["Id1", "Id2"]
    assert items[0]["triples"] == [("Aarhus", "leader", "Jacob Bundsgaard")]
    assert len(items[0]["texts"]) == 2 and items[1]["triples"][1] == ("Ciudad Ayala", "leaderTitle", "City Manager")


def test_read_webnlg_malformed_triple_names_entry(tmp_path):
    from ie_helpers.data import read_webnlg

    bad = tmp_path / "bad.xml"
    bad.write_text("<benchmark><entries><entry eid='Id9'><modifiedtripleset><mtriple>A | B</mtriple>"
                   "</modifiedtripleset></entry></entries></benchmark>")
    with pytest.raises(IEError, match="Id9.*malformed triple"):
        read_webnlg(bad)


@pytest.mark.skipif(not (os.environ.get("IE_DATA_DIR") and
                         Path(os.environ.get("IE_DATA_DIR", ".")).joinpath("webnlg/test-semantic-parsing.xml").exists()),
                    reason="real data mirror not available: set IE_DATA_DIR")
def test_webnlg_real_splits_load_and_verify():
    from ie_helpers.data import load_split

    test, prov = load_split("webnlg", "test")
    assert len(test) == 2155 and prov.source == "mirror"
    train, prov = load_split("webnlg", "train")
    assert len(train) == 13211 and all(len(t) == 3 for i in train[:50] for t in i["triples"])
