"""`./dev`, the README's entry point, as a user calls it from elsewhere."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_dev_graft_reads_paths_relative_to_the_callers_directory(tmp_path):
    shutil.copy(ROOT / "examples" / "digits-lpft.yaml", tmp_path / "mine.yaml")
    proc = subprocess.run([str(ROOT / "dev"), "graft", "validate", "mine.yaml"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600, env={**os.environ, "NO_COLOR": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
