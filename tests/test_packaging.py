"""environment.yml carries the same dependencies as pyproject.toml; README keeps its two commands."""

import re
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[ ]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = {_name(r): r.replace(" ", "") for r in project["dependencies"]}
    for extra in ("offline", "lab", "dev"):
        wanted.update({_name(r): r.replace(" ", "") for r in project["optional-dependencies"][extra]})
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip_deps = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    have = {_name(r): r.replace(" ", "") for r in pip_deps if not r.startswith("-")}  # -e ., --extra-index-url
    assert set(have) == set(wanted), f"missing {set(wanted) - set(have)}, extra {set(have) - set(wanted)}"
    for name, req in have.items():
        if name != "torch":  # the pin lives in the Makefile and environment.yml; pyproject accepts a range
            assert req == wanted[name], f"{name}: environment.yml {req} vs pyproject {wanted[name]}"


def test_readme_names_the_two_commands():
    readme = (REPO / "README.md").read_text()
    assert "make reproduce" in readme and "make test" in readme


def test_environment_yml_takes_the_cpu_torch_build_like_make_install():
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip_deps = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in pip_deps
    assert pip_deps.index("--extra-index-url https://download.pytorch.org/whl/cpu") < pip_deps.index("torch==2.13.0")

