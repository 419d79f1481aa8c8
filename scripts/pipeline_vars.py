#!/usr/bin/env python3
"""Print a pipeline's settings (pipelines/*.json) as Make variables.

The Makefile includes the result, so every command of a round carries its options
explicitly on the command line (`make -n round N=1` shows them).
"""
import json
import sys


def main() -> None:
    path = sys.argv[1]
    p = json.load(open(path))
    data, part, rounds = p.get("data", {}), p.get("partition", {}), p.get("rounds", {})
    local, server, space = p.get("local", {}), p.get("server", {}), p.get("search_space", {})
    evaluation = p.get("evaluation", {})
    strategy = p.get("strategy", "salient")
    csv = lambda xs: ",".join(str(x) for x in xs)
    values = {
        "PL_MODEL": p["model"],
        "PL_DATA": data["path"],
        "PL_DATA_FORMAT": data.get("format", ""),
        "PL_VALIDATION_FRACTION": data.get("validation_fraction", 0.1),
        "PL_CLIENTS": p["clients"],
        "PL_SCHEME": part.get("scheme", "iid"),
        "PL_ALPHA": part.get("alpha", 0.5),
        "PL_PER_ROUND": rounds.get("clients_per_round", max(1, p["clients"] // 10)),
        "PL_SEED": p.get("seed", 0),
        "PL_STRATEGY": strategy,
        "PL_POLICY": p.get("policy", "largest"),
        # Only RaFFM's salient strategy reorders the global model before extracting.
        "PL_PRIORITIZE": "1" if strategy == "salient" else "",
        "PL_HEADS": csv(space.get("heads", [0.25, 0.5, 0.75, 1.0])),
        "PL_HEAD_DIM": csv(space.get("head_dim", [0.5, 0.75, 1.0])),
        "PL_FFN": csv(space.get("ffn", [0.25, 0.5, 0.75, 1.0])),
        "PL_EPOCHS": local.get("epochs", 1),
        "PL_BATCH_SIZE": local.get("batch_size", 32),
        "PL_MAX_SEQ_LEN": local.get("max_seq_len", 64),
        "PL_LR": local.get("lr", 5e-5),
        "PL_WEIGHT_DECAY": local.get("weight_decay", 0.01),
        "PL_MU": local.get("mu", 0.0),
        "PL_FREEZE": "--freeze-embeddings" if local.get("freeze_embeddings") else "",
        "PL_WEIGHTING": server.get("weighting", "examples"),
        "PL_SERVER_LR": server.get("lr", 1.0),
        "PL_EVAL_MAX": evaluation.get("max_examples", ""),
    }
    print(f"# generated from {path} by scripts/pipeline_vars.py")
    for key, value in values.items():
        print(f"{key} := {value}")


if __name__ == "__main__":
    main()
