"""One training run of any paper's recipe, as a script: the entry point for ``accelerate launch``.

    accelerate launch --config_file configs/accelerate/ddp.yaml -m ie_helpers.papers.launch --paper etlch --profile paper

Each paper module builds the records of one run (``launch_records``) exactly as its notebook does, so the
run lands in the same cache entry the notebook reads.
"""

from __future__ import annotations

import argparse
import json
import sys

from ie_helpers import config
from ie_helpers.errors import IEError
from ie_helpers.papers import etlch, finner, loraplus
from ie_helpers.train import train_sft

LAUNCHABLE = {"etlch": etlch, "finner": finner, "loraplus": loraplus}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ie_helpers.papers.launch", description=__doc__.split("\n\n")[0])
    parser.add_argument("--paper", default="etlch", help=f"one of {', '.join(LAUNCHABLE)}")
    parser.add_argument("--profile", default="auto")
    parser.add_argument("--size", type=int, help="training size (default: the recipe's largest)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-cache", action="store_true")
    parser.add_argument("--role", help="loraplus: the dataset role (default: the dev grid's)")
    parser.add_argument("--method", help="loraplus: lora, loraplus (default) or full")
    parser.add_argument("--lr", type=float,
                        help="loraplus, etlch: the (base) learning rate chosen on dev (default: the recipe's only one)")
    args = parser.parse_args(argv)
    try:
        if args.paper not in LAUNCHABLE:
            raise IEError(f"no launchable training run for paper '{args.paper}': use one of {', '.join(LAUNCHABLE)}")
        cfg = config.load_config(args.paper, args.profile)
        row = {k: v for k, v in (("role", args.role), ("method", args.method), ("lr", args.lr)) if v is not None}
        if args.paper == "etlch" and set(row) <= {"lr"}:
            pass  # ETLCH takes the dev-chosen rate
        elif row and args.paper != "loraplus":
            raise IEError(f"--role/--method/--lr select a LoRA+ plan row; the {args.paper} run takes --size and --seed")
        records, model, settings = LAUNCHABLE[args.paper].launch_records(cfg, args.size, args.seed, **row)
        result = train_sft(model, records, settings, use_cache=not args.no_cache)
    except IEError as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"key": result.key, "run_dir": str(result.run_dir), "cached": result.cached,
                      "train_seconds": round(result.train_seconds, 2), "tokens_per_s": round(result.tokens_per_second, 1),
                      "final_loss": result.final_loss}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
