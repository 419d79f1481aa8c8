#!/usr/bin/env python3
"""Print a pipeline's settings (pipelines/*.json) as Make variables.

The Makefile includes the result, so every command of a round carries its options
explicitly on the command line (`make -n round N=1` shows them). A setting the pipeline
does not give is printed empty, and the Makefile then leaves the option out: its default
lives in one place, the binary (or, for the search space, strategy and policies,
budgets.json, which raffm-budgets writes from the pipeline).
"""
import json
import sys


def main() -> None:
    path = sys.argv[1]
    p = json.load(open(path))
    data, part, rounds = p.get("data", {}), p.get("partition", {}), p.get("rounds", {})
    local, server = p.get("local", {}), p.get("server", {})
    evaluation = p.get("evaluation", {})
    strategy = p.get("strategy", "salient")
    values = {
        "PL_MODEL": p["model"],
        "PL_DATA": data["path"],
        "PL_DATA_FORMAT": data.get("format"),
        "PL_VALIDATION_FRACTION": data.get("validation_fraction"),
        "PL_CLIENTS": p["clients"],
        "PL_SCHEME": part.get("scheme"),
        "PL_ALPHA": part.get("alpha"),
        "PL_PER_ROUND": rounds.get("clients_per_round", max(1, p["clients"] // 10)),
        "PL_SEED": p.get("seed", 0),
        "PL_HEAD_INIT": p.get("head_init"),
        # Only RaFFM's salient strategy reorders the global model before extracting.
        "PL_PRIORITIZE": "1" if strategy == "salient" else "",
        "PL_EPOCHS": local.get("epochs"),
        "PL_BATCH_SIZE": local.get("batch_size"),
        "PL_MAX_SEQ_LEN": local.get("max_seq_len"),
        "PL_LR": local.get("lr"),
        "PL_WEIGHT_DECAY": local.get("weight_decay"),
        "PL_MU": local.get("mu"),
        "PL_FREEZE": "--freeze-embeddings" if local.get("freeze_embeddings") else "",
        "PL_WEIGHTING": server.get("weighting"),
        "PL_SERVER_LR": server.get("lr"),
        "PL_EVAL_MAX": evaluation.get("max_examples"),
    }
    print(f"# generated from {path} by scripts/pipeline_vars.py")
    for key, value in values.items():
        print(f"{key} := {'' if value is None else value}")


if __name__ == "__main__":
    main()
