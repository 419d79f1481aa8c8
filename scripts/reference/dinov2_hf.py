#!/usr/bin/env python3
"""Write HF transformers' Dinov2Model outputs on the folder `raffm-import-onnx` writes
(assets/dinov2-vits14), at the export's 224 px and at 112 px (position embeddings
interpolated), for the deterministic test images of scripts/test_images.py. It needs
torch, which the test venv leaves out, so this runs once in the reference venv and its
output is committed:

    python scripts/reference/dinov2_hf.py assets/dinov2-vits14 > crates/raffm/tests/data/dinov2-hf.json

The fixture keeps every STRIDE-th value of the last hidden state and every token's L2
norm.
"""
import json
import os
import sys

import torch
import transformers
from transformers import Dinov2Model

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from test_images import pixels  # noqa: E402

STRIDE = 101


def main() -> None:
    model = Dinov2Model.from_pretrained(sys.argv[1]).eval()
    out = {"torch": torch.__version__, "transformers": transformers.__version__, "stride": STRIDE}
    for size in (224, 112):
        with torch.no_grad():
            hidden = model(torch.from_numpy(pixels(2, size, size))).last_hidden_state.double()
        out[str(size)] = {
            "shape": list(hidden.shape),
            "sampled": hidden.flatten()[::STRIDE].tolist(),
            "token_norms": hidden.norm(dim=-1).flatten().tolist(),
        }
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
