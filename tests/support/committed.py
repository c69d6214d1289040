"""The repository's committed generated files that tests hold equal to their generators (paths in a checkout: an
installed graft has no chart or docs beside it, so these are the tests' names, not the package's)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: The CRD the Helm chart installs; equal to `graft.api.crd.crd_yaml()` (scripts/chart-files.py writes it).
COMMITTED_CRD = ROOT / "helm" / "graft" / "files" / "transferjobs.graft.dev.yaml"
#: The API reference; equal to `graft.api.reference.reference_markdown()`.
COMMITTED_REFERENCE = ROOT / "docs" / "reference.md"
