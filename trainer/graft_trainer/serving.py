"""From an exported model folder to what serves it, all written inside the folder (so `model/` stays whole when
copied, and the repository prefix holds nothing but the repository, as KServe's storage initializer downloads
every object under `storageUri`):

    model/triton/<name>/config.pbtxt, 1/model.onnx, labels.txt   the Triton repository (`storageUri`: model/triton)
    model/inferenceservice.yaml                                   ServiceAccount (S3 jobs) + InferenceService
    model/model.json                                              gains `onnx` and `serving` blocks

`export_serving` is the one call a job makes after `export.export_model` (and `graft export` for a folder made
before it existed).
"""

from __future__ import annotations

import logging
from typing import Any

import yaml

from graft import storage
from graft_trainer import export, inferenceservice, onnx_export, triton

log = logging.getLogger(__name__)

REPOSITORY = "triton"
MANIFEST = "inferenceservice.yaml"


class NoOnnx(Exception):
    """A model folder without the ONNX model (made before `graft export` existed, or its export failed)."""

    def __init__(self, uri: str):
        self.uri = uri
        super().__init__(f"{uri}: no ONNX model in this model folder (a job from before serving support); "
                         f"make one with: graft export {uri}")


def onnx_file_of(name: str) -> str:
    """The ONNX model's path in a model folder: inside the Triton repository, where the server reads it."""
    return f"{REPOSITORY}/{name}/{triton.VERSION}/{triton.MODEL_FILE}"


def served_name(meta: dict[str, Any]) -> str:
    """The served model's name: the job's name made a DNS-1035 label (triton.model_name)."""
    return triton.model_name(str((meta.get("job") or {}).get("name") or "model"))


def export_serving(model_uri: str, job: Any | None = None) -> dict[str, Any]:
    """Write the ONNX model, the Triton repository and the InferenceService manifest for the model folder
    `model_uri`, then add model.json's `onnx` and `serving` blocks (last: their presence means the files are
    complete). `job`: the TransferJob (namespace and storage credentials for the manifest). Returns `serving`."""
    net, meta = export.load_model(model_uri)
    name = served_name(meta)
    repository = storage.join(model_uri, REPOSITORY)
    folder = storage.join(repository, name)
    onnx_file = onnx_file_of(name)
    storage.write_bytes(storage.join(model_uri, onnx_file), onnx_export.onnx_bytes(net, meta))
    storage.write_bytes(storage.join(folder, triton.LABELS_FILE), triton.labels_text(meta["labels"]).encode())
    config = triton.config_text(name, int(meta["preprocessing"]["image_size"]), int(meta["num_classes"]))
    storage.write_bytes(storage.join(folder, "config.pbtxt"), config.encode())
    docs, notes = inferenceservice.documents(name, repository, job, meta.get("job"))
    manifest = storage.join(model_uri, MANIFEST)
    storage.write_bytes(manifest, yaml.safe_dump_all(docs, sort_keys=False).encode())
    serving = {"name": name, "repository": REPOSITORY, "storageUri": inferenceservice.storage_uri(repository),
               "inferenceService": MANIFEST, "inferenceServiceUri": manifest, "notes": notes}
    meta = {k: v for k, v in meta.items() if k not in ("onnx", "serving")}
    storage.write_json(storage.join(model_uri, "model.json"),
                       {**meta, "onnx": onnx_export.describe(meta, onnx_file), "serving": serving})
    return serving


def export_after_job(model_uri: str, job: Any) -> dict[str, Any] | None:
    """The driver's hook after the model is exported: `export_serving`, or None with a warning when it fails (the
    trained model is the job's result; `graft export` can make the serving files later)."""
    try:
        return export_serving(model_uri, job)
    except storage.StorageError:
        raise  # the storage is gone: the next write fails the same way, say it where the job fails
    except Exception as exc:  # an operator the exporter does not know, a backbone torch.export cannot trace
        log.warning("%s: no ONNX model written (%s: %s); the PyTorch model is complete. Retry with: graft export %s",
                    model_uri, type(exc).__name__, str(exc)[:300], model_uri)
        return None


def status_of(model_uri: str, served: dict[str, Any] | None) -> dict[str, str] | None:
    """What `status.model` says of the serving files `export_serving` wrote (`graft.api.models.ModelStatus`'s
    fields, camelCase); None when none were written."""
    if not served:
        return None
    return {"onnx": storage.join(model_uri, onnx_file_of(served["name"])), "tritonRepository": served["storageUri"],
            "inferenceService": served["inferenceServiceUri"], "servedName": served["name"]}


def onnx_path(model_uri: str) -> tuple[str, dict[str, Any]]:
    """The ONNX file's URI in a model folder and its model.json; NoOnnx when it has none."""
    try:
        meta = storage.read_json(storage.join(model_uri, "model.json"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{model_uri}: no model.json here (not an exported Graft model)") from None
    block = meta.get("onnx")
    if not block or not storage.exists(storage.join(model_uri, block["file"])):
        raise NoOnnx(model_uri)
    return storage.join(model_uri, block["file"]), meta
