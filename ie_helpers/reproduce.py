"""Execute paper notebooks with papermill and render their reports.

    python -m ie_helpers.reproduce [--paper etlch] [--profile cpu] [-p train_sizes '[25, 50]']

For each paper: parameters are validated first (a bad one is a one-line error), the notebook is
executed into ``reports/<paper>/<paper>.ipynb``, then rendered to ``report.html`` (with code) and
``review.html`` (code-free); ``reports/index.html`` links every report.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from ie_helpers.config import available_recipes, load_config
from ie_helpers.errors import IEError
from ie_helpers.models import REPO_ROOT, resolve_model

NOTEBOOKS = REPO_ROOT / "notebooks"
REPORTS = REPO_ROOT / "reports"


def notebook_papers() -> list[str]:
    """Papers that have both a recipe and a notebook."""
    return [p for p in available_recipes() if (NOTEBOOKS / f"{p}.ipynb").exists()]


def parse_value(text: str):
    """A -p value: JSON/YAML literal when it parses (numbers, lists, dicts, null), else the string."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def failure_message(executed_ipynb: Path) -> str:
    """The one-line reason a notebook stopped: an IEError line (see notebook.setup) or the last error output."""
    import nbformat

    try:
        nb = nbformat.read(executed_ipynb, as_version=4)
    except Exception:  # noqa: BLE001 - an unreadable partial notebook just means no better message
        return ""
    for cell in reversed(nb.cells):
        for out in reversed(cell.get("outputs", [])):
            if out.get("output_type") == "stream":
                lines = [ln for ln in out.get("text", "").splitlines() if ln.startswith("ERROR: ")]
                if lines:
                    return lines[-1][len("ERROR: "):]
            if out.get("output_type") == "error" and out.get("ename") not in (None, "", "CellExecutionError"):
                return f"{out['ename']}: {out.get('evalue', '')}"
    return ""


def run_paper(paper: str, profile: str, params: dict, reports_dir: Path = REPORTS) -> Path:
    import papermill as pm

    from ie_helpers.pages import build_index, export_notebook_html

    cfg = load_config(paper, profile, **params)  # fail fast, before starting a kernel
    for name in [cfg.get("model")] + list(cfg.get("baselines") or []):
        if name:
            resolve_model(name)
    out_dir = reports_dir / paper
    out_dir.mkdir(parents=True, exist_ok=True)
    executed = out_dir / f"{paper}.ipynb"
    partial = out_dir / f"_tmp.{paper}.ipynb"
    parameters = {"profile": profile, "output_dir": str(out_dir.resolve()), **params}
    start = time.perf_counter()
    print(f"[reproduce] {paper}: profile={profile} params={params}", flush=True)
    try:
        pm.execute_notebook(str(NOTEBOOKS / f"{paper}.ipynb"), str(partial), parameters=parameters,
                            cwd=str(NOTEBOOKS), progress_bar=False, log_output=True, kernel_name="python3")
    except pm.PapermillExecutionError as e:
        message = failure_message(partial) or f"{e.ename}: {e.evalue}"
        raise IEError(f"{paper} notebook failed in cell {e.exec_count}: {message} "
                      f"(partial notebook: {partial})") from None
    os.replace(partial, executed)
    export_notebook_html(executed, out_dir)
    build_index(reports_dir)
    print(f"[reproduce] {paper}: done in {time.perf_counter() - start:.0f}s -> {out_dir / 'review.html'}", flush=True)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--paper", default="all", help="paper notebook to run, or 'all'")
    parser.add_argument("--profile", default="auto", help="smoke | cpu | paper | auto")
    parser.add_argument("-p", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="notebook parameter override, e.g. -p train_sizes '[25, 50]'")
    parser.add_argument("--reports-dir", default=str(REPORTS))
    args = parser.parse_args(argv)
    params = {name: parse_value(value) for name, value in args.p}
    try:
        papers = notebook_papers() if args.paper == "all" else [args.paper]
        for paper in papers:
            if paper not in notebook_papers():
                raise IEError(f"unknown paper '{paper}': choose one of {', '.join(notebook_papers())} or 'all'")
            run_paper(paper, args.profile, params, Path(args.reports_dir))
    except IEError as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
