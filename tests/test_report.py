import json
import os
import stat
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

# Let `pytest` run from the repo root without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ie_helpers import report  # noqa: E402
from ie_helpers.errors import IEError  # noqa: E402
from ie_helpers.pages import build_index, export_notebook_html  # noqa: E402
from ie_helpers.report import (  # noqa: E402
    VERDICTS,
    Claim,
    StageTimer,
    atomic_write_bytes,
    atomic_write_csv,
    atomic_write_json,
    atomic_write_text,
    claims_frame,
    deviations_frame,
    library_versions,
    show_table,
    warning_banner,
    write_claims,
    write_run_json,
)


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("_tmp"))


# --- atomic writes -----------------------------------------------------------


def test_atomic_write_text_replaces_content_and_leaves_no_temp_files(tmp_path):
    target = tmp_path / "nested" / "dir" / "out.txt"
    atomic_write_text(target, "first")
    atomic_write_text(target, "second")
    assert target.read_text() == "second"
    assert _leftovers(target.parent) == []


def test_atomic_write_gives_normal_permissions_not_mkstemp_0600(tmp_path):
    target = atomic_write_text(tmp_path / "out.txt", "x")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask


def test_atomic_write_json_handles_numpy_and_paths(tmp_path):
    target = tmp_path / "out.json"
    atomic_write_json(target, {"n": np.int64(3), "x": np.float32(0.5), "arr": np.arange(2), "p": Path("a/b")})
    assert json.loads(target.read_text()) == {"n": 3, "x": 0.5, "arr": [0, 1], "p": "a/b"}
    assert target.read_text().startswith('{\n  "n"')


def test_atomic_write_json_writes_dataclasses_as_objects(tmp_path):
    """run.json's data_sources must stay machine-readable (a Provenance, not its repr)."""
    from ie_helpers.data import Provenance

    prov = Provenance("conll04", "train", "mirror", "/m/conll04/train.json", "ab" * 32, "https://x", 3)
    atomic_write_json(tmp_path / "out.json", {"data_sources": [prov]})
    got = json.loads((tmp_path / "out.json").read_text())["data_sources"][0]
    assert got["dataset"] == "conll04" and got["sha256"] == "ab" * 32 and got["n_items"] == 3


def test_failing_json_writer_keeps_previous_file(tmp_path):
    target = tmp_path / "out.json"
    atomic_write_json(target, {"ok": 1})
    with pytest.raises(TypeError):
        atomic_write_json(target, {("tuple", "key"): 1})  # tuple keys cannot be serialised
    assert json.loads(target.read_text()) == {"ok": 1}
    assert _leftovers(tmp_path) == []


def test_failing_bytes_writer_keeps_previous_file_and_cleans_temp(tmp_path):
    target = tmp_path / "out.bin"
    atomic_write_bytes(target, b"old")
    with pytest.raises(TypeError):
        atomic_write_bytes(target, "not bytes")  # fails mid-write, after the temp file exists
    assert target.read_bytes() == b"old"
    assert _leftovers(tmp_path) == []


def test_atomic_write_csv_has_no_index(tmp_path):
    target = tmp_path / "t.csv"
    atomic_write_csv(pd.DataFrame({"a": [1, 2], "b": ["x", "y"]}), target)
    assert target.read_text() == "a,b\n1,x\n2,y\n"


# --- claims --------------------------------------------------------------------


def test_claim_rejects_unknown_verdict():
    with pytest.raises(IEError, match="unknown verdict"):
        Claim("c1", "0.9", "0.8", "kind of")


def test_claims_csv_has_exact_header(tmp_path):
    claims = [Claim("c1", "0.91", "0.90", "replicated"), Claim("c2", "up", "down", "not replicated", "small n")]
    target = write_claims(claims, tmp_path / "claims.csv")
    lines = target.read_text().splitlines()
    assert lines[0] == "claim_id,paper_value,measured_value,verdict,note"
    assert len(lines) == 3
    assert list(claims_frame([]).columns) == ["claim_id", "paper_value", "measured_value", "verdict", "note"]


# --- deviations ----------------------------------------------------------------


def test_deviations_flag_only_differing_settings():
    paper = {"lr": 1e-7, "rank": 16, "alpha": "32", "epochs": 3, "use_rslora": True}
    run = {"lr": "1e-07", "rank": "16.0", "alpha": 32, "epochs": 1, "use_rslora": "true", "seed": 0}
    frame = deviations_frame(paper, run, notes={"epochs": "time budget"})
    assert list(frame.columns) == ["setting", "paper", "this_run", "deviates", "note"]
    assert list(frame["setting"]) == ["lr", "rank", "alpha", "epochs", "use_rslora", "seed"]
    flagged = dict(zip(frame["setting"], frame["deviates"]))
    assert flagged == {"lr": False, "rank": False, "alpha": False, "epochs": True, "use_rslora": False, "seed": False}
    assert frame.set_index("setting").loc["epochs", "note"] == "time budget"
    assert frame["deviates"].dtype == bool


def test_deviations_decimal_and_exponent_forms_are_equal():
    frame = deviations_frame({"lr": "0.0000001"}, {"lr": 1e-7})
    assert not frame["deviates"].any()


def test_deviations_paper_setting_missing_from_run_is_a_deviation():
    frame = deviations_frame({"warmup": 100}, {})
    assert frame["deviates"].tolist() == [True]


# --- display -------------------------------------------------------------------


def test_show_table_colours_verdicts_and_escapes():
    df = claims_frame([Claim("<c1>", "1", "1", v) for v in VERDICTS])
    rendered = show_table(df, caption="Claims & verdicts").data
    for colour in ("#d4edda", "#f8d7da", "#fff3cd", "#e2e3e5"):
        assert colour in rendered
    assert "&lt;c1&gt;" in rendered
    assert "Claims &amp; verdicts" in rendered


def test_warning_banner_escapes_text():
    rendered = warning_banner("synthetic <fallback>").data
    assert "&lt;fallback&gt;" in rendered and "Warning" in rendered


# --- provenance ----------------------------------------------------------------


def test_library_versions_reports_missing_packages():
    versions = library_versions(("pandas", "surely-not-a-real-package-xyz"))
    assert versions["pandas"] == pd.__version__
    assert versions["surely-not-a-real-package-xyz"] == "not installed"


def test_stage_timer_accumulates_repeated_stages(monkeypatch):
    ticks = iter([0.0, 1.0, 10.0, 12.5, 20.0, 20.25])
    monkeypatch.setattr(report.time, "perf_counter", lambda: next(ticks))
    timer = StageTimer()
    with timer.stage("training"):
        pass
    with timer.stage("training"):
        pass
    with timer.stage("eval"):
        pass
    assert timer.as_dict() == {"training": 3.5, "eval": 0.25}
    assert timer.total() == 3.75


def test_write_run_json_records_provenance(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "torch_device_info", lambda: {"cuda_available": False, "device_name": "cpu"})
    timer = StageTimer()
    with timer.stage("load"):
        pass
    target = write_run_json(
        tmp_path / "run.json", profile="smoke", train_sizes=[10, 100], wall_time_s=12.5,
        models=["tiny"], data_sources={"conll": "synthetic"}, seeds=np.array([0, 1]),
        stage_times=timer, extra={"note": "test"},
    )
    record = json.loads(target.read_text())
    assert record["profile"] == "smoke" and record["seeds"] == [0, 1]
    assert set(record["stage_times"]) == {"load"}
    assert record["device"]["cuda_available"] is False
    assert "pandas" in record["library_versions"]
    assert record["timestamp_utc"].endswith("+00:00")
    assert record["extra"] == {"note": "test"}
    assert record["peak_memory"]["process_peak_rss_gb"] > 0.05  # this test process holds at least pandas+numpy
    assert record["cpu"]


def test_peak_memory_grows_with_an_allocation():
    before = report.peak_memory()["process_peak_rss_gb"]
    block = np.ones(int((before + 0.3) * 1e9 / 8))  # more than the peak so far, touched page by page
    after = report.peak_memory()["process_peak_rss_gb"]
    del block
    assert after >= before + 0.25


# --- HTML export and index -----------------------------------------------------

SECRET_CODE = "tiny_marker_function_xyz(41)"


def _tiny_executed_notebook(path: Path) -> Path:
    import nbformat

    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_markdown_cell("# Tiny report"),
        nbformat.v4.new_code_cell(
            SECRET_CODE,
            execution_count=1,
            outputs=[nbformat.v4.new_output("stream", name="stdout", text="answer: 42\n"),
                     nbformat.v4.new_output("execute_result", {"text/plain": "{'raw': 'dict'}"}, execution_count=1)],
        ),
    ]
    nbformat.write(notebook, path)
    return path


def test_export_notebook_html_writes_full_and_code_free_versions(tmp_path):
    notebook = _tiny_executed_notebook(tmp_path / "executed.ipynb")
    paths = export_notebook_html(notebook, tmp_path / "out")
    full, review = paths["report"].read_text(), paths["review"].read_text()
    assert "tiny_marker_function_xyz" in full
    assert "tiny_marker_function_xyz" not in review
    assert "Tiny report" in review and "answer: 42" in review
    assert "{&#x27;raw&#x27;" not in review and "raw" in full  # a bare repr is not a result worth reviewing
    assert _leftovers(tmp_path / "out") == []


def test_export_notebook_html_missing_notebook_is_user_error(tmp_path):
    with pytest.raises(IEError, match="papermill"):
        export_notebook_html(tmp_path / "nope.ipynb", tmp_path)


def _fake_report_dir(reports: Path, name: str, verdicts: list[str], profile: str) -> None:
    directory = reports / name
    atomic_write_text(directory / "report.html", "<html></html>")
    atomic_write_text(directory / "review.html", "<html></html>")
    atomic_write_json(directory / "run.json", {"profile": profile, "wall_time_s": 90, "timestamp_utc": "2025-01-01T00:00:00+00:00"})
    write_claims([Claim(f"c{i}", "1", "1", v) for i, v in enumerate(verdicts)], directory / "claims.csv")


def test_build_index_lists_reports_with_verdict_counts(tmp_path):
    reports = tmp_path / "reports"
    _fake_report_dir(reports, "paper_a", ["replicated"] * 3 + ["not replicated"], "smoke")
    _fake_report_dir(reports, "paper_b", ["not testable"] * 2 + ["direction only"], "full")
    (reports / "empty_dir").mkdir()
    atomic_write_text(reports / "bench" / "summary.html", "<html></html>")
    atomic_write_text(reports / "bench" / "xeon-avx512" / "summary.html", "<html></html>")
    atomic_write_text(reports / "bench" / "xeon-avx512" / "bench.json", '{"device": "Xeon", "cpu_family": "avx512"}')

    index = build_index(reports).read_text()
    assert index.count("<tr>") == 3  # header + two papers; bench and empty_dir are not rows
    assert 'href="paper_a/report.html"' in index and 'href="paper_b/review.html"' in index
    assert "3 replicated, 1 not replicated" in index
    assert "1 direction only, 2 not testable" in index
    assert "smoke" in index and "full" in index and "90 s" in index
    assert 'href="bench/summary.html"' in index
    assert 'href="bench/xeon-avx512/summary.html"' in index and "(Xeon, avx512)" in index  # every machine's bench
    assert "empty_dir" not in index


def test_build_index_with_no_reports(tmp_path):
    index = build_index(tmp_path / "reports").read_text()
    assert "No reports yet" in index


def test_tables_print_numbers_to_their_precision():
    from ie_helpers.report import format_number, show_table

    assert [format_number(x) for x in (0.2990001, 2.4e-4, 942.61, 3.0, 0.0, float("nan"), np.int64(7))] == [
        "0.299", "0.00024", "942.6", "3", "0.000", "—", "7"]
    page = show_table(pd.DataFrame({"f1": [0.256, np.nan], "name": ["<a>", "b"], "n": [1, 2]})).data
    assert "0.256<" in page and "0.256000" not in page and "nan" not in page and "&lt;a&gt;" in page
