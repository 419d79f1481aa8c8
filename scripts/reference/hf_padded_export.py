#!/usr/bin/env python3
"""Check, once and outside `make test`, that HF transformers opens a padded sub-model
export and computes the sub-model's logits.

torch and transformers are too heavy for the test venv, so this runs in a separate
reference venv (see docs/reference-checks.md):

    raffm-evaluate --model SUB --partition P --predictions sub.jsonl
    raffm-export --model SUB --global GLOBAL --output padded
    python scripts/reference/hf_padded_export.py padded sub.jsonl [MAX_SEQ_LEN]

Prints one JSON line (versions, examples, largest logit difference) and exits non-zero
when the difference reaches 1e-4.
"""
import json
import sys

import torch
import transformers
from transformers import AutoModelForSequenceClassification, AutoTokenizer


def main() -> int:
    folder, predictions = sys.argv[1], sys.argv[2]
    max_len = int(sys.argv[3]) if len(sys.argv) > 3 else 64
    rows = [json.loads(line) for line in open(predictions)]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    worst = 0.0
    with torch.no_grad():
        for i in range(0, len(rows), 32):
            batch = rows[i : i + 32]
            pairs = [r["text_pair"] for r in batch] if "text_pair" in batch[0] else None
            encoded = tokenizer(
                [r["text"] for r in batch],
                pairs,
                truncation=True,
                max_length=max_len,
                padding=True,
                return_tensors="pt",
            )
            theirs = model(**encoded).logits
            ours = torch.tensor([r["logits"] for r in batch])
            worst = max(worst, (theirs - ours).abs().max().item())
    print(
        json.dumps(
            {
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "model_class": type(model).__name__,
                "examples": len(rows),
                "max_abs_logit_diff": worst,
            }
        )
    )
    return 0 if worst < 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
