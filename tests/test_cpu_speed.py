"""The CPU training levers that change what backward keeps must not change a single bit of what is learned."""

from __future__ import annotations

import pytest
import torch

from ie_helpers import cpu_speed


def _lora_model(attn: str, dropout: float = 0.1, mask_dropout: bool = True):
    from peft import LoraConfig, get_peft_model

    from ie_helpers.models import load_causal_lm, resolve_model
    from ie_helpers.settings import resolve_attention

    resolve_model("tiny-random-llama")  # a first-use conversion draws random numbers: do it before seeding
    torch.manual_seed(0)
    model, _, _ = load_causal_lm("tiny-random-llama", dtype=torch.bfloat16, attn_implementation=resolve_attention(attn))
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules="all-linear"))
    for i, (name, p) in enumerate(model.named_parameters()):
        if "lora_B" in name:  # B starts at zero in peft: give it values so every gradient is non-trivial
            torch.nn.init.normal_(p, std=0.05, generator=torch.Generator().manual_seed(i))
    if mask_dropout:
        cpu_speed.use_mask_dropout(model)
    return model.train()


def _loss_and_grads(model, *, autocast: bool = True):
    ids = torch.arange(2 * 24).reshape(2, 24) % 200 + 3
    mask = torch.ones_like(ids)
    mask[1, 18:] = 0  # a right-padded row, as the training batches have
    torch.manual_seed(123)  # the same dropout masks on both sides
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        logits = model(input_ids=ids, attention_mask=mask).logits
    loss = logits.float().logsumexp(-1)[mask.bool()].mean()
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _saved_bytes(model, length: int = 24) -> int:
    """Bytes the decoder layers keep for backward (the LM head's logits, the same on both sides, left out)."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    ids = torch.arange(2 * length).reshape(2, length) % 200 + 3
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16):
        model.get_base_model().model(input_ids=ids)
    return sum(storages.values())


def _saved_bytes_per_token(model) -> float:
    """What backward keeps per extra token (the fixed part, such as generator states, left out)."""
    return (_saved_bytes(model, 64) - _saved_bytes(model, 32)) / (2 * 32)


@pytest.mark.parametrize("autocast", [True, False])
@pytest.mark.parametrize("dropout", [0.1, 0.0])
def test_fused_lora_branch_gives_bit_identical_loss_and_gradients(autocast, dropout):
    reference = _lora_model("eager", dropout)
    fused = _lora_model("eager", dropout)
    assert cpu_speed.fuse_lora_layers(fused) == 14
    loss_ref, grads_ref = _loss_and_grads(reference, autocast=autocast)
    loss, grads = _loss_and_grads(fused, autocast=autocast)
    assert loss == loss_ref
    assert grads.keys() == grads_ref.keys() and len(grads) == 28
    assert all(torch.equal(grads[n], grads_ref[n]) for n in grads), [n for n in grads if not torch.equal(grads[n], grads_ref[n])]


def test_fused_lora_keeps_less_for_backward_and_leaves_other_dropouts_alone():
    fused = _lora_model("eager")
    cpu_speed.fuse_lora_layers(fused)
    assert _saved_bytes_per_token(fused) < 0.75 * _saved_bytes_per_token(_lora_model("eager"))
    plain = _lora_model("eager", mask_dropout=False)  # nn.Dropout draws another random stream: not fused
    assert cpu_speed.fuse_lora_layers(plain) == 0
    assert cpu_speed.fuse_lora_layers(fused) == 0  # once only


def test_fused_lora_model_still_merges_and_evaluates_like_peft():
    fused, reference = _lora_model("eager"), _lora_model("eager")
    cpu_speed.fuse_lora_layers(fused)
    ids = torch.arange(12).reshape(1, 12) + 5
    with torch.no_grad():
        assert torch.equal(fused.eval()(input_ids=ids).logits, reference.eval()(input_ids=ids).logits)


def test_recomputed_eager_attention_matches_eager_and_keeps_less():
    eager, recompute = _lora_model("eager"), _lora_model(cpu_speed.RECOMPUTE_EAGER)
    loss_ref, grads_ref = _loss_and_grads(eager)
    loss, grads = _loss_and_grads(recompute)
    assert loss == loss_ref and all(torch.equal(grads[n], grads_ref[n]) for n in grads_ref)
    assert _saved_bytes_per_token(_lora_model(cpu_speed.RECOMPUTE_EAGER)) < _saved_bytes_per_token(_lora_model("eager"))


def test_auto_attention_on_cpu_is_the_recomputing_eager_path():
    from ie_helpers.settings import resolve_attention

    if torch.cuda.is_available():
        pytest.skip("auto picks SDPA on a GPU")
    assert resolve_attention("auto") == cpu_speed.RECOMPUTE_EAGER
    # whole layers recomputed anyway: the inner recomputation would run twice, so SDPA
    assert resolve_attention("auto", checkpointing=True) == "sdpa"
    assert resolve_attention("eager", checkpointing=True) == "eager"


@pytest.mark.parametrize("autocast", [True, False])
def test_chunked_head_loss_has_unchunked_gradients(autocast):
    """Rows across three chunks: the same hidden-state gradient bit for bit, the same accuracy count, and the
    loss equal up to the order of its sum."""
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(32, 5000, bias=False).to(torch.bfloat16 if autocast else torch.float32).requires_grad_(False)
    hidden = torch.randn(2 * cpu_speed.HEAD_CHUNK_ROWS + 17, 32, generator=gen)
    targets = torch.randint(0, 5000, (hidden.shape[0],), generator=gen)

    def run(chunked: bool):
        h = hidden.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            if chunked:
                nll, correct = cpu_speed.head_nll_sum(h, head, targets)
            else:
                logits = head(h).float()
                nll, correct = F.cross_entropy(logits, targets, reduction="sum"), (logits.argmax(-1) == targets).sum()
        (nll / 37).backward()
        return nll.item(), int(correct), h.grad

    loss, correct, grad = run(chunked=True)
    loss_ref, correct_ref, grad_ref = run(chunked=False)
    assert torch.equal(grad, grad_ref) and correct == correct_ref
    assert loss == pytest.approx(loss_ref, rel=1e-6)


def test_recomputing_silu_gates_and_rms_norms_gives_bit_identical_gradients_and_keeps_less():
    reference, fused = _lora_model("eager"), _lora_model("eager")
    assert cpu_speed.fuse_gated_mlps(fused) == 2 and cpu_speed.fuse_gated_mlps(fused) == 0
    assert cpu_speed.recompute_rms_norms(fused) == 5 and cpu_speed.recompute_rms_norms(fused) == 0  # 2 per layer + final
    assert cpu_speed.fuse_lora_layers(fused) == 14
    loss_ref, grads_ref = _loss_and_grads(reference)
    loss, grads = _loss_and_grads(fused)
    assert loss == loss_ref and all(torch.equal(grads[n], grads_ref[n]) for n in grads_ref)
    lora_only = _lora_model("eager")
    cpu_speed.fuse_lora_layers(lora_only)
    assert _saved_bytes_per_token(fused) < _saved_bytes_per_token(lora_only)


@pytest.mark.parametrize("flags, family, native_bf16", [
    ({"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}, "amx-bf16", True),
    ({"avx2", "avx512f", "avx512_bf16"}, "avx512-bf16", True),
    ({"avx2", "avx512f"}, "avx512", False),
    ({"avx2", "fma"}, "avx2", False),
    (set(), "other", False),
])
def test_cpu_family_follows_the_flags(monkeypatch, flags, family, native_bf16):
    monkeypatch.setattr(cpu_speed, "_cpu_flags", lambda: flags)
    assert cpu_speed.cpu_family() == family and cpu_speed.cpu_has_native_bf16() is native_bf16
