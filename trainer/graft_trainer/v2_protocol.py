"""The Open Inference Protocol (KServe v2) REST bodies for one image classifier: request parsing with the checks a
bad request needs (one line saying what is wrong), and response encoding. No web framework here.

Sources: `../shared/kserve/required_api.md` and `rest_predict_v2.yaml` (the protocol); Triton's
`docs/protocol/extension_binary_data.md` (the `binary_tensor_data` extension that `tritonclient.http` uses by
default: the JSON header's length in `Inference-Header-Content-Length`, tensors' raw little-endian bytes after it,
`binary_data_size` per tensor, `binary_data` / `binary_data_output` to ask for binary outputs) and
`extension_classification.md` (`classification: k` on an output: the top k as BYTES `"value:index:label"`).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: v2 datatype names and numpy types (required_api.md, "Tensor Data Types").
DATATYPES = {"BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
             "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64, "FP16": np.float16,
             "FP32": np.float32, "FP64": np.float64}
HEADER_LENGTH = "Inference-Header-Content-Length"


class BadRequest(ValueError):
    """A request the model cannot answer: the 400 body's `error`."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: list[int]  #: -1 for the dynamic batch dimension

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": self.shape}


@dataclass
class Request:
    """A parsed inference request: the input array, and per requested output whether it goes back as binary and
    how many classes it is reduced to (0: the tensor itself)."""

    array: np.ndarray
    id: str | None = None
    outputs: dict[str, tuple[bool, int]] = field(default_factory=dict)


def split_body(body: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes]:
    """The JSON header and the binary data after it."""
    try:
        n = int(header_length) if header_length is not None else len(body)
        if not 0 <= n <= len(body):
            raise ValueError
    except ValueError:
        raise BadRequest(f"{HEADER_LENGTH} must be a byte count within the body ({len(body)} bytes), got "
                         f"{header_length!r}") from None
    try:
        header = json.loads(body[:n])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"the request is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise BadRequest("the request must be a JSON object with 'inputs'")
    return header, body[n:]


def _input_array(tensor: dict[str, Any], spec: TensorSpec, binary: bytes, max_batch: int) -> np.ndarray:
    datatype, shape = tensor.get("datatype"), tensor.get("shape")
    if datatype != spec.datatype:
        raise BadRequest(f"input '{spec.name}': datatype {datatype!r}, the model takes {spec.datatype}")
    if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
        raise BadRequest(f"input '{spec.name}': shape must be a list of non-negative integers, got {shape!r}")
    want = ["N", *spec.shape[1:]]
    if len(shape) != len(spec.shape) or shape[1:] != spec.shape[1:]:
        raise BadRequest(f"input '{spec.name}': shape {shape}, the model takes {want} (uint8 RGB pixels, resized)")
    if not 1 <= shape[0] <= max_batch:
        raise BadRequest(f"input '{spec.name}': batch of {shape[0]}, the model takes 1 to {max_batch} images a request")
    count = int(np.prod(shape))
    dtype = np.dtype(DATATYPES[spec.datatype]).newbyteorder("<")
    size = (tensor.get("parameters") or {}).get("binary_data_size")
    if size is not None:
        want_bytes = count * dtype.itemsize
        if size != len(binary) or size != want_bytes:
            raise BadRequest(f"input '{spec.name}': binary_data_size {size} for shape {shape} ({want_bytes} bytes), "
                             f"{len(binary)} bytes after the header")
        return np.frombuffer(binary, dtype=dtype).reshape(shape)
    try:
        array = np.asarray(tensor.get("data"), dtype=np.int64).reshape(-1)
    except (TypeError, ValueError):
        raise BadRequest(f"input '{spec.name}': data must be a list of integers") from None
    if array.size != count:
        raise BadRequest(f"input '{spec.name}': {array.size} values for shape {shape} ({count} values)")
    if array.size and (array.min() < 0 or array.max() > 255):
        raise BadRequest(f"input '{spec.name}': UINT8 values must be 0 to 255")
    return array.astype(np.uint8).reshape(shape)


def _outputs(header: dict[str, Any], outputs: list[TensorSpec]) -> dict[str, tuple[bool, int]]:
    names = [o.name for o in outputs]
    binary_default = bool((header.get("parameters") or {}).get("binary_data_output", False))
    asked = header.get("outputs")
    if asked is None:
        return {name: (binary_default, 0) for name in names}
    if not isinstance(asked, list) or not all(isinstance(o, dict) for o in asked):
        raise BadRequest("'outputs' must be a list of {\"name\": ...} objects")
    found: dict[str, tuple[bool, int]] = {}
    for out in asked:
        if out.get("name") not in names:
            raise BadRequest(f"unknown output {out.get('name')!r}; the model has {names}")
        params = out.get("parameters") or {}
        k = params.get("classification", 0)
        if not isinstance(k, int) or k < 0:
            raise BadRequest(f"output '{out['name']}': classification must be a class count, got {k!r}")
        found[out["name"]] = (bool(params.get("binary_data", binary_default)), k)
    return found


def parse_request(body: bytes, header_length: str | None, spec: TensorSpec, outputs: list[TensorSpec],
                  max_batch: int) -> Request:
    """The request's input array and wanted outputs; BadRequest says what does not fit the model."""
    header, binary = split_body(body, header_length)
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise BadRequest(f"'inputs' must be a list of one tensor, '{spec.name}' {spec.datatype} {spec.shape}")
    if inputs[0].get("name") != spec.name:
        raise BadRequest(f"unknown input {inputs[0].get('name')!r}; the model's input is '{spec.name}'")
    request_id = header.get("id")
    return Request(_input_array(inputs[0], spec, binary, max_batch),
                   str(request_id) if request_id is not None else None, _outputs(header, outputs))


def _classes(values: np.ndarray, k: int, labels: list[str]) -> np.ndarray:
    """Triton's classification extension: per row the top k as "value:index:label"."""
    top = np.argsort(-values, axis=1, kind="stable")[:, :k]
    return np.array([[f"{row[j]:f}:{j}:{labels[j]}" for j in idx] for row, idx in zip(values, top, strict=True)],
                    dtype=object)


def _bytes_tensor(array: np.ndarray) -> bytes:
    # BYTES tensors in binary form: each element a 4-byte little-endian length, then its bytes.
    return b"".join(struct.pack("<I", len(b)) + b for b in (str(s).encode() for s in array.reshape(-1)))


def encode_response(model: str, version: str, request: Request, results: dict[str, np.ndarray],
                    labels: list[str]) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary data follows it (else None)."""
    outputs, chunks = [], []
    for name, (binary, k) in request.outputs.items():
        value = results[name]
        if k:
            value = _classes(value, min(k, value.shape[1]), labels)
        datatype = "BYTES" if k else "FP32"
        out: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(value.shape)}
        if binary:
            raw = _bytes_tensor(value) if k else np.ascontiguousarray(value, dtype="<f4").tobytes()
            out["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            out["data"] = [str(s) for s in value.reshape(-1)] if k else value.reshape(-1).tolist()
        outputs.append(out)
    doc: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": outputs}
    if request.id is not None:
        doc["id"] = request.id
    header = json.dumps(doc).encode()
    return (header + b"".join(chunks), len(header)) if chunks else (header, None)
