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


def _saved_bytes(model) -> int:
    """Bytes the decoder layers keep for backward (the LM head's logits, the same on both sides, left out)."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    ids = torch.arange(2 * 24).reshape(2, 24) % 200 + 3
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16):
        model.get_base_model().model(input_ids=ids)
    return sum(storages.values())


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
    assert _saved_bytes(fused) < 0.85 * _saved_bytes(_lora_model("eager"))  # 0.79 for this 64-wide model
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
    assert _saved_bytes(_lora_model(cpu_speed.RECOMPUTE_EAGER)) < _saved_bytes(_lora_model("eager"))


def test_auto_attention_on_cpu_is_the_recomputing_eager_path():
    from ie_helpers.settings import resolve_attention

    if torch.cuda.is_available():
        pytest.skip("auto picks SDPA on a GPU")
    assert resolve_attention("auto") == cpu_speed.RECOMPUTE_EAGER
