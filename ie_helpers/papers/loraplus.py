"""LoRA+ for NER (seed 005, claims L1–L4): the experiment plan and convergence measures; the verdict rules are in
``loraplus_claims``.

The experiment itself (prompts, records, scoring) is the shared generative-NER path, ``ie_helpers.nerexp``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from ie_helpers import engine, ner, nerexp
from ie_helpers.errors import IEError
from ie_helpers.papers.loraplus_claims import (  # noqa: F401 - the notebook and tests read them as loraplus.*
    L_CLAIMS, MIN_F1, PAPER_SCALE_PARAMS, loraplus_claim_rules, loraplus_claims, peak_ratios)


# --------------------------------------------------------------------------- LoRA+ experiment plan

RUN_KEY = ["role", "method", "ratio", "lr", "train_size", "seed"]


def loraplus_plan(datasets: dict, train_sizes: dict[str, int], ratio: float, ratio_sweep: dict,
                  low_resource: dict, curve_roles: Sequence[str] = (), lrs: dict | None = None) -> pd.DataFrame:
    """Every (experiment, role, method, ratio, lr, train_size, seed) the LoRA+ notebook evaluates.

    main: LoRA (ratio 1), LoRA+ and the encoder baseline (ratio nan) per role and seed; sweep: ratios on
    one role at LoRA+'s learning rate (ratio 1 is standard LoRA); low_resource: LoRA+ and full fine-tuning
    (ratio nan, ``low_resource['full_lr']``) per size. ``lrs``: the learning rate chosen on dev per method
    (lora, loraplus, encoder); a method missing from it uses the recipe's (lr nan).
    Rows that share ``RUN_KEY`` are one training run (trained and evaluated once).
    """
    lrs = lrs or {}
    nan = float("nan")
    lr_of = {"lora": lrs.get("lora", nan), "loraplus": lrs.get("loraplus", nan), "encoder": lrs.get("encoder", nan),
             "full": float(low_resource.get("full_lr", nan))}
    unknown = ({ratio_sweep["role"], low_resource["role"]} | set(curve_roles)) - set(datasets)
    if unknown:
        raise IEError(f"role(s) {sorted(unknown)} in ratio_sweep / low_resource / curve_roles are not in datasets "
                      f"({', '.join(datasets)})")
    rows = []
    for role, spec in datasets.items():
        for seed in spec["seeds"]:
            rows += [("main", role, "lora", 1.0, lr_of["lora"], train_sizes[role], seed),
                     ("main", role, "loraplus", float(ratio), lr_of["loraplus"], train_sizes[role], seed),
                     ("main", role, "encoder", nan, lr_of["encoder"], train_sizes[role], seed)]
    role = ratio_sweep["role"]
    for seed in ratio_sweep["seeds"]:
        rows += [("sweep", role, "lora" if r == 1 else "loraplus", float(r), lr_of["loraplus"], train_sizes[role],
                  seed) for r in ratio_sweep["ratios"]]
    role = low_resource["role"]
    for n in low_resource["sizes"]:
        for seed in low_resource["seeds"]:
            rows += [("low_resource", role, "loraplus", float(ratio), lr_of["loraplus"], int(n), seed),
                     ("low_resource", role, "full", nan, lr_of["full"], int(n), seed)]
    return pd.DataFrame(rows, columns=["experiment"] + RUN_KEY)


def select_roles(datasets: dict, roles: Sequence[str] | None, given: dict | None = None) -> dict:
    """The roles this run trains, in ``datasets`` order: ``roles`` (None: all of them) plus any role named in the
    user's own ``datasets`` override ``given`` (naming a dataset is asking for it to run)."""
    wanted = set(datasets) if roles is None else set(roles) | set(given or {})
    unknown = sorted(wanted - set(datasets))
    if unknown:
        raise IEError(f"role(s) {unknown} in roles are not in datasets ({', '.join(datasets)}): name a role of "
                      "datasets or add its dataset")
    if not wanted:
        raise IEError("roles is empty: name at least one role of datasets, e.g. -p roles '[biomedical]'")
    return {r: spec for r, spec in datasets.items() if r in wanted}


def _number(x) -> float | None:
    return None if x is None or x != x else float(x)


def run_key(row) -> tuple:
    """Hashable identity of one training run (nan ratio or lr made comparable)."""
    return (row["role"], row["method"], _number(row["ratio"]), _number(row.get("lr")), int(row["train_size"]),
            int(row["seed"]))


def run_settings(training: dict, method: str, ratio: float | None, *, full_lr: float, snapshots: bool,
                 lr: float | None = None) -> dict:
    """Training settings of one run: LoRA (ratio 1), LoRA+ (B's lr x ratio) or full fine-tuning; ``lr`` (the
    base learning rate chosen on dev) replaces the recipe's for LoRA and LoRA+."""
    lora = {**training["lora"], "loraplus_ratio": None if method != "loraplus" else float(ratio)}
    out = {**training, "lora": lora, "snapshot_every": training.get("snapshot_every", 0) if snapshots else 0}
    if _number(lr) is not None and method in ("lora", "loraplus"):
        out["lr"] = float(lr)
    if method == "full":
        out.update(full_finetune=True, lr=full_lr, snapshot_every=0)
    return out


def tuning_plan(lr_grid: dict, train_sizes: dict[str, int]) -> pd.DataFrame:
    """The dev grid: every method × learning rate × seed on ``lr_grid['role']`` at the main training size."""
    role = lr_grid["role"]
    if role not in train_sizes:
        raise IEError(f"lr_grid role '{role}' is not in datasets ({', '.join(train_sizes)})")
    grid = engine.grid_plan(lr_grid["lrs"], seeds=lr_grid["seeds"], role=role, train_size=train_sizes[role])
    grid["ratio"] = float("nan")
    return grid


def evidence(plan: pd.DataFrame, scores: dict, test_sets: dict[str, Sequence[dict]], *, tuned_on_dev: bool,
             n_boot: int = 1000) -> tuple[dict, pd.DataFrame]:
    """LoRA+ − LoRA and LoRA+ − encoder per role on the main experiment, as ``verdicts.Evidence`` with CIs over
    seeds and test sentences (micro-F1 with hallucinated mentions as false positives; each CI at 1 − 0.05/2, as
    the claim makes two comparisons), and a table of them."""
    main = plan[plan.experiment == "main"]
    out, rows = {}, []
    for role, sub in main.groupby("role", sort=False):
        counts = {}
        for method in ("loraplus", "lora", "encoder"):
            cells = sub[sub.method == method].sort_values("seed")
            counts[method] = np.stack([nerexp.sentence_counts(scores[run_key(r)], test_sets[role])
                                       for _, r in cells.iterrows()]) if len(cells) else None
        if counts["loraplus"] is None:
            continue
        out[role] = {}
        others = [o for o in ("lora", "encoder") if counts[o] is not None]
        for other in others:  # two comparisons inside one claim: Bonferroni-adjusted intervals
            ev = engine.paired_effect(counts["loraplus"], counts[other], stat="micro_f1", n_boot=n_boot,
                                      alpha=0.05 / len(others), tuned_on_dev=tuned_on_dev)
            out[role][other] = ev
            rows.append({"role": role, "comparison": f"LoRA+ − {other}", "effect": ev.effect, "lo": ev.lo,
                         "hi": ev.hi, "seeds": len(ev.seed_effects),
                         "per seed": ", ".join(f"{x:+.3f}" for x in ev.seed_effects), "tuned on dev": tuned_on_dev})
    return out, pd.DataFrame(rows, columns=["role", "comparison", "effect", "lo", "hi", "seeds", "per seed",
                                            "tuned on dev"])


def results_frame(plan: pd.DataFrame, scores: dict, checkpoints: dict | None = None) -> pd.DataFrame:
    """The plan with each run's test scores (``scores`` keyed by :func:`run_key`) and, with ``checkpoints``
    (:func:`checkpoints_for_test`), the adapter that answered: a snapshot step or final."""
    rows = []
    for _, row in plan.iterrows():
        key = run_key(row)
        step = (checkpoints or {}).get(key)
        rows.append({**row.to_dict(), **({} if checkpoints is None else
                                         {"checkpoint": "final" if step is None else f"step {step}"}),
                     **_score_columns(scores[key].metrics)})
    return pd.DataFrame(rows)


def _score_columns(m: dict) -> dict:
    return {"micro_f1": m["micro_f1"], "lo": m["micro_lo"], "hi": m["micro_hi"], "macro_f1": m["macro_f1"],
            "n_pred": m["n_pred"], "hallucinated": m["hallucinated"], "parse_fail_lenient": m["parse_fail_lenient"]}


def lexicon_scores(roles: dict, train_sizes: dict[str, int], seeds: dict[str, Sequence[int]], *,
                   entity_share: float | None, n_boot: int = 1000) -> dict:
    """The memorisation baseline, per role and seed: every mention in that seed's training sentences, matched
    longest first with its most frequent type (``nerexp.lexicon_tags``), scored on the role's test sentences;
    keyed ``(role, seed)``. ``roles``: role -> {"train", "test"}."""
    out = {}
    for role, r in roles.items():
        for seed in seeds[role]:
            sents = nerexp.training_sample(r["train"], train_sizes[role], int(seed), entity_share=entity_share,
                                           what=f"{role} training sentences")
            out[(role, int(seed))] = nerexp.score_tags(nerexp.lexicon_tags(sents, r["test"]), r["test"], n_boot=n_boot)
    return out


def lexicon_rows(lexicon: dict, train_sizes: dict[str, int]) -> pd.DataFrame:
    """:func:`lexicon_scores` as rows shaped like :func:`results_frame`'s (experiment main, method lexicon)."""
    return pd.DataFrame([{"experiment": "main", "role": role, "method": "lexicon", "ratio": float("nan"),
                          "lr": float("nan"), "train_size": train_sizes[role], "seed": seed,
                          **_score_columns(score.metrics)} for (role, seed), score in lexicon.items()])


def pooled_cells(plan: pd.DataFrame, scores: dict, test_sets: dict[str, Sequence[dict]], lexicon: dict | None = None,
                 *, n_boot: int = 1000) -> pd.DataFrame:
    """Test micro-F1 per experiment cell (hallucinated mentions as false positives), mean over its seeds with a
    95% CI over seeds and test sentences; the memorisation baseline of :func:`lexicon_scores` as method lexicon."""
    keys = ["experiment", "role", "method", "ratio", "train_size"]
    cells = [(dict(zip(keys, cell)), [scores[run_key(row)] for _, row in g.iterrows()])
             for cell, g in plan.groupby(keys, dropna=False, sort=False)]
    for role in dict.fromkeys(r for r, _ in (lexicon or {})):
        cells.append(({"experiment": "main", "role": role, "method": "lexicon", "ratio": float("nan"),
                       "train_size": float("nan")}, [v for (r, _), v in lexicon.items() if r == role]))
    rows = []
    for cell, cell_scores in cells:
        point, lo, hi = nerexp.pooled_micro_f1(cell_scores, test_sets[cell["role"]], n_boot=n_boot)
        rows.append({**cell, "micro_f1": point, "lo": lo, "hi": hi, "seeds": len(cell_scores)})
    return pd.DataFrame(rows)


def method_comparisons(plan: pd.DataFrame, scores: dict, test_sets: dict[str, Sequence[dict]], a: str = "loraplus",
                       b: str = "lora", n_boot: int = 1000) -> pd.DataFrame:
    """Paired bootstrap of micro-F1(a) − micro-F1(b) per (role, seed) of the main experiment."""
    main = plan[plan.experiment == "main"]
    rows = []
    for (role, seed), g in main.groupby(["role", "seed"], sort=False):
        ra, rb = g[g.method == a], g[g.method == b]
        if not len(ra) or not len(rb):
            continue
        gold = [ner.io_to_bio(s["tags"]) for s in test_sets[role]]
        r = ner.paired_bootstrap_f1(gold, scores[run_key(ra.iloc[0])].pred_tags, scores[run_key(rb.iloc[0])].pred_tags,
                                    n_boot=n_boot, seed=int(seed))
        rows.append({"role": role, "seed": seed, "a": a, "b": b, "f1_a": r["f1_a"], "f1_b": r["f1_b"],
                     "diff": r["diff"], "lo": r["lo"], "hi": r["hi"], "p_value": r["p_value"]})
    return pd.DataFrame(rows, columns=["role", "seed", "a", "b", "f1_a", "f1_b", "diff", "lo", "hi", "p_value"])


def checkpoints_for_test(curve_plan: pd.DataFrame, curves: pd.DataFrame, runs: dict, policy: str) -> dict:
    """Run key -> the snapshot step whose adapter answers the test sentences, or None for the final adapter:
    ``last`` keeps every run's final adapter; ``best_on_dev`` takes, for each run with a dev curve, the snapshot
    with the best dev micro-F1 (hallucinated mentions as false positives, as in the grid), the final adapter when
    that is the last step. Runs without a curve keep their final adapter."""
    if engine.check_checkpoint_policy(policy) == "last":
        return {}
    out = {}
    for _, row in curve_plan.iterrows():
        c = curves[(curves.role == row["role"]) & (curves.method == row["method"]) & (curves.seed == row["seed"])]
        if not len(c):
            continue
        key = run_key(row)
        step = engine.best_step(dict(zip(c.step.astype(int), c.f1_halluc_fp)))
        n_steps = sum("loss" in h for h in runs[key].log_history)
        out[key] = None if step >= n_steps else step
    return out


def seed_spread(results: pd.DataFrame, value: str = "micro_f1") -> pd.DataFrame:
    """Mean, standard deviation, min and max of ``value`` across seeds per experiment cell."""
    keys = ["experiment", "role", "method", "ratio", "train_size"]
    g = results.groupby(keys, dropna=False, sort=False)[value]
    out = g.agg(["mean", "std", "min", "max", "count"]).reset_index()
    return out.rename(columns={"count": "seeds"})


# --------------------------------------------------------------------------- convergence (L3)

def peak_per_curve(curves: pd.DataFrame, tol: float = 0.01, min_peak: float = 0.01) -> pd.DataFrame:
    """Per (role, method, seed) curve: peak F1, the first step within ``tol`` of it, and whether that is the last step.

    ``ok`` is False when the curve never reaches ``min_peak`` F1 (nothing learned: no peak to time).
    """
    rows = []
    for (role, method, seed), g in curves.groupby(["role", "method", "seed"], sort=False):
        g = g.sort_values("step")
        peak = float(g["f1"].max())
        step = int(g.loc[g["f1"] >= peak - tol, "step"].iloc[0])
        last = int(g["step"].max())
        rows.append({"role": role, "method": method, "seed": seed, "peak_f1": peak, "peak_step": step,
                     "last_step": last, "censored": step == last, "ok": peak >= min_peak})
    return pd.DataFrame(rows, columns=["role", "method", "seed", "peak_f1", "peak_step", "last_step", "censored",
                                       "ok"])


def peak_evidence(curve_counts: dict, *, tol: float = 0.01, n_boot: int = 1000,
                  tuned_on_dev: bool = False) -> tuple[dict, pd.DataFrame]:
    """L3's evidence per curve role: ``engine.steps_to_peak_ratio`` of LoRA+ over LoRA from the seed-averaged dev
    curves, and a table of it. ``curve_counts``: (role, method, seed, step) → (dev sentences, 3) tp/fp/fn.
    A role enters only when both methods have the same seeds and steps."""
    out, rows = {}, []
    roles = sorted({k[0] for k in curve_counts})
    for role in roles:
        keys = {m: sorted(k for k in curve_counts if k[0] == role and k[1] == m) for m in ("lora", "loraplus")}
        grid = {m: (sorted({k[2] for k in ks}), sorted({k[3] for k in ks})) for m, ks in keys.items()}
        if not keys["lora"] or grid["lora"] != grid["loraplus"]:
            continue
        seeds, steps = grid["lora"]
        arrays = {m: np.stack([np.stack([curve_counts[(role, m, sd, st)] for st in steps]) for sd in seeds])
                  for m in ("lora", "loraplus")}
        ev = engine.steps_to_peak_ratio(arrays["loraplus"], arrays["lora"], steps, tol=tol, n_boot=n_boot,
                                        tuned_on_dev=tuned_on_dev)
        peaks = {m: engine.steps_to_peak(arrays[m], steps, tol=tol) for m in arrays}
        rows.append({"role": role, "seeds": len(seeds), "snapshots": len(steps),
                     "steps_lora": peaks["lora"], "steps_loraplus": peaks["loraplus"],
                     "ratio": ev.effect if ev else float("nan"), "lo": ev.lo if ev else float("nan"),
                     "hi": ev.hi if ev else float("nan")})
        if ev:
            out[role] = ev
    return out, pd.DataFrame(rows, columns=["role", "seeds", "snapshots", "steps_lora", "steps_loraplus", "ratio",
                                            "lo", "hi"])


# --------------------------------------------------------------------------- the notebook's runs, also launchable

def load_roles(cfg: dict, tokenizer, names: Sequence[str] | None = None) -> tuple[dict, dict, list]:
    """The notebook's data step for each role (``names``: all of ``cfg['datasets']`` by default): its types, the
    sentences that fit ``training.max_length``, the test and dev samples; with the data statements and the
    provenance rows."""
    from ie_helpers import data

    roles, statements, provenance = {}, {}, []
    for role in names or cfg["datasets"]:
        spec = cfg["datasets"][role]
        ds = nerexp.load_ner_data(spec["name"], need_dev=True, allow_synthetic=cfg["allow_synthetic"])
        types = nerexp.entity_types(ds["train"])
        kept, dropped = {}, {}
        for split in ("train", "dev", "test"):
            kept[split], dropped[split] = nerexp.filter_by_length(ds[split], types, tokenizer,
                                                                  cfg["training"]["max_length"], cfg["label_names"],
                                                                  cfg["instruction"])
        n_eval = len(kept["test"]) if cfg["eval_size"] is None else min(cfg["eval_size"], len(kept["test"]))
        user = ds["provenance"][0].source == "user-file"
        roles[role] = {"name": spec["name"], "label": f"your file {spec['name']}" if user else spec["name"],
                       "types": types, "train": kept["train"], "dropped": dropped,
                       "test": data.nested_sample(kept["test"], n_eval, seed=1234, what=f"{role} test sentences"),
                       "dev": data.nested_sample(kept["dev"], min(cfg["dev_size"], len(kept["dev"])), seed=4321,
                                                 what=f"{role} dev sentences"),
                       "dev_pool": kept["dev"], "synthetic": any(p.source == "synthetic" for p in ds["provenance"])}
        statements[role] = nerexp.data_statement(spec["name"], ds["provenance"], ds["notes"])
        provenance += [{**p.__dict__, "role": role} for p in ds["provenance"]]
    return roles, statements, provenance


def grid_dev_sentences(cfg: dict, roles: dict) -> list[dict]:
    """The dev sentences every dev-grid run answers (of ``lr_grid.role``)."""
    from ie_helpers import data

    grid_cfg = cfg["lr_grid"]
    pool = roles[grid_cfg["role"]]["dev_pool"]
    return data.nested_sample(pool, min(grid_cfg["dev_size"], len(pool)), seed=4321,
                              what=f"{grid_cfg['role']} dev sentences for tuning")


def training_sentences(cfg: dict, roles: dict, role: str, train_size: int, seed: int) -> list[dict]:
    """One run's training sentences: the role's usable pool, with the recipe's least entity share."""
    return nerexp.training_sample(roles[role]["train"], int(train_size), int(seed),
                                  entity_share=cfg["train_entity_share"], what=f"{role} training sentences")


def encoder_tags(cfg: dict, roles: dict, role: str, train_size: int, seed: int, lr: float | None,
                 eval_sents: Sequence[dict]) -> tuple[list[list[str]], dict]:
    """Train the encoder baseline of one plan row and tag ``eval_sents``; cached on disk like generations."""
    from ie_helpers import encoder, models

    ec, sents = cfg["encoder"], training_sentences(cfg, roles, role, train_size, seed)
    return encoder.train_and_predict_cached(
        models.resolve_model(ec[role]).path, [s["tokens"] for s in sents], [s["tags"] for s in sents],
        [s["tokens"] for s in eval_sents], max_length=ec["max_length"], method=ec["method"], seed=int(seed),
        epochs=ec["epochs"], batch_size=ec["batch_size"], lr=float(lr) if lr is not None and lr == lr else ec["lr"])


def _launch_setup(cfg: dict, size: int | None, role: str | None) -> tuple[str, dict, int]:
    from transformers import AutoTokenizer

    from ie_helpers import models

    role = role or cfg["lr_grid"]["role"]
    if role not in cfg["datasets"]:
        raise IEError(f"role '{role}' is not in datasets ({', '.join(cfg['datasets'])})")
    tok = AutoTokenizer.from_pretrained(models.resolve_model(cfg["model"]).path)
    roles, _, _ = load_roles(cfg, tok, [role])
    n = size or (len(roles[role]["train"]) if cfg["train_size"] is None else cfg["train_size"])
    return role, roles, n


def launch_records(cfg: dict, size: int | None, seed: int, *, role: str | None = None, method: str = "loraplus",
                   lr: float | None = None) -> tuple[list[dict], str, dict]:
    """The records, model and settings of one plan row (a role, a method, a base learning rate), built from the
    same training pool as the notebook, so the run lands in the cache entry the notebook reads."""
    if method not in ("lora", "loraplus", "full"):
        raise IEError(f"method '{method}' cannot be launched: use lora, loraplus, full or encoder")
    role, roles, n = _launch_setup(cfg, size, role)
    ratio = cfg["loraplus_ratio"] if method == "loraplus" else 1.0
    settings = run_settings(cfg["training"], method, ratio, full_lr=cfg["low_resource"]["full_lr"],
                            snapshots=role in cfg["curve_roles"], lr=lr)
    return (nerexp.ner_records(training_sentences(cfg, roles, role, n, seed), roles[role]["types"],
                               cfg["label_names"], cfg["instruction"]), cfg["model"], {**settings, "seed": seed})


def launch_encoder_run(cfg: dict, size: int | None, seed: int, *, role: str | None = None, method: str = "encoder",
                       lr: float | None = None, split: str = "test") -> dict:
    """Train (cached) the encoder baseline of one plan row as the notebook does and tag its evaluation sentences:
    ``split`` test (a main run) or dev (a dev-grid run, on ``lr_grid.role``); returns a summary."""
    if split not in ("dev", "test"):
        raise IEError(f"--split {split}: an encoder run tags the dev (grid) or test (main run) sentences")
    grid = cfg["lr_grid"]["lrs"].get("encoder", [])
    lr = engine.launch_rate(grid, lr, "encoder") if grid or lr is not None else None  # none: the recipe's rate
    role, roles, n = _launch_setup(cfg, size, role)
    if split == "dev" and role != cfg["lr_grid"]["role"]:
        raise IEError(f"--split dev: the dev grid runs on role '{cfg['lr_grid']['role']}', not '{role}'")
    sents = grid_dev_sentences(cfg, roles) if split == "dev" else roles[role]["test"]
    tags, info = encoder_tags(cfg, roles, role, n, seed, lr, sents)
    return {"role": role, "method": method, "lr": info["lr"], "split": split, "seed": seed, "cached": info["cached"],
            "train_seconds": round(info["train_seconds"], 2), "n_steps": info["n_steps"],
            "micro_f1": nerexp.score_tags(tags, sents, n_boot=1).metrics["micro_f1"]}
