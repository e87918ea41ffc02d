"""Recipes as data: one YAML per paper with its paper setting and one block per profile.

``load_config("etlch", "cpu", train_sizes=[50, 100])`` merges the profile over the recipe's
``common`` block, then the explicit overrides; ``None`` overrides mean "keep the profile value".
A size the recipe lets be null (the whole split, e.g. ``eval_size``) is asked for explicitly with
``WHOLE_SPLIT`` (``"all"``; ``-p eval_size null`` on the command line). Unknown profiles and unknown
keys are refused with the list of valid ones.
"""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

from ie_helpers.errors import IEError

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"
PROFILES = ("smoke", "cpu", "paper")
WHOLE_SPLIT = "all"  # an override meaning "null: the whole split", told apart from None ("keep the profile value")


def available_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def read_recipe(paper: str) -> dict:
    path = RECIPES_DIR / f"{paper}.yaml"
    if not path.exists():
        raise IEError(f"unknown paper '{paper}': choose one of {', '.join(available_recipes())}")
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def auto_profile() -> str:
    """``paper`` when a CUDA GPU is present, else ``cpu``."""
    try:
        import torch
        return "paper" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _check_nested(value, base, path: str) -> None:
    """Refuse unknown keys and non-mappings wherever the recipe has a mapping, at every depth."""
    if not isinstance(base, dict):
        return
    if not isinstance(value, dict):
        raise IEError(f"parameter '{path}' must be a mapping like {base}")
    bad = sorted(set(value) - set(base))
    if bad:
        raise IEError(f"unknown key(s) {', '.join(bad)} in '{path}'; valid: {', '.join(sorted(base))}")
    for k, v in value.items():
        _check_nested(v, base[k], f"{path}.{k}")


def _kind(value) -> str:
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _check_value(value, default, path: str, common=None) -> None:
    """Refuse an override whose type does not match the recipe's value (``None`` in the recipe accepts anything,
    ``"auto"`` also accepts a number), an empty list where the recipe's list has entries (unless its ``common``
    block leaves that list empty, as for optional baselines), and negative numbers."""
    if default is None or value is None:
        return
    if isinstance(default, dict):
        if not isinstance(value, dict):
            raise IEError(f"parameter '{path}' must be a mapping like {default!r}, got {value!r}")
        for k, v in value.items():
            _check_value(v, default.get(k), f"{path}.{k}", common.get(k) if isinstance(common, dict) else None)
        return
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
        raise IEError(f"parameter '{path}' = {value} is negative; give a value >= 0 (the recipe has {default!r})")
    if "auto" in (default, common) and (_kind(value) == "a number" or value == "auto"):
        return
    if _kind(value) != _kind(default):
        raise IEError(f"parameter '{path}' must be {_kind(default)} like {default!r}, got {value!r}")
    if isinstance(default, list):
        if default and not value and common != []:
            raise IEError(f"parameter '{path}' is empty; give at least one entry, e.g. {default!r}")
        for i, item in enumerate(value):
            _check_value(item, default[0] if default else None, f"{path}[{i}]")


def whole_split_sizes(recipe: dict) -> set[str]:
    """Dotted paths of the sizes (``*_size``) and shares (``*_share``) that the recipe's common block or a profile
    sets to null (the whole split; for a share, every sentence as the corpus mixes them): the parameters that
    take ``WHOLE_SPLIT``."""
    found = set()

    def walk(block, prefix: str) -> None:
        for k, v in (block or {}).items():
            path = f"{prefix}{k}"
            if isinstance(v, dict):
                walk(v, f"{path}.")
            elif v is None and k.endswith(("_size", "_share")):
                found.add(path)

    for block in (recipe["common"], *recipe["profiles"].values()):
        walk(block, "")
    return found


def explicit_nulls(value, path: str, nullable: set[str]):
    """``value`` with every ``WHOLE_SPLIT`` turned into None (the whole split), at any depth; refused where the
    recipe has no whole-split size."""
    if isinstance(value, dict):
        return {k: explicit_nulls(v, f"{path}.{k}", nullable) for k, v in value.items()}
    if value != WHOLE_SPLIT:
        return value
    if path not in nullable:
        raise IEError(f"parameter '{path}' cannot be null or '{WHOLE_SPLIT}' (the whole split): only "
                      f"{', '.join(sorted(nullable)) or 'no parameter'} can; leave it out to keep the profile value")
    return None


def load_config(paper: str, profile: str = "auto", **overrides) -> dict:
    recipe = read_recipe(paper)
    if profile == "auto":
        profile = auto_profile()
    if profile not in recipe["profiles"]:
        raise IEError(f"unknown profile '{profile}' for {paper}: choose one of "
                      f"{', '.join(recipe['profiles'])} or 'auto'")
    cfg = _merge(recipe["common"], recipe["profiles"][profile] or {})
    given = {k: v for k, v in overrides.items() if v is not None}
    unknown = sorted(set(given) - set(cfg))
    if unknown:
        raise IEError(f"unknown parameter(s) {', '.join(unknown)} for {paper}; valid: {', '.join(sorted(cfg))}")
    nullable = whole_split_sizes(recipe)
    given = {k: explicit_nulls(v, k, nullable) for k, v in given.items()}
    for k, v in given.items():
        if v is not None:
            _check_nested(v, cfg[k], k)
            _check_value(v, cfg[k], k, recipe["common"].get(k))
    cfg = _merge(cfg, given)
    cfg["profile"] = profile
    cfg["paper"] = paper
    cfg["paper_setting"] = recipe.get("paper_setting", {})
    cfg["paper_baselines"] = recipe.get("paper_baselines", [])
    cfg["budget_cuts"] = (recipe.get("budget_cuts") or {}).get(profile, [])
    return cfg
