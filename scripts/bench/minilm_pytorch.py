#!/usr/bin/env python3
"""PyTorch + transformers side of `cargo bench --bench train`: BertForSequenceClassification
on the MiniLM folder (2 labels), 2 threads, rows of 16 to 64 random token ids padded to 64
(every fourth one full, as the bench's), `train` (batch 32, cross-entropy, AdamW, dropout
on) or `eval` (batch 64, no gradients), in fp32 or under bf16 autocast (around the
forward and the loss, as a PyTorch user would switch it on). Prints one JSON line. Needs
the reference venv (see docs/reference-checks.md):

    RAFFM_TORCH_PYTHON=/path/to/venv/bin/python make bench

    python scripts/bench/minilm_pytorch.py FOLDER train|eval [fp32|bf16]
"""
import json
import resource
import sys
import time

import torch
import transformers
from transformers import BertForSequenceClassification

SEQ, STEPS = 64, 8


def batch(size: int, generator: torch.Generator):
    lengths = torch.randint(16, SEQ + 1, (size,), generator=generator)
    lengths[::4] = SEQ
    ids = torch.randint(1000, 21000, (size, SEQ), generator=generator)
    mask = torch.arange(SEQ)[None, :] < lengths[:, None]
    ids = torch.where(mask, ids, torch.zeros_like(ids))
    ids[:, 0] = 101
    ids[torch.arange(size), lengths - 1] = 102
    labels = torch.arange(size) % 2
    return ids, mask.long(), labels


def main() -> None:
    folder, mode = sys.argv[1], sys.argv[2]
    bf16 = (sys.argv[3] if len(sys.argv) > 3 else "fp32") == "bf16"
    torch.set_num_threads(2)
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(folder, num_labels=2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5, weight_decay=0.01)
    model.train(mode == "train")
    size = 32 if mode == "train" else 64
    times = []
    for _ in range(STEPS + 1):
        ids, mask, labels = batch(size, generator)
        start = time.perf_counter()
        if mode == "train":
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        else:
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                model(input_ids=ids, attention_mask=mask)
        times.append(time.perf_counter() - start)
    step = sorted(times[1:])[len(times[1:]) // 2]
    print(json.dumps({
        "examples_per_second": round(size / step, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "precision": "bf16 autocast" if bf16 else "fp32",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }))


if __name__ == "__main__":
    main()
