import numpy as np
import pytest
import torch

import prunekit as pk
from prunekit.testing import models

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


# the torchscript exporter cannot convert sdpa with enable_gqa=True, so GQA is tested in its eager form
@pytest.mark.parametrize("name", ["residual", "depthwise", "attention_gqa_eager", "transposed"])
def test_pruned_model_exports_to_onnx_with_same_outputs(tmp_path, name):
    model, x = models()[name]()
    pk.prune_(model, example_inputs=x, sparsity=0.5)
    model.eval()
    path = tmp_path / "m.onnx"
    torch.onnx.export(model, (x,), str(path), input_names=["x"], output_names=["y"], dynamo=False)
    onnx.checker.check_model(onnx.load(str(path)))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (y_ort,) = sess.run(None, {"x": x.numpy()})
    with torch.no_grad():
        y = model(x).numpy()
    np.testing.assert_allclose(y_ort, y, rtol=1e-4, atol=1e-5)
