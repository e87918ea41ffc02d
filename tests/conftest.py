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


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, session_models, monkeypatch) -> Path:
    """A fresh ``IE_CACHE_DIR`` for this test, with the session's converted models linked in."""
    cache = tmp_path_factory.mktemp("ie_cache")
    (cache / "models").symlink_to(session_models, target_is_directory=True)
    monkeypatch.setenv("IE_CACHE_DIR", str(cache))
    return cache
