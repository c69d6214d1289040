"""A Triton model repository for the ONNX model, in the layout KServe's Triton runtime serves from `storageUri`
(`tritonserver --model-store=/mnt/models`, `kserve-tritonserver` ClusterServingRuntime):

    <repository>/<name>/config.pbtxt     the model configuration (protobuf text format, `inference.ModelConfig`)
    <repository>/<name>/1/model.onnx     version 1, the ONNX Runtime backend's default file name
    <repository>/<name>/labels.txt       class names, one a line, for Triton's classification extension

The configuration follows Triton's `model_config.proto` (triton-inference-server/common,
`protobuf/model_config.proto`) and docs/user_guide/model_configuration.md: with `max_batch_size > 0` the batch
dimension is implicit, so `dims` leave it out.
"""

from __future__ import annotations

import json
import re

from graft_trainer import onnx_export

#: The ONNX Runtime backend's default model file name under a version folder.
MODEL_FILE = "model.onnx"
LABELS_FILE = "labels.txt"
VERSION = "1"


def model_name(job_name: str) -> str:
    """A name for the served model that is a Triton model name, a URL path segment and a Kubernetes DNS-1035
    label (the InferenceService's name): lower case letters, digits and '-', starting with a letter, at most 45
    characters (KServe appends `-predictor-...` to the name for its Services)."""
    name = re.sub(r"[^a-z0-9-]+", "-", job_name.lower()).strip("-")
    name = name if name[:1].isalpha() else f"m-{name}"
    return name[:45].rstrip("-") or "model"


def _quoted(text: str) -> str:
    # Protobuf text format strings take C-style escapes; JSON's are a subset of them for what names hold.
    return json.dumps(text)


def config_text(name: str, image_size: int, num_classes: int, max_batch: int = onnx_export.MAX_BATCH) -> str:
    """config.pbtxt for the model: the ONNX Runtime backend, uint8 images in, float32 logits and probabilities
    out (both labelled, so a classification request names classes), dynamic batching up to `max_batch`."""
    outputs = ",\n".join(
        f"  {{\n    name: {_quoted(out)}\n    data_type: TYPE_FP32\n    dims: [ {num_classes} ]\n"
        f"    label_filename: {_quoted(LABELS_FILE)}\n  }}"
        for out in onnx_export.OUTPUTS
    )
    return (
        f"name: {_quoted(name)}\n"
        'backend: "onnxruntime"\n'
        f"max_batch_size: {max_batch}\n"
        "input [\n"
        f"  {{\n    name: {_quoted(onnx_export.INPUT)}\n    data_type: TYPE_UINT8\n"
        f"    dims: [ 3, {image_size}, {image_size} ]\n  }}\n"
        "]\n"
        f"output [\n{outputs}\n]\n"
        "dynamic_batching { }\n"
    )


def labels_text(labels: list[str]) -> str:
    """labels.txt: one class name a line, in the model's output order (a line break inside a name would shift
    every later class, so it becomes a space)."""
    return "".join(re.sub(r"[\r\n]+", " ", label) + "\n" for label in labels)
