"""The operator image, built and run: scripts/image-smoke.sh (see it and tests/ship/image_smoke.py for what
is checked). Needs root (it starts its own dockerd and runs debootstrap) and the Debian and PyPI
registries; about 2.5 minutes on a fresh 2-core machine, 25 s when the image layers are cached."""

from __future__ import annotations

import subprocess

import pytest

from ship.tools import REPO


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_operator_image_reconciles_a_transferjob_as_non_root():
    proc = subprocess.run(["bash", str(REPO / "scripts" / "image-smoke.sh")], capture_output=True, text=True,
                          timeout=1100, check=False)
    tail = (proc.stdout + proc.stderr)[-6000:]
    assert proc.returncode == 0, tail
    assert "operator process runs as uid 10001 (graft)" in proc.stderr, tail
    assert "phases seen:" in proc.stderr and "[image-smoke] PASS" in proc.stderr, tail
