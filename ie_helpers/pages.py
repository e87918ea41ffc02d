"""The HTML pages of a report: ``review.html`` for reviewers, ``report.html`` with code, and the scorecard index.

A reviewer reads ``review.html`` top-down without running anything: a summary first (paper, profile,
models, data and the claims with their verdicts), then the notebook's tables, figures and prose. Logs are
not results: stderr, trainer log lines and progress bars are moved out of both pages into ``log.txt``,
raw ``repr`` results (a dict left as a cell's last line) are dropped from the review, local paths are
written relative to the repository, data mirror, cache or virtualenv, and pages load nothing from the
network (nbconvert's MathJax, require.js and mermaid tags are left out), so they open offline.
"""

from __future__ import annotations

import base64
import copy
import html
import json
import math
import os
import re
import sys
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from ie_helpers.errors import IEError
from ie_helpers.report import VERDICTS, atomic_write_text

REPO_ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = Path(__file__).resolve().parent / "templates"
_MISSING = "—"

# stdout lines that are logs, not results: trainer log dicts, the kit's [stage] lines, progress bars, warnings
_LOG_LINE = re.compile(r"^\s*(\{'(loss|train_runtime|eval_)|\[(train|bench|encoder|generate|reproduce)\]|"
                       r".*\d+%\|.*\||.*it/s\]|.*(Warning|warnings\.warn)\b|Loading weights)")


def _is_log_line(line: str) -> bool:
    return bool(_LOG_LINE.match(line)) or "\r" in line


# What a review page must never carry (the same patterns the project's before-stop review greps for).
LEAKS = re.compile(r"FutureWarning|UserWarning|it/s\]|cdnjs|jsdelivr|/(work|tmp|root|home)/")
EXTERNAL_RESOURCE = re.compile(r"<(script|link|img|iframe)[^>]*(src|href)=\"(https?:)?//", re.I)


def review_page_problems(page: str) -> list[str]:
    """Why a review page is not fit for a reviewer: leaked logs or paths, or resources fetched from the network."""
    problems = [f"leak: {m.group(0)!r}" for m in LEAKS.finditer(page)]
    problems += [f"external resource: {m.group(0)!r}" for m in EXTERNAL_RESOURCE.finditer(page)]
    if "Traceback (most recent call last)" in page:
        problems.append("a traceback")
    return problems


def local_path_aliases() -> list[tuple[str, str]]:
    """(absolute prefix, what a page shows instead), longest first, so nested folders match first."""
    from ie_helpers.models import cache_dir

    pairs = {str(REPO_ROOT): ".", sys.prefix: "<venv>", str(cache_dir()): "$IE_CACHE_DIR",
             os.path.expanduser("~"): "~"}
    if os.environ.get("IE_DATA_DIR"):
        pairs[str(Path(os.environ["IE_DATA_DIR"]).resolve())] = "$IE_DATA_DIR"
        pairs[os.environ["IE_DATA_DIR"]] = "$IE_DATA_DIR"
    return sorted(((k, v) for k, v in pairs.items() if len(k) > 1), key=lambda kv: -len(kv[0]))


# an absolute path on another machine (a run.json written elsewhere): its folders say nothing to a reader
_FOREIGN_PATH = re.compile(r"(?<=[\s'\"(>:;,=\[])/(?:work|tmp|root|home|Users|mnt|scratch)/[^\s'\"<>&,;)]*")


def scrub_paths(text: str, aliases: list[tuple[str, str]] | None = None) -> str:
    for prefix, alias in aliases if aliases is not None else local_path_aliases():
        text = text.replace(prefix, alias)
    return _FOREIGN_PATH.sub(lambda m: "<local>/" + m.group(0).rstrip("/").rsplit("/", 1)[-1], text)


def split_logs(notebook) -> tuple[Any, list[str]]:
    """A copy of the notebook without stderr, log lines or progress bars, and the log text taken out."""
    nb = copy.deepcopy(notebook)
    logs: list[str] = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        kept = []
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                lines = str(out.get("text", "")).splitlines(keepends=True)
                if out.get("name") == "stderr":
                    logs += lines
                    continue
                logs += [ln for ln in lines if _is_log_line(ln)]
                text = "".join(ln for ln in lines if not _is_log_line(ln))
                if not text.strip():
                    continue
                out = copy.deepcopy(out)
                out["text"] = text
            kept.append(out)
        cell["outputs"] = kept
    return nb, logs


def drop_raw_results(notebook):
    """Without ``execute_result`` outputs that are only a ``repr`` (a dict or number left as a cell's last line)."""
    nb = copy.deepcopy(notebook)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell["outputs"] = [o for o in cell.get("outputs", []) if not (
                o.get("output_type") == "execute_result" and set(o.get("data", {})) <= {"text/plain"})]
    return nb


def _read_run_json(run_json: Path) -> dict[str, Any]:
    try:
        record = json.loads(run_json.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _read_claims(claims_csv: Path) -> pd.DataFrame | None:
    try:
        return pd.read_csv(claims_csv, dtype=str).fillna("")
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        return None


def _names(value: Any) -> str:
    if isinstance(value, dict) and "name" in value:  # a resolved model: its name and where it came from
        return f"{value['name']} ({value['source']})" if value.get("source") else str(value["name"])
    if isinstance(value, dict):
        return "; ".join(f"{k}: {_names(v) or 'none'}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(_names(v) for v in value)
    return str(value)


def _data_line(source: Any) -> str:
    if not isinstance(source, dict):
        return str(source)
    name = source.get("name") or source.get("dataset") or "?"
    split = f" {source['split']}" if source.get("split") else ""
    n = f", {source['n_items']} items" if source.get("n_items") is not None else ""
    digest = f", sha256 {str(source['sha256'])[:12]}…" if source.get("sha256") else ""
    origin = f" ({source['source']})" if source.get("source") else ""
    return f"{name}{split}{origin}{n}{digest}"


_VERDICT_COLOURS = {"replicated": "#d4edda", "not replicated": "#f8d7da", "direction only": "#fff3cd",
                    "inconclusive": "#e8e0f5", "not testable at this profile": "#e2e3e5", "not testable": "#e2e3e5"}


def summary_html(report_dir: Path, title: str) -> str:
    """The block a review page opens with: what ran, on what, and every claim's verdict."""
    run = _read_run_json(report_dir / "run.json")
    claims = _read_claims(report_dir / "claims.csv")
    facts = [("Profile", run.get("profile", _MISSING)), ("Models", _names(run.get("models", _MISSING))),
             ("Data", "; ".join(_data_line(s) for s in run.get("data_sources", []) or []) or _MISSING),
             ("Seeds", _names(run.get("seeds", _MISSING))), ("Wall time", format_wall_time(run.get("wall_time_s"))),
             ("Run at (UTC)", run.get("timestamp_utc", _MISSING)), ("Machine", _machine(run))]
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in facts)
    claims_table = "<p>No claims table was written.</p>"
    if claims is not None and len(claims):
        body = "".join(
            f"<tr><td>{html.escape(r.claim_id)}</td><td>{html.escape(r.paper_value)}</td>"
            f"<td>{html.escape(r.measured_value)}</td>"
            f"<td style=\"background:{_VERDICT_COLOURS.get(r.verdict, '#fff')}\">{html.escape(r.verdict)}</td>"
            f"<td>{html.escape(r.note)}</td></tr>" for r in claims.itertuples())
        claims_table = ("<table class=\"ie-claims\"><thead><tr><th>Claim</th><th>Paper</th><th>This run</th>"
                        f"<th>Verdict</th><th>Why</th></tr></thead><tbody>{body}</tbody></table>")
    return (f"<section class=\"ie-summary\"><h1>{html.escape(title)}</h1>"
            f"<table class=\"ie-facts\">{rows}</table><h2>Claims and verdicts</h2>{claims_table}"
            "<p class=\"ie-muted\">Details below: results tables and figures, then deviations from the paper and "
            "provenance. Code and logs: report.html and log.txt beside this page.</p></section>")


def _machine(run: dict) -> str:
    device = run.get("device", {}) if isinstance(run.get("device"), dict) else {}
    cpu = run.get("cpu") or (run.get("extra", {}).get("cpu_model") if isinstance(run.get("extra"), dict) else None)
    name = device.get("device_name", _MISSING)
    return f"{name} ({cpu})" if cpu and name == "cpu" else str(name)


_SUMMARY_CSS = """<style>
.ie-summary { font-family: -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; margin: 1em 0 2em; }
.ie-summary table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.92em; }
.ie-summary table { width: 100%; table-layout: auto; }
.ie-summary th, .ie-summary td { border: 1px solid #ddd; padding: 4px 8px; text-align: left; vertical-align: top;
                                 white-space: normal; overflow-wrap: break-word; max-width: none; }
.ie-summary .ie-claims td:first-child, .ie-summary .ie-claims th { white-space: nowrap; }
.ie-summary .ie-claims td:nth-child(4) { min-width: 7em; }
.ie-summary .ie-facts th { background: #f5f5f5; width: 9em; }
.ie-summary .ie-claims th { background: #f5f5f5; }
.ie-muted { color: #666; font-size: 0.9em; }
.jp-OutputArea-output { overflow-x: auto; }
</style>"""


def _title(notebook, fallback: str) -> str:
    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            for line in str(cell.source).splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return fallback


def _render(notebook, *, with_code: bool) -> str:
    from nbconvert import HTMLExporter

    options = {} if with_code else {"exclude_input": True, "exclude_input_prompt": True,
                                    "exclude_output_prompt": True}
    exporter = HTMLExporter(template_name="offline", extra_template_basedirs=[str(TEMPLATES)], embed_images=True,
                            **options)
    body, _ = exporter.from_notebook_node(notebook)
    return body


def _with_summary(page: str, summary: str) -> str:
    match = re.search(r"<body[^>]*>", page)
    if not match:
        return _SUMMARY_CSS + summary + page
    return page[:match.end()] + _SUMMARY_CSS + summary + page[match.end():]


def export_notebook_html(executed_ipynb: Path, out_dir: Path) -> dict[str, Path]:
    """Write ``review.html`` (summary + outputs), ``report.html`` (with code) and ``log.txt`` for a notebook."""
    import nbformat

    executed_ipynb, out_dir = Path(executed_ipynb), Path(out_dir)
    if not executed_ipynb.is_file():
        raise IEError(f"Executed notebook not found: {executed_ipynb}. Run the notebook with papermill first.")
    notebook, logs = split_logs(nbformat.read(executed_ipynb, as_version=4))
    aliases = local_path_aliases()
    summary = summary_html(out_dir, _title(notebook, out_dir.name))
    review = _with_summary(_render(drop_raw_results(notebook), with_code=False), summary)
    return {"report": atomic_write_text(out_dir / "report.html", scrub_paths(_render(notebook, with_code=True),
                                                                             aliases)),
            "review": atomic_write_text(out_dir / "review.html", scrub_paths(review, aliases)),
            "log": atomic_write_text(out_dir / "log.txt", scrub_paths("".join(logs), aliases))}


# --------------------------------------------------------------------------- index: a scorecard of every report

_SHORT_VERDICT = {"not testable at this profile": "not testable"}
_SKIPPED_DIRS = {"bench"}
KEY_FIGURE_NAMES = ("key_figure.png", "learning_curve_f1.png", "systems.png", "main.png", "ner_tasks.png")

_INDEX_CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
       max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; }
table { border-collapse: collapse; width: 100%; }
th, td { border-bottom: 1px solid #ddd; padding: 6px 10px; text-align: left; vertical-align: top; }
th { background: #f5f5f5; }
a { color: #0b57d0; text-decoration: none; }
a:hover { text-decoration: underline; }
img.thumb { max-width: 220px; max-height: 140px; border: 1px solid #ddd; }
.muted { color: #777; }
"""


def verdict_counts_text(claims_csv: Path) -> str:
    """E.g. ``"3 replicated, 1 not replicated, 2 not testable"`` from a claims CSV."""
    claims = _read_claims(claims_csv) if claims_csv.is_file() else None
    if claims_csv.is_file() and (claims is None or "verdict" not in claims):
        return "unreadable claims.csv"
    if claims is None:
        return "no claims"
    counts = Counter(v for v in claims["verdict"] if v)
    ordered = [v for v in VERDICTS if counts[v]] + sorted(v for v in counts if v not in VERDICTS)
    if not ordered:
        return "no claims"
    return ", ".join(f"{counts[v]} {_SHORT_VERDICT.get(v, v)}" for v in ordered)


def format_wall_time(seconds: Any) -> str:
    try:
        seconds = float(seconds)
    except (TypeError, ValueError):
        return _MISSING
    if not math.isfinite(seconds):
        return _MISSING
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _link(report_dir: Path, filename: str) -> str:
    if not (report_dir / filename).is_file():
        return f'<span class="muted">{html.escape(filename)}</span>'
    href = html.escape(f"{report_dir.name}/{filename}", quote=True)
    return f'<a href="{href}">{html.escape(filename)}</a>'


def _thumbnail(report_dir: Path) -> str:
    figure = next((report_dir / n for n in KEY_FIGURE_NAMES if (report_dir / n).is_file()), None)
    figure = figure or next(iter(sorted(report_dir.glob("*.png"))), None)  # any figure beats none
    if figure is None:
        return '<span class="muted">no figure</span>'
    data = base64.b64encode(figure.read_bytes()).decode()
    return f'<img class="thumb" alt="{html.escape(figure.name)}" src="data:image/png;base64,{data}">'


def _index_row(report_dir: Path) -> str:
    run = _read_run_json(report_dir / "run.json")
    timestamp = run.get("timestamp_utc")
    if not timestamp and (report_dir / "report.html").is_file():
        mtime = (report_dir / "report.html").stat().st_mtime
        timestamp = datetime.fromtimestamp(mtime, timezone.utc).isoformat(timespec="seconds")
    cells = [
        f"<strong>{html.escape(report_dir.name)}</strong>",
        f"{_link(report_dir, 'review.html')} · {_link(report_dir, 'report.html')}",
        html.escape(str(run.get("profile", _MISSING))),
        html.escape(verdict_counts_text(report_dir / "claims.csv")),
        format_wall_time(run.get("wall_time_s")),
        html.escape(str(timestamp or _MISSING)),
        _thumbnail(report_dir),
    ]
    return "<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>"


def _report_dirs(reports_dir: Path) -> list[Path]:
    if not reports_dir.is_dir():
        return []
    return [child for child in sorted(reports_dir.iterdir())
            if child.is_dir() and child.name not in _SKIPPED_DIRS and not child.name.startswith((".", "_"))
            and ((child / "run.json").is_file() or (child / "report.html").is_file())]


def _bench_link(reports_dir: Path, page: Path) -> str:
    """One bench summary in the index, named by the machine its bench.json was measured on."""
    rel = page.relative_to(reports_dir).as_posix()
    try:
        facts = json.loads((page.parent / "bench.json").read_text())
        machine = f" ({html.escape(str(facts.get('device')))}, {html.escape(str(facts.get('cpu_family')))})"
    except (OSError, ValueError):
        machine = ""
    return f'<li><a href="{rel}">{rel}</a>{machine}</li>'


def build_index(reports_dir: Path) -> Path:
    """Write ``reports/index.html``: one scorecard row per paper report (and the bench summary if present)."""
    reports_dir = Path(reports_dir)
    rows = [_index_row(report_dir) for report_dir in _report_dirs(reports_dir)]
    header = "".join(f"<th>{name}</th>" for name in ("Paper", "Pages", "Profile", "Verdicts", "Wall time",
                                                      "Run at (UTC)", "Key figure"))
    if rows:
        table = f"<table><thead><tr>{header}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    else:
        table = '<p class="muted">No reports yet: run a paper notebook first.</p>'
    benches = [_bench_link(reports_dir, page) for page in sorted((reports_dir / "bench").glob("**/summary.html"))]
    bench = f"<h2>Benchmarks</h2><ul>{''.join(benches)}</ul>" if benches else ""
    page = ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>Replication reports</title>'
            f"<style>{_INDEX_CSS}</style></head><body><h1>Replication reports</h1>{table}{bench}</body></html>\n")
    return atomic_write_text(reports_dir / "index.html", page)
