"""Benchmark of the project's training and generation paths: ``python -m ie_helpers.bench`` (``make bench``).

One process, one run, three measurements on the same model and data:

1. **Training.** ``train.train_sft`` with default ``TrainSettings`` (the fast path: bf16 frozen weights
   where the CPU/GPU has native bf16, no gradient checkpointing, length-grouped batches, lengths padded to
   a multiple of 64, LM head on completion tokens only) against *plain TRL defaults* on the same model,
   records, LoRA config and number of optimizer steps. The baseline mirrors what ``trl.SFTConfig()``
   defaults to in the installed version (bf16 autocast and gradient checkpointing, read at run time),
   random batch order, padding to the longest row, the stock SFTTrainer loss (head on every position) and
   the base model loaded in fp32 (``frozen_weights="fp32"``); both go through ``train_sft``. ``--levers`` adds one run per lever: the baseline with that single change.
   Both sides train exactly one epoch over ``steps × batch`` records, so both process the same non-padding
   tokens (TRL's own count, ``count_tokens``) and tokens/s are comparable.
2. **Generation.** ``generate.generate`` (batched, length-sorted, on the model as ``load_for_inference``
   returns it: fp32 with oneDNN-packed linear layers on CPU, bf16 on GPU) against ``generate_unbatched`` on
   the stock model in the same dtype, on the same CoNLL04 test NER prompts, base model (no adapter), greedy.
   ``greedy_match_rate`` is the share of prompts whose two output strings are identical; when it is low in
   bf16 the fp32 rate on a subset is also measured, to tell bf16 rounding from a batching bug.
3. **Fraction of peak.** Model FLOPs of the fast training run over the machine's peak (see ``flops_model``
   and ``peak_flops``); on CUDA the same number is reported as ``mfu``.

Writes ``<out>/bench.json``, ``<out>/speedups.png`` and ``<out>/summary.html`` (atomic writes).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

from ie_helpers.bench_report import _print_summary, speedup_figure, summary_html
from ie_helpers.machine import PeakMemory, device_info, flops_model, measured_matmul_flops, model_dims, peak_flops
from ie_helpers.models import REPO_ROOT

BATCH_SIZE = 8
GEN_BATCH_SIZE = 48
DEFAULTS = {"model": "smollm2-135m-instruct", "steps": 12, "gen_prompts": 48, "max_new_tokens": 128, "encoder_steps": 24}
QUICK = {"model": "tiny-random-llama", "steps": 3, "gen_prompts": 6, "max_new_tokens": 16, "encoder_steps": 3}
ENCODER = "all-minilm-l6-v2"
MATCH_RATE_LOW = 0.9  # below this (in bf16) the fp32 match rate is measured too
FP32_CHECK_PROMPTS = 16  # prompts used for that fp32 check (it costs two more generation passes)


REQUIRED_KEYS = ("train_tokens_per_s", "baseline_train_tokens_per_s", "train_speedup", "gen_tokens_per_s",
                 "baseline_gen_tokens_per_s", "gen_speedup", "greedy_match_rate", "fraction_of_peak",
                 "flops_per_token", "peak_flops", "device", "peak_rss_gb", "measured_matmul_flops",
                 "fraction_of_measured_matmul", "fraction_of_spec_peak", "encoder_speedup")


def _log(msg: str) -> None:
    print(f"[bench] {msg}", flush=True)


# --------------------------------------------------------------------------- data


def training_records(n: int, *, allow_synthetic: bool = True) -> tuple[list[dict], dict, tuple[list, list]]:
    """``n`` ETLCH prompt–completion records (ner, kge, json of each sampled CoNLL04 train document)."""
    from ie_helpers.data import load_split, nested_sample
    from ie_helpers.tasks import etlch_examples, label_sets, to_prompt_completion

    docs, prov = load_split("conll04", "train", allow_synthetic=allow_synthetic)
    labels = label_sets(docs)
    n_docs = min(len(docs), math.ceil(n / 3))
    sample = nested_sample(docs, n_docs, seed=0, what="CoNLL04 train documents")
    examples = [ex for i, d in enumerate(sample)
                for ex in etlch_examples(d, i, entity_types=labels[0], relation_types=labels[1])]
    records = [to_prompt_completion(ex) for ex in examples[:n]]
    return records, dataclasses.asdict(prov), labels


def generation_prompts(n: int, labels: tuple[list, list], *, allow_synthetic: bool = True) -> tuple[list, dict]:
    """NER task prompts of ``n`` CoNLL04 test documents (the first step of the ETLCH chain)."""
    from ie_helpers.data import load_split, nested_sample
    from ie_helpers.tasks import etlch_examples, prompt_messages

    docs, prov = load_split("conll04", "test", allow_synthetic=allow_synthetic)
    sample = nested_sample(docs, min(n, len(docs)), seed=0, what="CoNLL04 test documents")
    prompts = []
    for i, d in enumerate(sample):
        (ex,) = etlch_examples(d, i, ("ner",), entity_types=labels[0], relation_types=labels[1])
        prompts.append(prompt_messages(ex.instruction, ex.input))
    return prompts, dataclasses.asdict(prov)


def _chat_ids(tokenizer, messages: list[dict], *, add_generation_prompt: bool) -> list[int]:
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return list(ids)


def token_stats(tokenizer, records: list[dict]) -> dict:
    """Prompt/completion token counts of the records under the chat template (for the FLOP count)."""
    total = completion = 0
    for r in records:
        prompt = len(_chat_ids(tokenizer, r["prompt"], add_generation_prompt=True))
        full = len(_chat_ids(tokenizer, r["prompt"] + r["completion"], add_generation_prompt=False))
        total += full
        completion += max(full - prompt, 0)
    n = max(len(records), 1)
    return {"tokens": total, "completion_tokens": completion, "mean_record_tokens": total / n,
            "completion_fraction": completion / total if total else float("nan")}


# --------------------------------------------------------------------------- training


def trl_defaults() -> dict:
    """What ``trl.SFTConfig()`` defaults to in the installed TRL, for the fields the fast path changes."""
    import torch
    from trl import SFTConfig

    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = SFTConfig(output_dir=tmp, use_cpu=not torch.cuda.is_available())
        return {"bf16": bool(cfg.bf16), "gradient_checkpointing": bool(cfg.gradient_checkpointing),
                "pad_to_multiple_of": cfg.pad_to_multiple_of,
                "train_sampling_strategy": getattr(cfg, "train_sampling_strategy", None),
                "group_by_length": bool(getattr(cfg, "group_by_length", False))
                or getattr(cfg, "train_sampling_strategy", None) == "group_by_length",
                "model_weights": "as loaded by the caller (fp32 by default in transformers)"}


def _losses(log_history: list[dict]) -> list[float]:
    return [float(h["loss"]) for h in log_history if "loss" in h]


def _run_summary(result, precision: str, weights: str) -> dict:
    losses = _losses(result.log_history)
    logged = [h["num_tokens"] for h in result.log_history if "num_tokens" in h]
    return {"tokens_per_s": result.tokens_per_second, "seconds": result.train_seconds,
            "tokens": result.train_tokens, "logged_num_tokens": logged[-1] if logged else None,
            "steps": len(losses), "losses": losses, "final_loss": losses[-1] if losses else float("nan"),
            "mean_loss": sum(losses) / len(losses) if losses else float("nan"),
            "precision": precision, "frozen_weights": weights}


def _curve_diff(a: list[float], b: list[float]) -> float:
    n = min(len(a), len(b))
    return max((abs(x - y) for x, y in zip(a[:n], b[:n])), default=float("nan"))


def lever_list(fast, baseline, fast_weights: str) -> list[tuple[str, str, dict, str]]:
    """(name, description, settings change, frozen weight dtype) for each way the fast path differs."""
    levers = []
    described = {"frozen_weights": f"frozen base weights in {fast_weights} when training in bf16 (adapters stay fp32)",
                 "precision": "training precision", "gradient_checkpointing": "gradient checkpointing",
                 "group_by_length": "length-grouped batches", "pad_to_multiple_of": "pad lengths to a multiple",
                 "completion_head_only": "LM head + loss on completion tokens only",
                 "attn_implementation": "attention kernel (transformers' attn_implementation)",
                 "reuse_heap": "glibc keeps freed memory in the heap (no mmap/munmap per large tensor)",
                 "fast_dropout": "LoRA dropout masks from 16-bit slices of random words (MaskDropout)"}
    for f in dataclasses.fields(fast):
        a, b = getattr(fast, f.name), getattr(baseline, f.name)
        if f.name == "precision":
            from ie_helpers.train import resolve_precision

            a, b = resolve_precision(a), resolve_precision(b)
        if f.name == "attn_implementation":
            from ie_helpers.train import resolve_attention

            a, b = resolve_attention(a), resolve_attention(b)
        if a != b:
            weights = fast_weights if f.name == "frozen_weights" else "float32"
            levers.append((f"{f.name}={a}", f"{described.get(f.name, f.name)}: {b} → {a}", {f.name: a}, weights))
    return levers


def bench_training(model_name: str, records: list[dict], steps: int, *, levers: bool, timer) -> dict:
    from ie_helpers.train import TrainSettings, resolve_precision, train_sft

    trl = trl_defaults()
    fast = TrainSettings(max_steps=steps, epochs=1.0, batch_size=BATCH_SIZE)
    baseline = dataclasses.replace(
        fast, precision="bf16" if trl["bf16"] else "fp32", gradient_checkpointing=trl["gradient_checkpointing"],
        group_by_length=False, pad_to_multiple_of=0, completion_head_only=False, frozen_weights="fp32",
        fast_dropout=False, attn_implementation="sdpa", reuse_heap=False)
    fast_precision = resolve_precision(fast.precision)
    fast_weights = "bfloat16" if fast_precision == "bf16" and not fast.full_finetune else "float32"

    # Order: baseline, then each lever, then the fast path. glibc heap reuse (reuse_heap) is process-wide once
    # switched on and cannot be switched back to glibc's pristine dynamic thresholds, so every run before the
    # fast path keeps the default allocator and the heap-reuse lever runs last. One-time costs (kernel builds,
    # page cache) therefore land on the baseline; the notes say so.
    _log("training: plain-TRL-defaults baseline")
    with timer.stage("train_baseline"), PeakMemory() as mem:
        base_result = train_sft(model_name, records, baseline, use_cache=False, log=lambda m: _log(m.strip()))
    shutil.rmtree(base_result.run_dir, ignore_errors=True)
    base_run = {**_run_summary(base_result, resolve_precision(baseline.precision), "float32"), **mem.as_dict()}
    lever_runs = []
    if levers:
        ordered = sorted(lever_list(fast, baseline, fast_weights), key=lambda lv: lv[0].startswith("reuse_heap"))
        for name, desc, change, weights in ordered:
            _log(f"lever {name}: {desc}")
            settings = dataclasses.replace(baseline, **change)
            with timer.stage(f"lever:{name}"), PeakMemory() as mem:
                r = train_sft(model_name, records, settings, use_cache=False, log=lambda m: _log(m.strip()))
            shutil.rmtree(r.run_dir, ignore_errors=True)
            run = {**_run_summary(r, resolve_precision(settings.precision), weights), **mem.as_dict()}
            lever_runs.append({
                "lever": name, "change": desc, "tokens_per_s": run["tokens_per_s"],
                "speedup_vs_baseline": run["tokens_per_s"] / base_run["tokens_per_s"],
                "final_loss": run["final_loss"], "mean_loss": run["mean_loss"],
                "loss_curve_max_abs_diff_vs_baseline": _curve_diff(run["losses"], base_run["losses"]),
                "losses": run["losses"], "peak_rss_gb": run["peak_rss_gb"], "cuda_peak_gb": run["cuda_peak_gb"]})
    _log(f"training: project fast path via train_sft, {steps} steps × batch {BATCH_SIZE}")
    with timer.stage("train_fast"), PeakMemory() as mem:
        fast_result = train_sft(model_name, records, fast, use_cache=False, log=lambda m: _log(m.strip()))
    shutil.rmtree(fast_result.run_dir, ignore_errors=True)  # the adapter is not needed: keep the run cache clean
    fast_run = {**_run_summary(fast_result, fast_precision, fast_weights), **mem.as_dict()}
    out = {
        "fast": {**fast_run, "settings": dataclasses.asdict(fast), "path": "ie_helpers.train.train_sft"},
        "baseline": {**base_run, "settings": dataclasses.asdict(baseline),
                     "path": "ie_helpers.train.train_sft with frozen_weights=fp32 (TRL's default weight dtype)"},
        "trl_defaults": trl,
        "train_speedup": fast_run["tokens_per_s"] / base_run["tokens_per_s"],
        "loss_curve_max_abs_diff": _curve_diff(fast_run["losses"], base_run["losses"]),
        "loss_curve_note": ("step-aligned; the fast path's length grouping changes which records form each "
                            "batch, so per-step losses differ by batch composition as well as by arithmetic. "
                            "Both runs see every record exactly once, so mean_loss is order-free; levers that "
                            "keep the batch order (all but group_by_length) show the arithmetic-only diff."),
        "run_order": ["baseline", *[lv["lever"] for lv in lever_runs], "fast"],
        "levers": lever_runs,
    }
    return out


# --------------------------------------------------------------------------- generation


def _gen_pair(model, baseline_model, tokenizer, prompts, max_new_tokens: int) -> dict:
    from ie_helpers.generate import GenerationStats, generate, generate_unbatched

    for m in (model, baseline_model):  # warm-up
        generate(m, tokenizer, prompts[:2], max_new_tokens=4, batch_size=2, progress=False)
    batched_stats, single_stats = GenerationStats(), GenerationStats()
    batched = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=GEN_BATCH_SIZE,
                       progress=False, stats=batched_stats)
    single = generate_unbatched(baseline_model, tokenizer, prompts, max_new_tokens=max_new_tokens,
                                stats=single_stats)
    matches = [a == b for a, b in zip(batched, single)]
    return {"tokens_per_s": batched_stats.new_tokens_per_s, "baseline_tokens_per_s": single_stats.new_tokens_per_s,
            "new_tokens": batched_stats.new_tokens, "baseline_new_tokens": single_stats.new_tokens,
            "seconds": batched_stats.seconds, "baseline_seconds": single_stats.seconds,
            "match_rate": sum(matches) / len(matches) if matches else float("nan"),
            "n_prompts": len(prompts), "mismatched_prompts": [i for i, m in enumerate(matches) if not m],
            "examples": [{"batched": a, "unbatched": b} for a, b in list(zip(batched, single))[:3]]}


def bench_generation(model_name: str, prompts: list, max_new_tokens: int, *, timer,
                     fp32_check_prompts: int = FP32_CHECK_PROMPTS, deadline: float = math.inf) -> dict:
    """Batched vs unbatched generation; the optional fp32 check is skipped if it would run past ``deadline``."""
    import torch

    from ie_helpers.train import load_for_inference

    with timer.stage("generate"), PeakMemory() as mem:
        # the project's inference path (dtype, and oneDNN-packed layers on CPU) against the stock model
        model, tokenizer, _ = load_for_inference(model_name)
        baseline_model, _, _ = load_for_inference(model_name, onednn=False)
        if torch.cuda.is_available():
            model.to("cuda")
            baseline_model.to("cuda")
        dtype = str(next(model.parameters()).dtype).replace("torch.", "")
        packed = sum(type(m).__name__ == "OneDNNLinear" for m in model.modules())
        _log(f"generation: {len(prompts)} prompts, max_new_tokens={max_new_tokens}, dtype={dtype}, "
             f"batched (batch {GEN_BATCH_SIZE}, {packed} oneDNN-packed linear layers) vs unbatched stock model")
        main = _gen_pair(model, baseline_model, tokenizer, prompts, max_new_tokens)
        del model, baseline_model
    out = {"dtype": dtype, "batch_size": GEN_BATCH_SIZE, "max_new_tokens": max_new_tokens,
           "onednn_packed_layers": packed, **main,
           "headline_dtype": dtype, "fp32_check": None, **mem.as_dict()}
    subset = prompts[:fp32_check_prompts]
    # fp32 decoding on CPU is ~1.5-2× slower than bf16; both passes over the subset, plus a model load
    estimate = 2.0 * (main["seconds"] + main["baseline_seconds"]) * len(subset) / max(len(prompts), 1) + 10
    out["fp32_check_estimated_s"] = estimate
    if dtype != "float32" and main["match_rate"] < MATCH_RATE_LOW and subset and \
            time.perf_counter() + estimate > deadline:
        out["fp32_check_skipped"] = (f"skipped: it would take ~{estimate:.0f} s and run past the --budget-s "
                                     "time budget")
        _log(f"fp32 greedy-match check {out['fp32_check_skipped']}")
    elif dtype != "float32" and main["match_rate"] < MATCH_RATE_LOW and subset:
        _log(f"match rate {main['match_rate']:.2f} in {dtype}: checking fp32 on {len(subset)} prompts")
        with timer.stage("generate_fp32_check"):
            model, tokenizer, _ = load_for_inference(model_name, dtype=torch.float32)
            if torch.cuda.is_available():
                model.to("cuda")
            check = _gen_pair(model, model, tokenizer, subset, max_new_tokens)
            del model
        out["fp32_check"] = check
    return out


# --------------------------------------------------------------------------- main


def run(args: argparse.Namespace) -> dict:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from ie_helpers.models import resolve_model
    from ie_helpers.plots import save_figure
    from ie_helpers.report import StageTimer, atomic_write_json, atomic_write_text, library_versions
    from ie_helpers.train import TrainSettings

    t0 = time.perf_counter()
    timer = StageTimer()
    out_dir = Path(args.out)
    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    notes = []
    dev = device_info()
    _log(f"device {dev['device']}, torch threads {dev['torch_threads']}, load average {load_start:.2f}")
    if dev["device_type"] == "cpu" and load_start > 0.5 * dev.get("cpu_cores", 1):
        notes.append(f"the 1-minute load average was {load_start:.2f} on {dev.get('cpu_cores')} cores at the start: "
                     "other processes were competing for the CPU, so absolute tokens/s are pessimistic")

    with timer.stage("data"):
        n_records = args.steps * BATCH_SIZE
        records, train_prov, labels = training_records(n_records)
        prompts, test_prov = generation_prompts(args.gen_prompts, labels)
    synthetic = train_prov["source"] == "synthetic" or test_prov["source"] == "synthetic"
    if synthetic:
        notes.append("real CoNLL04 data was unavailable: synthetic template documents were used (set IE_DATA_DIR)")
    if len(records) < n_records:
        notes.append(f"only {len(records)} training records available for {n_records} = steps × batch; the runs "
                     "go past one epoch")

    with timer.stage("model_setup"):
        from transformers import AutoTokenizer

        resolved = resolve_model(args.model)
        tokenizer = AutoTokenizer.from_pretrained(resolved.path)
        tstats = token_stats(tokenizer, records)
        dims = model_dims(resolved.path, TrainSettings().lora.r)
        flops = flops_model(dims, tstats["completion_fraction"], tstats["mean_record_tokens"])

    train = bench_training(args.model, records, args.steps, levers=args.levers, timer=timer)
    gen = bench_generation(args.model, prompts, args.max_new_tokens, timer=timer,
                           fp32_check_prompts=args.fp32_check_prompts, deadline=t0 + args.budget_s)

    from ie_helpers.bench_encoder import bench_encoder

    enc = bench_encoder(ENCODER, args.encoder_steps, timer=timer)
    fast, base = train["fast"], train["baseline"]
    if base["logged_num_tokens"] is not None and base["logged_num_tokens"] != base["tokens"]:
        notes.append(f"TRL logged {base['logged_num_tokens']} non-padding tokens for the baseline vs "
                     f"{base['tokens']} counted from the dataset")
    peak = peak_flops(fast["precision"], args.peak_gflops)
    matmul = measured_matmul_flops(fast["precision"])
    peak["spec_peak_flops"] = peak["peak_flops"]
    peak["measured_matmul_flops"] = matmul
    if not args.peak_gflops and (not math.isfinite(peak["peak_flops"]) or matmul > peak["peak_flops"]):
        # the per-cycle table cannot tell one 512-bit unit from two (Zen 4 vs Zen 5): trust the measurement
        peak["assumption"] += (f" A 2048³ {fast['precision']} matmul measured {matmul / 1e9:.0f} GFLOP/s, above that "
                               "estimate, so the measured figure is used as the peak.")
        peak["peak_flops"] = matmul
        peak["source"] = "measured 2048³ matmul (above the cores × clock × FLOPs/cycle estimate)"
    achieved = fast["tokens_per_s"] * flops["flops_per_token"]
    base_achieved = base["tokens_per_s"] * flops["baseline_flops_per_token"]
    fraction = achieved / peak["peak_flops"] if peak["peak_flops"] else float("nan")
    fp32_rate = gen["fp32_check"]["match_rate"] if gen["fp32_check"] else None

    notes += [
        "baseline = plain trl.SFTConfig defaults as installed: "
        f"bf16 autocast={train['trl_defaults']['bf16']}, gradient checkpointing="
        f"{train['trl_defaults']['gradient_checkpointing']}, random batch order, padding to the longest row, "
        "stock SFTTrainer loss (LM head on every position), base model weights in fp32; same records, LoRA "
        "(r=32, alpha=64, all-linear, dropout 0.05), batch 8, max_steps, lr schedule and seed as the fast path. "
        "Both sides run through train.train_sft; the baseline sets frozen_weights=fp32.",
        "tokens/s = non-padding tokens (prompt + completion, TRL's tokenization) of the one epoch over "
        "steps × batch records that both runs make, over trainer.train() wall time; both sides count the same "
        "tokens. The baseline runs first (glibc heap reuse is process-wide once on, so it must come last), so "
        "one-time costs such as kernel builds and the page cache are charged to the baseline.",
        f"generation: batched on the model as load_for_inference returns it ({gen['dtype']}, "
        f"{gen['onednn_packed_layers']} oneDNN-packed linear layers) vs one prompt at a time on the stock model. "
        f"greedy_match_rate is measured in {gen['dtype']}; "
        "batched and unbatched greedy decoding use different matrix shapes, so low-precision rounding can "
        "flip a near-tie token and the rest of the output with it."
        + (f" fp32 check on {gen['fp32_check']['n_prompts']} prompts: {fp32_rate:.2f}." if fp32_rate is not None
           else "") + (f" fp32 check {gen['fp32_check_skipped']}." if gen.get("fp32_check_skipped") else ""),
        f"fraction_of_peak = train tokens/s × flops_per_token / peak_flops; {peak['assumption']}",
        f"encoder: {ENCODER} LoRA token classification (r={enc['lora']['r']}) on {enc['sentences']} NCBI-disease "
        f"sentences, batch {enc['batch_size']}, {enc['steps']} steps: encoder.train_token_classifier (precision auto "
        f"= {enc['fast']['precision']}, length-grouped batches) vs transformers.Trainer with default TrainingArguments "
        "(fp32, random order); tokens/s = non-padding sub-tokens of the one epoch both make over the training loop's "
        "wall time; the baseline runs first.",
    ]
    if train["levers"]:
        notes.append("each lever is the baseline with one change, run after the baseline in the same process, so "
                     "kernels built for shapes it shares with earlier runs are already cached; reuse_heap runs last "
                     "(process-wide). Lever speedups are indicative; the headline train_speedup is the measured "
                     "comparison")
    if args.quick:
        notes.append("--quick run on a randomly initialised 2-layer model: a smoke test of the harness, "
                     "not a measurement (its greedy outputs decode to mostly empty strings, so the match rate "
                     "is trivial)")

    summary = {
        "train_tokens_per_s": fast["tokens_per_s"],
        "baseline_train_tokens_per_s": base["tokens_per_s"],
        "train_speedup": train["train_speedup"],
        "gen_tokens_per_s": gen["tokens_per_s"],
        "baseline_gen_tokens_per_s": gen["baseline_tokens_per_s"],
        "gen_speedup": gen["tokens_per_s"] / gen["baseline_tokens_per_s"],
        "greedy_match_rate": gen["match_rate"],
        "encoder_speedup": enc["speedup"],
        "encoder_tokens_per_s": enc["fast"]["tokens_per_s"],
        "baseline_encoder_tokens_per_s": enc["baseline"]["tokens_per_s"],
        "greedy_match_dtype": gen["dtype"],
        "greedy_match_rate_fp32": fp32_rate,
        "fraction_of_peak": fraction,
        "flops_per_token": flops["flops_per_token"],
        "baseline_flops_per_token": flops["baseline_flops_per_token"],
        "achieved_flops": achieved,
        "baseline_achieved_flops": base_achieved,
        "baseline_fraction_of_peak": base_achieved / peak["peak_flops"] if peak["peak_flops"] else float("nan"),
        "fraction_of_measured_matmul": achieved / matmul if matmul else float("nan"),
        "fraction_of_spec_peak": (achieved / peak["spec_peak_flops"]
                                  if math.isfinite(peak["spec_peak_flops"]) and peak["spec_peak_flops"] else float("nan")),
        "peak_flops": peak["peak_flops"],
        "peak_flops_source": peak["source"],
        "peak_flops_assumption": peak["assumption"],
        "spec_peak_flops": peak["spec_peak_flops"],
        "measured_matmul_flops": peak["measured_matmul_flops"],
        "device": dev["device"],
        "device_type": dev["device_type"],
        "torch_threads": dev["torch_threads"],
        "cpu_cores": dev.get("cpu_cores"),
        "precision": fast["precision"],
        "baseline_precision": base["precision"],
        "final_loss_fast": fast["final_loss"],
        "final_loss_baseline": base["final_loss"],
        "mean_loss_fast": fast["mean_loss"],
        "mean_loss_baseline": base["mean_loss"],
        "loss_curve_fast": fast["losses"],
        "loss_curve_baseline": base["losses"],
        "loss_curve_max_abs_diff": train["loss_curve_max_abs_diff"],
        "peak_rss_gb": {"train_fast": fast["peak_rss_gb"], "train_baseline": base["peak_rss_gb"],
                        "generation": gen["peak_rss_gb"], "encoder_fast": enc["fast"]["peak_rss_gb"],
                        "encoder_baseline": enc["baseline"]["peak_rss_gb"],
                        **{f"lever:{lv['lever']}": lv["peak_rss_gb"] for lv in train["levers"]}},
        "cuda_peak_gb": ({"train_fast": fast["cuda_peak_gb"], "train_baseline": base["cuda_peak_gb"],
                          "generation": gen["cuda_peak_gb"]} if dev["device_type"] == "cuda" else None),
        "model": args.model,
        "model_note": resolved.note,
        "steps": args.steps,
        "batch_size": BATCH_SIZE,
        "n_train_records": len(records),
        "gen_prompts": len(prompts),
        "max_new_tokens": args.max_new_tokens,
        "quick": bool(args.quick),
        "synthetic_data": synthetic,
        "data": {"train": train_prov, "test": test_prov, "token_stats": tstats},
        "flops": flops,
        "training": {k: v for k, v in train.items() if k != "levers"},
        "generation": gen,
        "encoder": enc,
        "levers": train["levers"],
        "stage_seconds": timer.as_dict(),
        "load_average": {"start": load_start,
                         "end": os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")},
        "library_versions": library_versions(),
        "python": sys.version.split()[0],
        "notes": notes,
    }
    if dev["device_type"] == "cuda":
        summary["mfu"] = fraction
    summary["wall_seconds"] = time.perf_counter() - t0

    with timer.stage("report"):
        import io

        fig = speedup_figure(summary)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", facecolor="white")
        save_figure(fig, out_dir / "speedups.png", dpi=110)
        summary["stage_seconds"] = timer.as_dict()
        atomic_write_json(out_dir / "bench.json", summary)
        atomic_write_text(out_dir / "summary.html", summary_html(summary, buf.getvalue()))
    _print_summary(summary, out_dir)
    return summary


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m ie_helpers.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help=f"model to benchmark (default {DEFAULTS['model']})")
    p.add_argument("--steps", type=int, help=f"optimizer steps per training run (default {DEFAULTS['steps']})")
    p.add_argument("--gen-prompts", type=int, help=f"CoNLL04 test NER prompts (default {DEFAULTS['gen_prompts']})")
    p.add_argument("--max-new-tokens", type=int, help=f"default {DEFAULTS['max_new_tokens']}")
    p.add_argument("--encoder-steps", type=int,
                   help=f"optimizer steps of each encoder run ({ENCODER}, default {DEFAULTS['encoder_steps']})")
    p.add_argument("--levers", action="store_true", help="also time each fast-path lever alone against the "
                                                          "baseline (one extra training run per lever)")
    p.add_argument("--out", default=str(REPO_ROOT / "reports" / "bench"), help="output folder")
    p.add_argument("--peak-gflops", type=float, help="override the machine's peak GFLOP/s for fraction_of_peak")
    p.add_argument("--fp32-check-prompts", type=int, default=FP32_CHECK_PROMPTS,
                   help="prompts for the fp32 greedy-match check run when the bf16 match rate is below "
                        f"{MATCH_RATE_LOW} (0 = skip)")
    p.add_argument("--budget-s", type=float, default=540.0,
                   help="skip the optional fp32 greedy-match check when it would end the run past this many "
                        "seconds (default 540: `make bench` stays under 10 minutes)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: tiny-random-llama, 3 steps, 6 prompts, 16 new tokens")
    args = p.parse_args(argv)
    base = QUICK if args.quick else DEFAULTS
    for key, value in base.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if min(args.steps, args.gen_prompts, args.max_new_tokens, args.encoder_steps) < 1:
        p.error("--steps, --gen-prompts, --max-new-tokens and --encoder-steps must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    from ie_helpers.errors import IEError

    args = parse_args(argv)
    try:
        run(args)
    except IEError as e:
        print(f"[bench] error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
