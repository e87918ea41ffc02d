"""Datasets: pinned manifest, where files come from, readers, deterministic sampling.

A file is looked up in this order, and its sha256 is checked against ``data/MANIFEST.tsv``:
1. the mirror directory named by ``IE_DATA_DIR`` (CI points it at ``../shared/data``);
2. the local download cache (``.cache/data``);
3. a download from the pinned GitHub commit in the manifest (into the cache);
4. only if the caller allows it: a small embedded *synthetic* stand-in, which reports flag in red.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from ie_helpers import formats
from ie_helpers.errors import IEError
from ie_helpers.formats import read_conll  # noqa: F401 - moved to formats; callers keep using data.read_conll
from ie_helpers.models import REPO_ROOT, cache_dir

MANIFEST_PATH = REPO_ROOT / "data" / "MANIFEST.tsv"
RAW_URL = "https://raw.githubusercontent.com/{repo}/{commit}/{path}"

# Dataset name → format and split files (paths relative to the mirror root, as in the manifest).
DATASETS: dict[str, dict] = {
    "conll04": {"format": "unified_json",
                "splits": {"train": "conll04/train.json", "dev": "conll04/valid.json", "test": "conll04/test.json"}},
    "ade": {"format": "unified_json",
            "splits": {"train": "ade/train.json", "dev": "ade/valid.json", "test": "ade/test.json"}},
    "fin-sec": {"format": "conll", "splits": {"train": "fin-sec/train.conll", "test": "fin-sec/test.conll"}},
    "wnut17": {"format": "conll",
               "splits": {"train": "wnut17/train.conll", "dev": "wnut17/dev.conll", "test": "wnut17/test.conll"}},
    "ncbi-disease": {"format": "conll", "splits": {"train": "ncbi-disease/train.tsv",
                                                    "dev": "ncbi-disease/devel.tsv", "test": "ncbi-disease/test.tsv"}},
    "bc5cdr": {"format": "conll",
               "splits": {"train": "bc5cdr/train.tsv", "dev": "bc5cdr/devel.tsv", "test": "bc5cdr/test.tsv"}},
    "webnlg": {"format": "webnlg_xml", "splits": {"train": "webnlg/train/", "dev": "webnlg/dev/",
                                                   "test": "webnlg/test-semantic-parsing.xml"}},
    "chemprot": {"format": "jsonl_classification", "splits": {
        "train": "chemprot/train.jsonl", "dev": "chemprot/dev.jsonl", "test": "chemprot/test.jsonl"}},
    "sci-cite": {"format": "jsonl_classification", "splits": {
        "train": "sci-cite/train.jsonl", "dev": "sci-cite/dev.jsonl", "test": "sci-cite/test.jsonl"}},
    "citation-intent": {"format": "jsonl_classification", "splits": {
        "train": "citation-intent/train.jsonl", "dev": "citation-intent/dev.jsonl",
        "test": "citation-intent/test.jsonl"}},
    # One zip holds every split; "parts" names each split's folder in it and which documents it takes:
    # dev is 10% of the Train documents (seeded shuffle of their ids, formats.split_documents), train the rest.
    "ddi": {"format": "brat_zip", "splits": dict.fromkeys(("train", "dev", "test"), "ddi/DDICorpus-2013-BRAT.zip"),
            "parts": {"train": ("DDICorpusBrat/Train", "train"), "dev": ("DDICorpusBrat/Train", "dev"),
                      "test": ("DDICorpusBrat/Test", "all")}},
}


@dataclass(frozen=True)
class ManifestEntry:
    local_path: str
    repo: str
    commit: str
    path_in_source: str
    sha256: str
    bytes: int

    @property
    def url(self) -> str:
        return RAW_URL.format(repo=self.repo, commit=self.commit, path=self.path_in_source)


@dataclass
class Provenance:
    """Where a loaded split came from; goes into run.json and the report."""
    dataset: str
    split: str
    source: str  # "mirror", "cache", "download" or "synthetic"
    path: str
    sha256: str
    url: str
    n_items: int = 0
    warnings: list[str] = field(default_factory=list)


def read_manifest(path: Path = MANIFEST_PATH) -> dict[str, ManifestEntry]:
    entries = {}
    lines = path.read_text(encoding="utf-8").splitlines()
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) != 5 or "@" not in cols[1]:
            raise IEError(f"{path}:{lineno}: malformed manifest line (expected 5 tab-separated columns)")
        repo, commit = cols[1].split("@", 1)
        try:
            size = int(cols[4])
        except ValueError:
            raise IEError(f"{path}:{lineno}: bytes column {cols[4]!r} is not an integer") from None
        entries[cols[0]] = ManifestEntry(cols[0], repo, commit, cols[2], cols[3], size)
    return entries


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _verified(path: Path, entry: ManifestEntry, where: str) -> Path:
    actual = sha256_of(path)
    if actual != entry.sha256:
        raise IEError(f"checksum mismatch for {path} ({where}): expected sha256 {entry.sha256[:12]}…, "
                      f"got {actual[:12]}…; the file is corrupted or a different version: delete it "
                      f"or fix the mirror, then rerun")
    return path


def _download(entry: ManifestEntry, dest: Path, timeout: float = 20.0) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(entry.url, timeout=timeout) as response, open(tmp, "wb") as f:
            f.write(response.read())
        _verified(tmp, entry, "download")
    except BaseException:
        tmp.unlink(missing_ok=True)  # never leave a partial or corrupt download in the cache
        raise
    tmp.replace(dest)
    return dest


def locate_file(local_path: str, *, allow_download: bool = True) -> tuple[Path, str, ManifestEntry]:
    """Find a manifest file: mirror → cache → download. Returns (path, source, entry)."""
    manifest = read_manifest()
    if local_path not in manifest:
        raise IEError(f"'{local_path}' is not in {MANIFEST_PATH.name}; add its pinned source and sha256 there")
    entry = manifest[local_path]
    mirror = os.environ.get("IE_DATA_DIR")
    if mirror and (Path(mirror) / local_path).is_file():
        return _verified(Path(mirror) / local_path, entry, "mirror"), "mirror", entry
    cached = cache_dir() / "data" / local_path
    if cached.is_file():
        return _verified(cached, entry, "cache"), "cache", entry
    if allow_download:
        try:
            return _download(entry, cached), "download", entry
        except IEError:
            raise
        except Exception as e:  # noqa: BLE001 - offline, DNS, HTTP errors all mean "not downloadable now"
            reason = f"download failed ({type(e).__name__})"
    else:
        reason = "downloads disabled"
    raise IEError(f"dataset file '{local_path}' not found: set IE_DATA_DIR to a mirror that has it "
                  f"(e.g. ../shared/data), or allow the download from {entry.url} [{reason}]")


# --------------------------------------------------------------------------- readers


def read_unified_json(path: Path) -> list[dict]:
    """CoNLL04/ADE unified JSON: tokens, entities [[start, end, type]], relations [[hs, he, ts, te, type]]."""
    try:
        docs = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise IEError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(docs, list):
        raise IEError(f"{path}: expected a JSON list of documents")
    out = []
    for i, d in enumerate(docs):
        try:
            tokens = [str(t) for t in d["tokens"]]
            entities = [(int(s), int(e), str(t)) for s, e, t in d["entities"]]
            relations = [(int(a), int(b), int(c), int(e), str(t)) for a, b, c, e, t in d["relations"]]
        except (KeyError, TypeError, ValueError) as e:
            raise IEError(f"{path}: document {i}: malformed ({type(e).__name__}: {e}); expected keys "
                          "tokens, entities [[start,end,type]], relations [[hs,he,ts,te,type]]") from None
        spans = [(s, e) for s, e, _ in entities] + [x for a, b, c, e, _ in relations for x in ((a, b), (c, e))]
        for s, e in spans:
            if not 0 <= s < e <= len(tokens):
                raise IEError(f"{path}: document {i}: span [{s}, {e}) outside its {len(tokens)} tokens")
        out.append({"tokens": tokens, "entities": entities, "relations": relations})
    return out


def read_jsonl_classification(path: Path) -> list[dict]:
    out = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                out.append({"text": str(item["text"]), "label": str(item["label"])})
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise IEError(f"{path}:{lineno}: malformed line ({type(e).__name__}); "
                              "expected a JSON object with 'text' and 'label'") from None
    return out


def read_webnlg(paths) -> list[dict]:
    """WebNLG 3.0 XML: one item per entry with its modified triples (underscores → spaces) and lexicalisations."""
    import xml.etree.ElementTree as ET

    items = []
    for path in [paths] if isinstance(paths, (str, Path)) else paths:
        try:
            root = ET.parse(path).getroot()
        except ET.ParseError as e:
            raise IEError(f"{path}:{e.position[0]}: not valid WebNLG XML ({e})") from None
        for entry in root.iter("entry"):
            triples = []
            for t in entry.iter("mtriple"):
                parts = [x.strip().replace("_", " ") for x in (t.text or "").split("|")]
                if len(parts) != 3:
                    raise IEError(f"{path}: entry {entry.get('eid')}: malformed triple {t.text!r}; "
                                  "expected 'subject | predicate | object'")
                triples.append(tuple(parts))
            texts = [(lex.text or "").strip() for lex in entry.iter("lex") if (lex.text or "").strip()]
            items.append({"eid": entry.get("eid"), "category": entry.get("category"), "triples": triples,
                          "texts": texts})
    return items


READERS = {"unified_json": read_unified_json, "conll": read_conll, "jsonl_classification": read_jsonl_classification,
           "webnlg_xml": read_webnlg}


def reader_for(path: Path):
    """Pick a reader by file suffix, for user-supplied files."""
    suffix = Path(path).suffix
    if suffix == ".json":
        return read_unified_json
    if suffix == ".jsonl":
        return read_jsonl_classification
    return read_conll


# --------------------------------------------------------------------------- synthetic stand-ins


_PEOPLE = ["Maria Lopez", "John Carter", "Aiko Tanaka", "Omar Haddad", "Lena Fischer", "Ravi Patel"]
_ORGS = ["Acme Corp", "Northwind Bank", "Globex", "Initech", "Stark Industries", "Umbrella Labs"]
_PLACES = ["Boston", "Lisbon", "Nairobi", "Osaka", "Denver", "Hamburg"]


def synthetic_relation_docs(n: int, seed: int = 0) -> list[dict]:
    """Template sentences in the unified-JSON schema; only for smoke tests and as a flagged fallback."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        p, o, c = rng.choice(_PEOPLE), rng.choice(_ORGS), rng.choice(_PLACES)
        tokens = p.split() + ["works", "for"] + o.split() + ["in"] + c.split() + ["."]
        ps, pe = 0, len(p.split())
        os_, oe = pe + 2, pe + 2 + len(o.split())
        cs, ce = oe + 1, oe + 1 + len(c.split())
        docs.append({"tokens": tokens, "entities": [(ps, pe, "Peop"), (os_, oe, "Org"), (cs, ce, "Loc")],
                     "relations": [(ps, pe, os_, oe, "Work_For"), (os_, oe, cs, ce, "OrgBased_In")]})
    return docs


def synthetic_ner_sentences(n: int, seed: int = 0) -> list[dict]:
    docs = synthetic_relation_docs(n, seed)
    label = {"Peop": "PER", "Org": "ORG", "Loc": "LOC"}
    out = []
    for d in docs:
        tags = ["O"] * len(d["tokens"])
        for s, e, t in d["entities"]:
            tags[s] = f"B-{label[t]}"
            for k in range(s + 1, e):
                tags[k] = f"I-{label[t]}"
        out.append({"tokens": d["tokens"], "tags": tags})
    return out


SYNTHETIC = {"unified_json": synthetic_relation_docs, "conll": synthetic_ner_sentences}


# --------------------------------------------------------------------------- loading and sampling


def load_split(dataset: str, split: str, *, allow_synthetic: bool = False, allow_download: bool = True,
               synthetic_size: int = 64) -> tuple[list[dict], Provenance]:
    """Load one split of a registered dataset, or of a user file given as a path."""
    if Path(dataset).expanduser().is_file():  # user-supplied file: no manifest, checksum recorded
        path = Path(dataset).expanduser()
        items = reader_for(path)(path)
        return items, Provenance(path.stem, split, "user-file", str(path), sha256_of(path), "", len(items))
    if dataset not in DATASETS:
        raise IEError(f"unknown dataset '{dataset}': choose one of {', '.join(DATASETS)} or give a file path")
    spec = DATASETS[dataset]
    if split not in spec["splits"]:
        raise IEError(f"dataset '{dataset}' has no '{split}' split (it has {', '.join(spec['splits'])})")
    local_path = spec["splits"][split]
    if local_path.endswith("/"):  # a folder of manifest files (WebNLG train/dev are split by size and category)
        files = sorted(k for k in read_manifest() if k.startswith(local_path))
        located = [locate_file(f, allow_download=allow_download) for f in files]
        items = READERS[spec["format"]]([p for p, _, _ in located])
        digest = hashlib.sha256("".join(e.sha256 for _, _, e in located).encode()).hexdigest()
        return items, Provenance(dataset, split, located[0][1], str(Path(located[0][0]).parent.parent), digest,
                                 f"{len(files)} pinned files, e.g. {located[0][2].url}", len(items))
    try:
        path, source, entry = locate_file(local_path, allow_download=allow_download)
    except IEError as e:
        if not allow_synthetic or spec["format"] not in SYNTHETIC or "checksum" in str(e):
            raise
        seed = {"train": 0, "dev": 1, "test": 2}.get(split, 3)
        items = SYNTHETIC[spec["format"]](synthetic_size, seed=seed)
        return items, Provenance(dataset, split, "synthetic", "(embedded templates)", "", "", len(items),
                                 [f"real data unavailable ({e}); using {len(items)} synthetic template sentences"])
    if spec["format"] == "brat_zip":  # sentences of brat documents, unpacked once per zip version
        folder, part = spec["parts"][split]
        unpacked = cache_dir() / "data" / dataset / f"unpacked-{entry.sha256[:16]}"
        items, counts = formats.load_brat_zip_split(path, unpacked, folder, part)
        return items, Provenance(dataset, split, source, str(path), entry.sha256, entry.url, len(items),
                                 [formats.conversion_note(f"{dataset} {split}", counts)])
    items = READERS[spec["format"]](path)
    return items, Provenance(dataset, split, source, str(path), entry.sha256, entry.url, len(items))


def nested_sample(items: list, n: int, seed: int, *, what: str = "items") -> list:
    """The first n of a seeded permutation: samples for growing n are nested, as a learning curve needs."""
    if n > len(items):
        raise IEError(f"training size {n} is larger than the {len(items)} {what} available; "
                      f"lower it to at most {len(items)}")
    if n < 0:
        raise IEError(f"training size must be non-negative, got {n}")
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    return [items[i] for i in order[:n]]
