"""The README's figures about the committed reports are the reports' own: each paper's wall time (and its cold
run's, where one is kept) equals the run.json beside the report."""

import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
PAPERS = ["etlch", "finner", "loraplus", "clinical", "mtpf"]


def _whole_seconds(seconds: float) -> set[int]:
    """A figure in whole seconds, cut or rounded (2482.9 s reads as 2482 or 2483)."""
    return {int(seconds), round(seconds)}


def _paragraph(paper: str) -> str:
    start = README.index(f"`reports/{paper}/` (wall time")
    end = README.find("\n\n", start)
    return README[start:end]


@pytest.mark.parametrize("paper", PAPERS)
def test_readme_wall_time_is_the_reports_run_json(paper):
    said = int(re.match(rf"`reports/{paper}/` \(wall time (\d+) s in its run\.json", _paragraph(paper)).group(1))
    run = json.loads((REPO / "reports" / paper / "run.json").read_text())
    assert said in _whole_seconds(run["wall_time_s"]), f"README says {said} s, run.json {run['wall_time_s']:.1f} s"


@pytest.mark.parametrize("paper", PAPERS)
def test_readme_cold_run_is_the_kept_run_cold_json(paper):
    cold = REPO / "reports" / paper / "run_cold.json"
    text = re.sub(r"\s+", " ", _paragraph(paper))
    said = re.search(r"kept as `run_cold\.json`, took (\d+) s", text)
    assert cold.exists() and said, "each report keeps its cold run and the README quotes it"
    assert int(said.group(1)) in _whole_seconds(json.loads(cold.read_text())["wall_time_s"])


BENCHES = ["reports/bench/bench.json", "reports/bench/xeon-avx512/bench.json"]


@pytest.mark.parametrize("path", BENCHES)
def test_readme_bench_figures_are_the_committed_bench_json(path):
    """The paragraph measured by a committed bench.json quotes its rates, ratios, peak memory and wall time."""
    start = README.index(f"Measured by `make bench` (`{path}`)")
    text = re.sub(r"\s+", " ", README[README.rfind("\n\n", 0, start):README.find("\n\n", start)])
    b = json.loads((REPO / path).read_text())
    expected = [f"{b['train_tokens_per_s']:.0f} vs {b['baseline_train_tokens_per_s']:.0f} tokens/s",
                f"**{b['train_speedup']:.2f}×**", f"**{b['gen_speedup']:.1f}×**", f"**{b['encoder_speedup']:.2f}×**",
                f"peak resident memory of {b['peak_rss_gb']['train_fast']:.2f} GB",
                f"{b['fraction_of_measured_matmul']:.0%} of the {b['measured_matmul_flops'] / 1e9:.0f} GFLOP/s",
                f"{b['cpu_family']}"]
    missing = [e for e in expected if e not in text]
    assert not missing, f"the README paragraph on {path} lacks {missing}"
    assert any(f"took {s} s" in text for s in _whole_seconds(b["wall_seconds"]))
