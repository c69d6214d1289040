"""`model.backbone: timm:<name>`, `weights: hub` and `layerDecay` in validation: checked offline and without torch
(the shipped name list), unknown names answered with the closest known ones."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from graft.api.validation import validate_document

ROOT = Path(__file__).resolve().parents[2]
BASE = yaml.safe_load((ROOT / "examples" / "digits-lpft.yaml").read_text())


def _doc(backbone: str, weights: str | None = "s3://models-a/w.safetensors", **fft) -> dict:
    doc = copy.deepcopy(BASE)
    doc["spec"]["model"] = {"backbone": backbone, "numClasses": 10, **({"weights": weights} if weights else {})}
    doc["spec"]["stages"] = [{"type": "FrozenFeatures"}, {"type": "Head"}, {"type": "FullFineTune", **fft}]
    return doc


ACCEPTED = {
    "timm-cnn": _doc("timm:convnext_tiny"),
    "timm-pretrained-tag": _doc("timm:vit_small_patch14_dinov2.lvd142m", "hub"),
    "timm-efficientnetv2": _doc("timm:efficientnetv2_rw_s", "s3://models-a/e.pth"),
    "timm-hf-hub": _doc("timm:hf-hub:timm/vit_small_patch14_dinov2.lvd142m", "hub"),
    "timm-layer-decay": _doc("timm:vit_tiny_patch16_224", "hub", layerDecay=0.65),
    "timm-layer-decay-off": _doc("timm:vit_tiny_patch16_224", "hub", layerDecay=1.0),
    "torchvision-still": _doc("resnet50", "torchvision:IMAGENET1K_V2"),
}


@pytest.mark.parametrize("case", list(ACCEPTED), ids=list(ACCEPTED))
def test_accepts(case):
    job, problems = validate_document(ACCEPTED[case])
    assert problems == [] and job is not None


REJECTED = {
    "timm-typo-names-the-closest": (_doc("timm:convnext_tiy"), "spec.model.backbone",
                                    "unknown timm model 'convnext_tiy' (not in timm.list_models() of the timm graft "
                                    "ships); closest: timm:convnext_tiny"),
    "torchvision-typo": (_doc("resnet51"), "spec.model.backbone", "closest: resnet50"),
    "hf-hub-form": (_doc("timm:hf-hub:no-repo", "hub"), "spec.model.backbone", "expected timm:hf-hub:<org>/<repo>"),
    "hub-for-torchvision": (_doc("resnet50", "hub"), "spec.model.weights", "`hub` downloads a timm model's"),
    "torchvision-weights-for-timm": (_doc("timm:resnet50", "torchvision:IMAGENET1K_V2"), "spec.model.weights",
                                     "a timm: backbone takes `hub` or a weights file"),
    "layer-decay-for-torchvision": (_doc("resnet50", "torchvision:IMAGENET1K_V2", layerDecay=0.75),
                                    "spec.stages[2].layerDecay", "needs a timm: backbone"),
    "layer-decay-zero": (_doc("timm:vit_tiny_patch16_224", "hub", layerDecay=0), "spec.stages[2].layerDecay",
                         "greater than 0"),
    "layer-decay-above-one": (_doc("timm:vit_tiny_patch16_224", "hub", layerDecay=1.5),
                              "spec.stages[2].layerDecay", "less than or equal to 1"),
}


@pytest.mark.parametrize("case", list(REJECTED), ids=list(REJECTED))
def test_rejects_with_the_field_and_what_is_allowed(case):
    doc, path, fragment = REJECTED[case]
    _, problems = validate_document(doc)
    assert [p.path for p in problems] == [path], problems
    assert fragment in problems[0].reason, problems[0].reason


def test_validate_imports_neither_torch_nor_timm(tmp_path):
    """The name check reads the shipped list: `graft validate` stays fast and runs where no torch is installed."""
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(_doc("timm:convnext_tiy")))
    code = ("import sys; from graft.cli import main\nsys.argv = ['graft', 'validate', sys.argv[1]]\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'timm')))")
    proc = subprocess.run([sys.executable, "-c", code, str(job)], capture_output=True, text=True, timeout=60)
    assert "closest: timm:convnext_tiny" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_shipped_name_list_is_the_installed_timms():
    """graft/api/timm_models.txt is what scripts/timm-models.py writes from the pinned timm (rerun it after an
    upgrade)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import importlib

        script = importlib.import_module("timm-models")
    finally:
        sys.path.pop(0)
    from graft.api.models import TIMM_MODELS_FILE

    assert TIMM_MODELS_FILE.read_text() == script.text(), "run: .venv/bin/python scripts/timm-models.py"


def test_hub_weights_are_no_local_path_on_a_cluster():
    from graft.api.validation import cluster_warnings, load_job

    job = load_job((ROOT / "examples" / "timm-dinov2-manifest-s3.yaml").read_text())
    assert job.spec.model.weights == "hub" and cluster_warnings(job.spec) == []
