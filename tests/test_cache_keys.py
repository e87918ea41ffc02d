"""Cache keys change with everything a cached artefact depends on, and with nothing else.

A key that misses a nested setting lets two different runs share one folder (LoRA and LoRA+ would load
the same adapter); a key that misses the code revision reuses results of a training or decoding path
that has since changed.
"""

from __future__ import annotations

import dataclasses

import pytest

from ie_helpers import generate, train

RECORDS = [{"prompt": [{"role": "user", "content": f"List entities: Paris {i}"}],
            "completion": [{"role": "assistant", "content": '[{"type": "LOC", "text": "Paris"}]'}]} for i in range(3)]

# A second valid value for every setting, at every depth (lora.* are the nested LoRA settings).
OTHER_VALUE = {
    "lr": 1e-3, "epochs": 2.0, "max_steps": 7, "batch_size": 4, "grad_accum": 2, "max_grad_norm": 0.5,
    "weight_decay": 0.01, "warmup_ratio": 0.1, "lr_scheduler": "cosine", "max_length": 256, "seed": 1,
    "precision": "fp32", "frozen_weights": "fp32", "gradient_checkpointing": True, "group_by_length": False,
    "pad_to_multiple_of": 64, "completion_head_only": False, "attn_implementation": "sdpa", "reuse_heap": False,
    "fast_dropout": False, "lean_backward": False, "snapshot_every": 5, "full_finetune": True, "micro_batch": 4,
    "lora.r": 8, "lora.alpha": 16, "lora.dropout": 0.2, "lora.target_modules": ["q_proj", "v_proj"],
    "lora.loraplus_ratio": 16.0,
}
NOT_IN_KEY = {"reuse_heap", "lean_backward"}  # how memory is allocated or kept for backward, not what is computed


def _leaf_names(cls, prefix: str = "") -> list[str]:
    names = []
    for f in dataclasses.fields(cls):
        if f.name == "lora":
            names += _leaf_names(train.LoraSettings, "lora.")
        else:
            names.append(prefix + f.name)
    return names


def _with(name: str, value) -> train.TrainSettings:
    base = dataclasses.asdict(train.TrainSettings())
    if name.startswith("lora."):
        base["lora"][name.split(".", 1)[1]] = value
    else:
        base[name] = value
    return train.TrainSettings.from_dict(base)


def test_every_setting_has_an_alternative_value():
    assert sorted(OTHER_VALUE) == sorted(_leaf_names(train.TrainSettings))


@pytest.mark.parametrize("name", sorted(OTHER_VALUE))
def test_changing_any_setting_changes_the_run_key_unless_it_computes_nothing(name):
    base = train.run_key("fp", RECORDS, train.TrainSettings())
    changed = train.run_key("fp", RECORDS, _with(name, OTHER_VALUE[name]))
    if name in NOT_IN_KEY:
        assert changed == base
    else:
        assert changed != base


def test_run_key_follows_model_records_and_code_revision(monkeypatch):
    settings = train.TrainSettings()
    base = train.run_key("fp", RECORDS, settings)
    assert train.run_key("other-weights", RECORDS, settings) != base
    assert train.run_key("fp", RECORDS[:-1], settings) != base
    assert train.run_key("fp", RECORDS[::-1], settings) != base  # order is part of the data sample
    edited = [dict(r) for r in RECORDS]
    edited[1] = {**edited[1], "completion": [{"role": "assistant", "content": "[]"}]}
    assert train.run_key("fp", edited, settings) != base
    monkeypatch.setattr(train, "TRAINING_REVISION", train.TRAINING_REVISION + 1)
    assert train.run_key("fp", RECORDS, settings) != base


def test_run_key_ignores_how_the_same_run_is_written():
    base = train.run_key("fp", RECORDS, train.TrainSettings())
    as_dict = dataclasses.asdict(train.TrainSettings())
    shuffled = dict(reversed(list(as_dict.items())))
    shuffled["lora"] = dict(reversed(list(as_dict["lora"].items())))
    assert train.run_key("fp", RECORDS, train.TrainSettings.from_dict(shuffled)) == base
    reordered = [{k: r[k] for k in reversed(list(r))} for r in RECORDS]  # same records, keys in another order
    assert train.run_key("fp", reordered, train.TrainSettings()) == base
    assert train.run_key("fp", RECORDS, train.TrainSettings(lora=train.LoraSettings())) == base


PAYLOAD = {"model": "fp", "adapter": "run-1", "decoding": {"max_new_tokens": 64, "batch": 8},
           "docs": [["a", "b"], ["c"]]}


def _count_computes(payloads) -> int:
    calls = []
    for p in payloads:
        generate.cached(p, lambda: calls.append(1) or {"ner": ["[]"]})
    return len(calls)


def test_generation_cache_key_follows_every_nested_value():
    variants = [PAYLOAD,
                {**PAYLOAD, "model": "fp2"},
                {**PAYLOAD, "adapter": "run-2"},
                {**PAYLOAD, "decoding": {"max_new_tokens": 65, "batch": 8}},
                {**PAYLOAD, "docs": [["a", "b"], ["d"]]},
                {**PAYLOAD, "docs": [["a"], ["b"], ["c"]]}]
    assert _count_computes(variants) == len(variants)
    same = dict(reversed(list(PAYLOAD.items())))
    assert _count_computes([PAYLOAD, same]) == 0  # both already cached above


def test_generation_cache_key_follows_the_decoding_revision(monkeypatch):
    assert _count_computes([PAYLOAD, PAYLOAD]) == 1
    monkeypatch.setattr(generate, "DECODING_REVISION", generate.DECODING_REVISION + 1)
    assert _count_computes([PAYLOAD]) == 1


@pytest.mark.parametrize("bad, message", [
    ({"lora": {"rank": 8}}, "unknown LoRA setting"),
    ({"learning_rate": 1e-4}, "unknown training setting"),
    ({"precision": "fp16"}, "precision='fp16' is not supported"),
    ({"lr": "4e-4"}, "lr='4e-4' must be a positive number"),
    ({"lr": 0}, "must be a positive number"),
    ({"batch_size": 2.5}, "batch_size=2.5 must be a whole number"),
    ({"lora": {"dropout": 1.0}}, r"lora.dropout=1.0 must be in \[0.0, 1.0\)"),
    ({"lora": {"loraplus_ratio": -1}}, "loraplus_ratio=-1 must be a positive number"),
    ({"lora": {"r": 0}}, "lora.r=0 must be a positive number"),
    ({"attn_implementation": "flash"}, "attn_implementation='flash' is not supported"),
    ({"full_finetune": "yes"}, "full_finetune='yes' must be true or false"),
    ({"lora": [8]}, "lora must be a mapping"),
])
def test_training_settings_refuse_unknown_or_unsupported_values(bad, message):
    from ie_helpers import IEError

    with pytest.raises(IEError, match=message):
        train.TrainSettings.from_dict(bad)
