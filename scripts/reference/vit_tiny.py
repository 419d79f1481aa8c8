#!/usr/bin/env python3
"""Write tiny seeded HF ViT and DINOv2 image classifiers and their outputs, the reference
for raffm's vision family. It needs torch, which the test venv leaves out, so this runs
once in the reference venv and its output is committed:

    python scripts/reference/vit_tiny.py crates/raffm/tests/data/vit-tiny

For each layout it writes <out>/<layout>/ (config.json, model.safetensors) and, in
<out>/reference.json, the last hidden state and the logits for seeded pixel inputs at the
pre-training size and at a smaller, non-square size (the position embeddings are then
interpolated bicubically).
"""
import json
import os
import sys

import numpy
import torch
import transformers
from transformers import Dinov2Config, Dinov2ForImageClassification, ViTConfig, ViTForImageClassification

SIZES = [(16, 16), (12, 20)]


def main() -> None:
    out = sys.argv[1]
    torch.manual_seed(0)
    common = dict(hidden_size=24, num_hidden_layers=2, num_attention_heads=4, image_size=16,
                  patch_size=4, num_channels=3, num_labels=3,
                  id2label={0: "cat", 1: "dog", 2: "ship"}, label2id={"cat": 0, "dog": 1, "ship": 2})
    models = {
        "vit": ViTForImageClassification(ViTConfig(intermediate_size=40, **common)),
        "dinov2": Dinov2ForImageClassification(Dinov2Config(mlp_ratio=2, layerscale_value=0.5, **common)),
    }
    reference = {"torch": torch.__version__, "transformers": transformers.__version__, "models": {}}
    rng = numpy.random.default_rng(0)
    inputs = {f"{h}x{w}": rng.standard_normal((2, 3, h, w)).astype(numpy.float32) for h, w in SIZES}
    reference["inputs"] = {k: {"shape": list(v.shape), "data": v.ravel().tolist()} for k, v in inputs.items()}
    for name, model in models.items():
        # Random LayerNorm, LayerScale and bias values, so no parameter is trivially 0 or 1.
        with torch.no_grad():
            for pname, p in model.named_parameters():
                if p.dim() == 1 or "token" in pname or "lambda" in pname:
                    p.add_(0.1 * torch.randn_like(p))
        model.eval()
        model.save_pretrained(os.path.join(out, name))
        outputs = {}
        for key, pixels in inputs.items():
            extra = {"interpolate_pos_encoding": True} if name == "vit" else {}
            with torch.no_grad():
                result = model(torch.from_numpy(pixels), output_hidden_states=True, **extra)
            base = model.vit if name == "vit" else model.dinov2
            with torch.no_grad():
                hidden = base(torch.from_numpy(pixels), **extra).last_hidden_state
            outputs[key] = {
                "last_hidden_state": {"shape": list(hidden.shape), "data": hidden.double().ravel().tolist()},
                "logits": {"shape": list(result.logits.shape), "data": result.logits.double().ravel().tolist()},
            }
        reference["models"][name] = outputs
    with open(os.path.join(out, "reference.json"), "w") as f:
        json.dump(reference, f)


if __name__ == "__main__":
    main()
