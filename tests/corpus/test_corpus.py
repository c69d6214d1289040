"""The bad-input corpus: every case is rejected by `graft validate` (a real subprocess) with a line naming the
field, and by the CRD's openAPIV3Schema (jsonschema + its CEL rules) wherever the schema can express the rule."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml
from support.cel import cel_violations
from support.kube.schema import jsonschema_for

from graft.api.crd import build_crd

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
CASES = yaml.safe_load((HERE / "expected.yaml").read_text())["cases"]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
GRAFT = [sys.executable, "-m", "graft.cli"]
SCHEMA = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def _schema_problems(doc) -> list[str]:
    errors = [e.message for e in jsonschema.Draft4Validator(jsonschema_for(SCHEMA)).iter_errors(doc)]
    return errors + [f"{p}: {msg}" for p, msg in cel_violations(SCHEMA, doc)]


def test_corpus_is_complete():
    assert len(CASES) >= 30
    files = {p.name for p in (HERE / "cases").iterdir()}
    assert files == {c["file"] for c in CASES.values()}, "every case file needs an entry in expected.yaml"
    assert sum(c["schema"] is True for c in CASES.values()) >= 30


@functools.cache
def _validate_every_case() -> subprocess.CompletedProcess[str]:
    """One `graft validate` (a real subprocess) over every case file, as a user checks many files at once; each case
    reads its own lines. One process per case cost a Python start-up and the imports 88 times."""
    files = list(dict.fromkeys(f"tests/corpus/cases/{case['file']}" for case in CASES.values()))
    return subprocess.run([*GRAFT, "validate", *files], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_graft_validate_rejects_every_case_file():
    proc = _validate_every_case()
    files = len({c["file"] for c in CASES.values()})
    assert (proc.returncode, proc.stderr.strip()) == (1, f"{files} of {files} file(s) invalid"), proc.stderr
    assert all(line.startswith("tests/corpus/cases/") for line in proc.stdout.splitlines()), \
        "every problem line names its file"


@pytest.mark.parametrize("name", list(CASES), ids=list(CASES))
def test_graft_validate_rejects(name):
    case = CASES[name]
    rel = f"tests/corpus/cases/{case['file']}"
    proc = _validate_every_case()
    assert proc.returncode == 1, proc.stdout + proc.stderr
    where = rel if "document" not in case else f"{rel}[{case['document']}]"
    prefix = f"{where}: {case['path']}: "
    lines = [line for line in proc.stdout.splitlines() if line.startswith((f"{rel}: ", f"{rel}["))]
    matching = [line for line in lines if line.startswith(prefix)]
    assert matching, f"no line starts with {prefix!r}:\n{proc.stdout}"
    assert any(case["fragment"] in line for line in matching), f"{case['fragment']!r} not in {matching}"


ALLOWED = {name: case for name, case in CASES.items() if "allow" in case}


def test_graft_validate_accepts_the_pod_security_cases_where_the_operator_allows_them():
    # The other half of each case: refused by default (above), accepted with the exception it asks for; the tests in
    # tests/operator/test_pod_security.py show each is still refused when only the others are allowed.
    assert len(ALLOWED) >= 5
    allow = ",".join(sorted({case["allow"] for case in ALLOWED.values()}))
    files = [f"tests/corpus/cases/{case['file']}" for case in ALLOWED.values()]
    proc = subprocess.run([*GRAFT, "validate", "--cluster", "--allow", allow, *files], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    # Warnings (e.g. no storage credentials named) are not refusals: exit 0 and nothing else said.
    refused = [line for line in proc.stdout.splitlines() if ": warning: " not in line]
    assert (proc.returncode, refused) == (0, []), proc.stdout + proc.stderr


# Cases with `schema: null` (parse errors, empty files, other kinds) give the schema no TransferJob to check.
SCHEMA_CASES = [name for name, case in CASES.items() if case["schema"] is not None]


@pytest.mark.parametrize("name", SCHEMA_CASES, ids=SCHEMA_CASES)
def test_crd_schema_agrees(name):
    case = CASES[name]
    text = (HERE / "cases" / case["file"]).read_text()
    docs = [d for d in yaml.safe_load_all(text) if d is not None] if case["file"].endswith(".yaml") else [
        json.loads(text)
    ]
    doc = docs[case.get("document", 0)]
    problems = _schema_problems(doc)
    if case["schema"]:
        assert problems, "the CRD schema accepts a case it is marked as able to reject"
    else:
        # The gap is real: the API server alone would let this through, so the operator's validation matters.
        assert not problems, f"marked schema: false ({case['why']}) but the schema rejects it: {problems}"


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_pass_cli_and_schema(example):
    proc = subprocess.run([*GRAFT, "validate", str(example)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _schema_problems(yaml.safe_load(example.read_text())) == []
