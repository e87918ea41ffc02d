"""The download path of ie_helpers.data is checksummed end to end.

A local HTTP server (stdlib, 127.0.0.1, port 0, in a thread, shut down after the module) stands in for raw.githubusercontent.com:
``data.RAW_URL`` is pointed at it, a temporary MANIFEST.tsv is read by the real ``read_manifest``,
and ``IE_DATA_DIR`` / ``IE_CACHE_DIR`` are empty temporary folders, so every file has to come
through ``locate_file`` → ``_download`` → ``_verified``. The server counts the requests it gets.
"""

from __future__ import annotations

import hashlib
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ie_helpers import data
from ie_helpers.data import ManifestEntry, locate_file, read_manifest
from ie_helpers.errors import IEError

GOOD = b"-DOCSTART- O\n\nAcme\tB-ORG\nCorp\tI-ORG\nhired\tO\nMaria\tB-PER\n.\tO\n"
TAMPERED = GOOD.replace(b"Maria", b"Mario")  # same size, different bytes
REPO, COMMIT = "owner/repo", "0123456789abcdef0123456789abcdef01234567"
SHA_GOOD = hashlib.sha256(GOOD).hexdigest()

# local_path -> (path_in_source, what the server sends: bytes, None for a 404, or TRUNCATED: the
# full Content-Length is announced but the connection closes after half the body). All are pinned
# to SHA_GOOD.
TRUNCATED = object()
FILES = {
    "tiny/good.conll": ("data/good.conll", GOOD),
    "tiny/bad.conll": ("data/bad.conll", TAMPERED),
    "tiny/gone.conll": ("data/gone.conll", None),
    "tiny/cut.conll": ("data/cut.conll", TRUNCATED),
}


class _Server:
    def __init__(self):
        self.hits: dict[str, int] = {}
        self.routes = {f"/{REPO}/{COMMIT}/{src}": body for src, body in FILES.values()}
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                owner.hits[self.path] = owner.hits.get(self.path, 0) + 1
                body = owner.routes.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(GOOD)))
                self.end_headers()
                self.wfile.write(GOOD[: len(GOOD) // 2] if body is TRUNCATED else body)

            def log_message(self, *args):  # keep pytest output clean
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def hits_for(self, local_path: str) -> int:
        return self.hits.get(f"/{REPO}/{COMMIT}/{FILES[local_path][0]}", 0)

    @property
    def total_hits(self) -> int:
        return sum(self.hits.values())


@pytest.fixture(scope="module")
def _running_server():
    srv = _Server()
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()
    srv.thread.join()


@pytest.fixture
def server(_running_server):
    """The module's server with its request counts reset for this test."""
    _running_server.hits.clear()
    return _running_server


@pytest.fixture
def env(tmp_path, monkeypatch, server):
    """Empty mirror and cache, a temporary manifest, and RAW_URL pointing at the local server."""
    mirror, cache = tmp_path / "mirror", tmp_path / "cache"
    mirror.mkdir()
    cache.mkdir()
    monkeypatch.setenv("IE_DATA_DIR", str(mirror))
    monkeypatch.setenv("IE_CACHE_DIR", str(cache))
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "*")  # never send 127.0.0.1 through a proxy
    monkeypatch.setenv("NO_PROXY", "*")

    manifest = tmp_path / "MANIFEST.tsv"
    rows = ["local_path\tsource_repo@commit\tpath_in_source\tsha256\tbytes"]
    rows += [f"{local}\t{REPO}@{COMMIT}\t{src}\t{SHA_GOOD}\t{len(GOOD)}" for local, (src, _) in FILES.items()]
    manifest.write_text("\n".join(rows) + "\n", encoding="utf-8")
    # locate_file calls read_manifest() with its default argument, bound when the module was imported.
    monkeypatch.setattr(data.read_manifest, "__defaults__", (manifest,))
    monkeypatch.setattr(data, "MANIFEST_PATH", manifest)
    monkeypatch.setattr(data, "RAW_URL", f"http://127.0.0.1:{server.port}/{{repo}}/{{commit}}/{{path}}")
    return mirror, cache / "data"


def _files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if not p.is_dir()) if folder.exists() else []


def _assert_one_line_ieerror(err: BaseException) -> str:
    msg = str(err)
    assert msg and "\n" not in msg, f"IEError messages must be one line: {msg!r}"
    # no chained urllib/socket traceback ("During handling of the above exception ...")
    assert err.__cause__ is None and (err.__context__ is None or err.__suppress_context__), repr(err.__context__)
    return msg


def test_manifest_entry_url_is_the_pinned_raw_github_url():
    entry = ManifestEntry("a/x.conll", "owner/repo", "abc123", "data/x y.conll", "0" * 64, 1)
    assert entry.url == "https://raw.githubusercontent.com/owner/repo/abc123/data/x y.conll"


def test_download_is_verified_cached_and_not_repeated(env, server):
    _, cache = env
    entry = read_manifest()["tiny/good.conll"]  # the temporary manifest, through the real parser
    assert (entry.repo, entry.commit, entry.path_in_source, entry.sha256) == (REPO, COMMIT, "data/good.conll",
                                                                             SHA_GOOD)
    assert entry.url == f"http://127.0.0.1:{server.port}/{REPO}/{COMMIT}/data/good.conll"

    path, source, got = locate_file("tiny/good.conll")
    assert (path, source, got) == (cache / "tiny" / "good.conll", "download", entry)
    assert path.read_bytes() == GOOD
    assert server.hits_for("tiny/good.conll") == 1
    assert _files_under(cache) == [path]  # no leftover temporary file

    path2, source2, _ = locate_file("tiny/good.conll")
    assert (path2, source2) == (path, "cache")
    assert server.total_hits == 1  # served from the verified cache, not downloaded again
    assert data.read_conll(path2)[0]["tags"] == ["B-ORG", "I-ORG", "O", "B-PER", "O"]


def test_download_with_wrong_checksum_raises_and_keeps_nothing(env, server):
    _, cache = env
    for attempt in (1, 2):  # a second try downloads again and fails again: nothing bad was cached
        with pytest.raises(IEError) as exc:
            locate_file("tiny/bad.conll")
        msg = _assert_one_line_ieerror(exc.value)
        assert "checksum" in msg and "download" in msg and SHA_GOOD[:12] in msg
        assert server.hits_for("tiny/bad.conll") == attempt
        assert _files_under(cache) == [], "a file that failed its checksum was left in the cache"


def test_wrong_checksum_never_becomes_synthetic_data(env, server, monkeypatch):
    monkeypatch.setitem(data.DATASETS, "tiny", {"format": "conll", "splits": {"train": "tiny/bad.conll"}})
    with pytest.raises(IEError, match="checksum"):
        data.load_split("tiny", "train", allow_synthetic=True)
    assert server.hits_for("tiny/bad.conll") == 1


def test_interrupted_download_raises_and_keeps_no_partial_file(env, server):
    _, cache = env
    with pytest.raises(IEError) as exc:
        locate_file("tiny/cut.conll")
    msg = _assert_one_line_ieerror(exc.value)
    assert "tiny/cut.conll" in msg and "download failed" in msg
    assert server.hits_for("tiny/cut.conll") == 1
    assert _files_under(cache) == [], "a partial download was left in the cache"


def test_corrupted_cache_file_is_reported_not_used(env, server):
    _, cache = env
    path, _, _ = locate_file("tiny/good.conll")
    path.write_bytes(TAMPERED)  # e.g. an edit, a disk error or an older version of the file

    with pytest.raises(IEError) as exc:
        locate_file("tiny/good.conll")
    msg = _assert_one_line_ieerror(exc.value)
    assert "checksum" in msg and "(cache)" in msg and str(path) in msg and "delete it" in msg
    assert server.total_hits == 1  # the corrupt copy is reported, neither used nor silently replaced
    assert path.read_bytes() == TAMPERED  # and left for the user to inspect

    path.unlink()  # the fix the message names: delete it and rerun
    path2, source, _ = locate_file("tiny/good.conll")
    assert (path2, source, path2.read_bytes()) == (path, "download", GOOD)
    assert server.total_hits == 2


def test_http_error_is_a_one_line_ieerror(env, server):
    _, cache = env
    with pytest.raises(IEError) as exc:
        locate_file("tiny/gone.conll")
    msg = _assert_one_line_ieerror(exc.value)
    assert "tiny/gone.conll" in msg and "download failed (HTTPError)" in msg and "IE_DATA_DIR" in msg
    assert server.hits_for("tiny/gone.conll") == 1
    assert _files_under(cache) == []


def test_unreachable_url_is_a_one_line_ieerror(env, server, monkeypatch):
    _, cache = env
    # A socket bound to a port but not listening: connecting to it is refused at once, and no other
    # process can take the port while we hold it.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        monkeypatch.setattr(data, "RAW_URL", f"http://127.0.0.1:{port}/{{repo}}/{{commit}}/{{path}}")
        with pytest.raises(IEError) as exc:
            locate_file("tiny/good.conll")
    msg = _assert_one_line_ieerror(exc.value)
    assert "tiny/good.conll" in msg and "download failed (URLError)" in msg
    assert f"http://127.0.0.1:{port}/{REPO}/{COMMIT}/data/good.conll" in msg  # names what it tried
    assert "Traceback" not in msg and "Errno" not in msg
    assert server.total_hits == 0
    assert _files_under(cache) == []


def test_downloads_disabled_never_touch_the_network(env, server):
    with pytest.raises(IEError) as exc:
        locate_file("tiny/good.conll", allow_download=False)
    msg = _assert_one_line_ieerror(exc.value)
    assert "downloads disabled" in msg
    assert server.total_hits == 0
