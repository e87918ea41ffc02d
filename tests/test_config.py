"""Tests for ie_helpers.config: profile merging, overrides and their validation, 'auto' profile."""

import sys
import types

import re

import pytest

from ie_helpers import config
from ie_helpers.config import PROFILES, available_recipes, load_config, read_recipe
from ie_helpers.errors import IEError


def _fake_torch(cuda: bool):
    return types.SimpleNamespace(cuda=types.SimpleNamespace(is_available=lambda: cuda))


def test_etlch_recipe_is_available_and_has_all_profiles():
    assert "etlch" in available_recipes()
    recipe = read_recipe("etlch")
    assert set(recipe["profiles"]) == set(PROFILES)
    assert recipe["paper_setting"]["model"] == "meta-llama/Llama-3.2-1B-Instruct"


def test_smoke_profile_merges_over_common():
    cfg = load_config("etlch", "smoke")
    assert cfg["model"] == "tiny-random-llama"
    assert cfg["allow_synthetic"] is True
    assert cfg["train_sizes"] == [2, 4, 8]
    assert cfg["encoder"] == "all-minilm-l6-v2"  # from common, not overridden by smoke
    tr = cfg["training"]
    assert tr["batch_size"] == 4 and tr["max_grad_norm"] == pytest.approx(0.1)  # nested merge keeps common keys
    assert tr["lora"] == {"r": 4, "alpha": 8, "dropout": 0.4, "target_modules": "all-linear"}
    assert (cfg["profile"], cfg["paper"]) == ("smoke", "etlch")
    assert float(cfg["paper_setting"]["lr"]) == pytest.approx(1e-7)  # YAML 1.1 reads `1e-7` as a string
    assert any("Qwen" in b for b in cfg["paper_baselines"])


def test_learning_curves_and_the_protocol():
    # the paper profile runs the paper's sizes (E3/E4 at 300+); the cpu profile stops at 100 for the 45-minute
    # budget of three seeds and a dev grid, and its recipe says so
    assert 300 in load_config("etlch", "paper")["train_sizes"]
    cpu = load_config("etlch", "cpu")
    sizes = cpu["train_sizes"]
    assert len(sizes) >= 3 and sizes == sorted(set(sizes)) and min(sizes) > 0
    assert len(cpu["seeds"]) >= 3 and len(cpu["lrs"]) >= 3 and cpu["compare_size"] in sizes
    assert cpu["tuning"]["train_size"] == cpu["compare_size"] and cpu["tuning"]["seed"] in cpu["seeds"]


def test_paper_profile():
    cfg = load_config("etlch", "paper")
    assert cfg["model"] == "meta-llama/Llama-3.2-1B-Instruct"
    assert cfg["eval_size"] is None
    assert 1e-7 in cfg["lrs"] and cfg["training"]["epochs"] == 100
    assert cfg["training"]["warmup_ratio"] == pytest.approx(0.03)  # inherited from common
    assert cfg["baselines"] == cfg["paper_baselines"]


@pytest.mark.parametrize("profile", PROFILES)
def test_numeric_training_settings_are_numbers(profile):
    # PyYAML reads `1e-7` (no dot) as the string '1e-7'; training values must be real numbers
    tr = load_config("etlch", profile)["training"]
    assert all(isinstance(lr, float) for lr in load_config("etlch", profile)["lrs"])
    for key in ("epochs", "batch_size", "grad_accum", "max_grad_norm", "warmup_ratio", "max_length"):
        assert isinstance(tr[key], (int, float)) and not isinstance(tr[key], bool), (key, tr[key])
    for key in ("r", "alpha", "dropout"):
        assert isinstance(tr["lora"][key], (int, float)), (key, tr["lora"][key])
    assert all(isinstance(n, int) and n > 0 for n in load_config("etlch", profile)["train_sizes"])


def test_overrides_apply_and_deep_merge():
    cfg = load_config("etlch", "cpu", train_sizes=[10, 20], model="some/model",
                      training={"max_grad_norm": 1.0, "lora": {"r": 8}})
    assert cfg["train_sizes"] == [10, 20] and cfg["model"] == "some/model"
    assert cfg["training"]["max_grad_norm"] == pytest.approx(1.0)
    assert cfg["training"]["epochs"] == 1  # untouched keys survive
    assert cfg["training"]["lora"] == {"r": 8, "alpha": 64, "dropout": 0.4, "target_modules": "all-linear"}


def test_none_overrides_are_ignored():
    base = load_config("etlch", "smoke")
    cfg = load_config("etlch", "smoke", train_sizes=None, model=None, training=None, eval_size=None,
                      allow_synthetic=None)
    assert cfg == base


def test_overrides_do_not_leak_between_calls():
    load_config("etlch", "cpu", training={"lora": {"r": 2}}, tasks=["ner"])
    cfg = load_config("etlch", "cpu")
    assert cfg["training"]["lora"]["r"] == 32 and cfg["tasks"] == ["ner", "kge", "json"]
    cfg["training"]["max_grad_norm"] = 99.0  # mutating a returned config must not change the next one
    assert load_config("etlch", "cpu")["training"]["max_grad_norm"] == pytest.approx(0.1)


def test_unknown_profile_lists_choices():
    with pytest.raises(IEError) as exc:
        load_config("etlch", "gpu")
    msg = str(exc.value)
    assert "'gpu'" in msg
    for p in PROFILES:
        assert p in msg
    assert "\n" not in msg


def test_unknown_paper_lists_choices():
    with pytest.raises(IEError, match="etlch"):
        load_config("no-such-paper", "cpu")


def test_unknown_parameter_lists_valid():
    with pytest.raises(IEError) as exc:
        load_config("etlch", "cpu", train_size=[10])  # typo: missing s
    msg = str(exc.value)
    assert "train_size" in msg and "train_sizes" in msg and "eval_size" in msg


def test_unknown_training_key_lists_valid():
    with pytest.raises(IEError) as exc:
        load_config("etlch", "cpu", training={"learning_rate": 1e-4})
    msg = str(exc.value)
    assert "learning_rate" in msg
    for key in ("max_grad_norm", "epochs", "batch_size", "lora"):
        assert key in msg


def test_training_must_be_a_mapping():
    with pytest.raises(IEError, match="mapping"):
        load_config("etlch", "cpu", training=1e-4)


def test_unknown_lora_key_is_refused():
    with pytest.raises(IEError, match="rank"):
        load_config("etlch", "cpu", training={"lora": {"rank": 8}})


def test_auto_profile_without_cuda_is_cpu(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", _fake_torch(cuda=False))
    assert config.auto_profile() == "cpu"
    cfg = load_config("etlch")  # default profile is 'auto'
    assert cfg["profile"] == "cpu"
    assert cfg["train_sizes"] == load_config("etlch", "cpu")["train_sizes"]


def test_auto_profile_with_cuda_is_paper(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", _fake_torch(cuda=True))
    assert load_config("etlch", "auto")["profile"] == "paper"


def test_auto_profile_without_torch_is_cpu(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    assert config.auto_profile() == "cpu"


@pytest.mark.parametrize("override, message", [
    ({"train_sizes": "abc"}, "must be a list"), ({"seeds": []}, "is empty"), ({"seeds": ["a"]}, "seeds[0]"),
    ({"n_boot": -1}, "negative"), ({"eval_size": "most"}, "must be a number"),
    ({"training": {"epochs": "two"}}, "training.epochs"), ({"lrs": [1e-4, "x"]}, "lrs[1]"),
    ({"chained": "yes"}, "true/false")])
def test_bad_types_ranges_and_empty_lists_are_refused_before_anything_runs(override, message):
    with pytest.raises(IEError, match=re.escape(message)) as exc:
        load_config("etlch", "cpu", **override)
    assert "\n" not in str(exc.value)


def test_a_list_the_common_block_leaves_empty_may_be_emptied():
    assert load_config("etlch", "paper", baselines=[])["baselines"] == []  # optional, empty in `common`
    with pytest.raises(IEError, match="is empty"):
        load_config("etlch", "paper", seeds=[])


def test_auto_accepts_a_number_and_none_in_the_recipe_accepts_anything():
    assert load_config("etlch", "cpu", max_new_tokens=96)["max_new_tokens"] == 96
    assert load_config("etlch", "paper", max_new_tokens="auto")["max_new_tokens"] == "auto"  # common's value
    assert load_config("etlch", "cpu", eval_size=None)["eval_size"] == 64  # None keeps the profile value
    assert load_config("etlch", "paper", eval_size=100)["eval_size"] == 100  # the paper profile's null


def test_the_whole_split_is_asked_for_explicitly_not_by_none():
    from ie_helpers.reproduce import cli_value

    assert load_config("etlch", "cpu", eval_size="all")["eval_size"] is None  # the whole split
    assert load_config("etlch", "cpu", eval_size=cli_value("null"))["eval_size"] is None  # -p eval_size null
    assert load_config("etlch", "cpu", eval_size=cli_value("all"))["eval_size"] is None
    assert load_config("etlch", "cpu", eval_size=None)["eval_size"] == 64  # not given: the profile's value
    nested = load_config("mtpf", "cpu", downstream={"ner": {"test_size": "all"}})["downstream"]["ner"]
    assert nested["test_size"] is None and nested["train_size"] == 200
    assert config.whole_split_sizes(read_recipe("etlch")) == {"eval_size"}


@pytest.mark.parametrize("override", [{"n_boot": "all"}, {"seeds": "all"}, {"training": {"epochs": "all"}}])
def test_only_a_size_the_recipe_lets_be_null_takes_the_whole_split(override):
    with pytest.raises(IEError, match="cannot be null or 'all'.*only eval_size can") as exc:
        load_config("etlch", "cpu", **override)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("paper", available_recipes())
@pytest.mark.parametrize("profile", PROFILES)
def test_every_profile_passes_the_type_check_against_common(paper, profile):
    from ie_helpers.config import _check_value

    recipe = read_recipe(paper)
    for key, value in (recipe["profiles"][profile] or {}).items():
        _check_value(value, recipe["common"].get(key), key)


@pytest.mark.parametrize("paper", available_recipes())
def test_every_recipe_declares_its_checkpoint_policy(paper):
    from ie_helpers.engine import CHECKPOINT_POLICIES

    cfg = load_config(paper, "cpu")
    assert cfg["checkpoint"] in CHECKPOINT_POLICIES
    # only a notebook that scores dev snapshots may choose among them
    assert cfg["checkpoint"] == ("best_on_dev" if paper == "loraplus" else "last")
