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
    except ImportError:
        pass
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    return out
