"""Report building blocks: atomic files, claim tables, provenance, HTML export and index.

Everything a notebook writes under ``reports/<paper>/`` goes through the atomic
writers here, so an interrupted run never leaves a half-written report behind.
"""

from __future__ import annotations

import dataclasses

import html
import importlib.metadata
import json
import math
import numbers
import os
import platform
import stat
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import numpy as np
import pandas as pd
from IPython.display import HTML

from ie_helpers.errors import IEError
from ie_helpers.machine import cpu_name
from ie_helpers.verdicts import VERDICTS  # the one verdict policy

# ---------------------------------------------------------------------------
# Atomic writes
# ---------------------------------------------------------------------------

# Matches the `reports/**/_tmp*` pattern in .gitignore, so a crash mid-write
# never leaves an untracked file that looks like a real report.
_TEMP_PREFIX = "_tmp."


def _file_mode(path: Path) -> int:
    """Mode for a replaced file: keep the old one's, else what ``open()`` would give (mkstemp uses 0600)."""
    if path.exists():
        return stat.S_IMODE(path.stat().st_mode)
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temp file in the same folder and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f"{_TEMP_PREFIX}{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _file_mode(path))
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` as UTF-8 to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def _json_default(value: Any) -> Any:
    # dataclasses (Provenance, ...) become objects, numpy scalars/arrays real numbers/lists, the rest (Path) strings.
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON atomically; serialising fails before the file is touched."""
    text = json.dumps(obj, indent=2, sort_keys=False, default=_json_default)
    return atomic_write_text(path, text + "\n")


def atomic_write_csv(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write ``df`` as CSV (no index) atomically."""
    return atomic_write_text(path, df.to_csv(index=False, lineterminator="\n"))


# ---------------------------------------------------------------------------
# Claims
# ---------------------------------------------------------------------------

CLAIM_COLUMNS = ("claim_id", "paper_value", "measured_value", "verdict", "note")


@dataclass
class Claim:
    """One claim from a paper, what this run measured, and the verdict."""

    claim_id: str
    paper_value: str
    measured_value: str
    verdict: str
    note: str = ""

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            allowed = ", ".join(repr(v) for v in VERDICTS)
            raise IEError(f"Claim {self.claim_id!r} has unknown verdict {self.verdict!r}: use one of {allowed}.")


def synthetic_data_claims(ids_and_paper: list[tuple[str, str]]) -> list[Claim]:
    """Every claim ``not testable``: the run used synthetic template data, not a real corpus."""
    return [Claim(cid, paper, "n/a", "not testable", "this run used synthetic template data, not a real corpus")
            for cid, paper in ids_and_paper]


def claims_frame(claims: Iterable[Claim]) -> pd.DataFrame:
    """Claims as a table with exactly the columns of ``CLAIM_COLUMNS``."""
    return pd.DataFrame([asdict(claim) for claim in claims], columns=list(CLAIM_COLUMNS))


def write_claims(claims: Iterable[Claim], path: str | os.PathLike) -> Path:
    """Write claims to ``path`` as CSV atomically."""
    return atomic_write_csv(claims_frame(claims), path)


# ---------------------------------------------------------------------------
# Deviations from the paper's setup
# ---------------------------------------------------------------------------

_MISSING = "—"


def _normalise_setting(value: Any) -> str:
    """Canonical string for comparing settings: 1e-07 == '1e-7' == 0.0000001, 16 == '16.0'."""
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_normalise_setting(item) for item in value) + "]"
    if isinstance(value, bool):
        return str(value).lower()
    text = str(value).strip()
    if text.lower() in ("true", "false"):
        return text.lower()
    if isinstance(value, numbers.Real) or isinstance(value, str):
        try:
            number = float(value)
        except (TypeError, ValueError):
            return text
        if math.isfinite(number) and number.is_integer() and abs(number) < 1e16:
            return str(int(number))
        return repr(number)
    return text


def deviations_frame(
    paper_setting: Mapping[str, Any],
    run_setting: Mapping[str, Any],
    notes: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """Side-by-side paper vs this-run settings with a ``deviates`` flag per setting.

    A setting the paper does not specify is never a deviation; one the paper
    specifies but this run does not record is.
    """
    notes = dict(notes or {})
    keys = list(paper_setting) + [key for key in run_setting if key not in paper_setting]
    rows = []
    for key in keys:
        in_paper, in_run = key in paper_setting, key in run_setting
        if in_paper and in_run:
            deviates = _normalise_setting(paper_setting[key]) != _normalise_setting(run_setting[key])
            default_note = ""
        elif in_paper:
            deviates, default_note = True, "not recorded for this run"
        else:
            deviates, default_note = False, "not specified in paper"
        rows.append(
            {
                "setting": key,
                "paper": str(paper_setting[key]) if in_paper else _MISSING,
                "this_run": str(run_setting[key]) if in_run else _MISSING,
                "deviates": deviates,
                "note": notes.get(key, default_note),
            }
        )
    frame = pd.DataFrame(rows, columns=["setting", "paper", "this_run", "deviates", "note"])
    return frame.astype({"deviates": bool})


# ---------------------------------------------------------------------------
# Notebook display
# ---------------------------------------------------------------------------

VERDICT_STYLES = {
    "replicated": "background-color: #d4edda; color: #155724",
    "not replicated": "background-color: #f8d7da; color: #721c24",
    "direction only": "background-color: #fff3cd; color: #856404",
    "inconclusive": "background-color: #e8e0f5; color: #4a3570",
    "not testable": "background-color: #e2e3e5; color: #383d41",
}
_DEVIATION_STYLE = "background-color: #fff3cd; color: #856404; font-weight: bold"

_TABLE_STYLES = [
    {"selector": "", "props": "border-collapse: collapse; font-size: 0.9em; margin: 0.5em 0;"},
    {"selector": "th, td", "props": "border: 1px solid #ddd; padding: 4px 8px; text-align: left;"},
    {"selector": "th", "props": "background-color: #f5f5f5;"},
    {"selector": "caption", "props": "caption-side: top; font-weight: bold; text-align: left; padding: 4px 0;"},
]


def _verdict_cell_style(value: Any) -> str:
    return VERDICT_STYLES.get(str(value), "")


def _deviation_cell_style(value: Any) -> str:
    return _DEVIATION_STYLE if str(value) == "True" else ""


def format_number(x) -> str:
    """A number as a reader wants it: scores to 3 decimals, small values (p-values, learning rates) to 2
    significant digits, large ones to 1 decimal, integers as integers, missing as an em dash."""
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, float, np.integer, np.floating)):
        return html.escape(str(x))
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if x != x:
        return "—"
    if x == int(x) and abs(x) >= 1:
        return str(int(x))
    if abs(x) >= 100:
        return f"{x:.1f}"
    if x == 0 or abs(x) >= 0.01:
        return f"{x:.3f}"
    return f"{x:.2g}"


def show_table(df: pd.DataFrame, caption: str | None = None) -> HTML:
    """Table as HTML for ``display()``, with verdict cells coloured, deviations highlighted and numbers printed
    to their precision (``format_number``)."""
    # every cell through format_number: object columns (a transposed frame, mixed types) hold numbers too
    styler = df.style.hide(axis="index").format(format_number).set_table_styles(_TABLE_STYLES)
    verdict_columns = [col for col in df.columns if "verdict" in str(col).lower()]
    if verdict_columns:
        styler = styler.map(_verdict_cell_style, subset=verdict_columns)
    if "deviates" in df.columns:
        styler = styler.map(_deviation_cell_style, subset=["deviates"])
    if caption:
        styler = styler.set_caption(html.escape(caption))
    return HTML(styler.to_html())


def warning_banner(text: str) -> HTML:
    """A red box for results a reader must not take at face value (synthetic data, ignored parameter)."""
    return HTML(
        '<div role="alert" style="border: 2px solid #c62828; background-color: #fdecea; '
        'color: #8e1b1b; padding: 8px 12px; margin: 8px 0; border-radius: 4px;">'
        f"<strong>Warning:</strong> {html.escape(text)}</div>"
    )


# ---------------------------------------------------------------------------
# Provenance
# ---------------------------------------------------------------------------

DEFAULT_LIBRARIES = (
    "torch", "transformers", "peft", "trl", "datasets", "accelerate", "sentence-transformers",
    "rouge-score", "seqeval", "scipy", "statsmodels", "numpy", "pandas", "matplotlib", "papermill",
)


def library_versions(names: Iterable[str] = DEFAULT_LIBRARIES) -> dict[str, str]:
    """Installed version per distribution name, or ``"not installed"``."""
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


class StageTimer:
    """Wall-clock seconds per named stage; a repeated stage name accumulates."""

    def __init__(self) -> None:
        self._seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self._seconds[name] = self._seconds.get(name, 0.0) + time.perf_counter() - start

    def as_dict(self) -> dict[str, float]:
        return dict(self._seconds)

    def total(self) -> float:
        return sum(self._seconds.values())

    def summary(self) -> str:
        """The stages as a reader wants them: ``data 2 s · tuning 672 s · ...``."""
        return " · ".join(f"{name} {seconds:.0f} s" for name, seconds in self._seconds.items())


def torch_device_info() -> dict[str, Any]:
    """Whether CUDA is available and the device name torch would use."""
    try:
        import torch
    except ImportError:
        return {"torch": "not installed", "cuda_available": False, "device_name": "cpu", "device_count": 0}
    cuda = torch.cuda.is_available()
    return {
        "torch": torch.__version__,
        "cuda_available": cuda,
        "device_name": torch.cuda.get_device_name(0) if cuda else "cpu",
        "device_count": torch.cuda.device_count() if cuda else 0,
        "cuda_version": torch.version.cuda,
    }


def peak_memory() -> dict[str, float | None]:
    """Peak resident memory of this process (the notebook kernel) and peak CUDA memory, in GB."""
    import resource

    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
    cuda_gb = None
    try:
        import torch

        if torch.cuda.is_available():
            cuda_gb = round(torch.cuda.max_memory_allocated() / 1e9, 3)
    except ImportError:
        pass
    return {"process_peak_rss_gb": round(rss_kb / 1e6, 3), "cuda_peak_allocated_gb": cuda_gb}


def write_run_json(
    path: str | os.PathLike,
    *,
    profile: str,
    train_sizes: Any,
    wall_time_s: float,
    models: Any,
    data_sources: Any,
    seeds: Any,
    stage_times: Mapping[str, float] | StageTimer,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``run.json`` (run parameters plus environment provenance) atomically."""
    if isinstance(stage_times, StageTimer):
        stage_times = stage_times.as_dict()
    record = {
        "profile": profile,
        "train_sizes": train_sizes,
        "wall_time_s": wall_time_s,
        "models": models,
        "data_sources": data_sources,
        "seeds": seeds,
        "stage_times": dict(stage_times),
        "timestamp_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "device": torch_device_info(),
        "peak_memory": peak_memory(),
        "library_versions": library_versions(),
        "extra": dict(extra or {}),
    }
    return atomic_write_json(path, record)
