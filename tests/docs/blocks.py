"""The YAML blocks of the README and docs/*.md, and how each document in them is checked.

A ```yaml (or ```yml) fence is a manifest unless the line right before it (blank lines between allowed) is one of
these HTML comments, which render as nothing on GitHub:

- `<!-- not-a-manifest: why -->`: not Kubernetes objects at all (e.g. Prometheus alert rules); not checked.
- `<!-- transferjob-fragment -->`: a part of a TransferJob (`spec: {pod: ...}`), merged into a complete job
  (examples/digits-lpft.yaml) and checked as one.
- `<!-- helm-values -->`: values for the chart (`helm install -f`), checked against `helm/graft/values.schema.json`,
  as Helm checks them before it renders anything.

Every document of a manifest block is checked by its kind (`checker_for`): TransferJobs by Graft's validation (as
`graft validate` does) and against the CRD Graft generates, built-in kinds against Kubernetes' own OpenAPI schemas
(kubernetes-validate, strict, as the chart tests do), Kueue's and KubeRay's kinds against their real CRDs (pinned
files from `../shared/`, support/upstream_files.py) with the emulated API server's machinery: pruning tells which
fields the schema does not know (`kubectl apply`'s strict field validation refuses them), then schema and CEL
validation (support/kube/schema.py). A kind none of these knows fails, unless `UNCHECKED_KINDS` names it with why.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml
from support import crdcheck, kuberay_crds, upstream_files
from support.kube.resources import ApiError, ResourceType
from support.kube.schema import attach_validator, check, types_from_crd

from graft.api.crd import build_crd
from graft.api.validation import parse_stream, validate_document, validate_for_cluster
from graft_operator.builder import build_owned_rayjob

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
KUEUE_FILES = ("kueue.x-k8s.io_clusterqueues.yaml", "kueue.x-k8s.io_localqueues.yaml",
               "kueue.x-k8s.io_resourceflavors.yaml")
KUBERNETES = kubernetes_validate.latest_version()
FRAGMENT_BASE = REPO / "examples" / "digits-lpft.yaml"
VALUES_SCHEMA = REPO / "helm" / "graft" / "values.schema.json"
RENDER_UID = "00000000-0000-4000-8000-000000000000"
RENDER_STORAGE = {"uri": "s3://render-check/graft"}

#: Kinds the docs show whose schema no pinned upstream file gives; each with the reason it is not checked.
UNCHECKED_KINDS = {
    ("argoproj.io/v1alpha1", "Application"): "Argo CD's CRD is not among the pinned upstream files (docs/gitops.md)",
    ("kustomize.toolkit.fluxcd.io/v1", "Kustomization"):
        "Flux's CRD is not among the pinned upstream files (docs/gitops.md)",
}

_FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[A-Za-z0-9_+-]*)[^\n]*$")
_MARKER = re.compile(r"^\s*<!--\s*(?P<name>not-a-manifest|transferjob-fragment|helm-values)"
                     r"\s*(?::\s*(?P<why>.*?))?\s*-->\s*$")


@dataclass(frozen=True)
class Block:
    """One fenced YAML block: where it is, its text (indentation removed) and its marker, if any."""

    page: Path
    line: int  # of the opening fence, 1-based
    text: str
    marker: str | None = None
    why: str = ""

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


def blocks(pages: list[Path] | None = None) -> list[Block]:
    """Every ```yaml / ```yml block of the pages (default: README.md and docs/*.md)."""
    return [b for page in (pages or PAGES) for b in _page_blocks(page)]


def _page_blocks(page: Path) -> list[Block]:
    lines = page.read_text().splitlines()
    out, i = [], 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, end = opening["indent"], i + 1
        while end < len(lines) and not re.match(rf"^{re.escape(indent)}```\s*$", lines[end]):
            end += 1
        if opening["lang"] in ("yaml", "yml"):
            body = "\n".join(line[len(indent):] if line.startswith(indent) else line for line in lines[i + 1:end])
            marker, why = _marker_before(lines, i)
            out.append(Block(page, i + 1, body + "\n", marker, why))
        i = end + 1
    return out


def _marker_before(lines: list[str], fence: int) -> tuple[str | None, str]:
    j = fence - 1
    while j >= 0 and not lines[j].strip():
        j -= 1
    found = _MARKER.match(lines[j]) if j >= 0 else None
    return (found["name"], found["why"] or "") if found else (None, "")


def documents(block: Block) -> list[Any]:
    """The block's documents as a manifest: parsed as kubectl would, a fragment merged into a whole TransferJob."""
    docs, syntax = parse_stream(block.text)
    if syntax is not None:
        raise AssertionError(f"{block.where}: {syntax}")
    if block.marker == "transferjob-fragment":
        base = yaml.safe_load(FRAGMENT_BASE.read_text())
        return [_merged(base, doc) for doc in docs]
    return docs


def check_values(block: Block) -> list[str]:
    """A `helm-values` block against the chart's values schema (what `helm install -f` refuses)."""
    docs, syntax = parse_stream(block.text)
    if syntax is not None:
        return [str(syntax)]
    schema = json.loads(VALUES_SCHEMA.read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [f"{'/'.join(map(str, e.absolute_path)) or '(values)'}: {e.message}"
            for doc in docs for e in validator.iter_errors(doc)]


def _merged(base: Any, part: Any) -> Any:
    if isinstance(base, dict) and isinstance(part, dict):
        return {**base, **{k: _merged(base[k], v) if k in base else v for k, v in part.items()}}
    return copy.deepcopy(part)


# --------------------------------------------------------------------------------------------------- checks

Checker = Callable[[dict[str, Any]], list[str]]


def checker_for(doc: dict[str, Any]) -> tuple[str, Checker | None]:
    """How a document is checked: (what checks it, the checker), or (why it is not checked, None); raises
    LookupError for a kind nothing checks and UNCHECKED_KINDS does not name."""
    key = (doc.get("apiVersion"), doc.get("kind"))
    if not all(isinstance(k, str) and k for k in key):
        raise LookupError("no apiVersion and kind: mark a part of a TransferJob <!-- transferjob-fragment -->, "
                          "anything else that is no manifest <!-- not-a-manifest: why -->")
    if key == ("graft.dev/v1alpha1", "TransferJob"):
        return "graft validate, Graft's CRD, and its RayJob against KubeRay's CRD", _check_transferjob
    if key in _crd_types():
        return f"{_crd_types()[key][1]}'s CRD", lambda d: _check_custom(_crd_types()[key][0], d)
    if key in UNCHECKED_KINDS:
        return UNCHECKED_KINDS[key], None
    try:
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        raise LookupError(f"{key[1]} ({key[0]}): no schema checks this kind; check it or add it to "
                          "UNCHECKED_KINDS with the reason") from None
    except kubernetes_validate.ValidationError:
        pass  # a built-in kind after all: _check_builtin reports the error
    return f"Kubernetes {KUBERNETES} OpenAPI", _check_builtin


def _check_transferjob(doc: dict[str, Any]) -> list[str]:
    _, problems = validate_document(doc)
    if problems:
        return [f"graft validate: {p}" for p in problems]
    (rt,) = types_from_crd(build_crd())
    failures = _check_custom(rt, doc)
    if failures:
        return failures
    # What the operator makes of it (as `graft render` prints it): the pass-through fields (volumes, affinity,
    # env) reach KubeRay's pod templates, so KubeRay's RayJob schema checks them.
    body = {**copy.deepcopy(doc), "metadata": {"namespace": "default", **doc["metadata"], "uid": RENDER_UID}}
    # A job written for `graft run` (no storage) is rendered as it would be with some: the pods are the same.
    spec, problems = validate_for_cluster({"storage": RENDER_STORAGE, **doc["spec"]})
    if spec is None:
        return [f"graft validate --cluster: {p}" for p in problems]
    rayjob = build_owned_rayjob(body, spec)
    return [f"its RayJob: {f}" for f in _check_custom(_crd_types()[("ray.io/v1", "RayJob")][0], rayjob)]


def _check_builtin(doc: dict[str, Any]) -> list[str]:
    try:
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.absolute_path) or "(document)"
        return [f"{path}: {exc.message}"]
    return []


@cache
def _crd_types() -> dict[tuple[str, str], tuple[ResourceType, str]]:
    """(apiVersion, kind) -> (its served type with a validator, whose CRD) for Kueue's and KubeRay's CRDs."""
    crds = [(crd, "Kueue") for crd in map(_kueue_crd, KUEUE_FILES)] + [(crd, "KubeRay") for crd in kuberay_crds.crds()]
    out = {}
    for crd, owner in crds:
        for rt in types_from_crd(crd):
            attach_validator(rt)
            out[(rt.api_version, rt.kind)] = (rt, owner)
    return out


def _kueue_crd(name: str) -> dict[str, Any]:
    path = upstream_files.path(upstream_files.pinned("kueue", name))
    return yaml.safe_load(path.read_text())


def _check_custom(rt: ResourceType, doc: dict[str, Any]) -> list[str]:
    """A custom resource as `kubectl apply` (strict field validation) and the API server see it."""
    if not (doc.get("metadata") or {}).get("name"):
        return ["metadata.name: required"]
    if rt.validator is None:
        attach_validator(rt)
    unknown = _dropped(doc, crdcheck.prune(copy.deepcopy(doc), rt.schema, root=True))
    if unknown:
        return [f'unknown field "{path}" (not in the {rt.kind} schema)' for path in unknown]
    try:
        check(rt, copy.deepcopy(doc))
    except ApiError as exc:
        return [str(exc)]
    return []


def _dropped(before: Any, after: Any, path: str = "") -> list[str]:
    """The field paths pruning removed (what a strict client reports as unknown fields)."""
    if isinstance(before, dict) and isinstance(after, dict):
        out = []
        for key, value in before.items():
            sub = f"{path}.{key}" if path else str(key)
            out += [sub] if key not in after else _dropped(value, after[key], sub)
        return out
    if isinstance(before, list) and isinstance(after, list):
        return [p for i, (b, a) in enumerate(zip(before, after, strict=False)) for p in _dropped(b, a, f"{path}[{i}]")]
    return []
