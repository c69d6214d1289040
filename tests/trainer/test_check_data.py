"""`graft validate --check-data`: the input checks a run makes before its first stage, without training (issue 11:
a wrong numClasses and a missing data path passed `graft validate` and failed only after Pretrain had run)."""

from __future__ import annotations

import os
import subprocess
import sys

from support.trainer_data import job_doc, write_job
from typer.testing import CliRunner

from graft import cli
from graft.cli import app

PRETRAIN = {"type": "Pretrain", "data": "builtin:digits-clean", "numClasses": 10, "epochs": 1}
LPFT = [{"type": "FrozenFeatures"}, {"type": "Head"}, {"type": "FullFineTune"}]


def _manifest(tmp_path, name="check", model=None, data=None, stages=None):
    spec = {"model": model or {"backbone": "smallcnn", "numClasses": 10},
            "data": data or {"train": "builtin:digits-noisy", "imageSize": 8}, "stages": stages or [PRETRAIN, *LPFT]}
    return write_job(tmp_path / f"{name}.yaml", job_doc(name, spec))


def test_check_data_finds_what_validate_alone_passes(tmp_path, image_folder):
    for name in ("a.png", "b.png"):
        (image_folder / "mid" / name).write_bytes(b"broken")
    missing = tmp_path / "nowhere"
    bad = _manifest(tmp_path, "bad", {"backbone": "smallcnn", "numClasses": 3},
                    {"train": str(image_folder), "imageSize": 8}, [{**PRETRAIN, "numClasses": 5}, *LPFT])
    lost = _manifest(tmp_path, "lost", data={"train": str(missing), "imageSize": 8})

    plain = CliRunner().invoke(app, ["validate", str(bad), str(lost)])
    assert plain.exit_code == 0, plain.output

    checked = CliRunner().invoke(app, ["validate", "--check-data", str(bad), str(lost)])
    assert checked.exit_code == 1
    lines = checked.stdout.splitlines()
    assert lines == [
        f"{bad}: check-data: stage Pretrain: builtin:digits-clean: has 10 classes but the Pretrain stage's numClasses "
        "is 5",
        f"{bad}: check-data: stage FrozenFeatures: {image_folder}: 2 of 20 images checked are not readable:",
        *[f"  {image_folder / 'mid' / n}: not a readable image (UnidentifiedImageError: not an image format Pillow "
          "knows, or a corrupt header)" for n in ("a.png", "b.png")],
        f"{lost}: check-data: stage FrozenFeatures: {missing}: not found (expected an ImageFolder: one sub-folder of "
        "images per class)",
    ]
    assert checked.stderr == "2 of 2 file(s) invalid\n"


def test_check_data_passes_good_inputs_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    good = _manifest(tmp_path)
    result = CliRunner().invoke(app, ["validate", "--check-data", str(good)])
    assert result.exit_code == 0, result.output
    assert (result.stdout, result.stderr) == ("", "1 file(s) valid, inputs checked\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["check.yaml"]  # no graft-runs/, no ledger


def test_check_data_warns_of_leakage_and_still_passes(tmp_path):
    """A Pretrain on the target's own source has seen the images the job is scored on (issue 27, part 3): each
    overlap is one warning line, with counts and examples; warnings alone exit 0. (The test above is the demo's
    shape, Pretrain on the other half of the digits, and prints nothing.)"""
    job = _manifest(tmp_path, data={"train": "builtin:digits-noisy", "imageSize": 8, "testFraction": 0.3},
                    stages=[{**PRETRAIN, "data": "builtin:digits-noisy"}, *LPFT])
    result = CliRunner().invoke(app, ["validate", "--check-data", str(job)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    # Every image of the target's validation and test splits (each content counted once) was in Pretrain's set.
    from graft.api.models import DataSpec
    from graft_trainer import data
    from graft_trainer.leakage import fingerprints

    _, val, test = data.target_sets(DataSpec.model_validate({"train": "builtin:digits-noisy", "testFraction": 0.3}))
    counts = [len(fingerprints(val)), len(fingerprints(test))]
    assert [line.split(" image(s)")[0] for line in lines] == [
        f"{job}: check-data: warning: leakage: {n}" for n in counts], lines
    assert "of the validation split are also in the Pretrain data split (e.g. builtin:digits-noisy[" in lines[0]
    assert "of the test split are also in the Pretrain data split" in lines[1]


def test_check_data_loads_the_weights(tmp_path):
    absent = tmp_path / "absent.pt"
    job = _manifest(tmp_path, model={"backbone": "smallcnn", "numClasses": 10, "weights": str(absent)},
                    stages=LPFT)
    result = CliRunner().invoke(app, ["validate", "--check-data", str(job)])
    assert result.exit_code == 1
    assert result.stdout == f"{job}: check-data: stage FrozenFeatures: {absent}: weights file not found\n"


def test_check_data_starts_no_ray(tmp_path):
    """Run as a user would, with `import ray` made to fail: the checks never reach for Ray."""
    good = _manifest(tmp_path)
    code = ("import sys; sys.modules['ray'] = None; from graft.cli import main; "
            f"sys.argv = ['graft', 'validate', '--check-data', {str(good)!r}]; main()")
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120,
                          env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stderr == "1 file(s) valid, inputs checked\n"


def test_check_data_without_the_trainer_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "PLUGINS", ("graft_operator.cli",))
    result = CliRunner().invoke(app, ["validate", "--check-data", str(_manifest(tmp_path))])
    assert result.exit_code == 2
    assert result.stderr == "error: --check-data needs the trainer (graft_trainer), which is not installed\n"


def test_check_data_follows_the_cluster_rules_first(tmp_path):
    """An invalid manifest (here: no spec.storage for a cluster) is reported as it is; its data is not read."""
    job = _manifest(tmp_path, data={"train": str(tmp_path / "nowhere"), "imageSize": 8})
    result = CliRunner().invoke(app, ["validate", "--cluster", "--check-data", str(job)])
    assert result.exit_code == 1
    assert "check-data" not in result.stdout and "spec.storage" in result.stdout
