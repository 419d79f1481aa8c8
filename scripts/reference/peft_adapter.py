#!/usr/bin/env python3
"""Check raffm's LoRA adapters against PEFT, once, in the reference venv (torch,
transformers and peft are too heavy for the test venv).

    python scripts/reference/peft_adapter.py assets/smollm2-135m-instruct OUR_ADAPTER MERGED \
        > crates/raffm/tests/data/peft-adapter-layout.json

1. PEFT writes a LoRA (r 16, alpha 32, dropout 0.05, q/k/v/o) for the model: the fixture
   records its adapter_config.json keys and values and every tensor's name and shape, which
   `make test` compares with what raffm writes.
2. PEFT loads OUR_ADAPTER (written by `raffm-llm train`) onto the base model; its logits are
   compared with transformers on MERGED (`raffm-llm merge` of the same adapter), and the
   largest difference is recorded.
"""
import json
import os
import sys
import tempfile

import peft
import safetensors.torch
import torch
import transformers
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

PROMPTS = [
    "Review: an utterly charming and hilarious film.\nSentiment:",
    "Review: the plot is a mess, and the actors seem bored.\nSentiment:",
]


def main() -> None:
    base_dir, ours, merged_dir = sys.argv[1:4]
    torch.set_num_threads(2)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05,
                        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], task_type="CAUSAL_LM")
    with tempfile.TemporaryDirectory() as tmp:
        get_peft_model(base, config).save_pretrained(tmp)
        with open(os.path.join(tmp, "adapter_config.json")) as f:
            written_config = json.load(f)
        tensors = safetensors.torch.load_file(os.path.join(tmp, "adapter_model.safetensors"))
    layout = {name: list(t.shape) for name, t in sorted(tensors.items())}

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    with_ours = PeftModel.from_pretrained(base, ours).eval()
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
    tok = transformers.AutoTokenizer.from_pretrained(base_dir)
    worst = 0.0
    with torch.no_grad():
        for text in PROMPTS:
            ids = tok(text, return_tensors="pt").input_ids
            a = with_ours(input_ids=ids).logits
            b = merged(input_ids=ids).logits
            worst = max(worst, (a - b).abs().max().item())
    json.dump({
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__},
        "adapter_config": written_config,
        "tensors": layout,
        "peft_on_our_adapter_vs_our_merge_max_abs_logit_diff": worst,
    }, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
