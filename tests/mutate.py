"""Mutation check of the test suite: plant realistic one-line bugs, one at a time, and count how many the tests catch.

Usage (``make mutate``): ``python tests/mutate.py [--only SUBSTRING] [--list]``.

Each mutation replaces one exact snippet of a module with a plausible wrong version, in a scratch copy of
the working tree, and runs the test files that should notice. A mutation is *killed* when those tests fail
(or crash, or run past ``--timeout``), *survived* when they pass. A snippet that is no longer in the source
is reported as stale and counts against the kill rate, so the list cannot silently rot. Prints one line
per mutation and the kill rate; exits 1 below ``--target`` (0.9). Slow (minutes): not part of ``make test``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    area: str
    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


GEN = ("tests/test_generation_identity.py",)
KEYS = ("tests/test_cache_keys.py",)
VERDICTS = ("tests/test_verdicts.py", "tests/test_verdict_thresholds.py", "tests/test_etlch.py", "tests/test_nerexp.py")
CIS = ("tests/test_ci_coverage.py", "tests/test_stats.py", "tests/test_ner.py")
DATA = ("tests/test_download.py", "tests/test_data.py")
SPANS = ("tests/test_ner.py", "tests/test_nerexp.py", "tests/test_metrics.py")

MUTATIONS = [
    # ---- batched generation (must stay token-identical to model.generate)
    Mutation("generation", "KV gap placed before the shared prefix", "ie_helpers/generate.py",
             "torch.cat([states[..., :prefix, :], gap, states[..., prefix:, :]], dim=-2)",
             "torch.cat([gap, states], dim=-2)", GEN),
    Mutation("generation", "positions count padding", "ie_helpers/generate.py",
             "positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, -ids.shape[1]:]",
             "positions = (torch.arange(mask.shape[1]).expand_as(mask))[:, -ids.shape[1]:]", GEN),
    Mutation("generation", "stop token kept in the output", "ie_helpers/generate.py",
             "            if t in stop_set:\n                done[j] = True\n                continue",
             "            if t in stop_set:\n                outputs[alive[j]].append(t)\n                done[j] = True\n"
             "                continue", GEN),
    Mutation("generation", "padding columns unmasked after chunked prefill", "ie_helpers/generate.py",
             "mask.new_zeros((len(part), pad))", "mask.new_ones((len(part), pad))", GEN),
    Mutation("generation", "prefix shared by sliding-window models", "ie_helpers/generate.py",
             'return layer_types is None or any("sliding" in str(t) for t in layer_types)', "return False", GEN),
    Mutation("generation", "regrown KV buffer drops its last column", "ie_helpers/kv_cache.py",
             "v_new[..., :self.length, :] = self.v_buf[..., :self.length, :]",
             "v_new[..., :self.length - 1, :] = self.v_buf[..., :self.length - 1, :]", GEN),
    Mutation("generation", "regrown transposed key buffer drops its last column", "ie_helpers/kv_cache.py",
             "k_new.narrow(columns, 0, self.length).copy_(self.k_buf.narrow(columns, 0, self.length))",
             "k_new.narrow(columns, 0, self.length - 1).copy_(self.k_buf.narrow(columns, 0, self.length - 1))", GEN),
    Mutation("generation", "shared prefix may swallow a whole row", "ie_helpers/generate.py",
             "limit = min(len(r) for r in rows) - 1", "limit = min(len(r) for r in rows)",
             GEN + ("tests/test_train_generate.py",)),
    Mutation("generation", "outputs returned in length order, not input order", "ie_helpers/generate.py",
             "for row, i in zip(rows, idx):\n            stats.new_tokens += len(row)",
             "for row, i in zip(rows, sorted(idx)):\n            stats.new_tokens += len(row)", GEN),
    # ---- cache keys
    Mutation("cache keys", "model left out of the run key", "ie_helpers/train.py",
             '"model": model_fingerprint,', '"model": "",', KEYS),
    Mutation("cache keys", "nested LoRA settings left out of the run key", "ie_helpers/train.py",
             "if KEY_NEUTRAL_DEFAULTS.get(k, object()) != v and k not in NEVER_IN_KEY}",
             'if KEY_NEUTRAL_DEFAULTS.get(k, object()) != v and k not in NEVER_IN_KEY and k != "lora"}', KEYS),
    Mutation("cache keys", "training code revision left out of the run key", "ie_helpers/train.py",
             '        "revision": TRAINING_REVISION,\n', "", KEYS),
    Mutation("cache keys", "only the number of records in the run key", "ie_helpers/train.py",
             '"records": records,', '"records": len(records),', KEYS + ("tests/test_train_generate.py",)),
    Mutation("cache keys", "decoding revision left out of the generation key", "ie_helpers/generate.py",
             '"decoding_revision": DECODING_REVISION}', '"decoding_revision": 0}', KEYS),
    Mutation("cache keys", "stamps merged into the payload (overwriting its keys)", "ie_helpers/generate.py",
             'stamped = {"payload": payload, "ie_helpers": __version__, "decoding_revision": DECODING_REVISION}',
             'stamped = {**payload, "ie_helpers": __version__, "decoding": DECODING_REVISION}', KEYS),
    # ---- verdict rules
    Mutation("verdicts", "E2: one task over 70% is enough", "ie_helpers/papers/etlch_claims.py",
             '                            verdicts.all_of(parts.values()),\n                            "win = higher',
             '                            max((p.verdict for p in parts.values()), key=lambda v: v == "direction only"),'
             '\n                            "win = higher', VERDICTS),
    Mutation("verdicts", "E2: threshold 50% instead of 70%", "ie_helpers/papers/etlch_claims.py",
             "WIN_BAR = 0.7", "WIN_BAR = 0.5", VERDICTS),
    Mutation("verdicts", "E2: ties count as wins", "ie_helpers/papers/etlch_claims.py",
             "np.where(a < b, 0.0, 0.5)", "np.where(a < b, 0.0, 1.0)", VERDICTS),
    Mutation("verdicts", "absolute figure: CI only has to reach the paper's figure", "ie_helpers/verdicts.py",
             "    if lo <= paper_value <= hi:\n", "    if paper_value <= hi:\n", VERDICTS),
    Mutation("verdicts", "absolute figure from stand-in models judged anyway", "ie_helpers/verdicts.py",
             "    if not own_model_and_data:\n", "    if False:\n", VERDICTS),
    Mutation("verdicts", "policy: a CI touching the decision point counts as decided", "ie_helpers/verdicts.py",
             "    if lo > 0:\n        raw = _on_claimed_side", "    if lo >= 0:\n        raw = _on_claimed_side",
             VERDICTS),
    Mutation("verdicts", "policy: seeds that disagree in sign are ignored", "ie_helpers/verdicts.py",
             "    if len(signs) > 1:\n", "    if len(signs) > 2:\n", VERDICTS),
    Mutation("verdicts", "policy: two seeds are enough", "ie_helpers/verdicts.py", "MIN_SEEDS = 3", "MIN_SEEDS = 2",
             VERDICTS),
    Mutation("verdicts", "policy: random-weight runs judged like real ones", "ie_helpers/verdicts.py",
             "        if random_weights:\n            claim = dataclasses.replace",
             "        if False:\n            claim = dataclasses.replace", VERDICTS),
    Mutation("verdicts", "policy: stand-in models can replicate a magnitude", "ie_helpers/verdicts.py",
             "    if ev.stand_in:\n        return Verdict(DIRECTION_ONLY",
             "    if False:\n        return Verdict(DIRECTION_ONLY", VERDICTS),
    Mutation("verdicts", "E4: plateau CI must end strictly before 450", "ie_helpers/papers/etlch_claims.py",
             'if p["hi"] <= PLATEAU_BY:', 'if p["hi"] < PLATEAU_BY:', VERDICTS),
    Mutation("verdicts", "F2: raw p instead of Holm", "ie_helpers/papers/finner.py",
             'ok[base_model] = bool(r["diff"] > 0 and r["p_holm"] < 0.05)',
             'ok[base_model] = bool(r["diff"] > 0 and r["p_value"] < 0.05)', VERDICTS),
    Mutation("verdicts", "F3: the rare-mention rule lets 19 mentions decide", "ie_helpers/papers/finner.py",
             "support < MIN_RARE_SUPPORT:", "support < MIN_RARE_SUPPORT - 1:", VERDICTS),
    Mutation("verdicts", "FinNER headline drops hallucinated mentions", "ie_helpers/papers/finner.py",
             "point, lo, hi = nerexp.pooled_micro_f1(systems, sentences, n_boot=n_boot)",
             "point, lo, hi = nerexp.pooled_micro_f1(systems, sentences, hallucinated_fp=False, n_boot=n_boot)",
             VERDICTS),
    Mutation("verdicts", "per-type counts keep every type", "ie_helpers/nerexp.py",
             "g, p = {sp for sp in g if sp[-1] == etype}, {sp for sp in p if sp[-1] == etype}",
             "g, p = set(g), set(p)", VERDICTS),
    Mutation("bootstrap CIs", "parts minus whole subtracts the first part", "ie_helpers/engine.py",
             "lambda s: float(np.mean(s[:-1])) - s[-1]", "lambda s: float(np.mean(s[1:])) - s[0]",
             ("tests/test_nerexp.py", "tests/test_engine.py")),
    Mutation("bootstrap CIs", "ETLCH seed-mean CIs over documents only", "ie_helpers/papers/etlch_claims.py",
             'out.loc[i, ["mean", "lo", "hi"]] = engine.seed_item_bootstrap(matrix, n_boot=n_boot)',
             'out.loc[i, ["mean", "lo", "hi"]] = engine.seed_item_bootstrap(matrix.mean(axis=0), n_boot=n_boot)',
             ("tests/test_etlch.py",)),
    Mutation("verdicts", "L4: margin sign flipped", "ie_helpers/papers/loraplus_claims.py",
             "ok_all &= bool(a - b >= -competitive_margin)", "ok_all &= bool(a - b >= competitive_margin)", VERDICTS),
    Mutation("verdicts", "L3: 0.8 itself no longer replicates", "ie_helpers/papers/loraplus_claims.py",
             "elif paper_scale and r <= 0.8:", "elif paper_scale and r < 0.8:", VERDICTS),
    Mutation("verdicts", "Holm replaced by Bonferroni", "ie_helpers/stats.py",
             'def adjust_pvalues(pvals: Sequence[float], method: str = "holm")',
             'def adjust_pvalues(pvals: Sequence[float], method: str = "bonferroni")', VERDICTS + ("tests/test_stats.py",)),
    # ---- bootstrap CIs
    Mutation("bootstrap CIs", "the shared percentile interval is a 90% interval", "ie_helpers/stats.py",
             "[alpha / 2, 1 - alpha / 2])\n    return float(lo), float(hi)",
             "[alpha, 1 - alpha])\n    return float(lo), float(hi)", CIS + ("tests/test_engine.py",)),
    Mutation("bootstrap CIs", "NER micro-F1 bootstrap at a fixed 90% level", "ie_helpers/ner.py",
             "lo, hi = percentile_interval(boots, alpha)", "lo, hi = percentile_interval(boots, 0.1)", CIS),
    Mutation("bootstrap CIs", "paired NER bootstrap at a fixed 90% level", "ie_helpers/ner.py",
             "lo, hi = percentile_interval(d, alpha)", "lo, hi = percentile_interval(d, 0.1)", CIS),
    Mutation("bootstrap CIs", "per-type bootstrap at a fixed 90% level", "ie_helpers/type_f1.py",
             "stats.percentile_interval(b, alpha)", "stats.percentile_interval(b, 0.1)",
             ("tests/test_ci_coverage.py", "tests/test_nerexp.py")),
    Mutation("bootstrap CIs", "engine resamples drawn without the items", "ie_helpers/engine.py",
             "    return next(resampled_indices(rng, n, 1, rows_per_chunk=1))[0]",
             "    return np.arange(n)", ("tests/test_engine.py",)),
    Mutation("bootstrap CIs", "paired differences taken the wrong way round", "ie_helpers/stats.py",
             "    diff = x - y\n", "    diff = y - x\n", CIS),
    # ---- checksums
    Mutation("checksums", "download not verified", "ie_helpers/data.py",
             '        _verified(tmp, entry, "download")\n', "", DATA),
    Mutation("checksums", "mirror file not verified", "ie_helpers/data.py",
             'return _verified(Path(mirror) / local_path, entry, "mirror"), "mirror", entry',
             'return Path(mirror) / local_path, "mirror", entry', DATA),
    Mutation("checksums", "cached file not verified", "ie_helpers/data.py",
             'return _verified(cached, entry, "cache"), "cache", entry', 'return cached, "cache", entry', DATA),
    # ---- span scoring
    Mutation("span scoring", "span end off by one", "ie_helpers/ner.py",
             "            spans.append((start, i, cur))", "            spans.append((start, i + 1, cur))", SPANS),
    Mutation("span scoring", "stray I- tag starts a span", "ie_helpers/ner.py",
             '        if prefix == "B":\n            start, cur = i, typ',
             '        if prefix in "BI":\n            start, cur = i, typ', SPANS),
    Mutation("span scoring", "hallucinated mentions not counted as false positives", "ie_helpers/nerexp.py",
             'tp, n_pred, n_gold = res["n_correct"], res["n_pred"] + n_halluc, res["n_gold"]',
             'tp, n_pred, n_gold = res["n_correct"], res["n_pred"], res["n_gold"]', SPANS),
    Mutation("span scoring", "empty prediction vs empty gold scores 0", "ie_helpers/metrics.py",
             'out.append(_prf_from_counts(tp, len(pred) - tp, len(gold) - tp, nothing_at_all=1.0)["f1"])',
             'out.append(_prf_from_counts(tp, len(pred) - tp, len(gold) - tp, nothing_at_all=0.0)["f1"])',
             SPANS + ("tests/test_etlch.py",)),
    # ---- the protocol (engine): dev-only selection and CIs over seeds and items
    Mutation("protocol", "seeds not resampled: the CI ignores training variance", "ie_helpers/engine.py",
             "shared = _draw(rng, arrays[0].shape[0])",
             "shared = np.arange(arrays[0].shape[0])", ("tests/test_engine.py",)),
    Mutation("protocol", "dev ties go to the larger learning rate", "ie_helpers/engine.py",
             'table["chosen"] = ~table.duplicated(list(by), keep="first")',
             'table["chosen"] = ~table.duplicated(list(by), keep="last")', ("tests/test_engine.py",)),
    Mutation("protocol", "a choice at the edge of its grid counts as tuned", "ie_helpers/engine.py",
             'table["at_edge"] = table["chosen"] & (lo < hi) & ((table[param] == lo) | (table[param] == hi))',
             'table["at_edge"] = table["chosen"] & (lo > hi) & ((table[param] == lo) | (table[param] == hi))',
             ("tests/test_engine.py",)),
    Mutation("protocol", "test rows allowed to select", "ie_helpers/engine.py",
             'if "split" in dev and (dev["split"] != "dev").any():',
             'if "split" in dev and (dev["split"] == "nothing").any():', ("tests/test_engine.py",)),
    Mutation("span scoring", "content ROUGE-L keeps the JSON keys", "ie_helpers/metrics.py",
             "            stack.extend(reversed(list(node.values())))",
             "            stack.extend(reversed([x for kv in node.items() for x in kv]))",
             ("tests/test_evaluate_metrics.py",)),
    Mutation("span scoring", "NaN accepted as strict JSON", "ie_helpers/parsing.py",
             "_STRICT_DECODER = json.JSONDecoder(parse_float=_finite_float, parse_constant=_reject_constant)",
             "_STRICT_DECODER = json.JSONDecoder()", ("tests/test_parsing.py",)),
    Mutation("mtpf", "one adapter stays active for both losses", "ie_helpers/papers/mtpf_student.py",
             "        model.set_adapter(family)", "        pass", ("tests/test_mtpf.py",)),
    Mutation("mtpf", "held-out sentences enter pre-finetuning", "ie_helpers/papers/mtpf.py",
             "        if key(pool[i]) in held_out:", "        if False:", ("tests/test_mtpf.py",)),
    Mutation("mtpf", "a family's backbone merges the other family's adapter", "ie_helpers/papers/mtpf_student.py",
             "            plain = plain.merge_and_unload(adapter_names=[family])",
             "            plain = plain.merge_and_unload(adapter_names=list(plain.peft_config))",
             ("tests/test_mtpf.py",)),
    Mutation("protocol", "task average weighs tasks by their size", "ie_helpers/engine.py",
             "        return np.mean(per_task, axis=0)",
             "        return np.average(per_task, axis=0, weights=[x.shape[1] for x in a])", ("tests/test_mtpf.py",)),
    # ---- generative NER: the empty-answer collapse, floors, macro-F1, L3's ratio
    Mutation("ner", "training sample ignores the entity share", "ie_helpers/ner_data.py",
             "    if entity_share is None or len(with_entity) >= entity_share * len(sentences):",
             "    if True:", ("tests/test_nerexp.py",)),
    Mutation("ner", "macro-F1 divides by invented types again", "ie_helpers/type_f1.py",
             "    all_cols = [i for i in range(len(types)) if tp[:, i].sum() + fn[:, i].sum() > 0]",
             "    all_cols = list(range(len(types)))", ("tests/test_nerexp.py",)),
    Mutation("ner", "lexicon floor matches shortest first", "ie_helpers/nerexp.py",
             "for n in range(min(longest, len(toks) - i), 0, -1)", "for n in range(1, min(longest, len(toks) - i) + 1)",
             ("tests/test_nerexp.py",)),
    Mutation("ner", "silent sentences count hallucinating ones", "ie_helpers/nerexp.py",
             "    silent = [ng > 0 and npred == 0 and not h", "    silent = [ng > 0 and npred == 0",
             ("tests/test_nerexp.py",)),
    Mutation("ner", "LoRA+ runs draw the corpus mix, not the recipe's entity share", "ie_helpers/papers/loraplus.py",
             '                                  entity_share=cfg["train_entity_share"], what=f"{role} training sentences")',
             '                                  entity_share=None, what=f"{role} training sentences")',
             ("tests/test_nerexp.py",)),
    Mutation("ner", "LoRA+ lexicon floor reads seed 0's mentions for every seed", "ie_helpers/papers/loraplus.py",
             "            sents = nerexp.training_sample(r[\"train\"], train_sizes[role], int(seed), entity_share=entity_share,",
             "            sents = nerexp.training_sample(r[\"train\"], train_sizes[role], 0, entity_share=entity_share,",
             ("tests/test_nerexp.py",)),
    Mutation("ner", "a role named in the user's datasets is dropped by the profile's roles", "ie_helpers/papers/loraplus.py",
             "    wanted = set(datasets) if roles is None else set(roles) | set(given or {})",
             "    wanted = set(datasets) if roles is None else set(roles)", ("tests/test_nerexp.py",)),
    Mutation("protocol", "best_on_dev takes the latest of tied snapshots", "ie_helpers/engine.py",
             "    return min(step for step, score in dev_by_step.items() if score == top)",
             "    return max(step for step, score in dev_by_step.items() if score == top)",
             ("tests/test_engine.py", "tests/test_nerexp.py")),
    Mutation("protocol", "the best dev snapshot is never used on test", "ie_helpers/papers/loraplus.py",
             "        out[key] = None if step >= n_steps else step", "        out[key] = None",
             ("tests/test_nerexp.py",)),
    Mutation("protocol", "DDP token loss not scaled by the world size", "ie_helpers/encoder.py",
             "    (loss_sum * world / max(n_total, 1.0)).backward()", "    (loss_sum / max(n_total, 1.0)).backward()",
             ("tests/test_distributed.py",)),
    Mutation("protocol", "an empty DDP shard trains on its stand-in item", "ie_helpers/relations.py",
             "reduction=\"sum\") * (1.0 if mine else 0.0)", "reduction=\"sum\") * 1.0",
             ("tests/test_distributed.py",)),
    Mutation("protocol", "a DDP decoder run trains k x the notebook's batch", "ie_helpers/train.py",
             "    batch = per_device_batch(settings.batch_size)\n",
             "    batch = settings.batch_size\n", ("tests/test_distributed.py",)),
    Mutation("protocol", "micro-batches are optimizer steps instead of accumulating into the batch",
             "ie_helpers/train.py", "gradient_accumulation_steps=settings.grad_accum * (batch // micro),",
             "gradient_accumulation_steps=settings.grad_accum,", ("tests/test_train_generate.py",)),
    Mutation("protocol", "fast_dropout auto swaps the dropouts on every CPU, bf16 ones too",
             "ie_helpers/encoder.py", "        return not cpu_has_native_bf16()", "        return True",
             ("tests/test_encoder.py",)),
    Mutation("protocol", "an explicit fast_dropout='auto' gets its own cache key", "ie_helpers/encoder.py",
             '    return {k: v for k, v in settings.items() if not (k == "fast_dropout" and v == "auto")}',
             "    return dict(settings)", ("tests/test_encoder.py",)),
    Mutation("protocol", "a capped one-at-a-time generation pass stops before its minimum prompts",
             "ie_helpers/bench_decoder.py",
             "            if unbatched_max_s and len(single) >= UNBATCHED_MIN_PROMPTS and single_stats.seconds > unbatched_max_s:",
             "            if unbatched_max_s and single_stats.seconds > unbatched_max_s:", ("tests/test_bench.py",)),
    Mutation("protocol", "the one-at-a-time generation pass runs wholly after the batched one",
             "ie_helpers/bench_decoder.py", "    lead = drawn[:UNBATCHED_MIN_PROMPTS // 2]", "    lead = drawn[:0]",
             ("tests/test_bench.py",)),
    Mutation("protocol", "a capped baseline runs on until a step ends past the cap", "ie_helpers/bench_decoder.py",
             "    return elapsed * (steps_done + 1) / steps_done > max_seconds", "    return elapsed > max_seconds",
             ("tests/test_bench.py",)),
    Mutation("protocol", "an MKL-packed layer keeps the zero rows it padded with", "ie_helpers/cpu_packing.py",
             "self.packed, self.weight, self.bias, self.rows)[:n]", "self.packed, self.weight, self.bias, self.rows)",
             ("tests/test_generation_identity.py", "tests/test_train_generate.py")),
    Mutation("protocol", "generate never packs MKL layers for its batch size", "ie_helpers/generate.py",
             "    set_packed_rows(model, len(rows))  # MKL", "    pass  # MKL", ("tests/test_generation_identity.py",)),
    Mutation("protocol", "finished rows never leave the decoding batch", "ie_helpers/generate.py",
             "    return finished >= max(2, rows // 8) and finished * steps_left >= COMPACTION_ROW_STEPS",
             "    return False", ("tests/test_generation_identity.py",)),
    Mutation("protocol", "finished rows leave one at a time whatever it costs", "ie_helpers/generate.py",
             "    return finished >= max(2, rows // 8) and finished * steps_left >= COMPACTION_ROW_STEPS",
             "    return finished >= 1", ("tests/test_generation_identity.py",)),
    Mutation("protocol", "MKL layers keep the batch's first pack after rows leave", "ie_helpers/generate.py",
             "            set_packed_rows(model, len(alive))", "            pass", ("tests/test_generation_identity.py",)),
    Mutation("protocol", "decode attention ignores the padding mask", "ie_helpers/kv_cache.py",
             '        scores.masked_fill_(~attention_mask[..., -1:, -length:], float("-inf"))', "        pass",
             ("tests/test_generation_identity.py",)),
    Mutation("protocol", "decode attention leaves out the shared prefix's values", "ie_helpers/kv_cache.py",
             "        out += torch.bmm(weights, value[0, :, :shared])", "        out += 0 * torch.bmm(weights, value[0, :, :shared])",
             ("tests/test_generation_identity.py",)),
    Mutation("protocol", "the model keeps the decode attention after a batch", "ie_helpers/kv_cache.py",
             "        model.config._attn_implementation = before", "        pass", ("tests/test_generation_identity.py",)),
    Mutation("protocol", "CPU decoding never takes the transposed-key attention", "ie_helpers/kv_cache.py",
             '            and getattr(model.config, "_attn_implementation", None) == "sdpa")',
             '            and getattr(model.config, "_attn_implementation", None) == "none")',
             ("tests/test_generation_identity.py",)),
    Mutation("protocol", "DDP InfoNCE loses the other processes' negatives", "ie_helpers/papers/mtpf_student.py",
             "        a_all, b_all = (distributed.gather_rows(x, sizes, rank)[back] for x in (a, b))",
             "        a_all, b_all = a, b",
             ("tests/test_distributed.py",)),
    Mutation("protocol", "DDP pre-finetuning never sums the processes' gradients", "ie_helpers/papers/mtpf_student.py",
             "            distributed.sum_gradients(params)", "            pass", ("tests/test_distributed.py",)),
    Mutation("protocol", "DDP NER pre-finetuning loss over this process's tokens only",
             "ie_helpers/papers/mtpf_student.py", "        (loss / max(n_total, 1)).backward()",
             "        (loss / max(int((labels != encoder.IGNORE_INDEX).sum()), 1)).backward()",
             ("tests/test_distributed.py",)),
    Mutation("protocol", "steps to peak read off the last seed, not the seed average", "ie_helpers/engine.py",
             "where=denom > 0).mean(axis=0)", "where=denom > 0)[-1]", ("tests/test_nerexp.py",)),
    Mutation("verdicts", "L3 ratio compared against 0.6 instead of 1", "ie_helpers/papers/loraplus_claims.py",
             'verdicts.comparison(ev, decision=1.0, claimed="below", magnitude=0.6)',
             'verdicts.comparison(ev, decision=0.6, claimed="below", magnitude=0.6)', VERDICTS),
]


def copy_tree(dest: Path) -> None:
    """Tracked and untracked-but-not-ignored files: what a clean checkout of this work would hold."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for name in filter(None, files):
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def run_tests(tree: Path, tests: tuple[str, ...], env: dict, timeout: float) -> tuple[str, float]:
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    try:
        proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", time.perf_counter() - start
    return ("pass" if proc.returncode == 0 else "fail"), time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="run the mutations whose area or name contains this text")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--target", type=float, default=0.9)
    parser.add_argument("--timeout", type=float, default=1200, help="seconds before a mutant's tests count as hung")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTATIONS if not args.only or args.only.lower() in f"{m.area} {m.name}".lower()]
    if args.list or not chosen:
        for m in chosen:
            print(f"{m.area:14} {m.name}  [{m.path}; {', '.join(m.tests)}]")
        return 0 if chosen else 2

    with tempfile.TemporaryDirectory(prefix="ie_mutate_") as scratch:
        tree, models = Path(scratch) / "tree", Path(scratch) / "models"
        copy_tree(tree)
        env = {**os.environ, "PYTHONPATH": str(tree), "IE_TEST_MODEL_CACHE": str(models), "HF_HUB_OFFLINE": "1",
               "TOKENIZERS_PARALLELISM": "false"}
        needed = tuple(sorted({t for m in chosen for t in m.tests}))
        status, seconds = run_tests(tree, needed, env, args.timeout)
        if status != "pass":
            print(f"the unmutated tests do not pass ({status}); fix them before measuring mutations", file=sys.stderr)
            return 2
        print(f"unmutated: {len(needed)} test files pass in {seconds:.0f} s")
        killed = 0
        for k, m in enumerate(chosen, 1):
            target = tree / m.path
            original = target.read_text(encoding="utf-8")
            if original.count(m.old) != 1:
                print(f"[{k:2}/{len(chosen)}] STALE    {m.area}: {m.name} (snippet found {original.count(m.old)}x)")
                continue
            target.write_text(original.replace(m.old, m.new), encoding="utf-8")
            try:
                status, seconds = run_tests(tree, m.tests, env, args.timeout)
            finally:
                target.write_text(original, encoding="utf-8")
            caught = status != "pass"
            killed += caught
            print(f"[{k:2}/{len(chosen)}] {'killed ' if caught else 'SURVIVED'} {m.area}: {m.name} "
                  f"({status}, {seconds:.0f} s)", flush=True)
    rate = killed / len(chosen)
    print(f"kill rate: {killed}/{len(chosen)} = {rate:.0%} (target {args.target:.0%})")
    return 0 if rate >= args.target else 1


if __name__ == "__main__":
    raise SystemExit(main())
