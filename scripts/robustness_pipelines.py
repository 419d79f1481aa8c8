#!/usr/bin/env python3
"""Write the robustness and privacy variants of a pipeline (pipelines/robustness/).

    python3 scripts/robustness_pipelines.py pipelines/default.json pipelines/robustness

Each variant is the base pipeline with another server rule, an attacker, or DP-FedAvg:

    {fedavg,median,trimmed-mean}[-scale100|-flip]   the rule, with no attacker or with the
                                                    first participant of every round sending
                                                    100x its update or its update negated
    {fedavg,median}-clip3-scale100                  the same attack against the rule after
                                                    clipping every update to norm 3 (honest
                                                    clients' norms are 1 to 3.5)
    dp-sigma1, dp-sigma0.01                         DP-FedAvg, clip norm 1, Poisson sampling
                                                    at 4 expected participants of 20

`fedavg` with no attacker is the base pipeline itself and is not written.
"""
import copy
import json
import sys
from pathlib import Path

RULES = {
    "fedavg": {},
    "median": {"rule": "median", "weighting": "uniform"},
    "trimmed-mean": {"rule": "trimmed_mean", "trim_fraction": 0.25, "weighting": "uniform"},
}
ATTACKS = {
    "": None,
    "-scale100": {"kind": "scale", "factor": 100, "per_round": 1},
    "-flip": {"kind": "flip", "per_round": 1},
}
CLIPPED = {"fedavg-clip3": "fedavg", "median-clip3": "median"}
DP_SIGMAS = {"dp-sigma1": 1.0, "dp-sigma0.01": 0.01}


def main() -> None:
    if len(sys.argv) != 3 or sys.argv[1].startswith("-"):
        sys.exit(__doc__)
    base_path, out = Path(sys.argv[1]), Path(sys.argv[2])
    base = json.loads(base_path.read_text())
    out.mkdir(parents=True, exist_ok=True)
    variants = {}
    for rule, server in RULES.items():
        for suffix, attack in ATTACKS.items():
            if rule == "fedavg" and attack is None:
                continue
            p = copy.deepcopy(base)
            p["server"] = {**base.get("server", {}), **server}
            if attack:
                p["attack"] = attack
            variants[rule + suffix] = p
    for name, rule in CLIPPED.items():
        p = copy.deepcopy(base)
        p["server"] = {**base.get("server", {}), **RULES[rule], "clip_norm": 3.0}
        p["attack"] = ATTACKS["-scale100"]
        variants[name + "-scale100"] = p
    for name, sigma in DP_SIGMAS.items():
        p = copy.deepcopy(base)
        rate = base["rounds"]["clients_per_round"] / base["clients"]
        p["server"] = {"weighting": "uniform", "lr": 1.0,
                       "dp": {"noise_multiplier": sigma, "clip_norm": 1.0, "sample_rate": rate,
                              "delta": 1e-5, "seed": 0}}
        variants[name] = p
    for name, p in variants.items():
        p["name"] = f"robustness/{name}"
        p["description"] = (f"{base_path.name} with {describe(name)}. Written by "
                            "scripts/robustness_pipelines.py.")
        (out / f"{name}.json").write_text(json.dumps(p, indent=2) + "\n")
        print(out / f"{name}.json")


def describe(name: str) -> str:
    if name.startswith("dp-"):
        return f"DP-FedAvg at noise multiplier {DP_SIGMAS[name]}, clip norm 1, Poisson sampling"
    rule = next(r for r in sorted(RULES, key=len, reverse=True) if name.startswith(r))
    attack = name[len(rule):]
    clipped = attack.startswith("-clip3")
    attack = attack.removeprefix("-clip3")
    words = {"": "no attacker", "-scale100": "the first participant of every round sending "
             "100 times its update", "-flip": "the first participant of every round sending "
             "its update negated"}[attack]
    clip = " after clipping every update to norm 3" if clipped else ""
    return f"the {rule} rule{clip} and {words}"


if __name__ == "__main__":
    main()
