#!/usr/bin/env python3
"""Write the reference logits for raffm's LLaMA decoder: HF transformers' LlamaForCausalLM
on the F32 folder `raffm-import-gguf` writes, and on the GGUF file loaded by transformers
itself (an independent dequantization). It needs torch, which the test venv leaves out,
so this runs once in the reference venv and its output is committed:

    python scripts/reference/llama_logits.py assets/smollm2-135m-instruct \
        assets/gguf/SmolLM2-135M-Instruct.Q4_1.gguf > crates/raffm/tests/data/smollm2-logits.json

Full logits are 49,152 per position; the fixture keeps, for every position of every
prompt, the logits at every STRIDE-th vocabulary id, the log-sum-exp over the whole
vocabulary and the argmax, which together pin the whole row down.
"""
import json
import os
import sys

import numpy
import tokenizers
import torch
import transformers
from transformers import AutoModelForCausalLM

PROMPTS = [
    "Review: an utterly charming and hilarious film. Sentiment:",
    "Review: the plot is a mess, and the actors seem bored. Sentiment: negative",
    "<|im_start|>user\nWhat is 12 + 305?<|im_end|>\n<|im_start|>assistant\n",
    "Question: a train travels 60 km in 1.5 hours; what is its speed in km per hour?\nAnswer: 40",
]
STRIDE = 193


def summary(logits: torch.Tensor) -> dict:
    logits = logits.double()
    return {
        "sampled": logits[:, ::STRIDE].tolist(),
        "logsumexp": torch.logsumexp(logits, dim=-1).tolist(),
        "argmax": logits.argmax(dim=-1).tolist(),
    }


def main() -> None:
    folder, gguf_path = sys.argv[1], sys.argv[2]
    torch.set_num_threads(2)
    ours = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    gguf_dir, gguf_name = os.path.split(os.path.abspath(gguf_path))
    theirs = AutoModelForCausalLM.from_pretrained(
        gguf_dir, gguf_file=gguf_name, dtype=torch.float32
    ).eval()
    tok = tokenizers.Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
    prompts = []
    gguf_max_diff = 0.0
    with torch.no_grad():
        for text in PROMPTS:
            ids = tok.encode(text, add_special_tokens=False).ids
            x = torch.tensor([ids])
            logits = ours(input_ids=x).logits[0]
            other = theirs(input_ids=x).logits[0]
            gguf_max_diff = max(gguf_max_diff, (logits - other).abs().max().item())
            prompts.append({"text": text, "ids": ids, **summary(logits)})
    json.dump(
        {
            "source": "assets/smollm2-135m-instruct (raffm-import-gguf of SmolLM2-135M-Instruct.Q4_1.gguf)",
            "versions": {
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "tokenizers": tokenizers.__version__,
                "numpy": numpy.__version__,
            },
            "stride": STRIDE,
            "vocab_size": ours.config.vocab_size,
            "hf_gguf_load_vs_folder_max_abs_diff": gguf_max_diff,
            "prompts": prompts,
        },
        sys.stdout,
    )
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
