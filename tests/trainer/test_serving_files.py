"""What a job writes for serving: a Triton repository whose config matches the ONNX graph, and an
InferenceService that KServe's own CRD accepts with nothing pruned, pointing at a repository that exists."""

from __future__ import annotations

import copy

import jsonschema
import onnx
import pytest
import torch
import yaml
from google.protobuf import text_format
from support import crdcheck
from support.kserve_crds import crd as kserve_crd
from support.kube import schema as kube_schema

from graft import storage
from graft.api.validation import load_job
from graft_trainer import export, models, serving, triton

LABELS = ["zero", "one", "two"]
# Triton's DataType enum name for an ONNX element type (triton-inference-server/common model_config.proto).
ONNX_TO_TRITON = {onnx.TensorProto.UINT8: "TYPE_UINT8", onnx.TensorProto.FLOAT: "TYPE_FP32"}


def _export(root: str, job_name: str = "digits-lpft") -> str:
    torch.manual_seed(0)
    net = models.build("smallcnn", len(LABELS), 8)
    meta = {"architecture": "smallcnn", "num_classes": len(LABELS), "labels": LABELS, "temperature": 1.3,
            "preprocessing": {"image_size": 8, "mean": [0.5] * 3, "std": [0.5] * 3},
            "job": {"name": job_name, "uid": "0123-uid"}}
    return export.export_model(root, net.state_dict(), meta)


def _job(storage_block: str) -> object:
    return load_job(f"""
apiVersion: graft.dev/v1alpha1
kind: TransferJob
metadata: {{name: digits-lpft, namespace: ml-team}}
spec:
  model: {{backbone: smallcnn, numClasses: 3}}
  data: {{train: "builtin:digits", imageSize: 8}}
  stages: [{{type: Pretrain, data: "builtin:digits", numClasses: 3}}]
  storage: {storage_block}
""")


def _tensors(values) -> list[tuple[str, str, list[int]]]:
    """(name, Triton type, dims without the batch dimension) of ONNX graph inputs or outputs."""
    out = []
    for v in values:
        t = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
        assert dims[0] == -1, f"{v.name}: the batch dimension must be dynamic, got {dims}"
        out.append((v.name, ONNX_TO_TRITON[t.elem_type], dims[1:]))
    return out


def test_triton_config_parses_and_matches_the_onnx_graph(tmp_path):
    from tritonclient.grpc import model_config_pb2

    uri = _export(str(tmp_path / "job"))
    name = serving.export_serving(uri)["name"]
    folder = tmp_path / "job" / "model" / "triton" / name
    config = text_format.Parse((folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    graph = onnx.load(str(folder / "1" / "model.onnx")).graph
    DataType = model_config_pb2.DataType
    got = {
        "name": config.name, "backend": config.backend, "batching": config.max_batch_size > 0,
        "inputs": [(i.name, DataType.Name(i.data_type), list(i.dims)) for i in config.input],
        "outputs": [(o.name, DataType.Name(o.data_type), list(o.dims)) for o in config.output],
        "label files": {o.label_filename for o in config.output},
    }
    assert got == {
        "name": name, "backend": "onnxruntime", "batching": True,
        "inputs": _tensors(graph.input), "outputs": _tensors(graph.output),
        "label files": {"labels.txt"},
    }
    assert (folder / "labels.txt").read_text().splitlines() == LABELS
    assert sorted(p.name for p in (tmp_path / "job" / "model" / "triton").iterdir()) == [name]


def _isvc_accepted(isvc: dict) -> None:
    """KServe's CRD schema accepts the object with nothing pruned (support/kube/schema.py: the emulated API
    server's pruning and validation, from apiextensions-apiserver's pruning/algorithm.go)."""
    crd = kserve_crd()
    [version] = [v for v in crd["spec"]["versions"] if v["name"] == isvc["apiVersion"].split("/")[1]]
    schema = version["schema"]["openAPIV3Schema"]
    pruned = crdcheck.prune(copy.deepcopy(isvc), schema, root=True)
    assert pruned == isvc, "the API server would drop fields of the InferenceService"
    body = {k: v for k, v in isvc.items() if k != "metadata"}
    strict = jsonschema.Draft4Validator(kube_schema.jsonschema_for(schema, strict_fields=True))
    assert [e.message for e in strict.iter_errors(body)] == []
    [rt] = kube_schema.types_from_crd(crd)
    kube_schema.attach_validator(rt)
    kube_schema.check(rt, copy.deepcopy(isvc))  # raises ApiError (422) as the emulated API server would


def _manifest(uri: str) -> dict[str, dict]:
    docs = list(yaml.safe_load_all(storage.read_bytes(storage.join(uri, "inferenceservice.yaml"))))
    return {d["kind"]: d for d in docs}


def test_local_job_inference_service_passes_kserve_crd_and_points_at_its_repository(tmp_path):
    uri = _export(str(tmp_path / "job"))
    served = serving.export_serving(uri, _job(f"{{uri: {tmp_path}}}"))
    docs = _manifest(uri)
    assert list(docs) == ["InferenceService"]  # no credentials Secret: no ServiceAccount
    isvc = docs["InferenceService"]
    _isvc_accepted(isvc)
    model = isvc["spec"]["predictor"]["model"]
    assert (model["modelFormat"], model["runtime"], model["protocolVersion"]) == (
        {"name": "onnx", "version": "1"}, "kserve-tritonserver", "v2")
    repository = model["storageUri"].removeprefix("file://")
    assert storage.exists(storage.join(repository, served["name"], "config.pbtxt"))
    assert any("local folder" in note for note in served["notes"])
    meta = storage.read_json(storage.join(uri, "model.json"))
    assert (meta["serving"]["inferenceServiceUri"], meta["onnx"]["file"]) == (
        storage.join(uri, "inferenceservice.yaml"), f"triton/{served['name']}/1/model.onnx")


@pytest.mark.parametrize("keys", [{}, {"accessKeyIdKey": "id"}], ids=["kserve-key-names", "other-key-names"])
def test_s3_job_inference_service_uses_the_jobs_secret_and_names_an_existing_uri(s3_endpoint, s3_bucket, keys):
    uri = _export(f"{s3_bucket}/runs/0123-uid")
    secret = {"name": "minio-creds", **keys}
    job = _job(f"{{uri: '{s3_bucket}/runs', endpoint: '{s3_endpoint}', region: eu-west-3, "
               f"credentialsSecret: {secret}}}")
    served = serving.export_serving(uri, job)
    docs = _manifest(uri)
    isvc, account = docs["InferenceService"], docs["ServiceAccount"]
    _isvc_accepted(isvc)
    model = isvc["spec"]["predictor"]["model"]
    assert model["storageUri"] == f"{uri}/triton"
    assert storage.exists(f"{model['storageUri']}/{served['name']}/1/model.onnx")
    host = s3_endpoint.removeprefix("http://")
    assert (isvc["metadata"]["namespace"], isvc["spec"]["predictor"]["serviceAccountName"], account) == (
        "ml-team", "digits-lpft-kserve-storage",
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": "digits-lpft-kserve-storage", "labels": {"app.kubernetes.io/managed-by": "graft"},
                      "namespace": "ml-team",
                      "annotations": {"serving.kserve.io/s3-endpoint": host, "serving.kserve.io/s3-usehttps": "0",
                                      "serving.kserve.io/s3-region": "eu-west-3"}},
         "secrets": [{"name": "minio-creds"}]})
    assert [n for n in served["notes"] if "KServe reads" in n] == (
        ["Secret minio-creds keeps its keys as id/AWS_SECRET_ACCESS_KEY; KServe reads AWS_ACCESS_KEY_ID/"
         "AWS_SECRET_ACCESS_KEY unless its inferenceservice-config says otherwise"] if keys else [])


@pytest.mark.parametrize(("job_name", "served"), [("digits-lpft", "digits-lpft"), ("My.Job_2", "my-job-2"),
                                                  ("9lives", "m-9lives"), ("x" * 63, "x" * 45)],
                         ids=["plain", "dots-and-case", "leading-digit", "too-long"])
def test_served_name_is_a_dns1035_label(job_name, served):
    assert triton.model_name(job_name) == served


def test_graft_export_makes_the_serving_files_of_an_older_model_folder(tmp_path):
    from typer.testing import CliRunner

    from graft.cli import app

    uri = _export(str(tmp_path / "old"))
    with pytest.raises(serving.NoOnnx):
        serving.onnx_path(uri)
    result = CliRunner().invoke(app, ["export", uri])
    assert result.exit_code == 0, result.output
    path, meta = serving.onnx_path(uri)
    assert (path, f"InferenceService: {uri}/inferenceservice.yaml" in result.output) == (
        f"{uri}/{meta['onnx']['file']}", True)


def test_a_failed_onnx_export_leaves_the_job_its_model_and_says_how_to_retry(tmp_path, caplog):
    uri = _export(str(tmp_path / "job"))
    (tmp_path / "job" / "model" / "model.pt").write_bytes(b"not a state dict")
    assert serving.export_after_job(uri, None) is None
    assert f"Retry with: graft export {uri}" in caplog.text
    assert "onnx" not in storage.read_json(storage.join(uri, "model.json"))


@pytest.mark.parametrize("export_serving", [True, False], ids=["default", "export-false"])
def test_a_job_writes_its_serving_files_unless_spec_serving_export_is_false(tmp_path, one_thread, export_serving):
    """By default a finished job's model folder has the ONNX graph, the Triton repository and the InferenceService
    manifest, and the ledger (hence `status.model`) names them; with `spec.serving.export: false` it ends at the
    PyTorch model, which `graft predict` reads and `graft export` can give the serving files later."""
    from support.trainer_data import SMOKE_CHECKS, job_doc

    from graft.api.models import TransferJob
    from graft_trainer.driver import Driver
    from graft_trainer.executors import LocalExecutor

    spec = {"model": {"backbone": "smallcnn", "numClasses": 10},
            "data": {"train": "builtin:digits", "imageSize": 8, "shotsPerClass": 2},
            "stages": [{"type": "Pretrain", "data": "builtin:digits", "numClasses": 10, "epochs": 1}],
            "checks": SMOKE_CHECKS}
    if not export_serving:
        spec["serving"] = {"export": False}
    job = TransferJob.model_validate(job_doc("served", spec))
    ledger = Driver(job, str(tmp_path), executor=LocalExecutor()).run()
    uri = ledger.model_uri
    assert storage.exists(storage.join(uri, "model.pt"))
    files = [storage.join(uri, "inferenceservice.yaml"), storage.join(uri, "triton", "served", "config.pbtxt")]
    assert [storage.exists(f) for f in files] == [export_serving] * 2
    model = ledger.to_status()["model"]  # what the operator writes to status.model
    assert model["uri"] == uri and ("onnx" in model, "inferenceService" in model) == (export_serving,) * 2, model
    if not export_serving:
        with pytest.raises(serving.NoOnnx):
            serving.onnx_path(uri)
