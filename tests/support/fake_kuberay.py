"""A small fake KubeRay controller for the e2e tests: it watches RayJobs through the API server, runs each
RayJob's entrypoint as a local process, and writes RayJob status the way KubeRay v1.3+ does.

What it models of KubeRay's RayJob: jobDeploymentStatus New -> Initializing -> Running -> Complete | Failed, with
jobStatus PENDING/RUNNING/SUCCEEDED/FAILED, startTime, endTime, jobId, rayClusterName, dashboardURL,
reason and message; failed attempts retried up to spec.backoffLimit through Retrying -> New (status.failed
counts them); spec.suspend kills the run and goes Suspending -> Suspended, and resuming starts it anew;
spec.activeDeadlineSeconds (from startTime) ends in Failed / DeadlineExceeded; a RayCluster object owned by
the RayJob stands for the cluster (deleted on suspend and, with shutdownAfterJobFinishes,
ttlSecondsAfterFinished after the end), with head and worker Pods owned by it (labels `ray.io/cluster`,
`ray.io/node-type`) whose status says what the scheduler and kubelet would: Running, Unschedulable when the
one fake node lacks the GPUs asked for (`node_gpus`, default 0), or CreateContainerConfigError when a Secret /
ConfigMap or key is missing. As in
KubeRay, such a job stays Initializing; only its pods say why.

How a head pod would run the RayJob's entrypoint: every configMap volume mounted into the head container is
materialised into a temp dir and its mountPath is rewritten to that dir in the entrypoint; env values,
`secretKeyRef` / `configMapKeyRef` and `envFrom` are resolved through the API (so a wrong Secret name fails
like a pod that cannot start); `python` is this interpreter. With `training=False` nothing is run: a job is
marked running, then succeeded after `run_seconds` (for the operator benchmark).
"""

from __future__ import annotations

import base64
import copy
import os
import queue
import random
import shlex
import signal
import string
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

GROUP, VERSION, PLURAL = "ray.io", "v1", "rayjobs"


def _now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _parse_time(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def _suffix(n: int = 5) -> str:
    return "".join(random.choice(string.ascii_lowercase + string.digits) for _ in range(n))


def _gpus(template: dict[str, Any]) -> int:
    """GPUs a pod template asks for."""
    total = 0
    for c in (template.get("spec") or {}).get("containers") or []:
        res = c.get("resources") or {}
        total += int((res.get("limits") or {}).get("nvidia.com/gpu") or (res.get("requests") or {}).get(
            "nvidia.com/gpu") or 0)
    return total


def _string_quantities(pod_spec: dict[str, Any]) -> dict[str, Any]:
    """The JSON API takes `nvidia.com/gpu: 1`; the Python client's models want quantities as strings."""
    out = copy.deepcopy(pod_spec)
    for c in out.get("containers") or []:
        for kind in ("requests", "limits"):
            amounts = (c.get("resources") or {}).get(kind) or {}
            for key, value in amounts.items():
                amounts[key] = str(value)
    return out


def _pod_unschedulable(resource: str) -> dict[str, Any]:
    return {"phase": "Pending", "conditions": [{
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable", "lastTransitionTime": _now(),
        "message": f"0/1 nodes are available: 1 Insufficient {resource}. preemption: 0/1 nodes are available: "
                   "1 No preemption victims found for incoming pod."}]}


def _pod_config_error(message: str) -> dict[str, Any]:
    return {"phase": "Pending",
            "conditions": [{"type": "PodScheduled", "status": "True", "lastTransitionTime": _now()}],
            "containerStatuses": [{"name": "ray-head", "ready": False, "restartCount": 0, "image": "", "imageID": "",
                                   "state": {"waiting": {"reason": "CreateContainerConfigError",
                                                         "message": message}}}]}


def _pod_running() -> dict[str, Any]:
    return {"phase": "Running", "startTime": _now(),
            "conditions": [{"type": t, "status": "True", "lastTransitionTime": _now()}
                           for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")]}


class PodStartError(Exception):
    """What a pod that cannot start would report (missing Secret, ConfigMap or key)."""


@dataclass
class _Run:
    """The local state of one RayJob (by uid): its process and where its files are."""

    name: str
    namespace: str
    uid: str
    proc: subprocess.Popen | None = None
    attempt: int = 0
    workdir: Path | None = None
    logs: list[Path] = field(default_factory=list)
    running_since: float | None = None  # no-training mode: when the fake job "started"
    killed: bool = False
    pods: list[tuple[str, str, int]] = field(default_factory=list)  # (name, node type, GPUs) of the cluster
    pod_state: str | None = None  # what the pods' status last said
    cluster_deleted: bool = False  # after the finish, once its TTL passed


class FakeKubeRay:
    """Run with `start()` / `stop()` or as a context manager."""

    def __init__(self, api, namespace: str, workdir: str | Path, *, training: bool = True,
                 run_seconds: float = 0.5, env: dict[str, str] | None = None, tick: float = 0.1,
                 user: str = "kuberay", node_gpus: int = 0, max_worker_pods: int = 4, pods: bool = True):
        self.api, self.namespace, self.workdir = api, namespace, Path(workdir)
        self.training, self.run_seconds, self.extra_env, self.tick = training, run_seconds, dict(env or {}), tick
        self.user = user
        self.node_gpus, self.max_worker_pods, self.pods = node_gpus, max_worker_pods, pods
        self.runs: dict[str, _Run] = {}
        self._cache: dict[str, dict[str, Any]] = {}  # uid -> latest RayJob seen
        self._events: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._crash: set[str] = set()
        self.errors: list[str] = []
        self.status_writes = 0
        self.workdir.mkdir(parents=True, exist_ok=True)

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> FakeKubeRay:
        self._client = self.api.client(self.user)
        self._co = kubernetes.client.CustomObjectsApi(self._client)
        self._core = kubernetes.client.CoreV1Api(self._client)
        for target in (self._watch, self._loop):
            t = threading.Thread(target=target, name=f"fake-kuberay-{target.__name__}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)
        for run in self.runs.values():
            self._kill(run)
        self._client.close()

    def __enter__(self) -> FakeKubeRay:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- test hooks --------------------------------------------------------------------------------

    def crash(self, rayjob_name: str) -> None:
        """Kill the running attempt of a RayJob as a lost node would (SIGKILL): KubeRay sees it fail."""
        self._crash.add(rayjob_name)

    def log(self, rayjob_name: str) -> str:
        """The output of every attempt of a RayJob so far (for assertion messages)."""
        out = []
        for run in self.runs.values():
            if run.name == rayjob_name:
                for p in run.logs:
                    out.append(f"--- {p.name}\n{p.read_text(errors='replace') if p.exists() else ''}")
        return "\n".join(out)

    def all_logs(self, tail: int = 4000) -> str:
        """The tail of every attempt's output."""
        return "\n".join(self.log(r.name)[-tail:] for r in self.runs.values())

    # -- watch -------------------------------------------------------------------------------------

    def _watch(self) -> None:
        since = None
        while not self._stop.is_set():
            try:
                if since is None:
                    listed = self._co.list_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL)
                    for obj in listed["items"]:
                        self._events.put(("ADDED", obj))
                    since = listed["metadata"]["resourceVersion"]
                w = kubernetes.watch.Watch()
                for event in w.stream(self._co.list_namespaced_custom_object, GROUP, VERSION, self.namespace, PLURAL,
                                      resource_version=since, timeout_seconds=2):
                    obj = event["object"]
                    if event["type"] == "ERROR":
                        since = None
                        break
                    since = obj["metadata"]["resourceVersion"]
                    self._events.put((event["type"], obj))
                    if self._stop.is_set():
                        w.stop()
            except ApiException as e:
                if e.status == 410:
                    # Gone ("too old resource version"): list again, as KubeRay's informers do (client-go
                    # tools/cache/reflector.go: an expired watch ends ListAndWatch, and the next one lists). The
                    # kubernetes client raises it instead of yielding the ERROR event (kubernetes/watch/watch.py).
                    since = None
                elif not self._stop.is_set():
                    self.errors.append(f"watch: {e!r}")
                    time.sleep(0.2)
            except Exception as e:  # the API server going away at the end of a test
                if not self._stop.is_set():
                    self.errors.append(f"watch: {e!r}")
                    time.sleep(0.2)

    # -- reconcile ---------------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                while True:
                    kind, obj = self._events.get_nowait()
                    uid = obj["metadata"]["uid"]
                    if kind == "DELETED":
                        self._cache.pop(uid, None)
                        run = self.runs.get(uid)
                        if run:
                            self._kill(run)
                    else:
                        old = self._cache.get(uid)
                        if old is None or int(old["metadata"]["resourceVersion"]) <= int(
                                obj["metadata"]["resourceVersion"]):
                            self._cache[uid] = obj
            except queue.Empty:
                pass
            for uid, obj in list(self._cache.items()):
                try:
                    self._reconcile(obj)
                except ApiException as e:
                    if e.status == 404:
                        self._cache.pop(uid, None)
                    elif e.status != 409:
                        self.errors.append(f"{obj['metadata']['name']}: {e.status} {e.body}")
                except Exception as e:
                    self.errors.append(f"{obj['metadata']['name']}: {e!r}")
            time.sleep(self.tick)

    def _write(self, obj: dict[str, Any], **status: Any) -> dict[str, Any]:
        """Merge `status` into the RayJob's status (None removes a field), as KubeRay's status update does."""
        meta = obj["metadata"]
        new = self._co.patch_namespaced_custom_object_status(
            GROUP, VERSION, meta["namespace"], PLURAL, meta["name"], {"status": status})
        self.status_writes += 1
        self._cache[meta["uid"]] = new
        return new

    def _reconcile(self, obj: dict[str, Any]) -> None:
        meta, spec, st = obj["metadata"], obj.get("spec", {}), obj.get("status") or {}
        run = self.runs.setdefault(meta["uid"], _Run(meta["name"], meta["namespace"], meta["uid"]))
        if meta.get("deletionTimestamp"):
            self._kill(run)
            return
        deployment = st.get("jobDeploymentStatus") or ""
        suspend = bool(spec.get("suspend"))
        if deployment in ("Complete", "Failed"):
            self._kill(run)
            if not run.cluster_deleted:
                run.cluster_deleted = self._finish_cluster(obj)
            return
        if deployment in ("", "New", "Suspended"):
            if suspend:
                if deployment != "Suspended":
                    self._write(obj, jobDeploymentStatus="Suspended")
                return
            obj = self._initialize(obj, run, keep_start=deployment == "New" and bool(st.get("startTime")))
            st = obj.get("status") or {}
            deployment = st["jobDeploymentStatus"]
        if deployment == "Retrying":
            self._write(obj, jobDeploymentStatus="New")
            return
        if deployment == "Suspending":
            self._suspend(obj, run)
            return
        # Initializing or Running from here on.
        if suspend:
            self._write(obj, jobDeploymentStatus="Suspending")
            self._suspend(obj, run)
            return
        deadline = spec.get("activeDeadlineSeconds")
        if deadline and st.get("startTime") and time.time() - _parse_time(st["startTime"]) > float(deadline):
            self._kill(run)
            self._write(obj, jobDeploymentStatus="Failed", reason="DeadlineExceeded", endTime=_now(),
                        message=f"The RayJob has passed the activeDeadlineSeconds. StartTime: {st['startTime']}. "
                                f"ActiveDeadlineSeconds: {deadline}")
            self._finish_cluster(obj)
            return
        if deployment == "Initializing":
            # KubeRay keeps a job whose pods cannot start Initializing; only the pods say why.
            if any(gpus > self.node_gpus for _, _, gpus in run.pods):
                # The pods asking for more GPUs than the node has stay Pending; the others run.
                self._pods_status(obj, run, "unschedulable", lambda gpus: _pod_unschedulable("nvidia.com/gpu")
                                  if gpus > self.node_gpus else _pod_running())
                return
            try:
                self._launch(obj, run)
            except PodStartError as e:
                message = str(e)
                self._pods_status(obj, run, f"config:{message}", lambda _: _pod_config_error(message), head_only=True)
                return
            self._pods_status(obj, run, "running", lambda _: _pod_running())
            self._write(obj, jobDeploymentStatus="Running", jobStatus="RUNNING", message=None, reason=None)
            return
        self._check_running(obj, run)

    def _initialize(self, obj: dict[str, Any], run: _Run, keep_start: bool) -> dict[str, Any]:
        meta, st = obj["metadata"], obj.get("status") or {}
        cluster = f"{meta['name']}-{_suffix()}"
        raycluster = self._co.create_namespaced_custom_object(GROUP, VERSION, meta["namespace"], "rayclusters", {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "RayCluster",
            "metadata": {"name": cluster, "labels": {"ray.io/originated-from-crd": "RayJob",
                                                     "ray.io/originated-from-cr-name": meta["name"]},
                         "ownerReferences": [{"apiVersion": f"{GROUP}/{VERSION}", "kind": "RayJob",
                                              "name": meta["name"], "uid": meta["uid"], "controller": True,
                                              "blockOwnerDeletion": True}]},
            "spec": obj["spec"].get("rayClusterSpec", {}),
        })
        self._create_pods(obj, run, raycluster)
        return self._write(
            obj, jobDeploymentStatus="Initializing", jobStatus="PENDING", rayClusterName=cluster,
            jobId=f"{meta['name']}-{_suffix()}", dashboardURL=f"{cluster}-head-svc.{meta['namespace']}.svc:8265",
            startTime=st["startTime"] if keep_start else _now(), endTime=None,
            failed=int(st.get("failed") or 0), succeeded=int(st.get("succeeded") or 0))

    def _suspend(self, obj: dict[str, Any], run: _Run) -> None:
        self._kill(run)
        self._delete_cluster(obj)
        # KubeRay resets the cluster and job fields when it suspends; the run starts anew on resume.
        self._write(obj, jobDeploymentStatus="Suspended", jobStatus="", jobId=None, rayClusterName=None,
                    dashboardURL=None, message=None, reason=None)

    def _check_running(self, obj: dict[str, Any], run: _Run) -> None:
        meta, spec, st = obj["metadata"], obj["spec"], obj.get("status") or {}
        if meta["name"] in self._crash and run.proc is not None:
            self._crash.discard(meta["name"])
            os.killpg(run.proc.pid, signal.SIGKILL)
        if not self.training:
            if run.running_since is None:
                run.running_since = time.monotonic()
            if time.monotonic() - run.running_since < self.run_seconds:
                return
            rc: int | None = 0
        elif run.proc is None:
            # This controller restarted (or lost the process): KubeRay would resubmit; so do we.
            self._launch(obj, run)
            return
        else:
            rc = run.proc.poll()
            if rc is None:
                return
            self._reap(run)
        if rc == 0:
            self._write(obj, jobDeploymentStatus="Complete", jobStatus="SUCCEEDED", endTime=_now(),
                        succeeded=int(st.get("succeeded") or 0) + 1, message="Job finished successfully.",
                        reason=None)
            run.running_since = None
            self._finish_cluster(obj)
            return
        failed = int(st.get("failed") or 0) + 1
        message = f"Job entrypoint command failed with exit code {rc}"
        if failed <= int(spec.get("backoffLimit") or 0):
            self._delete_cluster(obj)
            self._write(obj, jobDeploymentStatus="Retrying", jobStatus="FAILED", failed=failed, message=message,
                        reason="AppFailed")
        else:
            self._write(obj, jobDeploymentStatus="Failed", jobStatus="FAILED", failed=failed, endTime=_now(),
                        message=message, reason="AppFailed")
            self._finish_cluster(obj)

    def _finish_cluster(self, obj: dict[str, Any]) -> bool:
        """With shutdownAfterJobFinishes, delete the cluster once endTime + ttlSecondsAfterFinished has passed
        (KubeRay's ray-operator/controllers/ray/rayjob_controller.go requeues the finished RayJob until then, and
        keeps the RayJob). Returns whether it is deleted (or never will be: no shutdownAfterJobFinishes)."""
        spec, end = obj["spec"], (obj.get("status") or {}).get("endTime")
        if not spec.get("shutdownAfterJobFinishes"):
            return True
        ttl = int(spec.get("ttlSecondsAfterFinished") or 0)
        if ttl and time.time() < (_parse_time(end) if end else time.time()) + ttl:
            return False  # not yet: the finished job's loop comes back each tick
        self._delete_cluster(obj)
        return True

    def _delete_cluster(self, obj: dict[str, Any]) -> None:
        name = (obj.get("status") or {}).get("rayClusterName")
        if name:
            try:
                self._co.delete_namespaced_custom_object(GROUP, VERSION, obj["metadata"]["namespace"],
                                                         "rayclusters", name)
            except ApiException as e:
                if e.status != 404:
                    raise

    # -- pods --------------------------------------------------------------------------------------

    def _create_pods(self, obj: dict[str, Any], run: _Run, raycluster: dict[str, Any]) -> None:
        """The head and worker pods of the cluster (owned by the RayCluster, as KubeRay makes them)."""
        meta, cluster_spec = obj["metadata"], obj["spec"].get("rayClusterSpec") or {}
        cluster = raycluster["metadata"]["name"]
        owner = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "RayCluster", "name": cluster,
                 "uid": raycluster["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}
        groups = [("head", "headgroup", (cluster_spec.get("headGroupSpec") or {}).get("template") or {}, 1)]
        for g in cluster_spec.get("workerGroupSpecs") or []:
            replicas = min(int(g.get("replicas") or 0), self.max_worker_pods)
            groups.append(("worker", g.get("groupName", "workers"), g.get("template") or {}, replicas))
        run.pods, run.pod_state = [], None
        if not self.pods:
            return
        for node_type, group, template, count in groups:
            for _ in range(count):
                name = f"{cluster}-{group if node_type == 'worker' else 'head'}-{_suffix()}"
                labels = {**((template.get("metadata") or {}).get("labels") or {}), "ray.io/cluster": cluster,
                          "ray.io/node-type": node_type, "ray.io/group": group}
                try:
                    self._core.create_namespaced_pod(meta["namespace"], {
                        "metadata": {"name": name, "labels": labels, "ownerReferences": [owner]},
                        "spec": _string_quantities(template.get("spec") or {"containers": []}),
                    })
                except (ApiException, ValueError) as e:  # a pod the client refuses must not stop the job
                    self.errors.append(f"{meta['name']}: pod {name}: {e}")
                    continue
                run.pods.append((name, node_type, _gpus(template)))

    def _pods_status(self, obj: dict[str, Any], run: _Run, state: str, status: Any, head_only: bool = False
                     ) -> None:
        """Write the pods' status (`status(gpus asked)`) once per state change, as the scheduler / kubelet would."""
        if run.pod_state == state:
            return
        run.pod_state = state
        for name, node_type, gpus in run.pods:
            if head_only and node_type != "head":
                continue
            try:
                self._core.patch_namespaced_pod_status(name, obj["metadata"]["namespace"], {"status": status(gpus)})
            except ApiException as e:
                if e.status != 404:
                    raise

    # -- processes ---------------------------------------------------------------------------------

    def _launch(self, obj: dict[str, Any], run: _Run) -> None:
        head = ((obj["spec"].get("rayClusterSpec") or {}).get("headGroupSpec") or {}).get("template", {}).get(
            "spec") or {"containers": [{}]}
        container = head["containers"][0]
        if not self.training:
            self._resolve_env(obj["metadata"]["namespace"], container)  # a missing Secret still blocks the pod
            run.running_since = time.monotonic()
            return
        self._kill(run)
        run.workdir = self.workdir / f"{obj['metadata']['name']}"
        run.workdir.mkdir(parents=True, exist_ok=True)
        env = self._resolve_env(obj["metadata"]["namespace"], container)
        mounts = self._materialise_volumes(obj["metadata"]["namespace"], head, container, run.workdir)
        run.attempt += 1
        args = shlex.split(obj["spec"]["entrypoint"])
        for i, arg in enumerate(args):
            for mount_path, local in mounts.items():
                if arg == mount_path or arg.startswith(mount_path.rstrip("/") + "/"):
                    args[i] = str(local) + arg[len(mount_path.rstrip("/")):]
        if args and args[0] in ("python", "python3"):
            args[0] = sys.executable
        base = {k: v for k, v in os.environ.items()
                if not k.startswith(("AWS_", "KUBECONFIG", "RAY_ADDRESS", "PYTEST"))}
        # The container's HOME (/tmp in the pod) is a local folder here.
        env.pop("HOME", None)
        full_env = {**base, **env, **self.extra_env}
        log = run.workdir / f"attempt-{run.attempt}.log"
        run.logs.append(log)
        with open(log, "wb") as out:
            run.proc = subprocess.Popen(args, env=full_env, stdout=out, stderr=subprocess.STDOUT,
                                        cwd=run.workdir, start_new_session=True)
        run.killed = False

    def _resolve_env(self, namespace: str, container: dict[str, Any]) -> dict[str, str]:
        env: dict[str, str] = {}
        for src in container.get("envFrom") or []:
            prefix = src.get("prefix", "")
            if "secretRef" in src:
                data = self._secret(namespace, src["secretRef"]["name"])
            else:
                data = self._configmap(namespace, src["configMapRef"]["name"])
            env.update({prefix + k: v for k, v in data.items()})
        for var in container.get("env") or []:
            if "value" in var:
                env[var["name"]] = str(var["value"])
                continue
            ref = var.get("valueFrom") or {}
            selector = ref.get("secretKeyRef") or ref.get("configMapKeyRef")
            if selector is None:
                continue
            # `optional: true` (core/v1 SecretKeySelector / ConfigMapKeySelector: "Specify whether the Secret or its
            # key must be defined"): a missing object or key leaves the variable unset, and the pod starts.
            try:
                data = (self._secret if "secretKeyRef" in ref else self._configmap)(namespace, selector["name"])
            except PodStartError:
                if selector.get("optional"):
                    continue
                raise
            key = selector["key"]
            if key not in data and selector.get("optional"):
                continue
            if key not in data:
                raise PodStartError(f"couldn't find key {key} in {'Secret' if 'secretKeyRef' in ref else 'ConfigMap'}"
                                    f" {namespace}/{(ref.get('secretKeyRef') or ref.get('configMapKeyRef'))['name']}")
            env[var["name"]] = data[key]
        return env

    def _secret(self, namespace: str, name: str) -> dict[str, str]:
        try:
            secret = self._core.read_namespaced_secret(name, namespace)
        except ApiException as e:
            if e.status == 404:
                raise PodStartError(f'secret "{name}" not found') from e
            raise
        return {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}

    def _configmap(self, namespace: str, name: str) -> dict[str, str]:
        try:
            return dict(self._core.read_namespaced_config_map(name, namespace).data or {})
        except ApiException as e:
            if e.status == 404:
                raise PodStartError(f'configmap "{name}" not found') from e
            raise

    def _materialise_volumes(self, namespace: str, pod: dict[str, Any], container: dict[str, Any], workdir: Path
                             ) -> dict[str, Path]:
        """Write each mounted configMap volume to a local folder; returns mountPath -> folder."""
        volumes = {v["name"]: v for v in pod.get("volumes") or []}
        out: dict[str, Path] = {}
        for mount in container.get("volumeMounts") or []:
            vol = volumes.get(mount["name"], {})
            if "configMap" not in vol:
                continue
            data = self._configmap(namespace, vol["configMap"]["name"])
            local = workdir / "volumes" / mount["name"]
            local.mkdir(parents=True, exist_ok=True)
            for key, value in data.items():
                (local / key).write_text(value)
            out[mount["mountPath"]] = local
        return out

    def _kill(self, run: _Run) -> None:
        run.running_since = None
        if run.proc is None:
            return
        if run.proc.poll() is None:
            try:
                os.killpg(run.proc.pid, signal.SIGTERM)
                run.proc.wait(10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        self._reap(run)

    @staticmethod
    def _reap(run: _Run) -> None:
        """Make sure nothing the attempt started (Ray's raylet, workers) outlives it."""
        if run.proc is None:
            return
        try:
            os.killpg(run.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        run.proc.wait()
        run.proc = None


def main() -> None:
    """Run the fake KubeRay in its own process (the benchmark keeps it off the API server's interpreter)."""
    import argparse

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from support.kube import RemoteAPI

    parser = argparse.ArgumentParser(description="fake KubeRay controller")
    parser.add_argument("--url", required=True, help="API server URL")
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--no-training", action="store_true", help="mark jobs running, then succeeded")
    parser.add_argument("--run-seconds", type=float, default=0.5)
    parser.add_argument("--no-pods", action="store_true", help="model no Pods (less load on the API server)")
    args = parser.parse_args()
    controller = FakeKubeRay(RemoteAPI(args.url), args.namespace, args.workdir, training=not args.no_training,
                             run_seconds=args.run_seconds, pods=not args.no_pods).start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    controller.stop()
    for error in controller.errors:
        print(f"fake KubeRay: {error}", file=sys.stderr)


if __name__ == "__main__":
    main()
