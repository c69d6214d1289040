"""Every YAML block of the README and docs/*.md is a manifest that works as written, checked by its kind
(docs/blocks.py says how): a typo in a doc fails here, not on a user's cluster."""

from __future__ import annotations

from pathlib import Path

import pytest

from docs.blocks import REPO, UNCHECKED_KINDS, Block, blocks, check_values, checker_for, documents

BLOCKS = blocks()
MANIFESTS = [b for b in BLOCKS if b.marker not in ("not-a-manifest", "helm-values")]
VALUES = [b for b in BLOCKS if b.marker == "helm-values"]
#: The kinds the Quickstart, GPU, Kueue and cloud-identity pages show; each must be found and checked.
MUST_CHECK = {"TransferJob", "Namespace", "Secret", "Deployment", "Service", "Job", "ServiceAccount",
              "PriorityClass", "ResourceFlavor", "ClusterQueue", "LocalQueue"}
MAX_NOT_MANIFESTS = 3  # keep it small: a snippet that is not a manifest is a snippet nobody checks
#: Blocks that are right and fail for a bug elsewhere: (page, a line of the block) -> the bug. Strict: once the bug is
#: fixed the block passes, the xfail fails, and the entry goes.
KNOWN_BUGS: dict[tuple[str, str], str] = {}


def _param(block: Block):
    bug = next((why for (page, text), why in KNOWN_BUGS.items() if block.where.startswith(page + ":")
                and text in block.text), None)
    marks = [pytest.mark.xfail(strict=True, reason=bug)] if bug else []
    return pytest.param(block, id=block.where, marks=marks)



@pytest.mark.parametrize("block", [_param(b) for b in MANIFESTS])
def test_every_document_of_a_yaml_block_is_valid_for_its_kind(block: Block):
    docs = documents(block)
    assert docs, f"{block.where}: an empty YAML block"
    failures = []
    for i, doc in enumerate(docs):
        assert isinstance(doc, dict), f"{block.where}[{i}]: not a mapping; mark it <!-- not-a-manifest: why -->"
        try:
            _, check = checker_for(doc)
        except LookupError as exc:
            pytest.fail(f"{block.where}[{i}]: {exc}")
        if check is not None:
            failures += [f"{block.where}[{i}] {doc.get('kind')}/{_name(doc)}: {f}" for f in check(doc)]
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("block", VALUES, ids=[b.where for b in VALUES])
def test_chart_values_blocks_pass_the_charts_values_schema(block: Block):
    assert check_values(block) == [], block.where


def test_chart_values_that_helm_would_refuse_fail(tmp_path: Path):
    page = tmp_path / "page.md"
    page.write_text("<!-- helm-values -->\n```yaml\nwatchNamespaces: [ml-team]\nimage: {tagg: '0.1.0'}\n```\n")
    (block,) = blocks([page])
    assert {line.split(":")[0] for line in check_values(block)} == {"image"}


def test_the_pages_show_and_check_the_kinds_a_user_applies():
    checked = set()
    for block in MANIFESTS:
        for doc in documents(block):
            if checker_for(doc)[1] is not None:
                checked.add(doc["kind"])
    assert MUST_CHECK <= checked, f"not found in any checked block: {sorted(MUST_CHECK - checked)}"


def test_blocks_that_are_not_manifests_are_few_and_say_why():
    skipped = [b for b in BLOCKS if b.marker == "not-a-manifest"]
    assert len(skipped) <= MAX_NOT_MANIFESTS, [b.where for b in skipped]
    assert all(b.why for b in skipped), [b.where for b in skipped if not b.why]
    assert all(reason for reason in UNCHECKED_KINDS.values())


def test_a_kind_no_schema_checks_fails_the_test_rather_than_passing_unchecked(tmp_path: Path):
    page = tmp_path / "page.md"
    page.write_text("```yaml\napiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\n```\n")
    (block,) = blocks([page])
    with pytest.raises(LookupError, match="Widget"):
        checker_for(documents(block)[0])


def _name(doc: dict) -> str:
    return str((doc.get("metadata") or {}).get("name", "?"))


def test_pages_are_found():
    assert (REPO / "docs" / "quickstart.md") in {b.page for b in BLOCKS}
