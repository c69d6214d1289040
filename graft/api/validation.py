"""Validation of TransferJob documents: one code path for `graft validate`, the operator and the trainer."""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import ValidationError

from graft import storage
from graft.api.models import (
    API_VERSION,
    KIND,
    OWNED_POD_FIELDS,
    PATTERN_HELP,
    POD_SECURITY_FIELD_HOMES,
    STAGE_TYPES,
    TransferJob,
    TransferJobSpec,
    credentials_hint,
    find_inline_credentials,
)

#: More aliases than this in one document is an attack ("billion laughs"), not a manifest.
MAX_ALIASES = 50
_FIELD_PATH = re.compile(r"^[A-Za-z_]\w*(\[\d+\])*(\.[A-Za-z_]\w*(\[\d+\])*)*$")
_IDENTIFIER = re.compile(r"^[A-Za-z_][\w-]*$")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a document: the field's path and what is allowed."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


class InvalidSpec(ValueError):
    """A TransferJob that can never run as written."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))


def _join(path: str, part: Any) -> str:
    if isinstance(part, int):
        return f"{path}[{part}]"
    part = str(part)
    if not _IDENTIFIER.match(part):  # map keys such as nodeSelector["nvidia.com/gpu.product"]
        return f"{path}[{json.dumps(part)}]"
    return f"{path}.{part}" if path else part


def _loc_to_path(loc: Iterable[Any], prefix: str) -> str:
    path = prefix
    for part in loc:
        if part in STAGE_TYPES or str(part).startswith("function-"):
            continue  # a discriminated union's branch or a validator's name is not a field
        path = _join(path, part)
    return path or "(document)"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_TYPE_NAMES = {
    "int_type": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "bool_type": "a boolean (true or false)",
    "string_type": "a string",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "list_type": "a list",
}


def _clean_message(err: dict[str, Any]) -> str:
    kind, msg, ctx = err["type"], err["msg"], err.get("ctx", {})
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix) :]
    if kind == "extra_forbidden":
        loc = [str(part) for part in err.get("loc", ())]
        if "pod" in loc[:2] and loc[-1] in OWNED_POD_FIELDS:
            return f"set by Graft, not by spec.pod: {OWNED_POD_FIELDS[loc[-1]]}"
        if "pod" in loc[:2] and loc[-1] in POD_SECURITY_FIELD_HOMES:
            return f"not a field here; set it in {POD_SECURITY_FIELD_HOMES[loc[-1]]}"
        return "unknown field (not part of the TransferJob API; check the spelling and `graft crd`)"
    if kind == "missing":
        return "required field is missing"
    if kind == "literal_error" and "expected" in ctx:
        return f"must be one of {ctx['expected']} (got {_short(err.get('input'))})"
    if kind == "union_tag_invalid":
        return f"unknown stage type {ctx.get('tag')!r}; allowed: {ctx.get('expected_tags')}"
    if kind == "union_tag_not_found":
        return "a stage needs a 'type': one of " + ", ".join(repr(t) for t in STAGE_TYPES)
    if kind in _TYPE_NAMES:
        value = err.get("input")
        got = "null" if value is None else f"{type(value).__name__} {_short(value)}"
        return f"must be {_TYPE_NAMES[kind]} (got {got})"
    if kind == "string_pattern_mismatch":
        pattern = ctx.get("pattern", "")
        return f"{_short(err.get('input'))} is not {PATTERN_HELP.get(pattern, f'matching {pattern}')}"
    if msg.startswith("Input should be ") or msg.startswith("String should ") or msg.startswith("List should "):
        msg = "must " + msg.split(" should ", 1)[1].replace(" after validation", "")
        if "input" in err and not isinstance(err["input"], (dict, list)):
            msg += f" (got {_short(err['input'])})"
    return msg


def _problems_from(exc: ValidationError, prefix: str) -> list[Problem]:
    problems = []
    for err in exc.errors():
        path = _loc_to_path(err["loc"], prefix)
        msg = _clean_message(err)
        # Model-level validators put the field path (relative to their model) in front of the message.
        head, sep, rest = msg.partition(": ")
        if err["type"] == "value_error" and sep and _FIELD_PATH.match(head):
            base = "" if path == "(document)" else path
            path, msg = (f"{base}.{head}" if base else head), rest
        problems.append(Problem(path, msg))
    return problems


def _merge(creds: list[Problem], problems: list[Problem]) -> list[Problem]:
    """Credential findings first; a field flagged as a credential is not also reported as unknown."""
    flagged = {p.path for p in creds}
    return creds + [p for p in problems if p.path not in flagged]


def _credential_problems(spec: Any) -> list[Problem]:
    return [Problem(f"spec.{p}", f"{r}; {credentials_hint(p)}") for p, r in find_inline_credentials(spec)]


def validate_spec(spec: Any) -> tuple[TransferJobSpec | None, list[Problem]]:
    """Validate a bare spec mapping (as the operator receives it)."""
    if not isinstance(spec, dict):
        return None, [Problem("spec", f"must be a mapping, got {type(spec).__name__}")]
    creds = _credential_problems(spec)
    try:
        parsed = TransferJobSpec.model_validate(spec)
    except ValidationError as exc:
        return None, _merge(creds, _problems_from(exc, "spec"))
    return (None if creds else parsed), creds


def validate_document(doc: Any) -> tuple[TransferJob | None, list[Problem]]:
    """Validate one parsed YAML/JSON document as a TransferJob."""
    if not isinstance(doc, dict):
        return None, [Problem("(document)", f"not a mapping (got {type(doc).__name__}); expected a TransferJob")]
    api_version, kind = doc.get("apiVersion"), doc.get("kind")
    if kind != KIND:
        what = f"a {kind}" if isinstance(kind, str) and kind else "a document without a kind"
        return None, [Problem("kind", f"not a TransferJob ({what}); expected kind {KIND!r}")]
    if api_version != API_VERSION:
        return None, [Problem("apiVersion", f"must be {API_VERSION!r} (got {_short(api_version)})")]
    spec = doc.get("spec")
    creds = _credential_problems(spec) if isinstance(spec, dict) else []
    try:
        job = TransferJob.model_validate(doc)
    except ValidationError as exc:
        return None, _merge(creds, _problems_from(exc, ""))
    return (None if creds else job), creds


# ------------------------------------------------------------------------------------------------ cluster

# URIs every pod of a cluster can read (object storage too); anything else (a path, file://) is read on the pod's
# own filesystem.
_SHARED_SCHEMES = ("builtin:", "torchvision:")
_LOCAL_HINT = (
    "a local path: on a cluster it is each pod's own filesystem, so it exists there only when the image carries it "
    "or every Ray pod mounts the same volume at that path; use s3://"
)


def cluster_problems(spec: TransferJobSpec) -> list[Problem]:
    """What a spec needs on a cluster beyond `graft validate` (which also serves `graft run` on one machine)."""
    if spec.storage is None:
        return [
            Problem(
                "spec.storage",
                "required on a cluster: the stages hand checkpoints and the ledger to each other through "
                "object storage (e.g. storage: {uri: s3://bucket/prefix, credentialsSecret: {name: ...}})",
            )
        ]
    return []


def cluster_warnings(spec: TransferJobSpec) -> list[Problem]:
    """Valid on a cluster, but probably not what the user means: local paths that the pods may not share."""
    warnings = []
    if spec.storage is not None and not storage.is_remote(spec.storage.uri):
        warnings.append(
            Problem(
                "spec.storage.uri",
                "a local path: on a cluster it is each pod's own filesystem unless every Ray pod and the operator "
                "mount the same volume there, so checkpoints and the ledger may be lost with a pod and the status "
                "may show no stage progress; use s3://",
            )
        )
    weights = None if spec.model.weights == "hub" else spec.model.weights  # downloaded at run time, not a path
    reads = [("spec.model.weights", weights), ("spec.data.train", spec.data.train),
             ("spec.data.validation", spec.data.validation)]
    reads += [(f"spec.stages[{i}].data", getattr(s, "data", None)) for i, s in enumerate(spec.stages)]
    warnings += [Problem(path, _LOCAL_HINT) for path, uri in reads
                 if uri and not uri.startswith(_SHARED_SCHEMES) and not storage.is_remote(uri)
                 and not _on_a_pod_volume(spec, uri)]
    return warnings


_DEFAULT_CREDENTIALS = (
    "s3 storage with no credentialsSecret and no spec.pod.serviceAccountName: the pods will use whatever default "
    "credentials the node gives them (an instance role, or none at all); set spec.storage.credentialsSecret to a "
    "Secret with the keys, or spec.pod.serviceAccountName to a ServiceAccount carrying a cloud identity "
    "(EKS IRSA, GKE Workload Identity)"
)


def credential_warnings(spec: TransferJobSpec) -> list[Problem]:
    """`graft validate --cluster`'s warning for s3 storage that names no way to its credentials: the pods then
    fall back on the SDK's default chain, which on most nodes finds the node's own role or nothing."""
    storage = spec.storage
    if storage is None or not storage.uri.startswith("s3://"):
        return []
    if storage.credentials_secret is not None or spec.pod.service_account_name:
        return []
    return [Problem("spec.storage.credentialsSecret", _DEFAULT_CREDENTIALS)]


def _on_a_pod_volume(spec: TransferJobSpec, uri: str) -> bool:
    """A local path under one of `spec.pod.volumeMounts`: every Ray pod mounts that volume there."""
    path = uri.removeprefix("file://")
    return path.startswith("/") and spec.pod.mount_of(path) is not None


def pod_security_problems(spec: TransferJobSpec, allow: Collection[str] = ()) -> list[Problem]:
    """The pod security exceptions the spec asks for and `allow` does not name (graft/api/podsecurity.py): what
    `graft validate` and the operator refuse by default."""
    from graft.api.podsecurity import refusals

    return [Problem(path, why) for path, why in refusals(spec, allow)]


def validate_for_cluster(spec: Any, allow: Collection[str] = ()) -> tuple[TransferJobSpec | None, list[Problem]]:
    """The `graft validate` checks plus the cluster-only ones: what the operator, `graft render` and
    `graft validate --cluster` apply. `allow`: the pod security exceptions this cluster's operator allows."""
    parsed, problems = validate_spec(spec)
    if parsed is not None and not problems:
        problems = pod_security_problems(parsed, allow) + cluster_problems(parsed)
    return (parsed if not problems else None), problems


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (the API server's strict field validation does) and alias
    bombs."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._aliases = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                event = self.peek_event()
                raise yaml.composer.ComposerError(
                    None, None, f"more than {MAX_ALIASES} aliases (*refs) in one document", event.start_mark
                )
        return super().compose_node(parent, index)

    def compose_document(self) -> Any:
        self._aliases = 0
        return super().compose_document()

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:
                continue  # an unhashable key: the base class reports it
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (only one value may be given)", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


# YAML 1.1 (PyYAML) reads `1e-3` as a string; kubectl's parser, like YAML 1.2, reads a number. Learning rates
# are written that way, so read them as the API server will.
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?([0-9][0-9_]*)(\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _yaml_problem(exc: yaml.YAMLError) -> Problem:
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "(document)"
    return Problem(where, f"not valid YAML/JSON: {getattr(exc, 'problem', None) or exc}")


def parse_stream(text: str) -> tuple[list[Any], Problem | None]:
    """The documents of a YAML/JSON text (empty ones dropped, as kubectl does) and the syntax error that
    stopped parsing, if any; documents before the error are returned."""
    stripped = text.lstrip()
    if stripped.startswith(("{", "[")):
        try:
            return [json.loads(text)], None
        except ValueError:
            pass  # JSON-looking YAML (flow style), or broken: let the YAML parser say where
    docs: list[Any] = []
    try:
        for doc in yaml.load_all(text, Loader=_StrictLoader):
            if doc is not None:
                docs.append(doc)
    except yaml.YAMLError as exc:
        return docs, _yaml_problem(exc)
    except RecursionError:
        return docs, Problem("(document)", "nested too deeply to be a manifest")
    return docs, None


def validate_stream(text: str, allow: Collection[str] = ()) -> tuple[int, list[tuple[int, Problem]]]:
    """Validate every document of a YAML/JSON text: (number of documents, [(document index, problem)]).

    A syntax error is reported with the index of the document it stopped in. `allow`: the pod security exceptions
    accepted (`graft validate --allow`); the others are refused, as the operator refuses them."""
    documents, problems, _ = _check_stream(text, cluster=False, allow=allow)
    return documents, problems


def validate_stream_for_cluster(text: str, allow: Collection[str] = ()
                                ) -> tuple[int, list[tuple[int, Problem]], list[tuple[int, Problem]]]:
    """`validate_stream` plus the rules of a cluster (the ones the operator and `graft render` apply):
    (number of documents, [(document index, problem)], [(document index, warning)])."""
    return _check_stream(text, cluster=True, allow=allow)


def _check_stream(text: str, *, cluster: bool, allow: Collection[str] = ()
                  ) -> tuple[int, list[tuple[int, Problem]], list[tuple[int, Problem]]]:
    docs, syntax = parse_stream(text)
    out: list[tuple[int, Problem]] = []
    warned: list[tuple[int, Problem]] = []
    for i, doc in enumerate(docs):
        try:
            job, problems = validate_document(doc)
        except RecursionError:
            job, problems = None, [Problem("(document)", "nested too deeply to be a manifest")]
        if job is not None and not problems:
            problems = pod_security_problems(job.spec, allow)
        if cluster and job is not None and not problems:
            problems = cluster_problems(job.spec)
            if not problems:
                # Not among cluster_warnings: the operator posts those as a StorageNotShared Event.
                warned.extend((i, w) for w in cluster_warnings(job.spec) + credential_warnings(job.spec))
        out.extend((i, p) for p in problems)
    if syntax is not None:
        out.append((len(docs), syntax))
        return len(docs) + 1, out, warned
    if not docs:
        out.append((0, Problem("(document)", "no documents found; expected a TransferJob")))
    return len(docs), out, warned


def load_job(text: str) -> TransferJob:
    """Load exactly one valid TransferJob from YAML/JSON text or raise InvalidSpec."""
    docs, syntax = parse_stream(text)
    if syntax is not None:
        raise InvalidSpec([syntax])
    jobs = [d for d in docs if isinstance(d, dict) and d.get("kind") == KIND]
    if len(jobs) != 1:
        raise InvalidSpec([Problem("(document)", f"expected exactly one TransferJob, found {len(jobs)}")])
    job, problems = validate_document(jobs[0])
    if problems or job is None:
        raise InvalidSpec(problems)
    return job
