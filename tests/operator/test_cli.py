"""`graft render` and `graft rbac`: what the operator would create and what it may call, without a cluster."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from support.rbac_rules import allows
from typer.testing import CliRunner

from graft.cli import app
from graft_operator import builder, rbac

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()

JOB = """
apiVersion: graft.dev/v1alpha1
kind: TransferJob
metadata: {name: demo, namespace: ml, uid: 1234-abcd}
spec:
  model: {backbone: smallcnn, numClasses: 10, weights: "s3://models/w.pt"}
  data: {train: "builtin:digits"}
  stages: [{type: FrozenFeatures}, {type: Head}]
  storage: {uri: "s3://bucket/jobs", credentialsSecret: {name: s3}}
  scheduling: {queueName: team-a}
"""


def test_render_prints_the_rayjob_carrying_the_job(tmp_path):
    f = tmp_path / "job.yaml"
    f.write_text(JOB)
    result = runner.invoke(app, ["render", str(f)])
    assert result.exit_code == 0, result.output
    (rayjob,) = yaml.safe_load_all(result.stdout)
    name = builder.rayjob_name("demo", "1234-abcd")
    assert (rayjob["kind"], rayjob["metadata"]["name"]) == ("RayJob", name)
    assert rayjob["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert rayjob["metadata"]["ownerReferences"][0]["uid"] == "1234-abcd"
    head = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    job = json.loads(next(v["value"] for v in head["env"] if v["name"] == "GRAFT_JOB"))
    assert job["metadata"]["uid"] == "1234-abcd"


def test_render_without_uid_uses_a_placeholder_and_says_so(tmp_path):
    f = tmp_path / "job.yaml"
    f.write_text(JOB.replace(", uid: 1234-abcd", ""))
    result = runner.invoke(app, ["render", str(f)])
    assert result.exit_code == 0
    assert "no metadata.uid" in result.stderr
    (rayjob,) = yaml.safe_load_all(result.stdout)
    assert rayjob["metadata"]["name"] == builder.rayjob_name("demo", "00000000-0000-0000-0000-000000000000")


def test_render_refuses_what_the_operator_refuses(tmp_path):
    f = tmp_path / "job.yaml"
    f.write_text(JOB.replace('  storage: {uri: "s3://bucket/jobs", credentialsSecret: {name: s3}}\n', ""))
    result = runner.invoke(app, ["render", str(f)])
    assert result.exit_code == 1
    assert "spec.storage: required on a cluster" in result.stderr
    assert result.stdout == ""


def test_render_warns_that_local_storage_is_not_shared_between_pods(tmp_path):
    f = tmp_path / "job.yaml"
    f.write_text(JOB.replace('uri: "s3://bucket/jobs"', 'uri: "/data/jobs"'))
    result = runner.invoke(app, ["render", str(f)])
    assert result.exit_code == 0, result.output
    assert "warning: spec.storage.uri: a local path" in result.stderr and "use s3://" in result.stderr
    assert len(list(yaml.safe_load_all(result.stdout))) == 1
    f.write_text(JOB)
    assert "warning" not in runner.invoke(app, ["render", str(f)]).stderr


def test_render_and_validate_report_the_same_problem(tmp_path):
    f = tmp_path / "job.yaml"
    f.write_text(JOB.replace("{type: FrozenFeatures}, {type: Head}", "{type: Head}"))
    rendered = runner.invoke(app, ["render", str(f)])
    validated = runner.invoke(app, ["validate", str(f)])
    assert rendered.exit_code == validated.exit_code == 1
    problem = validated.stdout.strip().splitlines()[0]
    assert problem.startswith(f"{f}: spec.stages")
    assert problem in rendered.stderr


def test_render_of_the_shipped_example(tmp_path):
    example = ROOT / "examples" / "resnet50-imagefolder-s3.yaml"
    result = runner.invoke(app, ["render", str(example)])
    assert result.exit_code == 0, result.output
    (rayjob,) = yaml.safe_load_all(result.stdout)
    env = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]
    creds = [e for e in env if e["name"].startswith("AWS_") and "KEY" in e["name"]]
    assert creds and all("secretKeyRef" in e["valueFrom"] and "value" not in e for e in creds)


def test_rbac_prints_the_rules():
    cluster = yaml.safe_load(runner.invoke(app, ["rbac"]).stdout)
    namespaced = yaml.safe_load(runner.invoke(app, ["rbac", "--namespaced"]).stdout)
    assert cluster == rbac.rules(namespaced=False)
    assert namespaced == rbac.rules(namespaced=True)
    assert {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]} in namespaced
    assert not any("customresourcedefinitions" in r["resources"] for r in namespaced)
    assert all("why" not in r for r in cluster)


def test_rbac_allows_what_the_operator_calls_and_nothing_more():
    assert allows("create", "ray.io", "rayjobs")
    assert allows("patch", "graft.dev", "transferjobs/status")
    assert allows("get", "", "secrets")
    assert not allows("list", "", "secrets")
    assert not allows("delete", "graft.dev", "transferjobs")
    assert not allows("create", "", "configmaps")  # the job travels in the RayJob's head env


def test_operator_without_a_cluster_says_so_in_one_line(tmp_path):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST")}
    env["HOME"] = str(tmp_path)  # no ~/.kube/config, and no service account outside a pod
    proc = subprocess.run([sys.executable, "-m", "graft.cli", "operator"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 1
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: no Kubernetes cluster to connect to") and "KUBECONFIG" in line
