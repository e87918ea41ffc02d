"""Execute paper notebooks with papermill and render their reports.

    python -m ie_helpers.reproduce [--paper etlch] [--profile cpu] [-p train_sizes '[25, 50]']

For each paper: parameters are validated first (a bad one is a one-line error), the notebook is
executed into ``reports/<paper>/<paper>.ipynb``, then rendered to ``report.html`` (with code) and
``review.html`` (code-free); ``reports/index.html`` links every report.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import time
from pathlib import Path

from ie_helpers.config import WHOLE_SPLIT, available_recipes, load_config
from ie_helpers.errors import IEError
from ie_helpers.models import REPO_ROOT, resolve_model

NOTEBOOKS = REPO_ROOT / "notebooks"
REPORTS = REPO_ROOT / "reports"


def notebook_papers() -> list[str]:
    """Papers that have both a recipe and a notebook."""
    return [p for p in available_recipes() if (NOTEBOOKS / f"{p}.ipynb").exists()]


def notebook_parameters(paper: str) -> set[str]:
    """Names a paper notebook's ``parameters`` cell declares (what papermill can set), less ``output_dir``."""
    import papermill as pm

    return set(pm.inspect_notebook(str(NOTEBOOKS / f"{paper}.ipynb"))) - {"output_dir"}


def models_named(cfg: dict) -> list[str]:
    """Every model a run will load: the model (or backbone and teacher), the baselines and the encoder(s)."""
    names = [cfg.get("model"), cfg.get("backbone"), (cfg.get("teacher") or {}).get("model"),
             *(cfg.get("baselines") or [])]
    encoder = cfg.get("encoder")
    if isinstance(encoder, dict):
        names += [v for k, v in encoder.items() if k in (cfg.get("datasets") or {})]
    else:
        names.append(encoder)
    return [n for n in names if isinstance(n, str) and n]


_EXPONENT_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def _exponent_numbers(value):
    """YAML 1.1 reads ``5e-05`` (no dot) as a string: make such strings the numbers they spell, at any depth."""
    if isinstance(value, str) and _EXPONENT_NUMBER.match(value):
        return float(value)
    if isinstance(value, list):
        return [_exponent_numbers(v) for v in value]
    if isinstance(value, dict):
        return {k: _exponent_numbers(v) for k, v in value.items()}
    return value


def parse_value(text: str):
    """A -p value: JSON/YAML literal when it parses (numbers, lists, dicts, null), else the string."""
    import yaml

    try:
        return _exponent_numbers(yaml.safe_load(text))
    except yaml.YAMLError:
        return text


def cli_value(text: str):
    """A -p value as the notebook gets it: ``null`` is an explicit request (the whole split, ``WHOLE_SPLIT``),
    never "not given", which a None parameter would mean to the notebook."""
    value = parse_value(text)
    return WHOLE_SPLIT if value is None else value


def absolute_paths(value, base: Path | None = None):
    """Every string in a parameter value that names an existing file or folder relative to ``base`` (the
    directory the command ran from), made absolute: the kernel runs in ``notebooks/``, where a relative
    path would point elsewhere. Built-in names and hub ids are left alone unless such a path exists."""
    base = base or Path.cwd()
    if isinstance(value, dict):
        return {k: absolute_paths(v, base) for k, v in value.items()}
    if isinstance(value, list):
        return [absolute_paths(v, base) for v in value]
    if isinstance(value, str) and value and not Path(value).is_absolute() and value not in _registered_names():
        candidate = (base / Path(value).expanduser()).resolve()
        if candidate.exists():
            return str(candidate)
    return value


def _registered_names() -> set[str]:
    from ie_helpers.data import DATASETS
    from ie_helpers.models import BUILTINS

    return set(DATASETS) | set(BUILTINS)


PATH_VARIABLES = ("IE_DATA_DIR", "IE_CACHE_DIR", "IE_TEST_MODEL_CACHE", "HF_HOME")


def absolute_path_variables(environ=os.environ, base: Path | None = None) -> None:
    """Relative folders in the environment, made absolute for the kernel (it runs in ``notebooks/``)."""
    base = base or Path.cwd()
    for name in PATH_VARIABLES:
        value = environ.get(name)
        if value and not Path(value).expanduser().is_absolute():
            environ[name] = str((base / value).resolve())


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


def report_dir(reports_dir: Path, paper: str, profile: str) -> Path:
    """``reports/<paper>`` for the committed cpu profile, ``reports/<paper>-<profile>`` for any other, so a
    smoke or paper run never overwrites the cpu report."""
    return reports_dir / (paper if profile == "cpu" else f"{paper}-{profile}")


def swap_in(staging: Path, final: Path) -> None:
    """Replace ``final`` by the finished ``staging`` folder; the old report is removed only after the swap."""
    old = final.with_name(f"_tmp.old.{final.name}.{os.getpid()}")
    if final.exists():
        os.replace(final, old)
    os.replace(staging, final)
    shutil.rmtree(old, ignore_errors=True)


def run_paper(paper: str, profile: str, params: dict, reports_dir: Path = REPORTS) -> Path:
    """Execute one paper notebook into a staging folder and swap it in only when notebook and pages succeed."""
    import papermill as pm

    from ie_helpers.pages import build_index, export_notebook_html

    declared = notebook_parameters(paper)
    ignored = sorted(set(params) - declared)
    if ignored:
        raise IEError(f"parameter(s) {', '.join(ignored)} are not parameters of notebooks/{paper}.ipynb; "
                      f"valid: {', '.join(sorted(declared))}")
    cfg = load_config(paper, profile, **params)  # fail fast, before starting a kernel
    for name in models_named(cfg):
        resolve_model(name)
    final = report_dir(reports_dir, paper, cfg["profile"])
    staging = reports_dir / f"_tmp.{final.name}.{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    executed = staging / f"{paper}.ipynb"
    parameters = {"profile": cfg["profile"], "output_dir": str(staging.resolve()), **params}
    start = time.perf_counter()
    print(f"[reproduce] {paper}: profile={cfg['profile']} params={params}", flush=True)
    try:
        pm.execute_notebook(str(NOTEBOOKS / f"{paper}.ipynb"), str(executed), parameters=parameters,
                            cwd=str(NOTEBOOKS), progress_bar=False, log_output=True, kernel_name="python3")
    except pm.PapermillExecutionError as e:
        message = failure_message(executed) or f"{e.ename}: {e.evalue}"
        raise IEError(f"{paper} notebook failed in cell {e.exec_count}: {message} (partial notebook: {executed}; "
                      f"the previous report in {final} is untouched)") from None
    export_notebook_html(executed, staging)
    swap_in(staging, final)
    build_index(reports_dir)
    print(f"[reproduce] {paper}: done in {time.perf_counter() - start:.0f}s -> {final / 'review.html'}", flush=True)
    return final


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--paper", default="all", help="paper notebook to run, or 'all'")
    parser.add_argument("--profile", default="auto", help="smoke | cpu | paper | auto")
    parser.add_argument("-p", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="notebook parameter override, e.g. -p train_sizes '[25, 50]'; a size the recipe "
                             "lets be null takes null or all (the whole split)")
    parser.add_argument("--reports-dir", default=str(REPORTS))
    args = parser.parse_args(argv)
    params = {name: absolute_paths(cli_value(value)) for name, value in args.p}
    absolute_path_variables()
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
