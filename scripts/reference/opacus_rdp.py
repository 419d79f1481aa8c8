#!/usr/bin/env python3
"""Write the privacy accountant's reference values, computed with Opacus's RDPAccountant.

Opacus needs torch, which the test venv leaves out, so this runs once in the reference venv
(see docs/reference-checks.md) and its output is committed:

    python scripts/reference/opacus_rdp.py > crates/raffm/tests/data/opacus-rdp.json

Each case is (sample rate q, noise multiplier sigma, steps, delta) with the epsilon and the
best order that Opacus's default order grid and conversion give.
"""
import json
import sys

import numpy
import opacus
import scipy
import torch
from opacus.accountants import RDPAccountant

# The two cases first, then a spread: tiny and large q, small and large sigma, one
# step and many, several deltas; fractional and integer best orders both occur.
CASES = [
    (0.2, 1.0, 5, 1e-5),
    (0.01, 1.0, 1000, 1e-5),
    (0.2, 1.0, 1, 1e-5),
    (0.2, 0.5, 5, 1e-5),
    (0.2, 2.0, 50, 1e-5),
    (0.2, 5.0, 5, 1e-5),
    (0.05, 0.8, 100, 1e-6),
    (0.001, 1.1, 10000, 1e-5),
    (0.5, 1.5, 20, 1e-3),
    (1.0, 1.0, 5, 1e-5),
    (1.0, 3.0, 10, 1e-5),
    (0.1, 0.3, 3, 1e-5),
    (0.25, 10.0, 100, 1e-5),
    (0.02, 4.0, 500, 1e-7),
]


def main() -> None:
    cases = []
    for q, sigma, steps, delta in CASES:
        accountant = RDPAccountant()
        accountant.history = [(sigma, q, steps)]
        eps, alpha = accountant.get_privacy_spent(delta=delta)
        cases.append({
            "sample_rate": q,
            "noise_multiplier": sigma,
            "steps": steps,
            "delta": delta,
            "epsilon": float(eps),
            "best_order": float(alpha),
        })
    out = {
        "generator": "scripts/reference/opacus_rdp.py",
        "versions": {
            "opacus": opacus.__version__,
            "torch": torch.__version__,
            "numpy": numpy.__version__,
            "scipy": scipy.__version__,
        },
        "orders": [float(a) for a in RDPAccountant.DEFAULT_ALPHAS],
        "cases": cases,
    }
    json.dump(out, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
