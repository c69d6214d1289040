"""The exported model as one ONNX graph for serving (onnxruntime, Triton's ONNX Runtime backend, KServe).

The graph takes what a client has once it has decoded and resized an image: uint8 RGB pixels `[N, 3, S, S]`
(`images`, N dynamic). It scales them to [0, 1], normalises with the model's mean/std, runs the network and
divides the logits by the calibrated temperature; it returns those `logits` and their softmax `probabilities`
(the calibrated ones `graft predict` prints).

Why uint8 in, normalisation inside: the mean/std then travel with the weights and cannot be applied wrongly or
twice by a client (the most common silent serving bug), and a request is 4x smaller than float32 pixels (REST
bodies, Triton's batching queues). The resize stays outside: a decoder's resampling (PIL bicubic + crop for timm,
bilinear otherwise) is not one ONNX `Resize` reproduces bit for bit, and images arrive at any size; model.json's
`onnx.preprocessing` says which resize to apply.

Exporter: `torch.onnx.export(..., dynamo=True)` (torch.export + onnxscript), deliberately. It is the exporter
torch develops and the default since 2.9; the TorchScript one (`dynamo=False`) is deprecated. The dynamic batch
dimension is a `torch.export.Dim`, checked at export time rather than inferred from tracing a fixed batch.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

#: The graph's tensor names (Triton's config.pbtxt and v2 requests use them as they are).
INPUT = "images"
LOGITS = "logits"
PROBABILITIES = "probabilities"
OUTPUTS = (LOGITS, PROBABILITIES)
#: ONNX opset: 18 is the dynamo exporter's own; onnxruntime >= 1.14 (Triton 23.02+) runs it.
OPSET = 18
#: The largest batch a server accepts in one request (Triton's `max_batch_size`; `graft serve` refuses more).
MAX_BATCH = 64


class ServingNet(nn.Module):
    """uint8 images -> (calibrated logits, probabilities): preprocessing and temperature around a GraftNet."""

    def __init__(self, net: nn.Module, mean: list[float], std: list[float], temperature: float = 1.0):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("temperature", torch.tensor(float(temperature), dtype=torch.float32))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # The same arithmetic as export.probabilities (x / 255, then data.normalize), so the two agree to fp32
        # rounding.
        x = (images.to(torch.float32) / 255.0 - self.mean) / self.std
        logits = self.net(x) / self.temperature
        return logits, torch.softmax(logits, dim=1)


def serving_net(net: nn.Module, meta: dict[str, Any]) -> ServingNet:
    """The ServingNet of an exported model (its model.json `meta`), in eval mode."""
    pre = meta["preprocessing"]
    return ServingNet(net, pre["mean"], pre["std"], float(meta.get("temperature") or 1.0)).eval()


def onnx_bytes(net: nn.Module, meta: dict[str, Any]) -> bytes:
    """The model (a GraftNet and its model.json `meta`) as an ONNX file's bytes, batch dimension dynamic."""
    size = int(meta["preprocessing"]["image_size"])
    wrapped = serving_net(net, meta)
    example = torch.zeros(2, 3, size, size, dtype=torch.uint8)  # 2, not 1: torch.export specialises a size-1 dim
    batch = torch.export.Dim("batch", min=1, max=65536)
    with tempfile.TemporaryDirectory(prefix="graft-onnx-") as tmp:
        path = Path(tmp, "model.onnx")
        torch.onnx.export(
            wrapped, (example,), str(path), dynamo=True, opset_version=OPSET, input_names=[INPUT],
            output_names=list(OUTPUTS), dynamic_shapes={"images": {0: batch}}, external_data=False, verbose=False,
        )
        return path.read_bytes()


def describe(meta: dict[str, Any], file: str) -> dict[str, Any]:
    """model.json's `onnx` block: the file (relative to the model folder), opset, tensors and what a client does
    before sending an image."""
    pre = meta["preprocessing"]
    size = int(pre["image_size"])
    classes = int(meta["num_classes"])
    return {
        "file": file,
        "opset": OPSET,
        "exporter": f"torch.onnx.export(dynamo=True), torch {torch.__version__.split('+')[0]}",
        "input": {"name": INPUT, "shape": [-1, 3, size, size], "dtype": "uint8", "layout": "NCHW, RGB"},
        "outputs": [
            {"name": LOGITS, "shape": [-1, classes], "dtype": "float32",
             "note": f"divided by the calibrated temperature ({float(meta.get('temperature') or 1.0):g})"},
            {"name": PROBABILITIES, "shape": [-1, classes], "dtype": "float32", "note": "softmax of logits"},
        ],
        "max_batch": MAX_BATCH,
        "preprocessing": (f"client: decode to RGB, resize to {size}x{size} as preprocessing.resize says, send the "
                          "uint8 pixels as NCHW; the graph itself scales to [0, 1] and normalises with "
                          "preprocessing.mean/std"),
    }
