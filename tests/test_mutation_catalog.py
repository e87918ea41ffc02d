"""The mutation catalog (tests/mutate.py, `make mutate`) still applies: a refactor that moves or rewrites a mutated
line would otherwise turn its mutant into an error instead of a test of the tests."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import mutate  # noqa: E402


@pytest.mark.parametrize("m", mutate.MUTATIONS, ids=lambda m: m.name)
def test_every_mutant_finds_its_line_once(m):
    text = (ROOT / m.path).read_text(encoding="utf-8")
    assert text.count(m.old) == 1, f"{m.path}: the mutated text occurs {text.count(m.old)} times"
    assert all((ROOT / t).exists() for t in m.tests)
