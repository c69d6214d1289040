"""The ONNX graph answers what torch answers: logits (calibrated) and probabilities, every backbone family."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from graft_trainer import export, models, onnx_export
from graft_trainer.data import normalize

#: (backbone, image size): smallcnn, a torchvision CNN, a timm CNN and a timm ViT (random weights; no download).
FAMILIES = [
    pytest.param("smallcnn", 8, id="smallcnn"),
    pytest.param("resnet18", 64, id="torchvision-resnet18", marks=pytest.mark.slow),
    pytest.param("timm:resnet18", 64, id="timm-resnet18", marks=pytest.mark.slow),
    pytest.param("timm:vit_tiny_patch16_224", 224, id="timm-vit_tiny", marks=pytest.mark.slow),
]
TOLERANCE = 1e-4  # fp32, the acceptance bound
TEMPERATURE = 1.7  # not 1: the temperature must be folded into the graph's logits


def _meta(arch: str, size: int) -> dict:
    return {"architecture": arch, "num_classes": 5, "labels": list("abcde"), "temperature": TEMPERATURE,
            "preprocessing": {"image_size": size, **models.torchvision_preset(arch, None)}}


@pytest.mark.parametrize(("arch", "size"), FAMILIES)
def test_onnxruntime_logits_match_torch(arch, size, one_thread, capsys):
    torch.manual_seed(0)
    net = models.build(arch, 5, size).eval()
    meta = _meta(arch, size)
    session = ort.InferenceSession(onnx_export.onnx_bytes(net, meta), providers=["CPUExecutionProvider"])
    rows = []
    for batch in (1, 3):  # neither is the export's example batch (2): the batch dimension is dynamic
        images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
        logits, probs = session.run([onnx_export.LOGITS, onnx_export.PROBABILITIES],
                                    {onnx_export.INPUT: images.numpy()})
        pre = meta["preprocessing"]
        x = images.float() / 255.0
        with torch.inference_mode():  # what `graft predict` computes
            want_logits = net(normalize(x, pre["mean"], pre["std"])) / TEMPERATURE
        want_probs = export.probabilities(net, pre, x, TEMPERATURE)
        rows.append((batch, float(np.abs(logits - want_logits.numpy()).max()),
                     float(np.abs(probs - want_probs.numpy()).max())))
    with capsys.disabled():
        for batch, d_logits, d_probs in rows:
            print(f"\n{arch:<28} batch {batch}: max |logits diff| {d_logits:.2e}, max |prob diff| {d_probs:.2e}")
    assert [(b, dl <= TOLERANCE, dp <= TOLERANCE) for b, dl, dp in rows] == [(1, True, True), (3, True, True)], rows


def test_graph_names_and_types_are_those_model_json_gives(one_thread):
    net = models.build("smallcnn", 5, 8).eval()
    meta = _meta("smallcnn", 8)
    session = ort.InferenceSession(onnx_export.onnx_bytes(net, meta), providers=["CPUExecutionProvider"])
    block = onnx_export.describe(meta, "x.onnx")
    [given] = session.get_inputs()
    got = {"input": (given.name, given.type, [d if isinstance(d, int) else -1 for d in given.shape]),
           "outputs": [(o.name, o.type, [d if isinstance(d, int) else -1 for d in o.shape])
                       for o in session.get_outputs()]}
    assert got == {
        "input": (block["input"]["name"], "tensor(uint8)", block["input"]["shape"]),
        "outputs": [(o["name"], "tensor(float)", o["shape"]) for o in block["outputs"]],
    }
