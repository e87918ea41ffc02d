"""Benchmark of the project's training and generation paths: ``python -m ie_helpers.bench`` (``make bench``).

One process, one run, four measurements:

1. **Training.** ``train.train_sft`` with default ``TrainSettings`` (the fast path: bf16 frozen weights
   where the CPU/GPU has native bf16, else fp32 in micro-batches of 2 rows, no gradient checkpointing,
   length-grouped batches, lengths padded to a multiple of 8, LM head on completion tokens only) against
   *plain TRL defaults* on the same model, records, LoRA config and number of optimizer steps. The baseline
   mirrors what ``trl.SFTConfig()`` defaults to in the installed version (bf16 autocast and gradient
   checkpointing, read at run time),
   random batch order, padding to the longest row, the stock SFTTrainer loss (head on every position) and
   the base model loaded in fp32 (``frozen_weights="fp32"``); both go through ``train_sft``, each in a fresh
   process (its own heap and peak memory). ``--levers`` adds one run per lever: the baseline with that single change.
   Both sides train exactly one epoch over ``steps × batch`` records, so both process the same non-padding
   tokens (TRL's own count, ``count_tokens``) and tokens/s are comparable, unless the baseline is capped
   (``--baseline-max-s``: where TRL's defaults are very slow, as bf16 autocast on a CPU without bf16 units, it
   stops once its next step would end past that many seconds, after at least one step, and its rate is over the
   tokens of the steps it ran).
2. **Generation.** ``generate.generate`` (batched, length-sorted, on the model as ``load_for_inference``
   returns it: fp32 with packed linear layers on CPU, MKL's on Intel and oneDNN's elsewhere, bf16 on GPU) against
   ``generate_unbatched`` on the stock model in the same dtype, on a seeded random subset of the same CoNLL04 test NER prompts (its
   rate per token does not depend on which prompts it runs; ``--unbatched-max-s`` stops that pass early where
   one-at-a-time decoding is slow), base model (no adapter), greedy.
   ``greedy_match_rate`` is the share of those prompts whose two output strings are identical; when it is low in
   bf16 the fp32 rate on a subset is also measured, to tell bf16 rounding from a batching bug.
3. **Encoder.** ``encoder.train_token_classifier`` as the clinical and MTPF-TPL notebooks call it against a plain
   HF ``Trainer`` (``bench_encoder``); a third run flips ``fast_dropout`` when the time budget allows.
4. **Fraction of peak.** Model FLOPs of the fast training run over the machine's peak (see ``flops_model``
   and ``peak_flops``); on CUDA the same number is reported as ``mfu``.

Writes ``<out>/bench.json``, ``<out>/speedups.png`` and ``<out>/summary.html`` (atomic writes).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time
from pathlib import Path

from ie_helpers.bench_decoder import (BATCH_SIZE, FP32_CHECK_PROMPTS, MATCH_RATE_LOW, UNBATCHED_MIN_PROMPTS, _log,
                                      bench_generation, bench_training)
from ie_helpers.bench_report import _print_summary, speedup_figure, summary_html
from ie_helpers.machine import (PeakMemory,  # noqa: F401 - tests read it here
                                device_info, flops_model, measured_matmul_flops, model_dims, peak_flops)
from ie_helpers.models import REPO_ROOT

DEFAULTS = {"model": "smollm2-135m-instruct", "steps": 6, "gen_prompts": 48, "unbatched_prompts": 10,
            "max_new_tokens": 128, "encoder_steps": 24, "baseline_max_s": 150.0, "unbatched_max_s": 45.0}
QUICK = {"model": "tiny-random-llama", "steps": 3, "gen_prompts": 6, "unbatched_prompts": 6, "max_new_tokens": 16,
         "encoder_steps": 3, "baseline_max_s": 0.0, "unbatched_max_s": 0.0}
ENCODER = "all-minilm-l6-v2"

REQUIRED_KEYS = ("train_tokens_per_s", "baseline_train_tokens_per_s", "train_speedup", "gen_tokens_per_s",
                 "baseline_gen_tokens_per_s", "gen_speedup", "greedy_match_rate", "fraction_of_peak",
                 "flops_per_token", "peak_flops", "device", "peak_rss_gb", "measured_matmul_flops",
                 "fraction_of_measured_matmul", "fraction_of_spec_peak", "encoder_speedup")


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

    train = bench_training(args.model, records, args.steps, levers=args.levers, timer=timer,
                           baseline_max_s=args.baseline_max_s or None)
    gen = bench_generation(args.model, prompts, args.max_new_tokens, timer=timer, unbatched=args.unbatched_prompts,
                           unbatched_max_s=args.unbatched_max_s or None, fp32_check_prompts=args.fp32_check_prompts,
                           deadline=t0 + args.budget_s)

    from ie_helpers.bench_encoder import bench_encoder

    enc = bench_encoder(ENCODER, args.encoder_steps, timer=timer, deadline=t0 + args.budget_s)
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
        "tokens" + (f" (but the baseline: its next step would have ended past --baseline-max-s "
                    f"{args.baseline_max_s:g} s, so it stopped after "
                    f"{base['steps']} of {base['planned_steps']} steps; its rate is TRL's logged count of the "
                    f"{base['tokens']} non-padding tokens of its first {base['steps']} random "
                    f"batch{'es' if base['steps'] != 1 else ''} over their time, and its mean loss is over "
                    f"{'those steps' if base['steps'] != 1 else 'that step'})" if base.get("capped") else "")
        + ". Each training run is a fresh Python process, so its peak resident memory is its own and glibc "
        "heap reuse (process-wide once on) reaches no other run; the baseline runs first, so the page cache is "
        "warmed at its cost.",
        f"generation: batched on the model as load_for_inference returns it ({gen['dtype']}, "
        f"{gen['packed_layers']} {gen['linear_packing']}-packed linear layers, all {gen['n_prompts']} prompts) vs one "
        "prompt "
        f"at a time on the stock model ({len(gen['unbatched_prompts'])} of them in a seeded random draw"
        + (f", the first {len(gen['unbatched_prompts'])} of {gen['unbatched_planned']} drawn: --unbatched-max-s "
           f"{args.unbatched_max_s:g} s stopped the pass" if gen.get("unbatched_capped") else "")
        + f"; the first {UNBATCHED_MIN_PROMPTS // 2} before the batched pass and the rest after it, so a drift in "
        "the host's speed moves both rates alike"
        + ": one-at-a-time decoding costs the same per token whichever prompts it runs, and all of them would take "
        "~7 minutes on 2 cores). "
        f"greedy_match_rate compares the two outputs of those prompts, in {gen['dtype']}; "
        "batched and unbatched greedy decoding use different matrix shapes, so low-precision rounding can "
        "flip a near-tie token and the rest of the output with it."
        + (f" fp32 check on {gen['fp32_check']['n_prompts']} prompts: {fp32_rate:.2f}." if fp32_rate is not None
           else "") + (f" fp32 check {gen['fp32_check_skipped']}." if gen.get("fp32_check_skipped") else ""),
        f"fraction_of_peak = train tokens/s × flops_per_token / peak_flops; {peak['assumption']}",
        f"encoder: {ENCODER} LoRA token classification (r={enc['lora']['r']}) on {enc['sentences']} NCBI-disease "
        f"sentences, batch {enc['batch_size']}, {enc['steps']} steps: encoder.train_token_classifier (precision auto "
        f"= {enc['fast']['precision']}, length-grouped batches, fast_dropout auto = {enc['fast']['fast_dropout']}"
        f"{encoder_dropout_note(enc['fast'])}) vs transformers.Trainer with default TrainingArguments (fp32, random "
        "order); tokens/s = non-padding sub-tokens of the one epoch both make over the training loop's wall time; "
        "the baseline runs first." + encoder_lever_note(enc.get("fast_dropout_lever")),
    ]
    if train["levers"]:
        notes.append("each lever is the baseline with one change, in its own fresh process after the baseline. Lever "
                     "speedups are indicative (levers interact); the headline train_speedup is the measured "
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
        "cpu_family": dev.get("cpu_family"),
        "torch_threads": dev["torch_threads"],
        "cpu_cores": dev.get("cpu_cores"),
        "precision": fast["precision"],
        "baseline_precision": base["precision"],
        "gradient_checkpointing": fast.get("gradient_checkpointing"),
        "micro_batch": fast.get("micro_batch"),
        "baseline_steps": base["steps"],
        "baseline_capped": bool(base.get("capped")),
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
    p.add_argument("--unbatched-prompts", type=int,
                   help="of those, how many are also decoded one at a time for the baseline rate and the greedy "
                        f"match (a seeded random draw; default {DEFAULTS['unbatched_prompts']})")
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
    p.add_argument("--baseline-max-s", type=float,
                   help="stop the TRL-defaults baseline (and --levers runs) once its next step would end past this "
                        "many seconds of training, after at least one step; its rate is then over the steps it ran "
                        f"(default {DEFAULTS['baseline_max_s']:g}; 0 = always the whole epoch)")
    p.add_argument("--unbatched-max-s", type=float,
                   help="stop the one-at-a-time generation pass once it has spent this many seconds, after at least "
                        f"{UNBATCHED_MIN_PROMPTS} prompts (default {DEFAULTS['unbatched_max_s']:g}; 0 = every drawn "
                        "prompt)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: tiny-random-llama, 3 steps, 6 prompts, 16 new tokens")
    args = p.parse_args(argv)
    base = QUICK if args.quick else DEFAULTS
    for key, value in base.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if min(args.steps, args.gen_prompts, args.unbatched_prompts, args.max_new_tokens, args.encoder_steps) < 1:
        p.error("--steps, --gen-prompts, --unbatched-prompts, --max-new-tokens and --encoder-steps must be at least 1")
    if args.baseline_max_s < 0 or args.unbatched_max_s < 0:
        p.error("--baseline-max-s and --unbatched-max-s must be 0 (no cap) or a positive number of seconds")
    return args


def encoder_dropout_note(run: dict) -> str:
    if run["fast_dropout"]:
        return (f": all {run['dropouts_swapped']} dropout modules draw MaskDropout's masks, as this CPU lacks "
                "native bf16")
    return ": nn.Dropout's masks"


def encoder_lever_note(lever: dict | None) -> str:
    if not lever:
        return ""
    what = f" A third run sets fast_dropout={lever['fast_dropout']} to measure that lever alone"
    if lever.get("skipped"):
        return f"{what}: {lever['skipped']}."
    return f"{what}: MaskDropout's masks are {lever['fast_dropout_gain']:.2f}x the speed of nn.Dropout's here."


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
