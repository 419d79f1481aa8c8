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


def attack_option(path: str, attack: dict) -> str | None:
    """`--attack` of raffm-local-train from the pipeline's `attack` object."""
    if not attack:
        return None
    kind = attack.get("kind")
    if kind == "scale":
        return f"scale:{attack['factor']}"
    if kind == "flip":
        return "flip"
    sys.exit(f"{path}: attack: unknown kind {kind!r} (expected scale or flip)")


SUBMODEL_KEYS = {"width": "--width", "hidden": "--hidden", "depth": "--depth", "memory_mib": "--memory-budget"}


def submodel_options(path: str, tiers) -> str | None:
    """RaFFM + LoRA: client i trains on the base sub-model of tiers[i % len], given as
    raffm-llm extract options, one tier per `|`; `-` is the whole base."""
    if tiers is None:
        return None
    if not isinstance(tiers, list) or not tiers:
        sys.exit(f"{path}: submodels must be a list of tiers, e.g. [{{\"width\": 0.5}}]")
    out = []
    for n, tier in enumerate(tiers):
        if not isinstance(tier, dict) or set(tier) - set(SUBMODEL_KEYS):
            sys.exit(f"{path}: submodels[{n}]: expected an object with {', '.join(SUBMODEL_KEYS)}")
        for key, value in tier.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                sys.exit(f"{path}: submodels[{n}].{key} must be a positive number")
        if "width" in tier and "memory_mib" in tier:
            sys.exit(f"{path}: submodels[{n}]: give width or memory_mib, not both")
        whole = all(tier.get(k, 1) == 1 for k in ("width", "hidden")) and not {"depth", "memory_mib"} & set(tier)
        out.append("-" if whole else " ".join(f"{SUBMODEL_KEYS[k]} {v}" for k, v in tier.items()))
    return "|".join(out)


def llm_lora_values(path: str, p: dict) -> dict:
    """The settings of a federated LoRA pipeline of the decoder (`"kind": "llm-lora"`)."""
    data, lora, local = p.get("data", {}), p.get("lora", {}), p.get("local", {})
    targets = lora.get("target_modules")
    # Heterogeneous ranks: client i has ranks[i % len]; the global adapter the largest.
    ranks = lora.get("ranks")
    if ranks is not None and (not ranks or any(not isinstance(r, int) or r < 1 for r in ranks)):
        sys.exit(f"{path}: lora.ranks must be a list of positive integers")
    aggregation = p.get("aggregation")
    if aggregation not in (None, "fedavg", "padded", "flexlora"):
        sys.exit(f"{path}: aggregation: unknown rule {aggregation!r} (expected fedavg, padded or flexlora)")
    if ranks and len(set(ranks)) > 1 and aggregation in (None, "fedavg"):
        sys.exit(f"{path}: different ranks need aggregation padded or flexlora")
    return {
        "PL_SUBMODELS": submodel_options(path, p.get("submodels")),
        "PL_KIND": "llm-lora",
        "PL_MODEL": p["model"],
        "PL_DATA": data["path"],
        "PL_TASK": data["format"],
        "PL_VALIDATION_FRACTION": data.get("validation_fraction"),
        "PL_CLIENTS": p["clients"],
        "PL_SEED": p.get("seed", 0),
        "PL_LORA_R": max(ranks) if ranks else lora.get("r"),
        "PL_LORA_RANKS": " ".join(map(str, ranks)) if ranks else None,
        "PL_AGGREGATION": aggregation,
        "PL_LORA_ALPHA": lora.get("alpha"),
        "PL_LORA_DROPOUT": lora.get("dropout"),
        "PL_LORA_TARGETS": ",".join(targets) if targets else None,
        "PL_MAX_STEPS": local.get("max_steps"),
        "PL_EPOCHS": local.get("epochs"),
        "PL_BATCH_SIZE": local.get("batch_size"),
        "PL_LR": local.get("lr"),
        "PL_EVAL_MAX": p.get("evaluation", {}).get("max_examples"),
    }


def main() -> None:
    path = sys.argv[1]
    p = json.load(open(path))
    if p.get("kind") == "llm-lora":
        print(f"# generated from {path} by scripts/pipeline_vars.py")
        for key, value in llm_lora_values(path, p).items():
            print(f"{key} := {'' if value is None else value}")
        return
    data, part, rounds = p.get("data", {}), p.get("partition", {}), p.get("rounds", {})
    local, server = p.get("local", {}), p.get("server", {})
    evaluation = p.get("evaluation", {})
    dp, attack = server.get("dp") or {}, p.get("attack") or {}
    rate = dp.get("sample_rate")
    strategy = p.get("strategy", "salient")
    values = {
        "PL_MODEL": p["model"],
        "PL_DATA": data["path"],
        "PL_DATA_FORMAT": data.get("format"),
        "PL_LABELS_FILE": data.get("labels_file"),
        # A dataset's own test split (Fashion-MNIST's t10k files) as the validation set.
        "PL_VALIDATION_DATA": data.get("validation_path"),
        "PL_VALIDATION_LABELS_FILE": data.get("validation_labels_file"),
        "PL_VALIDATION_FRACTION": data.get("validation_fraction"),
        "PL_CLIENTS": p["clients"],
        "PL_SCHEME": part.get("scheme"),
        "PL_ALPHA": part.get("alpha"),
        "PL_KSHOT": part.get("k"),
        "PL_PER_ROUND": rounds.get("clients_per_round", max(1, p["clients"] // 10)),
        "PL_SEED": p.get("seed", 0),
        "PL_HEAD_INIT": p.get("head_init"),
        # Only RaFFM's salient strategy reorders the global model before extracting.
        "PL_PRIORITIZE": "1" if strategy == "salient" else "",
        "PL_EPOCHS": local.get("epochs"),
        "PL_BATCH_SIZE": local.get("batch_size"),
        "PL_MAX_SEQ_LEN": local.get("max_seq_len"),
        # A vision model's input side: raffm-init-head writes it into the model's
        # preprocessor_config.json, where every later stage reads it.
        "PL_IMAGE_SIZE": p.get("training", {}).get("image_size"),
        "PL_LR": local.get("lr"),
        "PL_WEIGHT_DECAY": local.get("weight_decay"),
        "PL_MU": local.get("mu"),
        "PL_FREEZE": "--freeze-embeddings" if local.get("freeze_embeddings") else "",
        "PL_WEIGHTING": server.get("weighting"),
        "PL_SERVER_LR": server.get("lr"),
        "PL_RULE": server.get("rule"),
        "PL_TRIM_FRACTION": server.get("trim_fraction"),
        "PL_CLIP_NORM": server.get("clip_norm"),
        # DP-FedAvg: Poisson sampling at sample_rate, the sum over the expected q * N; the
        # noise seed from the pipeline (experiments) or RAFFM_DP_SEED (a secret).
        "PL_DP_NOISE": dp.get("noise_multiplier"),
        "PL_DP_CLIP": dp.get("clip_norm"),
        "PL_DP_RATE": rate,
        "PL_DP_EXPECTED": None if rate is None else rate * p["clients"],
        "PL_DP_DELTA": dp.get("delta"),
        "PL_DP_TARGET": dp.get("target_epsilon"),
        "PL_DP_SEED": dp.get("seed"),
        # Experiments: the first `per_round` participants of every round are malicious.
        "PL_ATTACK": attack_option(path, attack),
        "PL_ATTACK_PER_ROUND": attack.get("per_round", 1) if attack else None,
        "PL_EVAL_MAX": evaluation.get("max_examples"),
    }
    print(f"# generated from {path} by scripts/pipeline_vars.py")
    for key, value in values.items():
        print(f"{key} := {'' if value is None else value}")


if __name__ == "__main__":
    main()
