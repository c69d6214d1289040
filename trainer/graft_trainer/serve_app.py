"""`graft serve`: the job's ONNX model on onnxruntime behind the Open Inference Protocol (KServe v2 REST), so a
client written against it works unchanged against KServe's Triton runtime on the cluster (same model name,
tensor names, datatypes, batch limit and binary-data and classification extensions).

A small FastAPI app, not the `kserve` SDK's ModelServer: installing `kserve` would move several of the project's
pinned packages to other versions (its own pins of fastapi, uvicorn, protobuf and friends), while FastAPI and
uvicorn are already in the environment; the protocol surface one classifier needs is a few routes
(graft_trainer/v2_protocol.py holds the bodies).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from graft import storage
from graft_trainer import onnx_export, serving, triton, v2_protocol
from graft_trainer.v2_protocol import BadRequest, TensorSpec

SERVER_NAME = "graft"
EXTENSIONS = ["binary_tensor_data", "classification"]
_DTYPES = {"tensor(uint8)": "UINT8", "tensor(float)": "FP32"}


@dataclass
class ServedModel:
    """An ONNX model loaded in onnxruntime, with what the protocol says about it."""

    name: str
    session: Any  # onnxruntime.InferenceSession
    input: TensorSpec
    outputs: list[TensorSpec]
    labels: list[str]
    max_batch: int
    uri: str

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "versions": [triton.VERSION], "platform": "onnxruntime_onnx",
                "inputs": [self.input.metadata()], "outputs": [o.metadata() for o in self.outputs]}

    def run(self, images: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
        return dict(zip(names, self.session.run(names, {self.input.name: images}), strict=True))


def _spec(arg) -> TensorSpec:
    return TensorSpec(arg.name, _DTYPES.get(arg.type, arg.type),
                      [d if isinstance(d, int) else -1 for d in arg.shape])


def load_served(model_uri: str, threads: int | None = None) -> ServedModel:
    """The model folder's ONNX model in an onnxruntime session (serving.NoOnnx when the folder has none)."""
    import onnxruntime as ort

    path, meta = serving.onnx_path(model_uri)
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(storage.read_bytes(path), options, providers=["CPUExecutionProvider"])
    [given] = session.get_inputs()
    name = (meta.get("serving") or {}).get("name") or serving.served_name(meta)
    return ServedModel(name, session, _spec(given), [_spec(o) for o in session.get_outputs()], list(meta["labels"]),
                       int(meta["onnx"].get("max_batch", onnx_export.MAX_BATCH)), model_uri)


def make_app(model: ServedModel) -> FastAPI:
    """The v2 REST app serving `model`."""
    from fastapi.concurrency import run_in_threadpool

    app = FastAPI(title=f"graft serve: {model.name}", docs_url=None, redoc_url=None, openapi_url=None)

    def error(message: str, status: int = 400) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    def unknown(name: str, version: str | None) -> JSONResponse | None:
        if name != model.name:
            return error(f"unknown model {name!r}; this server serves {model.name!r}")
        if version not in (None, triton.VERSION):
            return error(f"model {name!r} has no version {version!r}; versions: [{triton.VERSION!r}]")
        return None

    @app.get("/v2/health/live")
    @app.get("/v2/health/ready")
    async def health() -> Response:
        return Response(status_code=200)

    @app.get("/v2")
    async def server_metadata() -> dict[str, Any]:
        from importlib.metadata import PackageNotFoundError, version

        try:
            ours = version("graft")
        except PackageNotFoundError:
            ours = "unknown"
        return {"name": SERVER_NAME, "version": ours, "extensions": EXTENSIONS}

    @app.get("/v2/models/{name}/ready")
    @app.get("/v2/models/{name}/versions/{version}/ready")
    async def model_ready(name: str, version: str | None = None) -> Response:
        return unknown(name, version) or Response(status_code=200)

    @app.get("/v2/models/{name}")
    @app.get("/v2/models/{name}/versions/{version}")
    async def model_metadata(name: str, version: str | None = None):
        return unknown(name, version) or model.metadata()

    @app.post("/v2/models/{name}/infer")
    @app.post("/v2/models/{name}/versions/{version}/infer")
    async def infer(name: str, request: Request, version: str | None = None) -> Response:
        if (refused := unknown(name, version)) is not None:
            return refused
        body = await request.body()
        try:
            parsed = v2_protocol.parse_request(body, request.headers.get(v2_protocol.HEADER_LENGTH), model.input,
                                               model.outputs, model.max_batch)
        except BadRequest as exc:
            return error(str(exc))
        results = await run_in_threadpool(model.run, parsed.array, list(parsed.outputs))
        content, header = v2_protocol.encode_response(model.name, triton.VERSION, parsed, results, model.labels)
        if header is None:
            return Response(content, media_type="application/json")
        return Response(content, media_type="application/octet-stream",
                        headers={v2_protocol.HEADER_LENGTH: str(header)})

    return app
