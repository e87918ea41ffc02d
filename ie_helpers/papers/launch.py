"""One training run of any paper's recipe, as a script: the entry point for ``accelerate launch``.

    accelerate launch --config_file configs/accelerate/ddp.yaml -m ie_helpers.papers.launch --paper etlch --profile paper

Each paper module builds the run exactly as its notebook does, so the run lands in the same cache entry the
notebook reads: ``launch_records`` gives the records of a decoder (SFT) run, which trains here and under DDP/FSDP;
``launch_encoder_run`` trains an encoder run (clinical and finner ``--system encoder``, loraplus ``--method encoder``,
every MTPF run) with the kit's own
torch loops, which shard each batch over the processes of a DDP launch (``ie_helpers.distributed``); MTPF
pre-finetuning gathers the sentence embeddings of every process, so InfoNCE keeps the whole batch's negatives.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from ie_helpers import config
from ie_helpers.errors import IEError
from ie_helpers.papers import clinical_runs, etlch, finner, loraplus, mtpf_runs
from ie_helpers.train import train_sft

LAUNCHABLE = {"clinical": clinical_runs, "etlch": etlch, "finner": finner, "loraplus": loraplus, "mtpf": mtpf_runs}
# the flags that select a plan row of each paper, besides --size and --seed
ROW_FLAGS = {"clinical": ("system", "family", "dataset", "model", "method", "lr", "split", "fraction"), "etlch": ("lr",),
             "finner": ("system", "method", "lr", "split"), "loraplus": ("role", "method", "lr", "split"),
             "mtpf": ("variant", "stage", "dataset", "lr", "fraction", "split")}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ie_helpers.papers.launch", description=__doc__.split("\n\n")[0])
    p.add_argument("--paper", default="etlch", help=f"one of {', '.join(LAUNCHABLE)}")
    p.add_argument("--profile", default="auto")
    p.add_argument("--size", type=int, help="training size (default: the recipe's, as the notebook's main runs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-cache", action="store_true", help="retrain a decoder run even when it is cached")
    p.add_argument("--role", help="loraplus: the dataset role (default: the dev grid's)")
    p.add_argument("--method", help="loraplus: lora, loraplus (default), full or encoder (the encoder baseline); "
                                    "clinical: lora (default) or full; finner encoder: full or lora")
    p.add_argument("--lr", type=float, help="the (base) learning rate the notebook chose on dev (needed when the "
                                            "recipe's grid has several)")
    p.add_argument("--system", help="clinical: decoder (default), encoder, or lodo (the multi-task run of a "
                                    "leave-one-dataset-out split; --dataset names the held-out dataset); finner: "
                                    "decoder (default) or encoder (the encoder baseline)")
    p.add_argument("--family", help="clinical: ce (default) or re")
    p.add_argument("--dataset", help="clinical: the task's dataset; mtpf: the downstream NER task (default: the first)")
    p.add_argument("--model", help="clinical: one of the recipe's decoders or encoders (default: the first)")
    p.add_argument("--split", help="encoder runs (clinical, finner, loraplus) and mtpf downstream runs: the items the "
                                   "run predicts, test (default; a main run) or dev (a dev-grid run)")
    p.add_argument("--variant", help="mtpf: the pre-finetuning variant (default tpl)")
    p.add_argument("--stage", help="mtpf: pre-finetuning (default) or downstream (a NER run on the variant's backbone)")
    p.add_argument("--fraction", type=float, help="mtpf downstream: share of the training sample (the M5 runs: 0.1); "
                                                  "clinical lodo: fine-tune that share of the held-out training "
                                                  "sample on the merged multi-task model")
    return p


def plan_row(paper: str, args: argparse.Namespace) -> dict:
    """The row-selecting flags given, refused when the paper's plan has no such column."""
    flags = sorted({f for fs in ROW_FLAGS.values() for f in fs})
    row = {f: getattr(args, f) for f in flags if getattr(args, f) is not None}
    foreign = sorted(set(row) - set(ROW_FLAGS[paper]))
    if foreign:
        takes = ", ".join(f"--{f}" for f in ("size", "seed", *ROW_FLAGS[paper]))
        raise IEError(f"{', '.join('--' + f for f in foreign)} do not select a {paper} run: it takes {takes}")
    return row


def processes() -> int:
    """Processes of this launch (``accelerate launch``/torchrun set WORLD_SIZE; a plain run is one)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def launch_encoder(module, paper: str, cfg: dict, args, row: dict) -> dict:
    if args.no_cache:
        raise IEError("--no-cache retrains decoder runs only: delete an encoder run's cache entry to retrain it")
    return module.launch_encoder_run(cfg, args.size, args.seed, **row)


def launch_decoder(module, cfg: dict, args, row: dict, system: str = "decoder") -> dict:
    if "split" in row:
        raise IEError("--split selects the items an encoder run predicts; a decoder run only trains: leave it out")
    make = module.launch_lodo_records if system == "lodo" else module.launch_records
    records, model, settings = make(cfg, args.size, args.seed, **row)
    result = train_sft(model, records, settings, use_cache=not args.no_cache)
    return {"key": result.key, "run_dir": str(result.run_dir), "cached": result.cached,
            "train_seconds": round(result.train_seconds, 2), "tokens_per_s": round(result.tokens_per_second, 1),
            "final_loss": result.final_loss}


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.paper not in LAUNCHABLE:
            raise IEError(f"no launchable training run for paper '{args.paper}': use one of {', '.join(LAUNCHABLE)}")
        module = LAUNCHABLE[args.paper]
        row = plan_row(args.paper, args)
        system = row.pop("system", "decoder")
        if system not in ("decoder", "encoder", "lodo"):
            raise IEError(f"--system {system}: use decoder, encoder or lodo (clinical: a leave-one-dataset-out "
                          "multi-task run)")
        if args.paper == "clinical" and "fraction" in row and system != "lodo":
            raise IEError("--fraction selects a leave-one-dataset-out fine-tuning run (--system lodo); a "
                          f"{system} run takes --size")
        cfg = config.load_config(args.paper, args.profile)
        if system == "lodo" and not hasattr(module, "launch_lodo_records"):
            raise IEError(f"--system lodo: {args.paper} has no leave-one-dataset-out runs")
        if system == "encoder" or row.get("method") == "encoder" or not hasattr(module, "launch_records"):
            summary = launch_encoder(module, args.paper, cfg, args, row)
        else:
            summary = launch_decoder(module, cfg, args, row, system)
    except IEError as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
