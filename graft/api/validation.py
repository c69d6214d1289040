"""Validation of TransferJob documents: one code path for `graft validate`, the operator and the trainer."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import ValidationError

from graft.api.models import API_VERSION, KIND, TransferJob, TransferJobSpec, find_inline_credentials


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


def _loc_to_path(loc: Iterable[Any], prefix: str) -> str:
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part in ("Pretrain", "FrozenFeatures", "Head", "FullFineTune"):
            continue  # the discriminated union's branch name is not a field
        elif str(part).startswith("function-"):
            continue
        else:
            path = f"{path}.{part}" if path else str(part)
    return path or "(document)"


def _clean_message(err: dict[str, Any]) -> str:
    msg = err["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix) :]
    if err["type"] == "extra_forbidden":
        msg = "unknown field (not part of the TransferJob API; check the spelling)"
    elif err["type"] == "missing":
        msg = "required field is missing"
    elif err["type"] == "literal_error" and "expected" in err.get("ctx", {}):
        msg = f"must be one of {err['ctx']['expected']} (got {err.get('input')!r})"
    elif err["type"] == "union_tag_invalid":
        ctx = err.get("ctx", {})
        msg = f"unknown stage type {ctx.get('tag')!r}; allowed: {ctx.get('expected_tags')}"
    elif err["type"] == "union_tag_not_found":
        msg = "a stage needs a 'type': one of 'Pretrain', 'FrozenFeatures', 'Head', 'FullFineTune'"
    return msg


def _problems_from(exc: ValidationError, prefix: str) -> list[Problem]:
    problems = []
    for err in exc.errors():
        path = _loc_to_path(err["loc"], prefix)
        msg = _clean_message(err)
        # Model-level validators name their field inside the message ("stages[1]: ...").
        head, sep, rest = msg.partition(": ")
        if sep and err["loc"] == () and (head.startswith(("stages", "model", "data", "metadata"))):
            path, msg = f"{prefix}.{head}" if prefix else head, rest
        problems.append(Problem(path, msg))
    return problems


def validate_spec(spec: Any) -> tuple[TransferJobSpec | None, list[Problem]]:
    """Validate a bare spec mapping (as the operator receives it)."""
    if not isinstance(spec, dict):
        return None, [Problem("spec", f"must be a mapping, got {type(spec).__name__}")]
    creds = [Problem(f"spec.{p}", r) for p, r in find_inline_credentials(spec)]
    try:
        parsed = TransferJobSpec.model_validate(spec)
    except ValidationError as exc:
        return None, creds + _problems_from(exc, "spec")
    return (None if creds else parsed), creds


def validate_document(doc: Any) -> tuple[TransferJob | None, list[Problem]]:
    """Validate one parsed YAML/JSON document as a TransferJob."""
    if not isinstance(doc, dict):
        return None, [Problem("(document)", f"not a mapping (got {type(doc).__name__}); expected a TransferJob")]
    api_version, kind = doc.get("apiVersion"), doc.get("kind")
    if kind != KIND:
        return None, [Problem("kind", f"not a TransferJob (kind {kind!r}); expected kind {KIND!r}")]
    if api_version != API_VERSION:
        return None, [Problem("apiVersion", f"must be {API_VERSION!r} (got {api_version!r})")]
    creds = [Problem(f"spec.{p}", r) for p, r in find_inline_credentials(doc.get("spec") or {})]
    try:
        job = TransferJob.model_validate(doc)
    except ValidationError as exc:
        return None, creds + _problems_from(exc, "")
    return (None if creds else job), creds


def parse_spec(spec: Any) -> TransferJobSpec:
    """Validate a spec mapping or raise InvalidSpec listing every problem."""
    parsed, problems = validate_spec(spec)
    if problems or parsed is None:
        raise InvalidSpec(problems)
    return parsed


def load_documents(text: str) -> list[Any]:
    """Parse multi-document YAML (JSON is YAML too). Raises yaml.YAMLError on malformed input."""
    return [d for d in yaml.safe_load_all(text) if d is not None]


def validate_text(text: str) -> list[tuple[int, Problem]]:
    """Validate every document in a YAML/JSON text; returns (document index, problem) pairs."""
    try:
        docs = load_documents(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "(document)"
        return [(0, Problem(where, f"not valid YAML/JSON: {getattr(exc, 'problem', exc)}"))]
    if not docs:
        return [(0, Problem("(document)", "no documents found; expected a TransferJob"))]
    out = []
    for i, doc in enumerate(docs):
        _, problems = validate_document(doc)
        out.extend((i, p) for p in problems)
    return out


def load_job(text: str) -> TransferJob:
    """Load exactly one valid TransferJob from YAML/JSON text or raise InvalidSpec."""
    docs = load_documents(text)
    jobs = [d for d in docs if isinstance(d, dict) and d.get("kind") == KIND]
    if len(jobs) != 1:
        raise InvalidSpec([Problem("(document)", f"expected exactly one TransferJob, found {len(jobs)}")])
    job, problems = validate_document(jobs[0])
    if problems or job is None:
        raise InvalidSpec(problems)
    return job
