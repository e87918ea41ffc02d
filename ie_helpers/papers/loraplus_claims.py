"""LoRA+ for NER: the verdict rules of claims L1–L4, through the shared policy (``ie_helpers.verdicts``)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from ie_helpers import verdicts
from ie_helpers.report import synthetic_data_claims
from ie_helpers.verdicts import NOT_TESTABLE

MIN_F1 = 0.01  # below this on every system compared, nothing was learned: a claim is not testable

PAPER_SCALE_PARAMS = 6e9  # LoRA+ paper: "a 7B LLM"


def peak_ratios(peaks: pd.DataFrame) -> pd.DataFrame:
    """LoRA+ steps-to-peak / LoRA steps-to-peak, per (role, seed) where both curves learned something."""
    ok = peaks[peaks["ok"]]
    a = ok[ok.method == "loraplus"].set_index(["role", "seed"])
    b = ok[ok.method == "lora"].set_index(["role", "seed"])
    both = a.index.intersection(b.index)
    return pd.DataFrame([{"role": r, "seed": s, "steps_loraplus": a.loc[(r, s), "peak_step"],
                          "steps_lora": b.loc[(r, s), "peak_step"],
                          "ratio": a.loc[(r, s), "peak_step"] / b.loc[(r, s), "peak_step"],
                          "lora_censored": bool(b.loc[(r, s), "censored"]),
                          "loraplus_censored": bool(a.loc[(r, s), "censored"])} for r, s in both],
                        columns=["role", "seed", "steps_loraplus", "steps_lora", "ratio", "lora_censored",
                                 "loraplus_censored"])


# --------------------------------------------------------------------------- claims

L_CLAIMS = [("L1", "CoNLL-2003 F1: LoRA+ 92.4 > specialised NER 91.8 > LoRA 91.1"),
            ("L2", "biomedical F1: LoRA+ 85.2 > BioBERT 83.5 > LoRA 82.7"),
            ("L3", "LoRA+ peaks in 60% of LoRA's steps"),
            ("L4", "LoRA+ competitive with full fine-tuning at 100–500 examples")]


def _seed_text(vals: pd.Series) -> str:
    v = vals.to_numpy(dtype=float)
    spread = f" (seeds: {', '.join(f'{x:.3f}' for x in v)})" if len(v) > 1 else ""
    return f"{np.mean(v):.3f}{spread}"


def loraplus_claims(*, results: pd.DataFrame, comparisons: pd.DataFrame, peaks: pd.DataFrame,
                    data_labels: dict[str, str], encoder_labels: dict[str, str], model: str,
                    model_params: float, low_resource_sizes: Sequence[int], snapshot_every: int,
                    dev_sentences: int = 0, competitive_margin: float = 0.02, synthetic: bool = False,
                    tuned_on_dev: bool = False, random_weights: bool = False, evidence: dict | None = None,
                    peak_evidence: dict | None = None) -> list:
    """Verdicts for L1–L4 by the shared policy (``verdicts``), each claim held to its own seeds and tuning.

    ``results``: one row per (experiment, role, method, ratio, lr, train_size, seed) with ``micro_f1``;
    methods are lora, loraplus, full, encoder; experiments main, sweep, low_resource.
    ``comparisons``: LoRA+ vs LoRA paired bootstrap per (role, seed). ``peaks``: ``peak_per_curve`` output.
    ``evidence``: ``evidence()`` output; with it, L1/L2 are decided by ``verdicts.comparison`` on CIs over seeds
    and sentences (LoRA+ above LoRA and above the encoder). ``peak_evidence``: role →
    ``engine.steps_to_peak_ratio`` (LoRA+ over LoRA); with it, L3 is decided on that ratio's CI against 1.
    ``tuned_on_dev``: LoRA, LoRA+ and the encoder learning rates were chosen on dev (full fine-tuning's never is,
    so L4 is held to it separately).
    """
    if synthetic:
        return synthetic_data_claims(L_CLAIMS)
    claims = loraplus_claim_rules(results=results, comparisons=comparisons, peaks=peaks, data_labels=data_labels,
                                  encoder_labels=encoder_labels, model=model, model_params=model_params,
                                  low_resource_sizes=low_resource_sizes, snapshot_every=snapshot_every,
                                  dev_sentences=dev_sentences, competitive_margin=competitive_margin,
                                  evidence=evidence, peak_evidence=peak_evidence)
    seeds = results.groupby(["experiment", "role", "method", "train_size"], dropna=False)["seed"].nunique()

    def cell_seeds(experiment: str) -> int:
        s = seeds.loc[experiment] if experiment in seeds.index.get_level_values(0) else pd.Series(dtype=int)
        return int(s.min()) if len(s) else 0

    curve_seeds = int(peak_ratios(peaks)["seed"].nunique()) if len(peaks) else 0
    held_by = {"L1": (cell_seeds("main"), tuned_on_dev), "L2": (cell_seeds("main"), tuned_on_dev),
               "L3": (curve_seeds, tuned_on_dev), "L4": (cell_seeds("low_resource"), False)}
    decided_on_evidence = {cid for cid, role in (("L1", "general"), ("L2", "biomedical"))
                           if evidence and role in evidence} | ({"L3"} if peak_evidence else set())
    out = []
    for claim in claims:
        n, tuned = held_by[claim.claim_id]
        out += verdicts.hold_to_policy([claim], comparisons=set() if claim.claim_id in decided_on_evidence
                                       else {claim.claim_id}, n_seeds=n, tuned_on_dev=tuned,
                                       random_weights=random_weights)
    return out


def loraplus_claim_rules(*, results, comparisons, peaks, data_labels, encoder_labels, model, model_params,
                         low_resource_sizes, snapshot_every, dev_sentences=0, competitive_margin=0.02,
                         evidence: dict | None = None, peak_evidence: dict | None = None) -> list:
    from ie_helpers.report import Claim

    paper_scale = model_params >= PAPER_SCALE_PARAMS
    scale_note = "" if paper_scale else f"; {model} ({model_params / 1e6:.0f}M parameters) stands in for a 7B LLM"
    main = results[results.experiment == "main"]
    claims = []

    for cid, role, paper, bench in (("L1", "general", L_CLAIMS[0][1], "CoNLL-2003"),
                                    ("L2", "biomedical", L_CLAIMS[1][1], "the paper's (unnamed) biomedical set")):
        sub = main[main.role == role]
        f1 = {m: sub[sub.method == m].sort_values("seed")["micro_f1"] for m in ("loraplus", "lora", "encoder")}
        if any(len(v) == 0 for v in f1.values()):
            skipped = not len(main[main.role == role])
            claims.append(Claim(cid, paper, "n/a", NOT_TESTABLE,
                                f"the {role} role was not run at this profile (see the budget cuts)" if skipped else
                                f"LoRA, LoRA+ or the encoder baseline was not run on the {role} dataset"))
            continue
        mean = {m: float(v.mean()) for m, v in f1.items()}
        if max(mean["lora"], mean["loraplus"]) < MIN_F1:
            claims.append(Claim(cid, paper, f"LoRA+ {mean['loraplus']:.3f}, LoRA {mean['lora']:.3f}",
                                NOT_TESTABLE,
                                f"neither LoRA nor LoRA+ learned the task at this profile (test F1 < {MIN_F1})"))
            continue
        comp = comparisons[comparisons.role == role] if len(comparisons) else comparisons
        tests = "; ".join(f"seed {r.seed}: {100 * r.diff:+.1f} pts, p={r.p_value:.2g}" for r in comp.itertuples())
        measured = (f"LoRA+ {_seed_text(f1['loraplus'])}, LoRA {_seed_text(f1['lora'])}, "
                    f"{encoder_labels.get(role, 'encoder')} {_seed_text(f1['encoder'])}")
        stand = (f"{data_labels.get(role, role)} stands in for {bench} and {encoder_labels.get(role, 'the encoder')} "
                 f"for the paper's specialised model, so only the ordering is checked{scale_note}")
        if evidence and role in evidence and {"lora", "encoder"} <= set(evidence[role]):
            parts = {other: verdicts.comparison(evidence[role][other], claimed="above")
                     for other in ("lora", "encoder")}
            verdict = verdicts.all_of(list(parts.values()))
            note = (f"{stand}. LoRA+ − LoRA: {parts['lora'].reason}. LoRA+ − encoder: {parts['encoder'].reason}. "
                    "(micro-F1 with hallucinated mentions as false positives; CIs over seeds and test sentences, "
                    "Bonferroni-adjusted for the claim's two comparisons)")
            claims.append(Claim(cid, paper, measured, verdict, note))
            continue
        beats_lora, beats_enc = mean["loraplus"] > mean["lora"], mean["loraplus"] > mean["encoder"]
        verdict = "direction only" if beats_lora and beats_enc else "not replicated"
        failed = [x for x, ok in (("LoRA+ ≤ LoRA", beats_lora), ("LoRA+ ≤ the encoder baseline", beats_enc))
                  if not ok]
        note = (f"{stand}. LoRA+ − LoRA paired bootstrap: {tests or 'n/a'}"
                + (f". Failed: {', '.join(failed)}" if failed else ""))
        claims.append(Claim(cid, paper, measured, verdict, note))

    # L3: steps to peak, from the snapshot curves.
    ratios = peak_ratios(peaks) if len(peaks) else pd.DataFrame()
    if peak_evidence:
        parts = {role: verdicts.comparison(ev, decision=1.0, claimed="below", magnitude=0.6)
                 for role, ev in peak_evidence.items()}
        measured = "; ".join(f"{role}: ratio {ev.effect:.2f} [{ev.lo:.2f}, {ev.hi:.2f}] (per seed "
                             f"{', '.join(f'{x:.2f}' for x in ev.seed_effects)})" for role, ev in peak_evidence.items())
        censored = int(ratios["lora_censored"].sum()) if len(ratios) else 0
        note = ("steps to the first snapshot within the tolerance of the peak of the seed-averaged dev curve, LoRA+ "
                "over LoRA; decision point 1 (the paper: 0.6); 95% CI over seeds and dev sentences"
                + (f" ({dev_sentences} dev sentences)" if dev_sentences else "")
                + f"; snapshots every {snapshot_every} steps set the resolution{scale_note}"
                + (f"; LoRA peaked at its last snapshot in {censored} seed curve(s), so its steps-to-peak may be "
                   "larger (the ratio is then an upper bound)" if censored else "")
                + ". " + " ".join(f"{role}: {v.reason}." for role, v in parts.items()))
        claims.append(Claim("L3", L_CLAIMS[2][1], measured, verdicts.all_of(list(parts.values())), note))
    elif not len(ratios):
        claims.append(Claim("L3", L_CLAIMS[2][1], "n/a", NOT_TESTABLE,
                            "no pair of LoRA / LoRA+ convergence curves that both learned something"))
    else:
        r = float(ratios["ratio"].mean())
        measured = f"ratio {r:.2f} (" + "; ".join(f"{x.role} seed {x.seed}: {x.steps_loraplus}/{x.steps_lora}"
                                                  for x in ratios.itertuples()) + " steps)"
        if r >= 1:
            v3 = "not replicated"
        elif paper_scale and r <= 0.8:
            v3 = "replicated"
        else:
            v3 = "direction only"
        censored = int(ratios["lora_censored"].sum())
        note = ("first snapshot within the tolerance of each curve's peak dev F1"
                + (f" on {dev_sentences} dev sentences (noisy)" if dev_sentences else "")
                + f"; snapshots every {snapshot_every} steps set the resolution{scale_note}"
                + (f"; LoRA peaked at its last snapshot in {censored} curve(s), so its true steps-to-peak may be "
                   "larger (the ratio is then an upper bound)" if censored else ""))
        claims.append(Claim("L3", L_CLAIMS[2][1], measured, v3, note))

    # L4: LoRA+ vs full fine-tuning at low resource.
    low = results[results.experiment == "low_resource"]
    sizes = sorted(set(low.train_size[low.method == "full"]) & set(low.train_size[low.method == "loraplus"]))
    if not sizes:
        claims.append(Claim("L4", L_CLAIMS[3][1], "n/a", NOT_TESTABLE,
                            "no full fine-tuning run to compare with"))
    elif low[low.method.isin(["loraplus", "full"]) & low.train_size.isin(sizes)]["micro_f1"].max() < MIN_F1:
        claims.append(Claim("L4", L_CLAIMS[3][1], f"all runs F1 < {MIN_F1}", NOT_TESTABLE,
                            "neither LoRA+ nor full fine-tuning learned the task at this profile"))
    else:
        parts, ok_all = [], True
        for n in sizes:
            a = low[(low.train_size == n) & (low.method == "loraplus")]["micro_f1"].mean()
            b = low[(low.train_size == n) & (low.method == "full")]["micro_f1"].mean()
            ok_all &= bool(a - b >= -competitive_margin)
            parts.append(f"n={n}: LoRA+ {a:.3f} vs full {b:.3f} ({100 * (a - b):+.1f} pts)")
        missing = [n for n in low_resource_sizes if n not in sizes]
        wide = max(sizes) >= 300 and min(sizes) <= 150
        if not ok_all:
            v4 = "not replicated"
        elif paper_scale and wide:
            v4 = "replicated"
        else:
            v4 = "direction only"
        note = (f"competitive = LoRA+ at most {100 * competitive_margin:.0f} F1 points below full fine-tuning at "
                f"every size{scale_note}"
                + ("" if wide else "; the sizes run do not span ~100 to ~500 examples")
                + (f"; sizes {missing} not run" if missing else ""))
        claims.append(Claim("L4", L_CLAIMS[3][1], "; ".join(parts), v4, note))
    return claims
