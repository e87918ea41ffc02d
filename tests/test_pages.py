"""Review pages a reviewer reads: summary first, no logs, no local paths, nothing fetched from the network."""

from __future__ import annotations

from pathlib import Path

import nbformat

from ie_helpers import pages
from ie_helpers.report import Claim, atomic_write_json, write_claims

def _executed(path: Path, *, cache: Path) -> Path:
    nb = nbformat.v4.new_notebook()
    out = nbformat.v4.new_output
    nb.cells = [
        nbformat.v4.new_markdown_cell("# Tiny paper\n\nThe method in prose."),
        nbformat.v4.new_code_cell("train()", execution_count=1, outputs=[
            out("stream", name="stderr", text=f"{cache}/x.py:3: FutureWarning: old API\n"),
            out("stream", name="stderr", text="Loading weights: 100%|██████████| 20/20 [00:00<00:00, 10.0it/s]\n"),
            out("stream", name="stdout", text="{'loss': '10.8', 'epoch': '1'}\n[train] done in 3.0s\n"
                                              "training on 500 sentences\n"),
            out("execute_result", {"text/plain": "{'a': 1}"}, execution_count=1)]),
        nbformat.v4.new_code_cell("show()", execution_count=2, outputs=[
            out("display_data", {"text/html": f"<table><tr><td>read from {cache}/data/f.json</td></tr></table>",
                                 "text/plain": "table"})]),
    ]
    nbformat.write(nb, path)
    return path


def test_review_page_opens_with_the_summary_and_carries_no_logs(tmp_path, private_cache):
    report_dir = tmp_path / "tiny"
    atomic_write_json(report_dir / "run.json", {
        "profile": "smoke", "wall_time_s": 75.2, "timestamp_utc": "2026-01-01T00:00:00+00:00", "seeds": [0, 1, 2],
        "models": {"fine-tuned": {"name": "tiny-random-llama", "path": "/tmp/elsewhere/models/x", "source": "builtin"}},
        "data_sources": [{"dataset": "conll04", "split": "test", "source": "mirror", "n_items": 64,
                          "sha256": "ab" * 32, "path": "/work/shared/data/conll04/test.json"}]})
    write_claims([Claim("E1", "beats 7B", "wins 4/6", "direction only", "stand-in baselines"),
                  Claim("E3", "89% parse", "69%", "not replicated", "CI below 89%")], report_dir / "claims.csv")
    paths = pages.export_notebook_html(_executed(tmp_path / "tiny.ipynb", cache=private_cache), report_dir)
    review, full, log = (paths[k].read_text() for k in ("review", "report", "log"))

    assert pages.review_page_problems(review) == []
    assert review.index("Claims and verdicts") < review.index("The method in prose")  # summary first
    assert "E3" in review and "not replicated" in review and "tiny-random-llama (builtin)" in review
    assert "sha256 abababababab" in review and "75 s" in review and "Tiny paper" in review
    assert "training on 500 sentences" in review and "read from $IE_CACHE_DIR/data/f.json" in review
    assert "loss" not in review and "[train]" not in review and "{&#x27;a&#x27;: 1}" not in review
    assert "FutureWarning" in log and "[train] done" in log and str(private_cache) not in log
    assert "train</span>" in full and "FutureWarning" not in full and not pages.EXTERNAL_RESOURCE.search(full)


def test_paths_are_shown_relative_to_known_folders():
    aliases = [("/work/main", "."), ("/work/main/.venv", "<venv>")]
    aliases.sort(key=lambda kv: -len(kv[0]))
    assert pages.scrub_paths("at /work/main/.venv/lib/x.py and /work/main/notebooks", aliases) == \
        "at <venv>/lib/x.py and ./notebooks"
    assert pages.scrub_paths("cache '/tmp/run_cache/models/smollm2'", []) == "cache '<local>/smollm2'"
    image = 'src="data:image/png;base64,AAAA+/tmp/BBBB"'
    assert pages.scrub_paths(image, []) == image  # base64 data is never mistaken for a path


def test_index_is_a_scorecard_with_verdict_counts_and_thumbnails(tmp_path):
    reports = tmp_path / "reports"
    for name, profile in (("paper_a", "cpu"), ("paper_b", "smoke")):
        atomic_write_json(reports / name / "run.json", {"profile": profile, "wall_time_s": 1500,
                                                        "timestamp_utc": "2026-01-01T00:00:00+00:00"})
        write_claims([Claim("c1", "1", "1", "replicated"), Claim("c2", "1", "1", "not replicated")],
                     reports / name / "claims.csv")
        (reports / name / "review.html").write_text("<html></html>")
    (reports / "paper_a" / "systems.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    index = pages.build_index(reports).read_text()
    assert index.count("<tr>") == 3 and "1 replicated, 1 not replicated" in index and "25.0 min" in index
    assert index.count("data:image/png;base64,") == 1 and "no figure" in index
    assert 'href="paper_b/review.html"' in index and "smoke" in index and not pages.EXTERNAL_RESOURCE.search(index)
    (reports / "paper_b" / "other_plot.png").write_bytes(b"\x89PNG\r\n\x1a\n")  # no key-figure name: any figure
    assert pages.build_index(reports).read_text().count("data:image/png;base64,") == 2
