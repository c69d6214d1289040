"""timm backbones in the trainer, in-process (the Ray runs are in test_timm_ray.py): weights files and their key
check, `weights: hub` kept in the job's storage, FullFineTune's parameter groups (layer-wise decay, no weight decay
on norms and biases), and the export: `graft predict` on it, and plain timm loading it to the same logits.
Nothing is downloaded (HF_HUB_OFFLINE)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from support.trainer_data import SMOKE_CHECKS, job_doc, state_dict_bytes

from graft import storage
from graft.api.models import FullFineTuneStage, TransferJob
from graft_trainer import loops, models, timm_backbone
from graft_trainer.driver import Driver
from graft_trainer.errors import InputError
from graft_trainer.executors import LocalExecutor

GRAFT = str(Path(sys.executable).with_name("graft"))
VIT = "vit_tiny_patch16_224"


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _reference(name: str, size: int = 32, seed: int = 0, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    extra = {"img_size": size} if name.startswith("vit") else {}
    return timm.create_model(name, pretrained=False, **extra, **kw).eval()


# ----------------------------------------------------------------------------------------------- weights


def test_classifier_only_mismatch_is_said_once_and_features_are_the_checkpoints(tmp_path, caplog):
    ref = _reference("resnet18")
    uri = str(tmp_path / "r18.safetensors")
    storage.write_bytes(uri, timm_backbone.safetensors_bytes(ref.state_dict()))  # with its 1000-class fc
    net = models.build("timm:resnet18", 3, 32)
    with caplog.at_level(logging.WARNING, logger="graft_trainer.models"):
        models.load_weights(net, uri)  # a worker's load: quiet
        models.load_weights(net, uri, report=True)  # the driver's check
    said = [r.getMessage() for r in caplog.records]
    assert said == [f"{uri}: the checkpoint's classifier (fc.bias, fc.weight) is not loaded: the new head with 3 "
                    "outputs replaces it"]
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(net.eval().features(x), ref.forward_head(ref.forward_features(x), pre_logits=True))


def test_pth_training_checkpoint_loads(tmp_path):
    ref = _reference("resnet18", num_classes=0)
    uri = tmp_path / "r18.pth"
    uri.write_bytes(state_dict_bytes({"state_dict": ref.state_dict(), "epoch": torch.tensor(3)}))
    net = models.build("timm:resnet18", 3, 32)
    models.load_weights(net, str(uri))
    assert torch.equal(net.backbone.conv1.weight, ref.conv1.weight)


def test_other_mismatch_fails_naming_the_keys(tmp_path):
    state = _reference("resnet18").state_dict()
    del state["layer4.1.bn2.weight"]
    state["extra.weight"] = torch.zeros(1)
    state["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    uri = str(tmp_path / "bad.safetensors")
    storage.write_bytes(uri, timm_backbone.safetensors_bytes(state))
    with pytest.raises(InputError) as err:
        models.load_weights(models.build("timm:resnet18", 3, 32), uri)
    assert str(err.value) == (
        f"{uri}: weights do not fit backbone timm:resnet18 (missing keys: layer4.1.bn2.weight; unexpected keys: "
        "extra.weight; wrong shapes: conv1.weight (64, 3, 3, 3) != (64, 3, 7, 7))")


def test_hub_weights_are_kept_in_the_job_storage_and_never_fetched_again(tmp_path):
    spec = {"model": {"backbone": "timm:resnet18", "numClasses": 3, "weights": "hub"},
            "data": {"train": "builtin:digits", "imageSize": 32},
            "stages": [{"type": "FrozenFeatures"}]}
    driver = Driver(TransferJob.model_validate(job_doc("hub", spec)), str(tmp_path))
    with pytest.raises(InputError) as err:  # offline: timm cannot fetch them; said as such
        driver.weights()
    assert "cannot fetch it from the Hugging Face Hub" in str(err.value) and "HF_TOKEN" in str(err.value)
    cached = f"{driver.root}/weights/hub-resnet18.safetensors"
    assert not storage.exists(cached)
    # What a first attempt (with network) left: a retry reads it and downloads nothing.
    storage.write_bytes(cached, timm_backbone.safetensors_bytes(_reference("resnet18", num_classes=0).state_dict()))
    assert driver.weights() == cached
    driver.check_weights()


# ------------------------------------------------------------------------------------------- param groups


def _lrs(optimizer) -> dict[int, tuple[float, float]]:
    """(learning rate, weight decay) of every parameter in the optimizer's groups, by the parameter's id."""
    return {id(p): (g["lr"], g["weight_decay"]) for g in optimizer.param_groups for p in g["params"]}


def _flat(table: dict[str, tuple[float, float]]) -> dict[str, float]:
    """`name: (lr, wd)` as `name lr` and `name wd` (pytest.approx compares flat mappings)."""
    return {f"{name} {what}": v for name, pair in table.items() for what, v in zip(("lr", "wd"), pair, strict=True)}


def test_layer_decay_gives_each_vit_block_its_learning_rate():
    """ViT-Tiny has 12 blocks: the embeddings are layer 0, block i is layer i + 1, the final norm goes with the last
    block (layer 12, timm's grouping); layer l learns at lr * backboneLrScale * decay^(12 - l), the new head at lr.
    Norms, biases, the class token and the position embedding have no weight decay."""
    net = models.build(f"timm:{VIT}", 5, 32)
    stage = FullFineTuneStage(type="FullFineTune", lr=1e-3, backbone_lr_scale=0.1, layer_decay=0.5, weight_decay=0.05)
    got = _lrs(loops.fine_tune_optimizer(net, stage))
    named = dict(net.named_parameters())
    expected = {
        "backbone.cls_token": (1e-4 * 0.5**12, 0.0),
        "backbone.pos_embed": (1e-4 * 0.5**12, 0.0),
        "backbone.patch_embed.proj.weight": (1e-4 * 0.5**12, 0.05),
        "backbone.patch_embed.proj.bias": (1e-4 * 0.5**12, 0.0),
        "backbone.blocks.0.attn.qkv.weight": (1e-4 * 0.5**11, 0.05),
        "backbone.blocks.0.norm1.weight": (1e-4 * 0.5**11, 0.0),
        "backbone.blocks.5.mlp.fc1.weight": (1e-4 * 0.5**6, 0.05),
        "backbone.blocks.11.mlp.fc2.bias": (1e-4, 0.0),
        "backbone.blocks.11.mlp.fc2.weight": (1e-4, 0.05),
        "backbone.norm.weight": (1e-4, 0.0),
        "head.weight": (1e-3, 0.05),
        "head.bias": (1e-3, 0.0),
    }
    actual = {name: got[id(named[name])] for name in expected}
    assert _flat(actual) == pytest.approx(_flat(expected), rel=1e-9)
    assert len(got) == len(named), "every parameter is in exactly one group"


def test_cnn_default_has_no_layer_decay_but_no_weight_decay_on_norms_and_biases():
    net = models.build("timm:resnet18", 5, 32)
    stage = FullFineTuneStage(type="FullFineTune", lr=1e-3, backbone_lr_scale=0.1, weight_decay=0.05)
    got = _lrs(loops.fine_tune_optimizer(net, stage))
    named = dict(net.named_parameters())
    expected = {"backbone.conv1.weight": (1e-4, 0.05), "backbone.bn1.weight": (1e-4, 0.0),
                "backbone.layer4.1.conv2.weight": (1e-4, 0.05), "backbone.layer4.1.bn2.bias": (1e-4, 0.0),
                "head.weight": (1e-3, 0.05), "head.bias": (1e-3, 0.0)}
    assert _flat({name: got[id(named[name])] for name in expected}) == pytest.approx(_flat(expected), rel=1e-9)


@pytest.mark.parametrize(("name", "decay"), [(VIT, 0.75), ("vit_small_patch14_dinov2.lvd142m", 0.75),
                                             ("eva02_tiny_patch14_224", 0.75), ("convnext_tiny", 0.8),
                                             ("resnet50", 1.0), ("efficientnetv2_rw_s", 1.0)])
def test_family_defaults(name, decay):
    assert timm_backbone.default_layer_decay(f"timm:{name}") == decay


# ------------------------------------------------------------------------------------------------ export


@pytest.mark.parametrize("name", ["resnet18", VIT])
def test_export_predicts_and_loads_into_plain_timm_with_the_same_logits(tmp_path, image_folder, name):
    ref = _reference(name)
    weights = str(tmp_path / "w.safetensors")
    storage.write_bytes(weights, timm_backbone.safetensors_bytes(ref.state_dict()))
    spec = {"model": {"backbone": f"timm:{name}", "numClasses": 3, "weights": weights},
            "data": {"train": str(image_folder), "imageSize": 32, "validationSplit": 0.34},
            "stages": [{"type": "FrozenFeatures"}, {"type": "Head", "epochs": 20},
                       {"type": "FullFineTune", "epochs": 1, "batchSize": 6}], "checks": SMOKE_CHECKS}
    ledger = Driver(TransferJob.model_validate(job_doc("exp", spec)), str(tmp_path / "runs"),
                    executor=LocalExecutor()).run()
    model = Path(ledger.model_uri)
    meta = json.loads((model / "model.json").read_text())
    assert meta["architecture"] == f"timm:{name}" and meta["labels"] == ["bright", "dark", "mid"]
    assert meta["timm"]["name"] == name and meta["timm"]["checkpoint"] == "timm.safetensors"
    assert meta["timm"]["data_config"]["mean"] == list(ref.pretrained_cfg["mean"])
    assert meta["timm"]["data_config"]["interpolation"] == ref.pretrained_cfg["interpolation"]

    # The three lines docs/trainer.md shows.
    plain = timm.create_model(meta["timm"]["name"], num_classes=meta["num_classes"],
                              checkpoint_path=str(model / meta["timm"]["checkpoint"]), **meta["timm"]["create_kwargs"])
    plain.eval()
    from graft_trainer.export import load_model

    net, _ = load_model(str(model))
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(plain(x), net(x), atol=1e-6)
        assert not torch.allclose(net(x), models.build(f"timm:{name}", 3, 32).eval()(x), atol=1e-3)

    proc = subprocess.run([GRAFT, "predict", str(model), str(image_folder / "dark"), "-o", "json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    shown = json.loads(proc.stdout)
    assert len(shown) == 6 and all(len(p["top"]) == 3 for p in shown)


def test_layer_decay_leaves_older_ledgers_hashes_as_they_were():
    """A job's stage hashes before layerDecay existed (computed with the code of ed415cc on the demo manifest): a
    rerun of an old finished job is not refused as a changed spec. ed415cc counted every field, the form
    `first_invalidated` accepts beside today's (`neutral=False`, issue 12)."""
    import yaml

    from graft_trainer import identity

    doc = yaml.safe_load((Path(__file__).resolve().parents[2] / "examples" / "digits-lpft.yaml").read_text())
    assert identity.hashes(identity.view(TransferJob.model_validate(doc).spec), neutral=False) == [
        "sha256:ba839c19f99e23414f582050607b8389", "sha256:edeb397d1797b6e3c5c9142e45e8e1fd",
        "sha256:d638115237ec748b791d77ced23edf62", "sha256:5a25270dfe3b648fba5705a2c58a1b0f"]
    doc["spec"]["model"]["backbone"] = "timm:resnet18"
    doc["spec"]["stages"][3]["layerDecay"] = 0.5
    changed = identity.hashes(identity.view(TransferJob.model_validate(doc).spec))
    doc["spec"]["stages"][3]["layerDecay"] = 0.6
    assert identity.hashes(identity.view(TransferJob.model_validate(doc).spec))[3] != changed[3]


@pytest.mark.parametrize("name", ["resnet18", VIT, "convnext_atto"])
def test_images_are_resized_and_cropped_as_timms_own_eval_transform(tmp_path, name):
    """Preprocessing from the model's pretrained config: a non-square photo decoded by the trainer for a timm backbone
    is what timm's `create_transform(**resolve_data_config(...))` makes of it (interpolation, crop_pct, centre crop,
    mean, std), at the job's image size."""
    import numpy as np
    from PIL import Image, ImageFilter
    from timm.data import create_transform, resolve_data_config

    from graft_trainer import data as data_mod

    rng = np.random.RandomState(0)
    photo = tmp_path / "photo.png"
    Image.fromarray(rng.randint(0, 256, (90, 140, 3), dtype=np.uint8)).filter(ImageFilter.GaussianBlur(2)).save(photo)
    size = 48
    pre = models.torchvision_preset(f"timm:{name}", None)
    ours = data_mod.normalize(torch.from_numpy(data_mod.decode_image(str(photo), size, data_mod.resize_of(pre)))
                              [None].float() / 255.0, pre["mean"], pre["std"])[0]
    cfg = resolve_data_config({}, model=timm.create_model(name, pretrained=False))
    theirs = create_transform(**{**cfg, "input_size": (3, size, size)}, is_training=False)(Image.open(photo))
    assert cfg["crop_pct"] < 1 and ours.shape == theirs.shape
    assert torch.allclose(ours, theirs, atol=1e-5)


@pytest.mark.parametrize(("backbone", "given", "size"), [
    ("timm:vit_small_patch14_dinov2.lvd142m", None, 518),  # the pretrained config's input size
    ("timm:resnet18", None, 224),
    ("timm:vit_small_patch14_dinov2.lvd142m", 224, 224),  # an explicit imageSize wins
    ("resnet50", None, 224),
])
def test_image_size_defaults_to_the_models_pretrained_input_size(backbone, given, size):
    data = {"train": "builtin:digits", **({"imageSize": given} if given else {})}
    spec = {"model": {"backbone": backbone, "numClasses": 10, "weights": "s3://w-1/w.safetensors"}, "data": data,
            "stages": [{"type": "FrozenFeatures"}]}
    assert Driver(TransferJob.model_validate(job_doc("size", spec)), "store").spec.data.image_size == size


def test_an_empty_image_size_keeps_older_ledgers_hashes():
    """Before imageSize could be empty its default was 224: a torchvision job that left it out has the stage hashes
    it had then (computed with the code of ed415cc on the demo manifest without imageSize; that code counted every
    field, the form `first_invalidated` accepts beside today's, `neutral=False`)."""
    import yaml

    from graft_trainer import identity

    doc = yaml.safe_load((Path(__file__).resolve().parents[2] / "examples" / "digits-lpft.yaml").read_text())
    del doc["spec"]["data"]["imageSize"]
    assert identity.hashes(Driver(TransferJob.model_validate(doc), "store").view, neutral=False) == [
        "sha256:44a7d547ba47683906562ff83225650c", "sha256:d55e211a13bb776941bd9c2da7078153",
        "sha256:c0ce45a9f400d61e49485a965a120a1b", "sha256:149e5c5110ef8a7a66f2d23dd4699202"]
