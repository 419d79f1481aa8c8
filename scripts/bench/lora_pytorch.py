#!/usr/bin/env python3
"""PyTorch + transformers + peft side of `cargo bench --bench lora`: LoRA training
throughput and peak memory of SmolLM2-135M (the F32 folder), 2 threads, batch 8 x seq 128
random token ids, causal-LM loss on every position, rank 16 alpha 32 on q/k/v/o, AdamW,
in fp32 or under bf16 autocast (around the forward and the loss). Prints one JSON line.
Needs the reference venv (see docs/reference-checks.md):

    RAFFM_TORCH_PYTHON=/path/to/venv/bin/python make bench

    python scripts/bench/lora_pytorch.py FOLDER [fp32|bf16]
"""
import json
import resource
import sys
import time

import peft
import torch
import transformers
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

BATCH, SEQ, STEPS = 8, 128, 6


def main() -> None:
    folder = sys.argv[1]
    bf16 = (sys.argv[2] if len(sys.argv) > 2 else "fp32") == "bf16"
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05,
                                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                                             task_type="CAUSAL_LM"))
    model.train()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    times = []
    for _ in range(STEPS + 1):
        ids = torch.randint(0, model.config.vocab_size, (BATCH, SEQ))
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - start)
    step = sorted(times[1:])[len(times[1:]) // 2]
    print(json.dumps({
        "tokens_per_second": BATCH * SEQ / step,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "trainable": trainable,
        "precision": "bf16 autocast" if bf16 else "fp32",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__},
    }))


if __name__ == "__main__":
    main()
