"""Pure builder of the child a TransferJob owns: the RayJob that runs it, with the job itself in its head's env.

No I/O and no kopf here: `graft render` prints exactly what the operator creates, and the unit tests compare
these dicts against expected ones.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from graft import storage_backends
from graft.api.models import API_VERSION, KIND, PodSpec, TransferJobSpec

RAYJOB_API_VERSION = "ray.io/v1"
RAY_VERSION = "2.60.0"

#: Label on every child, naming the TransferJob it belongs to (the RayJob watch maps events back with it).
LABEL_TRANSFERJOB = "graft.dev/transferjob"
LABEL_QUEUE = "kueue.x-k8s.io/queue-name"

#: The head container's variable that carries the job (JSON, every default filled in). The Ray job's driver runs on
#: the head and inherits its environment, as it does the storage keys. A variable rather than a mounted ConfigMap:
#: one object to create instead of two (one API request less per job), and nothing else to own or delete.
JOB_ENV = "GRAFT_JOB"
#: The whole entrypoint: the job arrives in the environment, so no user string is ever interpolated into a shell.
ENTRYPOINT = f"python -m graft_trainer --job-env {JOB_ENV}"

# KubeRay names the RayCluster `<rayjob>-<5 chars>` and its services `<cluster>-head-svc`; a RayJob name of at
# most 47 characters keeps every derived name a valid 63-character DNS label.
MAX_RAYJOB_NAME = 47
_HASH_LEN = 8

RUN_AS_USER = 1000


def rayjob_name(name: str, uid: str) -> str:
    """Deterministic child name: the TransferJob's name (truncated) plus a short hash of its uid.

    The uid part makes a re-created TransferJob of the same name get a new RayJob, never the old one's."""
    digest = hashlib.sha256(uid.encode()).hexdigest()[:_HASH_LEN]
    stem = name[: MAX_RAYJOB_NAME - _HASH_LEN - 1].rstrip("-.")
    return f"{stem}-{digest}"


def labels(name: str, component: str) -> dict[str, str]:
    """Labels linking a child to its TransferJob (app.kubernetes.io recommended labels)."""
    return {
        LABEL_TRANSFERJOB: name,
        "app.kubernetes.io/name": "graft",
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": "graft",
        "app.kubernetes.io/managed-by": "graft-operator",
    }


def job_document(name: str, namespace: str | None, uid: str, spec: TransferJobSpec) -> dict[str, Any]:
    """The TransferJob as the trainer reads it, with every default filled in (pinned at creation)."""
    metadata: dict[str, Any] = {"name": name, "uid": uid}
    if namespace:
        metadata["namespace"] = namespace
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": metadata,
        "spec": spec.model_dump(mode="json", by_alias=True, exclude_none=True),
    }


def job_json(name: str, namespace: str | None, uid: str, spec: TransferJobSpec) -> str:
    """The job document as the head's GRAFT_JOB carries it."""
    return json.dumps(job_document(name, namespace, uid, spec), sort_keys=True, separators=(",", ":"))


def _env(spec: TransferJobSpec) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        # Ray, torch and pip write caches under $HOME; the root filesystem is read-only.
        {"name": "HOME", "value": "/tmp"},  # noqa: S108 (an emptyDir of the pod)
        {"name": "RAY_USAGE_STATS_ENABLED", "value": "0"},
    ]
    mlflow = spec.tracking.mlflow if spec.tracking else None
    if mlflow is not None and mlflow.credentials_secret is not None:
        # MLflow's own variables; each key optional (basic auth, a token, or both). The operator never reads them.
        ref = mlflow.credentials_secret
        for var, key in (("MLFLOW_TRACKING_USERNAME", ref.username_key), ("MLFLOW_TRACKING_PASSWORD", ref.password_key),
                         ("MLFLOW_TRACKING_TOKEN", ref.token_key)):
            env.append({"name": var, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": key, "optional": True}}})
    storage = spec.storage
    if storage is None:
        return env
    backend = storage_backends.for_endpoint(storage.uri)  # the scheme's own variables (AWS_*, STORAGE_EMULATOR_HOST)
    secret = storage.credentials_secret
    if secret is not None:
        for var, key in backend.secret_keys(secret.model_dump(by_alias=True)).items():
            env.append({"name": var, "valueFrom": {"secretKeyRef": {"name": secret.name, "key": key}}})
        if spec.model.weights == "hub" or spec.model.backbone.startswith("timm:hf-hub:"):
            # A private Hugging Face repository's token, read by huggingface_hub itself; optional (public models).
            env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": secret.name, "key": "HF_TOKEN",
                                                                            "optional": True}}})
    env += [{"name": var, "value": value} for var, value in backend.pod_env(storage.endpoint, storage.region).items()]
    return env


def _container_security() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _resources(cpu: str, memory: str, gpus: int) -> dict[str, Any]:
    amounts: dict[str, Any] = {"cpu": cpu, "memory": memory}
    if gpus:
        amounts["nvidia.com/gpu"] = gpus
    # requests == limits: Guaranteed QoS, and Ray sizes itself from the limits.
    return {"requests": dict(amounts), "limits": dict(amounts)}


def _pod_template(
    spec: TransferJobSpec, *, container: str, resources: dict[str, Any], pod_labels: dict[str, str],
    job: str | None = None,
) -> dict[str, Any]:
    """A head (`job`: the GRAFT_JOB document) or worker pod template."""
    head = job is not None
    mounts = [{"name": "tmp", "mountPath": "/tmp"}, {"name": "dshm", "mountPath": "/dev/shm"}]  # noqa: S108
    volumes: list[dict[str, Any]] = [
        {"name": "tmp", "emptyDir": {}},
        # Ray's object store lives in /dev/shm; the container default (64Mi) is far too small.
        {"name": "dshm", "emptyDir": {"medium": "Memory"}},
    ]
    env = _env(spec) + ([{"name": JOB_ENV, "value": job}] if head else [])
    pod: dict[str, Any] = {
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [
            {
                "name": container,
                "image": spec.image,
                "imagePullPolicy": "IfNotPresent",
                "resources": resources,
                "env": env,
                "volumeMounts": mounts,
                "securityContext": _container_security(),
            }
        ],
        "volumes": volumes,
    }
    sched = spec.scheduling
    # The workers' selectors and tolerations usually point at GPU nodes; the head (driver only) has its own.
    placement = sched.head if head else sched
    if placement.node_selector:
        pod["nodeSelector"] = dict(placement.node_selector)
    if placement.tolerations:
        pod["tolerations"] = _dump(placement.tolerations)
    if sched.priority_class_name:
        pod["priorityClassName"] = sched.priority_class_name
    return {"metadata": _pod_metadata(spec, pod_labels), "spec": _customised(spec, pod)}


def _dump(items: list[Any]) -> list[dict[str, Any]]:
    """Spec objects (tolerations, env, mounts, ...) as the Kubernetes API spells them."""
    return [i.model_dump(mode="json", by_alias=True, exclude_none=True) for i in items]


def _pod_metadata(spec: TransferJobSpec, pod_labels: dict[str, str]) -> dict[str, Any]:
    # spec.pod cannot name Graft's label keys (the model refuses them), so this merge only adds.
    metadata: dict[str, Any] = {"labels": {**spec.pod.labels, **pod_labels}}
    if spec.pod.annotations:
        metadata["annotations"] = dict(spec.pod.annotations)
    return metadata


def _customised(spec: TransferJobSpec, pod: dict[str, Any]) -> dict[str, Any]:
    """`spec.pod` merged into a pod Graft built: the user's items after Graft's, Graft's settings kept (the model
    refuses the names, mounts and keys Graft owns, so nothing here overrides one)."""
    custom = spec.pod
    container = pod["containers"][0]
    container["env"] += _dump(custom.env)
    if custom.env_from:
        container["envFrom"] = _dump(custom.env_from)
    container["volumeMounts"] += _dump(custom.volume_mounts)
    pod["volumes"] += [dict(v) for v in custom.volumes]
    if custom.service_account_name:
        pod["serviceAccountName"] = custom.service_account_name
    if custom.image_pull_secrets:
        pod["imagePullSecrets"] = _dump(custom.image_pull_secrets)
    if custom.affinity:
        pod["affinity"] = dict(custom.affinity)
    additions = custom.security_context.model_dump(mode="json", by_alias=True, exclude_none=True,
                                                   exclude_defaults=True)
    pod["securityContext"].update(additions)
    _security_exceptions(custom, pod, container)
    return pod


def _security_exceptions(custom: PodSpec, pod: dict[str, Any], container: dict[str, Any]) -> None:
    """The pod security exceptions `spec.pod` asks for (validation has refused those the operator does not allow)."""
    for field, on in (("hostNetwork", custom.host_network), ("hostPID", custom.host_pid),
                      ("hostIPC", custom.host_ipc)):
        if on is not None:
            pod[field] = on
    sc, csc = container["securityContext"], custom.container_security_context
    # The container's own user settings win over the pod's, so the pod-level ones are repeated there.
    for field, value in (("runAsUser", custom.security_context.run_as_user),
                         ("runAsNonRoot", custom.security_context.run_as_non_root)):
        if value is not None:
            sc[field] = value
    if csc.capabilities.add:
        sc["capabilities"] = {"drop": ["ALL"], "add": list(csc.capabilities.add)}
    if csc.privileged is not None:
        sc["privileged"] = csc.privileged
    # The API server refuses allowPrivilegeEscalation: false beside privileged: true or an added CAP_SYS_ADMIN
    # (kubernetes pkg/apis/core/validation/validation.go, ValidateSecurityContext): both imply escalation.
    escalates = csc.privileged or bool({"SYS_ADMIN", "CAP_SYS_ADMIN"} & set(csc.capabilities.add))
    if csc.allow_privilege_escalation is not None or escalates:
        sc["allowPrivilegeEscalation"] = bool(csc.allow_privilege_escalation or escalates)


def build_rayjob(name: str, namespace: str | None, uid: str, spec: TransferJobSpec) -> dict[str, Any]:
    """The RayJob (ray.io/v1) that runs the job's stages: one head and `workers.replicas` worker pods."""
    child = rayjob_name(name, uid)
    meta_labels = labels(name, "rayjob")
    if spec.scheduling.queue_name:
        meta_labels[LABEL_QUEUE] = spec.scheduling.queue_name
    pod_labels = {**labels(name, "ray"), "graft.dev/rayjob": child}
    workers = spec.workers
    policy = spec.run_policy
    rayjob_spec: dict[str, Any] = {
        "entrypoint": ENTRYPOINT,
        "submissionMode": "K8sJobMode",
        "shutdownAfterJobFinishes": True,
        # KubeRay deletes the Ray cluster this long after the job ends (0: at once); the operator then deletes
        # the RayJob (children.expire).
        "ttlSecondsAfterFinished": policy.ttl_seconds_after_finished or 0,
        "suspend": policy.suspend,
        "backoffLimit": policy.backoff_limit,
        "rayClusterSpec": {
            "rayVersion": RAY_VERSION,
            "headGroupSpec": {
                # The head runs the driver only; training and data tasks go to the workers.
                "rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": "0"},  # noqa: S104
                "template": _pod_template(
                    spec,
                    container="ray-head",
                    resources=_resources(spec.scheduling.head.cpus, spec.scheduling.head.memory, 0),
                    pod_labels=pod_labels,
                    job=job_json(name, namespace, uid, spec),
                ),
            },
            "workerGroupSpecs": [
                {
                    "groupName": "workers",
                    "replicas": workers.replicas,
                    "minReplicas": workers.replicas,
                    "maxReplicas": workers.replicas,
                    "rayStartParams": {},
                    "template": _pod_template(
                        spec,
                        container="ray-worker",
                        resources=_resources(workers.cpus, workers.memory, workers.gpus),
                        pod_labels=pod_labels,
                    ),
                }
            ],
        },
    }
    if policy.active_deadline_seconds is not None:
        rayjob_spec["activeDeadlineSeconds"] = policy.active_deadline_seconds
    metadata: dict[str, Any] = {"name": child, "labels": meta_labels}
    if namespace:
        metadata["namespace"] = namespace
    return {"apiVersion": RAYJOB_API_VERSION, "kind": "RayJob", "metadata": metadata, "spec": rayjob_spec}


def with_default_image(spec: TransferJobSpec, image: str | None) -> TransferJobSpec:
    """The spec with the operator's default trainer image (`graft operator --trainer-image`, the chart's
    `trainerImage`: a registry mirror, a pinned digest) when the job names no `spec.image` of its own."""
    if image is None or "image" in spec.model_fields_set:
        return spec
    return spec.model_copy(update={"image": image})


def build_owned_rayjob(body: dict[str, Any], spec: TransferJobSpec) -> dict[str, Any]:
    """The RayJob for a TransferJob body, owned by it (what the operator creates).

    Deleting the TransferJob deletes it (and KubeRay then the Ray cluster): its ownerReference has controller=true,
    and blockOwnerDeletion so that a foreground deletion of the job waits for it. The owner's labels are not
    copied: a GitOps tool's tracking label (app.kubernetes.io/instance) would claim the child and prune it."""
    meta = body["metadata"]
    name, namespace, uid = meta["name"], meta.get("namespace"), meta["uid"]
    owner = {"apiVersion": body.get("apiVersion", API_VERSION), "kind": body.get("kind", KIND), "name": name,
             "uid": uid, "controller": True, "blockOwnerDeletion": True}
    rayjob = build_rayjob(name, namespace, uid, spec)
    rayjob["metadata"]["ownerReferences"] = [owner]
    return rayjob


def runpolicy_patch(spec: TransferJobSpec) -> dict[str, Any]:
    """The RayJob spec fields that follow a TransferJob's (mutable) run policy."""
    policy = spec.run_policy
    return {
        "spec": {
            "suspend": policy.suspend,
            "backoffLimit": policy.backoff_limit,
            "activeDeadlineSeconds": policy.active_deadline_seconds,
        }
    }
