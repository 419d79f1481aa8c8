#!/usr/bin/env python3
"""PyTorch + transformers side of `cargo bench --bench vit`: Dinov2ForImageClassification
(the imported ViT-S/14 folder, 10 labels), batch 32 of random images, 2 threads;
`train` (cross-entropy, AdamW) or `eval` (no gradients) at the given size, in fp32 or
under bf16 autocast (`torch.autocast("cpu", dtype=torch.bfloat16)` around the forward
and the loss, as a PyTorch user would switch it on). Prints one JSON line. Needs the
reference venv (see docs/reference-checks.md):

    RAFFM_TORCH_PYTHON=/path/to/venv/bin/python make bench

    python scripts/bench/vit_pytorch.py FOLDER train|eval SIZE [fp32|bf16]
"""
import json
import resource
import sys
import time

import torch
import transformers
from transformers import Dinov2ForImageClassification

BATCH, STEPS = 32, 4


def main() -> None:
    folder, mode, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
    bf16 = (sys.argv[4] if len(sys.argv) > 4 else "fp32") == "bf16"
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = Dinov2ForImageClassification.from_pretrained(folder, num_labels=10)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.01)
    model.train(mode == "train")
    times = []
    for _ in range(STEPS + 1):
        x = torch.rand(BATCH, 3, size, size) * 4 - 2
        y = torch.randint(0, 10, (BATCH,))
        start = time.perf_counter()
        if mode == "train":
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = torch.nn.functional.cross_entropy(model(pixel_values=x).logits, y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        else:
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                model(pixel_values=x)
        times.append(time.perf_counter() - start)
    step = sorted(times[1:])[len(times[1:]) // 2]
    print(json.dumps({
        "images_per_second": round(BATCH / step, 2),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "precision": "bf16 autocast" if bf16 else "fp32",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }))


if __name__ == "__main__":
    main()
