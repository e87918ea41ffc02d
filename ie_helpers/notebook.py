"""Notebook conveniences: one-line errors for user-fixable problems, and the run's output folder."""

from __future__ import annotations

import os
from pathlib import Path

from ie_helpers.errors import IEError


def _show_ie_error(shell, etype, evalue, tb, tb_offset=None):
    print(f"ERROR: {evalue}")
    return [f"IEError: {evalue}"]


def setup(output_dir: str | os.PathLike) -> Path:
    """Show IEError as one line (no library stack trace) and create the report folder."""
    try:
        from IPython import get_ipython

        shell = get_ipython()
        if shell is not None:
            shell.set_custom_exc((IEError,), _show_ie_error)
            show_frames_as_tables(shell)
    except ImportError:
        pass
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    return out


def frame_html(df) -> str:
    """A displayed DataFrame as the report's tables look (``report.show_table``: numbers to their precision,
    missing values as a dash); an index that carries information becomes a column."""
    import pandas as pd

    from ie_helpers.report import show_table

    if not isinstance(df.index, pd.RangeIndex) or df.index.name is not None or df.index.start != 0:
        df = df.reset_index()
    return show_table(df).data


def show_frames_as_tables(shell) -> None:
    """Every ``display(frame)`` in the kernel renders through :func:`frame_html`."""
    import pandas as pd

    shell.display_formatter.formatters["text/html"].for_type(pd.DataFrame, frame_html)


def show_budget_cuts(cfg: dict) -> None:
    """Show what the profile leaves out to fit its budget (the recipe's ``budget_cuts``), if anything."""
    if not cfg.get("budget_cuts"):
        return
    from IPython.display import Markdown, display

    display(Markdown(f"**Cut from the {cfg['profile']} profile to fit its budget** (the recipe's `budget_cuts`):\n"
                     + "\n".join(f"- {c}" for c in cfg["budget_cuts"])))
