"""The decoder paths of ``make bench``: SFT training (the fast path vs plain TRL defaults, and one run per lever)
and batched vs unbatched greedy generation."""

from __future__ import annotations

import dataclasses
import math
import shutil
import tempfile
import time
import warnings

from ie_helpers.machine import PeakMemory

BATCH_SIZE = 8
GEN_BATCH_SIZE = 48
BASELINE_MIN_STEPS = 1  # a capped baseline still runs one step: on a CPU without bf16 units one step of TRL's
# bf16 autocast took 108-200 s, so a second step alone would take the bench past its 10 minutes
UNBATCHED_MIN_PROMPTS = 4  # a capped one-at-a-time pass still decodes this many prompts (its greedy-match check)
MATCH_RATE_LOW = 0.9  # below this (in bf16) the fp32 match rate is measured too
FP32_CHECK_PROMPTS = 16  # prompts used for that fp32 check (it costs two more generation passes)


def _log(msg: str) -> None:
    print(f"[bench] {msg}", flush=True)


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
                 "micro_batch": "rows per forward/backward pass (gradients accumulated over the batch)",
                 "group_by_length": "length-grouped batches", "pad_to_multiple_of": "pad lengths to a multiple",
                 "completion_head_only": "LM head + loss on completion tokens only",
                 "attn_implementation": "attention kernel (transformers' attn_implementation)",
                 "reuse_heap": "glibc keeps freed memory in the heap (no mmap/munmap per large tensor)",
                 "fast_dropout": "LoRA dropout masks from 16-bit slices of random words (MaskDropout)",
                 "lean_backward": "SiLU gates and RMS norms recompute in backward instead of storing (LoRA branches "
                                  "too where their dropout is MaskDropout, which the baseline's is not)"}
    from ie_helpers.train import resolve_attention, resolve_checkpointing, resolve_micro_batch, resolve_precision

    def checkpointing(s) -> bool:
        return resolve_checkpointing(s.gradient_checkpointing)

    resolvers = {"precision": lambda s: resolve_precision(s.precision), "gradient_checkpointing": checkpointing,
                 "attn_implementation": lambda s: resolve_attention(s.attn_implementation,
                                                                    checkpointing=checkpointing(s)),
                 "micro_batch": lambda s: resolve_micro_batch(s.micro_batch, s.batch_size,
                                                              resolve_precision(s.precision),
                                                              full_finetune=s.full_finetune)}
    for f in dataclasses.fields(fast):
        resolve = resolvers.get(f.name, lambda s, name=f.name: getattr(s, name))
        a, b = resolve(fast), resolve(baseline)
        if a != b:
            weights = fast_weights if f.name == "frozen_weights" else "float32"
            levers.append((f"{f.name}={a}", f"{described.get(f.name, f.name)}: {b} → {a}", {f.name: a}, weights))
    return levers


def next_step_overruns(steps_done: int, elapsed: float, max_seconds: float) -> bool:
    """Would one more step, at the mean pace of the steps done, end past ``max_seconds``?"""
    return elapsed * (steps_done + 1) / steps_done > max_seconds


def _stop_after_callback(max_seconds: float, min_steps: int):
    """A TrainerCallback that ends training once the next step would end past ``max_seconds`` (after
    ``min_steps``): a capped run takes at most ``max_seconds``, or its first steps where those alone take longer."""
    from transformers import TrainerCallback

    class StopAfter(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            steps = state.global_step
            if steps >= min_steps and next_step_overruns(steps, time.perf_counter() - self.start, max_seconds):
                control.should_training_stop = True

    return StopAfter()


def _train_one(model_name: str, records: list[dict], settings, precision: str, weights: str,
               max_seconds: float | None = None) -> dict:
    """One training run with its own peak memory; meant to run in a fresh process (``_in_fresh_process``).

    With ``max_seconds`` the run stops once its next step would end past it (after at least ``BASELINE_MIN_STEPS``
    steps); its rate is then TRL's logged count of the non-padding tokens of the steps it ran over their time."""
    from ie_helpers.train import train_sft

    callbacks = [_stop_after_callback(max_seconds, BASELINE_MIN_STEPS)] if max_seconds else None
    with PeakMemory() as mem:
        result = train_sft(model_name, records, settings, use_cache=False, callbacks=callbacks,
                           log=lambda m: _log(m.strip()))
    shutil.rmtree(result.run_dir, ignore_errors=True)  # the adapter is not needed: keep the run cache clean
    from ie_helpers.train import resolve_checkpointing, resolve_micro_batch

    summary = {**_run_summary(result, precision, weights), **mem.as_dict(), "capped": False,
               "gradient_checkpointing": resolve_checkpointing(settings.gradient_checkpointing),
               "micro_batch": resolve_micro_batch(settings.micro_batch, settings.batch_size, precision,
                                                  full_finetune=settings.full_finetune)}
    planned = settings.max_steps if settings.max_steps > 0 else math.ceil(len(records) / settings.batch_size)
    if summary["steps"] < planned:
        if not summary["logged_num_tokens"]:
            raise RuntimeError("a capped run needs TRL's logged num_tokens to know how many tokens it processed")
        summary.update(capped=True, planned_steps=planned, tokens=int(summary["logged_num_tokens"]),
                       tokens_per_s=summary["logged_num_tokens"] / summary["seconds"])
    return summary


def _in_fresh_process(fn, *args):
    """``fn(*args)`` in a new Python process: each training path gets its own heap (glibc heap reuse is
    process-wide once on) and its own peak resident memory, whatever ran before it."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def bench_training(model_name: str, records: list[dict], steps: int, *, levers: bool, timer,
                   baseline_max_s: float | None = None) -> dict:
    """The fast path against plain TRL defaults, each one epoch over ``records`` in a fresh process.

    ``baseline_max_s`` stops the baseline (and each lever run) once its next step would end past it: where TRL's
    defaults are very slow (bf16 autocast on a CPU without bf16 units took 108-200 s a step) a full epoch would
    take the bench past its 10 minutes; the rate then comes from the first steps of its random batch order."""
    from ie_helpers.train import TrainSettings, resolve_precision

    trl = trl_defaults()
    fast = TrainSettings(max_steps=steps, epochs=1.0, batch_size=BATCH_SIZE)
    baseline = dataclasses.replace(
        fast, precision="bf16" if trl["bf16"] else "fp32", gradient_checkpointing=trl["gradient_checkpointing"],
        group_by_length=False, pad_to_multiple_of=0, completion_head_only=False, frozen_weights="fp32",
        fast_dropout=False, lean_backward=False, attn_implementation="sdpa", reuse_heap=False,
        micro_batch=BATCH_SIZE)
    fast_precision = resolve_precision(fast.precision)
    fast_weights = "bfloat16" if fast_precision == "bf16" and not fast.full_finetune else "float32"

    # Every run in its own fresh process: order does not matter for the heap, and each peak is its own. The
    # baseline still runs first, so one-time costs outside the process (the page cache) are charged to it.
    _log("training: plain-TRL-defaults baseline (fresh process)")
    with timer.stage("train_baseline"):
        base_run = _in_fresh_process(_train_one, model_name, records, baseline,
                                     resolve_precision(baseline.precision), "float32", baseline_max_s)
    lever_runs = []
    if levers:
        for name, desc, change, weights in lever_list(fast, baseline, fast_weights):
            _log(f"lever {name}: {desc}")
            settings = dataclasses.replace(baseline, **change)
            with timer.stage(f"lever:{name}"):
                run = _in_fresh_process(_train_one, model_name, records, settings,
                                        resolve_precision(settings.precision), weights, baseline_max_s)
            lever_runs.append({
                "lever": name, "change": desc, "tokens_per_s": run["tokens_per_s"],
                "speedup_vs_baseline": run["tokens_per_s"] / base_run["tokens_per_s"],
                "final_loss": run["final_loss"], "mean_loss": run["mean_loss"],
                "loss_curve_max_abs_diff_vs_baseline": _curve_diff(run["losses"], base_run["losses"]),
                "losses": run["losses"], "peak_rss_gb": run["peak_rss_gb"], "cuda_peak_gb": run["cuda_peak_gb"]})
    _log(f"training: project fast path via train_sft, {steps} steps × batch {BATCH_SIZE} (fresh process)")
    with timer.stage("train_fast"):
        fast_run = _in_fresh_process(_train_one, model_name, records, fast, fast_precision, fast_weights)
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


def unbatched_sample(n_prompts: int, k: int | None) -> list[int]:
    """Indices of the prompts also decoded one at a time: all of them, or ``k`` in a seeded random draw (sorted)."""
    import random

    if k is None or k >= n_prompts:
        return list(range(n_prompts))
    return sorted(random.Random(0).sample(range(n_prompts), k))


def _gen_pair(model, baseline_model, tokenizer, prompts, max_new_tokens: int, unbatched: int | None = None,
              unbatched_max_s: float | None = None) -> dict:
    """Batched decoding of every prompt against one-at-a-time decoding of ``unbatched`` of them (all if None):
    one-at-a-time decoding costs the same per token whichever prompts it runs, so a random subset measures its
    rate at a fraction of the time; the greedy match is checked on that subset. With ``unbatched_max_s`` the
    one-at-a-time pass stops once it has spent that long (after at least ``UNBATCHED_MIN_PROMPTS`` prompts).

    The one-at-a-time pass brackets the batched one (its first prompts before it, the rest after), so a drift in
    a shared host's speed during the run moves both rates alike instead of the ratio."""
    from ie_helpers.generate import GenerationStats, generate, generate_unbatched

    from ie_helpers.cpu_packing import set_packed_rows

    for m in (model, baseline_model):  # warm-up; a first pack for the batch faults in the memory later packs reuse
        set_packed_rows(m, GEN_BATCH_SIZE)
        generate(m, tokenizer, prompts[:2], max_new_tokens=4, batch_size=GEN_BATCH_SIZE, progress=False)
    batched_stats, single_stats = GenerationStats(), GenerationStats()
    drawn = unbatched_sample(len(prompts), unbatched)
    single: list[str] = []

    def one_at_a_time(indices: list[int]) -> None:
        for i in indices:
            if unbatched_max_s and len(single) >= UNBATCHED_MIN_PROMPTS and single_stats.seconds > unbatched_max_s:
                return
            single.extend(generate_unbatched(baseline_model, tokenizer, [prompts[i]], max_new_tokens=max_new_tokens,
                                             stats=single_stats))

    lead = drawn[:UNBATCHED_MIN_PROMPTS // 2]
    one_at_a_time(lead)
    batched = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=GEN_BATCH_SIZE,
                       progress=False, stats=batched_stats)
    one_at_a_time(drawn[len(lead):])
    chosen = drawn[:len(single)]
    batched = [batched[i] for i in chosen]
    matches = [a == b for a, b in zip(batched, single)]
    return {"tokens_per_s": batched_stats.new_tokens_per_s, "baseline_tokens_per_s": single_stats.new_tokens_per_s,
            "new_tokens": batched_stats.new_tokens, "baseline_new_tokens": single_stats.new_tokens,
            "seconds": batched_stats.seconds, "baseline_seconds": single_stats.seconds,
            "match_rate": sum(matches) / len(matches) if matches else float("nan"),
            "n_prompts": len(prompts), "unbatched_prompts": chosen, "unbatched_planned": len(drawn),
            "unbatched_capped": len(chosen) < len(drawn),
            "mismatched_prompts": [i for i, m in zip(chosen, matches) if not m],
            "examples": [{"batched": a, "unbatched": b} for a, b in list(zip(batched, single))[:3]]}


def bench_generation(model_name: str, prompts: list, max_new_tokens: int, *, timer, unbatched: int | None = None,
                     unbatched_max_s: float | None = None, fp32_check_prompts: int = FP32_CHECK_PROMPTS,
                     deadline: float = math.inf) -> dict:
    """Batched vs unbatched generation (the latter capped at ``unbatched_max_s``, see :func:`_gen_pair`); the
    optional fp32 check is skipped if it would run past ``deadline``."""
    import torch

    from ie_helpers.train import load_for_inference

    with timer.stage("generate"), PeakMemory() as mem:
        # the project's inference path (dtype, and packed layers on CPU) against the stock model
        model, tokenizer, _ = load_for_inference(model_name)
        baseline_model, _, _ = load_for_inference(model_name, onednn=False)
        if torch.cuda.is_available():
            model.to("cuda")
            baseline_model.to("cuda")
        dtype = str(next(model.parameters()).dtype).replace("torch.", "")
        kinds = {"OneDNNLinear": "oneDNN", "MklPackedLinear": "MKL"}
        packed = sum(type(m).__name__ in kinds for m in model.modules())
        packing = next((kinds[type(m).__name__] for m in model.modules() if type(m).__name__ in kinds), "no")
        _log(f"generation: {len(prompts)} prompts, max_new_tokens={max_new_tokens}, dtype={dtype}, "
             f"batched (batch {GEN_BATCH_SIZE}, {packed} {packing}-packed linear layers) vs unbatched stock model")
        main = _gen_pair(model, baseline_model, tokenizer, prompts, max_new_tokens, unbatched, unbatched_max_s)
        del model, baseline_model
    out = {"dtype": dtype, "batch_size": GEN_BATCH_SIZE, "max_new_tokens": max_new_tokens,
           "packed_layers": packed, "linear_packing": packing, **main,
           "headline_dtype": dtype, "fp32_check": None, **mem.as_dict()}
    subset = prompts[:fp32_check_prompts]
    # fp32 decoding on CPU is ~1.5-2× slower than bf16; both passes over the subset, plus a model load
    estimate = 2.0 * (main["seconds"] / max(len(prompts), 1) + main["baseline_seconds"]
                      / max(len(main["unbatched_prompts"]), 1)) * len(subset) + 10
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

