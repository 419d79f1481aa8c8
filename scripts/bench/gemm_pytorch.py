#!/usr/bin/env python3
"""PyTorch side of `cargo bench --bench gemm`: the same products, 2 threads, in fp32 and
under bf16 autocast (fp32 operands cast inside the call, as in a model under
`torch.autocast("cpu", dtype=torch.bfloat16)`). Prints one JSON line per product:
median GFLOP/s of each. Needs the reference venv (see docs/reference-checks.md):

    python scripts/bench/gemm_pytorch.py
"""
import json
import time

import torch

# name, m, n, k, lhs transposed, rhs transposed: the gemm bench's shapes.
SHAPES = [
    ("square 512", 512, 512, 512, False, False),
    ("square 1024", 1024, 1024, 1024, False, False),
    ("square 2048", 2048, 2048, 2048, False, False),
    ("MiniLM FFN up, x·Wᵀ", 2048, 1536, 384, False, True),
    ("MiniLM FFN up, dY·W", 2048, 384, 1536, False, False),
    ("MiniLM FFN up, dYᵀ·x", 1536, 384, 2048, True, False),
    ("SmolLM2 gate, x·Wᵀ", 1024, 1536, 576, False, True),
]


def operand(rows: int, cols: int, transposed: bool) -> torch.Tensor:
    return torch.rand(cols, rows).t() - 0.5 if transposed else torch.rand(rows, cols) - 0.5


def main() -> None:
    torch.set_num_threads(2)
    torch.manual_seed(0)
    for name, m, n, k, lt, rt in SHAPES:
        a, b = operand(m, k, lt), operand(k, n, rt)
        flops = 2.0 * m * n * k
        reps = max(5, min(41, int(2e10 / flops)))
        times = {"fp32": [], "bf16": []}
        for rep in range(reps + 1):
            for precision in times:
                start = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                    torch.matmul(a, b)
                if rep > 0:
                    times[precision].append(time.perf_counter() - start)
        median = {p: sorted(t)[len(t) // 2] for p, t in times.items()}
        print(json.dumps({
            "product": name,
            "pytorch_fp32_gflops": round(flops / median["fp32"] / 1e9),
            "pytorch_bf16_autocast_gflops": round(flops / median["bf16"] / 1e9),
            "torch": torch.__version__,
        }, ensure_ascii=False))


if __name__ == "__main__":
    main()
