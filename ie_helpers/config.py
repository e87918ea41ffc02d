"""Recipes as data: one YAML per paper with its paper setting and one block per profile.

``load_config("etlch", "cpu", train_sizes=[50, 100])`` merges the profile over the recipe's
``common`` block, then the explicit overrides; ``None`` overrides mean "keep the profile value".
Unknown profiles and unknown keys are refused with the list of valid ones.
"""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

from ie_helpers.errors import IEError

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"
PROFILES = ("smoke", "cpu", "paper")


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
    for k, v in given.items():
        _check_nested(v, cfg[k], k)
    cfg = _merge(cfg, given)
    cfg["profile"] = profile
    cfg["paper"] = paper
    cfg["paper_setting"] = recipe.get("paper_setting", {})
    cfg["paper_baselines"] = recipe.get("paper_baselines", [])
    return cfg
