"""The TransferJob resource (graft.dev/v1alpha1): spec and status as pydantic models.

These models are the single source of truth. The CRD's openAPIV3Schema is generated from them
(`graft crd`), `graft validate` and the operator validate with them, and the trainer reads its job
from them. Every field's docstring becomes its description in the CRD, so `kubectl explain` shows it.
"""

from __future__ import annotations

import functools
import re
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from graft import storage_backends

GROUP = "graft.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "TransferJob"
PLURAL = "transferjobs"
SINGULAR = "transferjob"
SHORT_NAMES = ["tj"]
CATEGORIES = ["graft"]

#: Backbones the trainer knows how to build, with the width of their pooled features.
BACKBONES: dict[str, int] = {
    "smallcnn": 64,
    "resnet18": 512,
    "resnet50": 2048,
    "mobilenet_v3_large": 960,
    "efficientnet_b0": 1280,
    "convnext_tiny": 768,
    "vit_b_16": 768,
}

#: `timm:<name>` backbones: any model name timm knows (`timm.list_models()`, with or without a pretrained tag such as
#: `.augreg_in21k`), or a Hugging Face Hub repository (`timm:hf-hub:<org>/<repo>`). The names are read from a file
#: shipped with graft (scripts/timm-models.py writes it from the pinned timm), so validation needs no torch.
TIMM_PREFIX = "timm:"
TIMM_MODELS_FILE = Path(__file__).with_name("timm_models.txt")
_HF_HUB_REPO = re.compile(r"^hf-hub:[A-Za-z0-9][-A-Za-z0-9_.]*/[A-Za-z0-9][-A-Za-z0-9_.]*(@[-A-Za-z0-9_.]+)?$")
#: What the CRD's schema accepts as a backbone (the models check timm names against the list as well).
BACKBONE_PATTERN = "^(" + "|".join(re.escape(b) for b in BACKBONES) + r"|timm:\S+)$"


@functools.cache
def timm_models() -> frozenset[str]:
    """The timm model names `timm:<name>` may use (architectures and their pretrained tags)."""
    lines = TIMM_MODELS_FILE.read_text().splitlines()
    return frozenset(line for line in lines if line and not line.startswith("#"))


def check_backbone(value: str) -> str:
    """A known backbone name; ValueError says what is allowed and, for a near miss, the closest known names."""
    import difflib

    if value in BACKBONES:
        return value
    if value.startswith(TIMM_PREFIX):
        name = value[len(TIMM_PREFIX) :]
        if name.startswith("hf-hub:"):
            if not _HF_HUB_REPO.match(name):
                raise ValueError(f"{value!r}: expected timm:hf-hub:<org>/<repo> (e.g. timm:hf-hub:timm/vit_small_"
                                 "patch14_dinov2.lvd142m)")
            return value
        known = timm_models()
        if name in known:
            return value
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.6)
        hint = f"; closest: {', '.join('timm:' + c for c in close)}" if close else ""
        raise ValueError(f"unknown timm model {name!r} (not in timm.list_models() of the timm graft ships){hint}")
    close = difflib.get_close_matches(value, list(BACKBONES), n=3, cutoff=0.6)
    hint = f"; closest: {', '.join(close)}" if close else ""
    raise ValueError(f"must be one of {', '.join(BACKBONES)} or timm:<name> (got {value!r}){hint}")


#: URI schemes accepted for data, weights and storage: the object stores of graft.storage_backends (`s3://`,
#: `gs://`), `file://` and a few of Graft's own. A bare path is a local path.
OBJECT_STORE_SCHEMES = storage_backends.remote_prefixes()
DATA_SCHEMES = (*OBJECT_STORE_SCHEMES, "file://", "builtin:")
WEIGHTS_SCHEMES = (*OBJECT_STORE_SCHEMES, "file://", "torchvision:")
STORAGE_SCHEMES = (*OBJECT_STORE_SCHEMES, "file://")
BUILTIN_DATASETS = ("digits", "digits-noisy", "digits-clean")

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# The Kubernetes quantity grammar (the pattern controller-gen puts on resource.Quantity), without a sign:
# a worker cannot have a negative amount of anything.
QUANTITY_PATTERN = (
    r"^\+?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
_QUANTITY = re.compile(QUANTITY_PATTERN)
_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*):")
_SECRET_KEY = r"^[-._a-zA-Z0-9]+$"  # noqa: S105 (the grammar of a Secret's key names)
# `scheme://user:password@host` and `scheme://token@host`: anything before '@' in the authority.
_URI_USERINFO = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://[^/@?#]*@")
# Things that look like secrets wherever they appear in a spec: AWS key ids, PEM private keys, signed-URL
# and token query parameters, `SECRET_NAME=value` assignments.
_SECRET_VALUE = re.compile(
    r"(?:^|[^A-Z0-9])(AKIA|ASIA)[A-Z0-9]{16}(?:$|[^A-Z0-9])"
    r"|-----BEGIN [A-Z ]*PRIVATE KEY"
    r"|(?i:[?&](x-amz-credential|x-amz-signature|x-amz-security-token|signature|sig|token|access_token|api_?key"
    r"|password)=)"
    r"|(?i:\b(aws_secret_access_key|aws_session_token|aws_access_key_id|password)\s*[=:]\s*\S)"
)
_SECRET_FIELD = re.compile(
    r"(?i)^(aws_?)?(access_?key(_?id)?|secret(_?access)?_?key|password|passwd|(auth_?|bearer_?|access_?|refresh_?"
    r"|session_?|api_?)?token|api_?key|private_?key|client_?secret)$"
)
CREDENTIALS_HINT = "put keys in a Secret and name it in spec.storage.credentialsSecret"
MLFLOW_CREDENTIALS_HINT = "put them in a Secret and name it in spec.tracking.mlflow.credentialsSecret"


def credentials_hint(path: str) -> str:
    """Where the credential found at `path` (relative to spec) belongs: the Secret reference of its own part."""
    return MLFLOW_CREDENTIALS_HINT if path.startswith("tracking.") else CREDENTIALS_HINT

MAX_URI_LENGTH = 2048
_IMAGE = r"^[^\s@]+(@sha256:[a-f0-9]{64})?$"
_KUEUE_QUEUE = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
_REGION = r"^[a-z0-9-]{1,63}$"
#: What each pattern means, for error messages.
PATTERN_HELP = {
    _DNS1123_SUBDOMAIN: "a valid name (lower-case letters, digits, '-' and '.', starting and ending with a letter "
    "or digit)",
    _SECRET_KEY: "a valid Secret key (letters, digits, '-', '_' and '.')",
    _IMAGE: "a container image reference (registry/repository:tag or @sha256:<digest>, no spaces)",
    _KUEUE_QUEUE: "a valid queue name (a label value: lower-case letters, digits, '-' and '.')",
    _REGION: "a region name such as us-east-1",
    QUANTITY_PATTERN: "a Kubernetes quantity (e.g. 500m, 2, 16Gi)",
}

MAX_REPLICAS = 512
MAX_EPOCHS = 10_000


class _Model(BaseModel):
    """Base for every spec object: camelCase on the wire, unknown fields rejected, no type coercion.

    Strict, because the API server is: `epochs: "10"` or `suspend: "yes"` fail there, so they fail here too
    rather than `graft validate` passing a manifest that `kubectl apply` then rejects."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_attribute_docstrings=True,
        validate_default=True,
        strict=True,
    )


class _StatusModel(_Model):
    """Base for status objects: read back from the API server and the ledger, so enums come as strings."""

    model_config = ConfigDict(strict=False)


def _check_uri(value: str, schemes: tuple[str, ...], *, allow_local: bool = True) -> str:
    """Accept a URI with one of `schemes`, or a local path when `allow_local`; never credentials."""
    allowed = ", ".join(f"{s}..." for s in schemes) + (" or a local path" if allow_local else "")
    if not value.strip():
        raise ValueError(f"must not be empty; allowed: {allowed}")
    if value != value.strip() or any(c in value for c in "\r\n\t\0"):
        raise ValueError(f"{value[:80]!r} has leading/trailing whitespace or control characters")
    if _URI_USERINFO.match(value):
        raise ValueError(f"credentials must not be inline in a URI ('user:key@' found); {CREDENTIALS_HINT}")
    scheme = _SCHEME.match(value)
    if scheme and any(value.startswith(s) for s in schemes):
        if value.startswith(OBJECT_STORE_SCHEMES):
            storage_backends.for_uri(value).check_uri(value)
        elif value.startswith("file://") and not value.startswith("file:///"):
            raise ValueError(f"{value!r}: a file:// URI needs an absolute path (file:///data/train)")
        elif value.startswith("builtin:") and value[len("builtin:") :] not in BUILTIN_DATASETS:
            raise ValueError(f"unknown built-in data set {value!r}; known: {', '.join(BUILTIN_DATASETS)}")
        return value
    if scheme and (len(scheme.group(1)) > 1 or "://" in value):
        raise ValueError(f"unsupported URI scheme {scheme.group(1) + ':'!r} in {value!r}; allowed: {allowed}")
    if not allow_local:
        raise ValueError(f"{value!r} is not a URI; allowed: {allowed}")
    if scheme:  # a Windows drive letter: the trainer runs on Linux
        raise ValueError(f"{value!r} is not a POSIX path; allowed: {allowed}")
    return value


# --------------------------------------------------------------------------------------------- model


class ModelSpec(_Model):
    """The network to transfer from."""

    backbone: str = Field(max_length=256, json_schema_extra={"pattern": BACKBONE_PATTERN})
    """Backbone architecture: a torchvision name (`smallcnn`, `resnet18`, `resnet50`, `mobilenet_v3_large`,
    `efficientnet_b0`, `convnext_tiny`, `vit_b_16`; `smallcnn` for tiny images such as builtin:digits), or
    `timm:<name>` for any model timm knows (`timm:convnext_tiny`, `timm:vit_small_patch14_dinov2.lvd142m`) or a
    timm model on the Hugging Face Hub (`timm:hf-hub:<org>/<repo>`)."""

    weights: str | None = Field(default=None, min_length=1, max_length=MAX_URI_LENGTH)
    """Pretrained weights: `torchvision:<WEIGHTS_ENUM>` (e.g. `torchvision:IMAGENET1K_V2`, downloaded when the
    network allows), `hub` (timm backbones: the model's pretrained weights from the Hugging Face Hub, downloaded once
    at run time into the job's storage; a private repository's token comes from `HF_TOKEN` in the credentials
    Secret), a `s3://` or local weights file (a PyTorch state_dict, `.pth`/`.pt`, or `.safetensors`), or empty for
    random initialisation (then the job should start with a `Pretrain` stage)."""

    num_classes: int = Field(ge=2, le=100_000)
    """Number of target classes; the classifier head is replaced to have this many outputs."""

    @field_validator("backbone")
    @classmethod
    def _backbone(cls, v: str) -> str:
        return check_backbone(v)

    @field_validator("weights")
    @classmethod
    def _weights_uri(cls, v: str | None) -> str | None:
        if v is None or v == "hub":
            return v
        if v.startswith("torchvision:"):
            if not re.match(r"^torchvision:[A-Za-z0-9_]+$", v):
                raise ValueError(f"{v!r}: expected torchvision:<WEIGHTS_NAME>, e.g. torchvision:IMAGENET1K_V1")
            return v
        return _check_uri(v, WEIGHTS_SCHEMES)

    @model_validator(mode="after")
    def _weights_fit_backbone(self) -> ModelSpec:
        timm = self.backbone.startswith(TIMM_PREFIX)
        if self.weights == "hub" and not timm:
            raise ValueError(f"weights: `hub` downloads a timm model's pretrained weights; {self.backbone!r} is not a "
                             "timm: backbone (use torchvision:<WEIGHTS_NAME> or a weights file)")
        if timm and self.weights and self.weights.startswith("torchvision:"):
            raise ValueError(f"weights: {self.weights!r} is a torchvision weights name; a timm: backbone takes `hub` "
                             "or a weights file (.safetensors, .pth)")
        return self


# ---------------------------------------------------------------------------------------------- data


class DataSpec(_Model):
    """The target data set."""

    train: str = Field(min_length=1, max_length=MAX_URI_LENGTH)
    """Training images: an ImageFolder tree (one sub-folder per class) at a local path, `file://` or
    `s3://` prefix, a manifest table (a `.csv`, `.parquet` or `.jsonl` file there: one row per image, its path in
    `pathColumn` and its label in `labelColumn`; classes are the sorted labels), or a built-in offline data set
    (`builtin:digits`, `builtin:digits-noisy`)."""

    validation: str | None = Field(default=None, min_length=1, max_length=MAX_URI_LENGTH)
    """Validation images, same forms as `train`. When empty, `validationSplit` of `train` is held out."""

    test: str | None = Field(default=None, min_length=1, max_length=MAX_URI_LENGTH)
    """Held-out test images, same forms as `train`. Never used to choose anything (checkpoint, head setting,
    candidate); every stage reports its test metrics beside the validation ones. See also `testFraction`."""

    test_fraction: float | None = Field(default=None, gt=0.0, lt=1.0)
    """Fraction of `train` (of each class, seeded by `seed`) split off as the test set before the validation split
    and the few-shot draw, when `test` is empty. No test set when both are empty."""

    validation_split: float = Field(default=0.2, gt=0.0, lt=1.0)
    """Fraction of `train` held out for validation when `validation` is empty. Default 0.2."""

    image_size: int | None = Field(default=None, ge=8, le=1024)
    """Side of the square input images in pixels after preprocessing. Default: a timm backbone's pretrained input
    size (its config's `input_size`, e.g. 518 for `vit_small_patch14_dinov2.lvd142m`), 224 for the others."""

    shots_per_class: int | None = Field(default=None, ge=1, le=1_000_000)
    """Use only this many training images per class (few-shot); all of them when empty."""

    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    """Seed for the validation split, few-shot sampling and weight initialisation. Default 0."""

    path_column: str | None = Field(default=None, min_length=1, max_length=256)
    """Manifest tables: the column with each image's path, relative to the table's folder, absolute, or a `s3://`
    or `file://` URI. Default `path`."""

    label_column: str | None = Field(default=None, min_length=1, max_length=256)
    """Manifest tables: the column with each image's label (a validation or test table's labels must be among the
    training table's). Default `label`."""

    @field_validator("train", "validation", "test")
    @classmethod
    def _data_uri(cls, v: str | None) -> str | None:
        return v if v is None else _check_uri(v, DATA_SCHEMES)

    @model_validator(mode="after")
    def _one_test_set(self) -> DataSpec:
        if self.test and self.test_fraction:
            raise ValueError("testFraction: give `test` (a test set) or `testFraction` (split off `train`), not both")
        return self


# -------------------------------------------------------------------------------------------- stages


class _StageBase(_Model):
    epochs: int = Field(default=10, ge=1, le=MAX_EPOCHS)
    """Passes over the training data."""

    batch_size: int = Field(default=64, ge=1, le=65_536)
    """Global batch size, split across workers."""

    patience: int | None = Field(default=None, ge=1, le=MAX_EPOCHS)
    """Early stopping: stop when `monitor` has not improved for this many epochs (the ledger records the epoch and
    why). Runs all `epochs` when empty. The result is the best epoch by `monitor` either way."""

    monitor: Literal["val_accuracy", "val_loss"] = "val_accuracy"
    """The validation metric that picks the best epoch (and stops early with `patience`): `val_accuracy` (ties
    broken by the lower `val_loss`) or `val_loss` (ties broken by the higher `val_accuracy`)."""


class PretrainStage(_StageBase):
    """Train the backbone from scratch on a large labelled source set (DDP), for users who have one."""

    type: Literal["Pretrain"]
    """Stage type."""

    data: str = Field(min_length=1, max_length=MAX_URI_LENGTH)
    """Labelled source images (same forms as `spec.data.train`)."""

    num_classes: int = Field(ge=2, le=100_000)
    """Number of classes in the source set."""

    epochs: int = Field(default=30, ge=1, le=MAX_EPOCHS)
    """Passes over the source data. Default 30."""

    batch_size: int = Field(default=256, ge=1, le=65_536)
    """Global batch size. Default 256 (torchvision reference recipe)."""

    lr: float = Field(default=0.1, gt=0, le=10)
    """Peak learning rate (SGD with momentum, cosine schedule). Default 0.1 (torchvision recipe)."""

    weight_decay: float = Field(default=1e-4, ge=0, le=1)
    """Weight decay. Default 1e-4."""

    label_smoothing: float = Field(default=0.1, ge=0, lt=1)
    """Label smoothing of the cross-entropy loss. Default 0.1."""

    @field_validator("data")
    @classmethod
    def _data_uri(cls, v: str) -> str:
        return _check_uri(v, DATA_SCHEMES)


class FrozenFeaturesStage(_Model):
    """Run the frozen backbone once over train and validation data and store pooled features."""

    type: Literal["FrozenFeatures"]
    """Stage type."""

    batch_size: int = Field(default=256, ge=1, le=65_536)
    """Images per inference batch. Default 256."""

    actors: int | None = Field(default=None, ge=1, le=MAX_REPLICAS)
    """Size of the Ray Data actor pool; one per worker when empty."""


_LR = Annotated[float, Field(gt=0, le=10, description="A learning rate.")]
_WEIGHT_DECAY = Annotated[float, Field(ge=0, le=1, description="A weight decay.")]
_SMOOTHING = Annotated[float, Field(ge=0, lt=1, description="A label smoothing.")]


class HeadSweep(_Model):
    """The grid of the Head stage's settings: every combination is trained, all at once on the stored features."""

    lr: list[_LR] = Field(default_factory=lambda: [3e-3, 1e-2, 3e-2, 1e-1], min_length=1, max_length=64)
    """Learning rates (AdamW, cosine schedule). Default 3e-3, 1e-2, 3e-2, 1e-1."""

    weight_decay: list[_WEIGHT_DECAY] = Field(
        default_factory=lambda: [0.0, 1e-2, 1e-1, 1.0], min_length=1, max_length=64
    )
    """Decoupled (AdamW) weight decays, each in [0, 1]. Default 0, 0.01, 0.1, 1."""

    label_smoothing: list[_SMOOTHING] = Field(default_factory=lambda: [0.0, 0.1], min_length=1, max_length=16)
    """Label smoothings of the cross-entropy loss, each in [0, 1). Default 0 and 0.1."""


class HeadStage(_StageBase):
    """Train a new classifier head on the stored features (linear probe); the backbone never runs."""

    type: Literal["Head"]
    """Stage type."""

    epochs: int = Field(default=100, ge=1, le=MAX_EPOCHS)
    """Passes over the stored features. Default 100 (features are cheap to revisit)."""

    batch_size: int = Field(default=256, ge=1, le=65_536)
    """Global batch size. Default 256."""

    patience: int | None = Field(default=20, ge=1, le=MAX_EPOCHS)
    """Early stopping per setting of the sweep: a setting stops when `monitor` has not improved for this many
    epochs, the stage when all have. Default 20; empty runs all `epochs`."""

    lr: float | None = Field(default=None, gt=0, le=10)
    """Pin the learning rate (AdamW, cosine schedule) to this one value instead of sweeping `sweep.lr`."""

    weight_decay: float | None = Field(default=None, ge=0, le=1)
    """Pin the (decoupled, AdamW) weight decay to this one value instead of sweeping `sweep.weightDecay`."""

    label_smoothing: float | None = Field(default=None, ge=0, lt=1)
    """Pin the label smoothing to this one value instead of sweeping `sweep.labelSmoothing`."""

    sweep: HeadSweep = Field(default_factory=HeadSweep)
    """The grid of head settings trained at once (every combination of the three lists), chosen by `monitor` on
    validation. Give `lr`, `weightDecay` and `labelSmoothing` to train one setting only."""

    @model_validator(mode="after")
    def _pinned_or_swept(self) -> HeadStage:
        # A pinned value is the one-value list of its sweep axis (so a spec dumped and read back is the same).
        for name, alias in (("lr", "lr"), ("weight_decay", "weightDecay"), ("label_smoothing", "labelSmoothing")):
            pinned = getattr(self, name)
            if pinned is None:
                continue
            if name in self.sweep.model_fields_set and getattr(self.sweep, name) != [pinned]:
                raise ValueError(f"sweep.{alias}: `{alias}` pins it to one value; give `{alias}` or `sweep.{alias}`, "
                                 "not both")
            setattr(self.sweep, name, [pinned])
        return self

    def grid(self) -> list[dict[str, float]]:
        """Every setting the stage trains, in a fixed order: lr, then weight decay, then label smoothing."""
        sw = self.sweep
        return [{"lr": a, "weight_decay": b, "label_smoothing": c}
                for a in sw.lr for b in sw.weight_decay for c in sw.label_smoothing]


class FullFineTuneStage(_StageBase):
    """Unfreeze the whole network and fine-tune it, starting the head from the `Head` result (LP-FT)."""

    type: Literal["FullFineTune"]
    """Stage type."""

    epochs: int = Field(default=10, ge=1, le=MAX_EPOCHS)
    """Passes over the training data. Default 10."""

    lr: float = Field(default=1e-3, gt=0, le=10)
    """Peak learning rate of the head (AdamW). Default 1e-3."""

    backbone_lr_scale: float = Field(default=0.1, gt=0, le=1)
    """The backbone's learning rate is `lr` times this (discriminative learning rate). Default 0.1."""

    weight_decay: float = Field(default=0.05, ge=0, le=1)
    """AdamW weight decay. Default 0.05 (timm fine-tuning recipes). timm backbones: none on norms, biases and the
    parameters the model names in `no_weight_decay()` (position embeddings, class token)."""

    layer_decay: float | None = Field(default=None, gt=0, le=1)
    """Layer-wise learning-rate decay for timm backbones (as in BEiT/MAE fine-tuning): backbone layer i of L (timm's
    grouping, `param_groups_layer_decay`: the embeddings are layer 0, the last block and final norm layer L) learns
    at `lr * backboneLrScale * layerDecay^(L - i)`, the head at `lr`. 1 turns it off. Empty: the family's default
    (ViT, DeiT, BEiT, EVA, DINOv2 and other timm transformers 0.75, ConvNeXt 0.8, other CNNs off). Not for
    torchvision backbones (they use `backboneLrScale` alone)."""

    warmup_epochs: float = Field(default=1.0, ge=0, le=MAX_EPOCHS)
    """Linear warm-up before the cosine decay, in epochs. Default 1."""

    label_smoothing: float = Field(default=0.1, ge=0, lt=1)
    """Label smoothing of the cross-entropy loss. Default 0.1."""

    grad_clip_norm: float | None = Field(default=1.0, gt=0, le=1e6)
    """Clip the global gradient norm to this value; no clipping when empty. Default 1.0."""

    precision: Literal["auto", "bf16", "fp32"] = "auto"
    """`auto` uses bf16 autocast on GPU and fp32 on CPU."""

    channels_last: bool = True
    """Use the channels_last memory format on GPU (faster convolutions)."""

    keep_checkpoints: int = Field(default=2, ge=1, le=100)
    """Keep this many best checkpoints by validation accuracy. Default 2."""

    interpolate: Literal["off", "auto"] = "off"
    """Weight interpolation (WiSE-FT) after fine-tuning: `auto` evaluates alpha x fine-tuned + (1 - alpha) x LP
    weights (the pretrained backbone with the Head's head) for alpha = 0, 0.1, ..., 1 on validation and offers the
    best as an export candidate; the curve goes into the ledger. Needs a Head stage. Default off."""

    interpolation_alpha: float | None = Field(default=None, ge=0, le=1)
    """Interpolate with this one alpha instead (1 = the fine-tuned weights, 0 = the LP model); sets `interpolate`
    on. Needs a Head stage."""

    augment: bool = True
    """Train-time augmentation: a random translation (pad by an eighth of the image size, then crop back)
    and, except for the built-in digits sets, a random horizontal flip."""


Stage = Annotated[
    Union[PretrainStage, FrozenFeaturesStage, HeadStage, FullFineTuneStage],  # noqa: UP007
    Field(discriminator="type"),
]
STAGE_TYPES = ("Pretrain", "FrozenFeatures", "Head", "FullFineTune")


# --------------------------------------------------------------------------------- workers & storage


# Powers of 1024 and of 10 that a quantity's suffix stands for.
_BINARY_SI = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DECIMAL_SI = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_NUMBER_AND_SUFFIX = re.compile(r"^([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))(.*)$")


def parse_quantity(quantity: str | int) -> Decimal:
    """The exact value of a Kubernetes quantity: `500m` -> 0.5, `16Gi` -> 17179869184, `1e3` -> 1000.

    The grammar of k8s.io/apimachinery's resource.ParseQuantity (pkg/api/resource/quantity.go, suffix.go): a signed
    decimal number, then a binary-SI suffix (Ki ... Ei), a decimal-SI one (n, u, m, k, M ... E; a bare E is
    exa) or a decimal exponent (e or E and a signed integer). Raises ValueError for anything else."""
    parts = _NUMBER_AND_SUFFIX.match(str(quantity))
    number, suffix = parts.groups() if parts else ("", "?")
    if suffix in _BINARY_SI:
        return Decimal(number) * 1024 ** _BINARY_SI[suffix]
    exponent = _DECIMAL_SI.get(suffix)
    if exponent is None and re.fullmatch(r"[eE][+-]?[0-9]{1,9}", suffix):
        exponent = int(suffix[1:])
    if exponent is None:
        raise ValueError(f"{quantity!r} is not a Kubernetes quantity (e.g. 500m, 2, 16Gi)")
    try:
        return Decimal(number).scaleb(exponent)
    except ArithmeticError:  # beyond decimal's exponents (+-999999): no amount anyone asks for
        raise ValueError(f"{quantity!r} is out of range") from None


def _check_quantity(v: Any) -> Any:
    if isinstance(v, bool) or not isinstance(v, (int, str)):
        if isinstance(v, float):
            raise ValueError(f"a fractional quantity must be a string, e.g. '500m' or '0.5' (got {v!r})")
        return v  # the strict str check names the wrong type
    s = str(v)
    # parse_quantity also refuses what the CRD's pattern lets through but Kubernetes does not (1e1.5).
    if not _QUANTITY.match(s):
        raise ValueError(f"{s!r} is not a Kubernetes quantity (e.g. 500m, 2, 16Gi)")
    if parse_quantity(s) <= 0:
        raise ValueError(f"{s!r} must be greater than zero")
    return s


_QUANTITY_SCHEMA = {"x-kubernetes-int-or-string": True, "pattern": QUANTITY_PATTERN}


class WorkersSpec(_Model):
    """The Ray Train worker group: how many workers and what each one gets."""

    replicas: int = Field(default=1, ge=1, le=MAX_REPLICAS)
    """Number of Ray Train workers (one pod each on a cluster). Default 1."""

    gpus: int = Field(default=0, ge=0, le=16)
    """GPUs per worker (`nvidia.com/gpu`). Default 0 (CPU)."""

    cpus: str = Field(default="1", json_schema_extra=_QUANTITY_SCHEMA)
    """CPUs per worker, as a Kubernetes quantity (e.g. `4`, `500m`). Default 1."""

    memory: str = Field(default="4Gi", json_schema_extra=_QUANTITY_SCHEMA)
    """Memory per worker, as a Kubernetes quantity (e.g. `16Gi`). Default 4Gi."""

    @field_validator("cpus", "memory", mode="before")
    @classmethod
    def _quantity(cls, v: Any) -> Any:
        return _check_quantity(v)


class SecretReference(_Model):
    """A Secret in the TransferJob's namespace holding object-storage credentials."""

    name: str = Field(min_length=1, max_length=253, pattern=_DNS1123_SUBDOMAIN)
    """Name of the Secret."""

    access_key_id_key: str = Field(default="AWS_ACCESS_KEY_ID", max_length=253, pattern=_SECRET_KEY)
    """Key in the Secret holding the access key id. Default AWS_ACCESS_KEY_ID."""

    secret_access_key_key: str = Field(default="AWS_SECRET_ACCESS_KEY", max_length=253, pattern=_SECRET_KEY)
    """Key in the Secret holding the secret access key. Default AWS_SECRET_ACCESS_KEY."""


class StorageSpec(_Model):
    """Where checkpoints, features, the ledger and the final model are written."""

    uri: str = Field(min_length=1, max_length=MAX_URI_LENGTH)
    """Root URI (`s3://bucket/prefix`, `gs://bucket/prefix`, or a local path / `file://`); the job writes under
    `<uri>/<job uid>/`."""

    endpoint: str | None = Field(default=None, max_length=MAX_URI_LENGTH)
    """S3 endpoint URL for S3-compatible stores (MinIO, Ceph); AWS when empty. For `gs://`, a GCS emulator's URL
    (fake-gcs-server), reached without credentials; Google Cloud Storage when empty."""

    region: str | None = Field(default=None, pattern=_REGION)
    """S3 region; the client's default when empty."""

    credentials_secret: SecretReference | None = None
    """Secret with the S3 credentials. Credentials are never accepted inline in the spec. Not for `gs://`, which
    uses Google's Application Default Credentials (GKE Workload Identity, or a service-account key file named by
    GOOGLE_APPLICATION_CREDENTIALS)."""

    retry_seconds: int = Field(default=120, ge=0, le=3600)
    """How long a storage operation is retried after a transient fault (5xx answers, throttling, dropped
    connections, timeouts), with backoff and jitter, before the job fails naming the endpoint and the operation.
    A silent endpoint is reported after 10 s. Default 120; 0 leaves only the S3 client's own few attempts."""

    @field_validator("uri")
    @classmethod
    def _storage_uri(cls, v: str) -> str:
        return _check_uri(v, STORAGE_SCHEMES)

    @model_validator(mode="after")
    def _secret_for_the_scheme(self) -> StorageSpec:
        backend = storage_backends.for_uri(self.uri)
        if self.credentials_secret is not None and backend.remote and not backend.secret_keys({}):
            raise ValueError(
                f"credentialsSecret: {backend.prefix} storage reads no keys from a Secret; it uses the cloud's default "
                "credentials (GKE Workload Identity, or a service-account key file named by "
                "GOOGLE_APPLICATION_CREDENTIALS): remove credentialsSecret")
        return self

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if _URI_USERINFO.match(v):
            raise ValueError(f"credentials must not be inline in a URL ('user:key@' found); {CREDENTIALS_HINT}")
        if not re.match(r"^https?://[^/\s?#]+(/\S*)?$", v):
            raise ValueError(f"{v!r} is not an http(s) URL, e.g. https://minio.storage.svc:9000")
        return v


class MlflowSecretReference(_Model):
    """A Secret in the TransferJob's namespace holding MLflow tracking-server credentials. The trainer pods get its
    keys as MLflow's own environment variables; each key is optional (basic auth, a bearer token, or both)."""

    name: str = Field(min_length=1, max_length=253, pattern=_DNS1123_SUBDOMAIN)
    """Name of the Secret."""

    username_key: str = Field(default="MLFLOW_TRACKING_USERNAME", max_length=253, pattern=_SECRET_KEY)
    """Key in the Secret holding the user name (basic auth). Default MLFLOW_TRACKING_USERNAME."""

    password_key: str = Field(default="MLFLOW_TRACKING_PASSWORD", max_length=253, pattern=_SECRET_KEY)
    """Key in the Secret holding the password (basic auth). Default MLFLOW_TRACKING_PASSWORD."""

    token_key: str = Field(default="MLFLOW_TRACKING_TOKEN", max_length=253, pattern=_SECRET_KEY)
    """Key in the Secret holding a bearer token. Default MLFLOW_TRACKING_TOKEN."""


class MlflowSpec(_Model):
    """An MLflow tracking server: one run per job (a nested run per stage) and, optionally, a registered model."""

    tracking_uri: str = Field(min_length=1, max_length=MAX_URI_LENGTH, alias="trackingURI")
    """The tracking server, e.g. `http://mlflow.mlflow.svc:5000`."""

    experiment: str = Field(default="graft", min_length=1, max_length=500)
    """Experiment the job's run goes to (created when missing). Default graft."""

    registered_model_name: str | None = Field(default=None, min_length=1, max_length=256)
    """Register the exported model as a new version of this model at the end (no registration when empty)."""

    credentials_secret: MlflowSecretReference | None = None
    """Secret with the tracking server's credentials. Credentials are never accepted inline in the spec."""

    @field_validator("tracking_uri")
    @classmethod
    def _tracking_uri(cls, v: str) -> str:
        if _URI_USERINFO.match(v):
            raise ValueError(f"credentials must not be inline in a URL ('user:key@' found); {MLFLOW_CREDENTIALS_HINT}")
        if not re.match(r"^https?://[^/\s?#]+(/\S*)?$", v):
            raise ValueError(f"{v!r} is not an http(s) URL, e.g. http://mlflow.mlflow.svc:5000")
        return v


class TrackingSpec(_Model):
    """Experiment tracking of the job's runs."""

    mlflow: MlflowSpec | None = None
    """Log params, per-epoch metrics, curves and the model to MLflow, and register the model. Tracking never fails
    the job: when the server cannot be reached the job goes on and the status says so (`status.tracking`)."""


class RunPolicy(_Model):
    """How the job runs, retries and is cleaned up (the Kubernetes Job / Kubeflow conventions)."""

    suspend: bool = False
    """Suspend the job: its Ray cluster is deleted, progress is kept, and `false` resumes it."""

    active_deadline_seconds: int | None = Field(default=None, ge=1, le=31_536_000)
    """Fail the job (reason DeadlineExceeded) when it has run this long; no deadline when empty."""

    backoff_limit: int = Field(default=3, ge=0, le=100)
    """Failed attempts retried (each resuming from the ledger) before the job fails. Default 3."""

    ttl_seconds_after_finished: int | None = Field(default=None, ge=0, le=31_536_000)
    """How long the Ray cluster stays up after the job finishes, to look into it (KubeRay then deletes it, and the
    operator deletes the RayJob); the TransferJob and its status stay. Empty: the cluster goes when the job
    finishes and the RayJob stays."""


class LearningCheck(_Model):
    """After each training stage (Pretrain, Head, FullFineTune): did it learn? The first test failing, or the second
    failing where the first could not be judged, is the finding `NotLearning` (docs/learning-check.md says why).

    1. Validation accuracy against chance: the one-sided Wilson (score) test that the accuracy exceeds
       max(1/classes, the largest class's share of the validation split) at `significance`, divided by the number of
       validation scores the stage chose its result from (epochs, and the Head sweep's settings: Bonferroni), so that
       a best-of-many score is not taken for learning. Judged only when the validation split could tell: when an
       accuracy halfway between chance and 1 would pass; otherwise recorded as not judged.
    2. Training loss: the last epoch's must be at most (1 - `minLossDrop`) times its start, the larger of the first
       epoch's and ln(classes) (the loss of a uniform guess)."""

    significance: float = Field(default=0.05, gt=0.0, le=0.5)
    """The one-sided test's level: the chance that a stage that learned nothing passes it. Default 0.05."""

    min_loss_drop: float = Field(default=0.1, ge=0.0, lt=1.0)
    """The fraction by which the training loss must fall below its start (0: the loss test is off). Default 0.1."""

    action: Literal["Fail", "Warn"] = "Fail"
    """What a stage that did not learn does: `Fail` (default) fails the stage and the job before anything is
    exported; `Warn` goes on, and the export and the job's status carry the finding."""


class ChecksSpec(_Model):
    """Checks of the job's results."""

    learning: LearningCheck = Field(default_factory=LearningCheck)
    """Whether each training stage learned anything (against chance, and its training loss)."""


class ServingSpec(_Model):
    """The serving hand-off written after the job (docs/serving.md)."""

    export: bool = True
    """Write the serving files after the export: the model as ONNX, a Triton model repository and a KServe
    InferenceService manifest (`status.model` says where). `false`: the job ends at the PyTorch model folder
    (model.pt, model.json), e.g. when another stack serves the model or the ONNX exporter cannot trace the network;
    `graft export <model folder>` writes the same files later. Default true."""


class Toleration(_Model):
    """A Kubernetes toleration (core/v1 Toleration)."""

    key: str | None = None
    """Taint key the toleration applies to; empty matches all keys (with operator Exists)."""

    operator: Literal["Exists", "Equal"] | None = None
    """`Exists` or `Equal` (the default)."""

    value: str | None = None
    """Taint value to match with operator Equal."""

    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """Taint effect to match; all effects when empty."""

    toleration_seconds: int | None = None
    """How long a NoExecute taint is tolerated."""


class HeadSchedulingSpec(_Model):
    """Where the Ray head pod runs and what it gets. The head runs only the driver (no training, no data tasks),
    so it needs no GPU and by default asks for none of the workers' GPU node selectors and tolerations."""

    node_selector: dict[str, str] = Field(default_factory=dict)
    """Node labels the head pod must match. The workers' `scheduling.nodeSelector` does not apply to the head;
    repeat a label here when the head must match it too (e.g. a zone)."""

    tolerations: list[Toleration] = Field(default_factory=list)
    """Taints the head pod tolerates. The workers' `scheduling.tolerations` do not apply to the head."""

    cpus: str = Field(default="1", json_schema_extra=_QUANTITY_SCHEMA)
    """CPUs of the head pod (request and limit), as a Kubernetes quantity (e.g. `2`, `500m`). Default 1."""

    memory: str = Field(default="2Gi", json_schema_extra=_QUANTITY_SCHEMA)
    """Memory of the head pod (request and limit), as a Kubernetes quantity (e.g. `4Gi`). Default 2Gi."""

    @field_validator("cpus", "memory", mode="before")
    @classmethod
    def _quantity(cls, v: Any) -> Any:
        return _check_quantity(v)


class SchedulingSpec(_Model):
    """Pod scheduling pass-through. `nodeSelector` and `tolerations` place the worker pods (where the GPUs are);
    the head pod has its own in `head`. `priorityClassName` and `queueName` apply to the whole Ray cluster."""

    node_selector: dict[str, str] = Field(default_factory=dict)
    """Node labels the worker pods must match (not the head's: see `head.nodeSelector`)."""

    tolerations: list[Toleration] = Field(default_factory=list)
    """Taints the worker pods tolerate (not the head's: see `head.tolerations`)."""

    priority_class_name: str | None = Field(default=None, max_length=253, pattern=_DNS1123_SUBDOMAIN)
    """PriorityClass of every pod of the job (head and workers)."""

    queue_name: str | None = Field(default=None, max_length=63, pattern=_KUEUE_QUEUE)
    """Kueue LocalQueue; set as the `kueue.x-k8s.io/queue-name` label on the RayJob."""

    head: HeadSchedulingSpec = Field(default_factory=HeadSchedulingSpec)
    """Node selector, tolerations and resources of the Ray head pod, which runs only the driver and needs no
    GPU."""


# ---------------------------------------------------------------------------------------------- pod


#: Objects Graft passes to Kubernetes as they are (a volume source, affinity, valueFrom): the API server validates
#: them against KubeRay's RayJob schema (its pod template is core/v1's) when the operator creates the RayJob.
_PASSTHROUGH = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
_ENV_NAME = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"  # core/v1 EnvVar.name (IsEnvVarName)
_QUALIFIED_KEY = re.compile(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                            r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
#: Variables Graft sets itself, with the field that sets each (the trainer and its credentials depend on them).
OWNED_ENV = {
    "GRAFT_JOB": "the job document (set by the operator)",
    "HOME": "Graft's writable home in the pod",
    "RAY_USAGE_STATS_ENABLED": "Graft's Ray settings",
    "AWS_ACCESS_KEY_ID": "spec.storage.credentialsSecret",
    "AWS_SECRET_ACCESS_KEY": "spec.storage.credentialsSecret",
    "AWS_ENDPOINT_URL": "spec.storage.endpoint",
    "AWS_REGION": "spec.storage.region",
    "HF_TOKEN": "spec.storage.credentialsSecret (its HF_TOKEN key)",
    "MLFLOW_TRACKING_USERNAME": "spec.tracking.mlflow.credentialsSecret",
    "MLFLOW_TRACKING_PASSWORD": "spec.tracking.mlflow.credentialsSecret",
    "MLFLOW_TRACKING_TOKEN": "spec.tracking.mlflow.credentialsSecret",
}
#: Mount paths Graft's own volumes use (a writable /tmp on a read-only root, Ray's object store in /dev/shm).
OWNED_MOUNTS = ("/tmp", "/dev/shm")  # noqa: S108
OWNED_VOLUMES = ("tmp", "dshm")
#: Label and annotation keys Graft sets or reads on the pods.
OWNED_LABEL_PREFIXES = ("graft.dev/", "app.kubernetes.io/", "ray.io/")
#: Pod and container fields `spec.pod` does not offer because Graft sets them, and where each comes from.
OWNED_POD_FIELDS = {
    "command": "the trainer's entrypoint", "args": "the trainer's entrypoint", "image": "spec.image",
    "containers": "the Graft container", "resources": "spec.workers and spec.scheduling.head",
    "readOnlyRootFilesystem": "always true", "seccompProfile": "RuntimeDefault",
    "nodeSelector": "spec.scheduling.nodeSelector", "tolerations": "spec.scheduling.tolerations",
    "priorityClassName": "spec.scheduling.priorityClassName",
}
#: Security fields `spec.pod` offers in one of its two security contexts only (as Kubernetes splits them), so a field
#: given in the other is pointed there. The risky values of each are refused unless the operator allows them
#: (graft/api/podsecurity.py).
POD_SECURITY_FIELD_HOMES = {
    "runAsUser": "spec.pod.securityContext", "runAsNonRoot": "spec.pod.securityContext",
    "privileged": "spec.pod.containerSecurityContext", "allowPrivilegeEscalation": "spec.pod.containerSecurityContext",
    "capabilities": "spec.pod.containerSecurityContext",
}
_SECRETISH_ENV = re.compile(r"(?i)(key|token|secret|passw(or)?d|credential)")
#: ... unless it names where a secret lies (IRSA's AWS_WEB_IDENTITY_TOKEN_FILE), not the secret.
_LOCATION_ENV = re.compile(r"(?i)_(file|path|dir)$")
_CEL_LIST = ", ".join
# The same rules as CEL, so `kubectl apply` (and a GitOps sync) refuses them too; the validators below are the rules
# with field paths, and the corpus holds the two in step.
_ENV_RULES = [
    {"rule": f"self.all(e, !(e.name in [{_CEL_LIST(repr(n) for n in OWNED_ENV)}]))",
     "message": "a variable Graft sets itself (storage and MLflow credentials, GRAFT_JOB, HOME): set the spec field "
                "that owns it"},
    {"rule": f"self.all(e, !has(e.value) || !e.name.matches('{_SECRETISH_ENV.pattern}') "
             f"|| e.name.matches('{_LOCATION_ENV.pattern}'))",
     "message": "a variable named like a credential must use valueFrom.secretKeyRef"},
]
_MOUNT_RULES = [{
    "rule": "self.all(m, !(m.mountPath in ['/', '/dev', '/tmp', '/dev/shm']) && !m.mountPath.startsWith('/tmp/') "
            "&& !m.mountPath.startsWith('/dev/shm/'))",
    "message": "overlaps Graft's own mounts (/tmp, /dev/shm)"}]
_VOLUME_RULES = [{"rule": f"self.all(v, !(v.name in [{_CEL_LIST(repr(n) for n in OWNED_VOLUMES)}]))",
                  "message": "tmp and dshm are Graft's own volumes"}]
_KEY_RULES = [{"rule": "self.all(k, " + " && ".join(f"!k.startsWith('{p}')" for p in OWNED_LABEL_PREFIXES) + ")",
               "message": f"keys under {', '.join(OWNED_LABEL_PREFIXES)} are Graft's or Ray's own"}]


class LocalObjectReference(_Model):
    """A reference to an object in the job's namespace (core/v1 LocalObjectReference)."""

    name: str = Field(min_length=1, max_length=253, pattern=_DNS1123_SUBDOMAIN)
    """The object's name."""


class EnvVar(_Model):
    """An environment variable of the Graft container (core/v1 EnvVar)."""

    name: str = Field(min_length=1, max_length=256, pattern=_ENV_NAME)
    """Variable name. Graft's own variables (storage keys and endpoint, MLflow credentials, GRAFT_JOB, HOME) are
    refused: set the spec field that owns each."""

    value: str | None = Field(default=None, max_length=32_768)
    """A literal value. Never a secret: a variable whose name says key, token, secret or password must use
    `valueFrom.secretKeyRef`."""

    value_from: dict[str, Any] | None = Field(default=None, json_schema_extra=_PASSTHROUGH)
    """core/v1 EnvVarSource: `secretKeyRef`, `configMapKeyRef`, `fieldRef` or `resourceFieldRef`."""

    @model_validator(mode="after")
    def _owned_and_secret(self) -> EnvVar:
        if self.name in OWNED_ENV:
            raise ValueError(f"name: {self.name} is set by Graft from {OWNED_ENV[self.name]}; set that instead")
        if self.value and _SECRETISH_ENV.search(self.name) and not _LOCATION_ENV.search(self.name):
            raise ValueError(f"value: {self.name} looks like a credential; use valueFrom.secretKeyRef "
                             "(credentials are never accepted inline in the spec)")
        if self.value is not None and self.value_from is not None:
            raise ValueError("valueFrom: give value or valueFrom, not both")
        return self


class EnvFromSource(_Model):
    """Every key of a ConfigMap or Secret as variables (core/v1 EnvFromSource); exactly one of the two."""

    prefix: str | None = Field(default=None, max_length=256)
    """A prefix for every variable's name."""

    config_map_ref: dict[str, Any] | None = Field(default=None, json_schema_extra=_PASSTHROUGH)
    """core/v1 ConfigMapEnvSource: `{name, optional}`."""

    secret_ref: dict[str, Any] | None = Field(default=None, json_schema_extra=_PASSTHROUGH)
    """core/v1 SecretEnvSource: `{name, optional}`."""

    @model_validator(mode="after")
    def _one_source(self) -> EnvFromSource:
        if (self.config_map_ref is None) == (self.secret_ref is None):
            raise ValueError("configMapRef: give exactly one of configMapRef and secretRef")
        return self


class VolumeMount(_Model):
    """Where a volume of `pod.volumes` appears in the Graft container (core/v1 VolumeMount)."""

    name: str = Field(min_length=1, max_length=63)
    """The volume's name in `pod.volumes`."""

    mount_path: str = Field(min_length=1, max_length=4096, pattern=r"^/")
    """Absolute path in the container. Not /tmp or /dev/shm (Graft's own volumes)."""

    read_only: bool | None = None
    """Mount read-only (datasets usually are)."""

    sub_path: str | None = Field(default=None, max_length=4096)
    """Mount only this path inside the volume."""


class PodSecurityAdditions(_Model):
    """Pod security settings a cluster may require on top of Graft's (non-root, RuntimeDefault seccomp, no
    privilege escalation, read-only root), which stay unless the operator allows otherwise."""

    fs_group: int | None = Field(default=None, ge=0, le=2**31 - 1)
    """Group owning mounted volumes (e.g. so user 1000 can write a PersistentVolumeClaim)."""

    fs_group_change_policy: Literal["OnRootMismatch", "Always"] | None = None
    """When the kubelet changes volume ownership to `fsGroup`."""

    run_as_group: int | None = Field(default=None, ge=0, le=2**31 - 1)
    """Primary group of the pod's processes."""

    supplemental_groups: list[int] = Field(default_factory=list, max_length=64, json_schema_extra={
        "items": {"type": "integer", "minimum": 0, "description": "A group id."}})
    """Extra groups of the pod's processes."""

    run_as_user: int | None = Field(default=None, ge=0, le=2**31 - 1)
    """User of the pod's processes (default: the image's user 1000). 0 (root) is refused unless the operator allows
    `runAsRoot`, and needs `runAsNonRoot: false`."""

    run_as_non_root: bool | None = None
    """false lets the pods run as root: refused unless the operator allows `runAsRoot` (default: true)."""

    @model_validator(mode="after")
    def _root_needs_both(self) -> PodSecurityAdditions:
        if self.run_as_user == 0 and self.run_as_non_root is not False:
            raise ValueError("runAsUser: 0 is root; the kubelet refuses it while runAsNonRoot is true, so also set "
                             "runAsNonRoot: false (and the operator must allow runAsRoot)")
        return self


_CAPABILITY_NAME = Annotated[str, Field(max_length=64, pattern=r"^[A-Z][A-Z0-9_]*$",
                                        description="A capability name, e.g. NET_ADMIN.")]


class Capabilities(_Model):
    """Linux capabilities added to the Graft container; all others stay dropped (core/v1 Capabilities)."""

    add: list[_CAPABILITY_NAME] = Field(default_factory=list, max_length=64)
    """Capabilities to add, e.g. `NET_ADMIN`. Refused unless the operator allows `capabilities`."""


# No CEL rules (x-kubernetes-validations) refuse the exceptions below or `hostNetwork`/`hostPID`/`hostIPC`, `hostPath`
# volumes and root: the chart may allow each (podSecurity.allow), which the CRD cannot know. The operator and
# `graft validate` refuse them (graft/api/podsecurity.py); the corpus marks their cases `schema: false`.
class ContainerSecurityAdditions(_Model):
    """Container security settings beyond Graft's (every capability dropped, no privilege escalation), for the
    clusters that need them. Each is refused unless the operator allows it (`graft operator --allow`, the chart's
    `podSecurity.allow`)."""

    privileged: bool | None = None
    """true runs the container privileged (every device and capability of the node): refused unless the operator
    allows `privileged`."""

    allow_privilege_escalation: bool | None = None
    """true lets processes gain more privileges than their parent (setuid binaries): refused unless the operator
    allows `allowPrivilegeEscalation`."""

    capabilities: Capabilities = Field(default_factory=Capabilities)
    """Capabilities to add; `drop: [ALL]` is Graft's and stays."""


class PodSpec(_Model):
    """What Graft passes to the Ray head and worker pods, in Kubernetes' own shapes: identity, registries, volumes,
    environment, metadata, affinity, security additions. Merged into the pods Graft builds; the fields Graft owns
    (the trainer command, GRAFT_JOB, resources from `workers`, storage credentials) cannot be overridden."""

    service_account_name: str | None = Field(default=None, max_length=253, pattern=_DNS1123_SUBDOMAIN)
    """ServiceAccount of the pods: with IRSA (EKS) or Workload Identity (GKE) it gives them cloud credentials,
    so `storage.credentialsSecret` can be left empty."""

    image_pull_secrets: list[LocalObjectReference] = Field(default_factory=list, max_length=16)
    """Secrets to pull `spec.image` from a private registry."""

    volumes: list[dict[str, Any]] = Field(
        default_factory=list, max_length=64,
        json_schema_extra={"x-kubernetes-validations": _VOLUME_RULES, "items": {**_PASSTHROUGH, "required": ["name"],
                                     "description": "A core/v1 Volume: its name and one volume source.",
                                     "properties": {"name": {"type": "string", "description": "The volume's name, "
                                                             "a DNS label, unique in the pod."}}}})
    """core/v1 Volumes of the pods, e.g. `{name: data, persistentVolumeClaim: {claimName: imagenet}}`. Mount them
    with `volumeMounts`."""

    volume_mounts: list[VolumeMount] = Field(default_factory=list, max_length=64,
                                             json_schema_extra={"x-kubernetes-validations": _MOUNT_RULES})
    """Mounts of `volumes` in the Graft container. Data under a mount path (`data.train: /data/train`) is read
    there on every pod."""

    env: list[EnvVar] = Field(default_factory=list, max_length=128,
                              json_schema_extra={"x-kubernetes-validations": _ENV_RULES})
    """Extra environment variables of the Graft container."""

    env_from: list[EnvFromSource] = Field(default_factory=list, max_length=16)
    """ConfigMaps and Secrets whose keys become variables of the Graft container."""

    labels: dict[str, str] = Field(default_factory=dict, max_length=64,
                                   json_schema_extra={"x-kubernetes-validations": _KEY_RULES})
    """Extra labels of the pods (e.g. a cost centre). Graft's own (`graft.dev/`, `app.kubernetes.io/`, `ray.io/`)
    cannot be set."""

    annotations: dict[str, str] = Field(default_factory=dict, max_length=64,
                                        json_schema_extra={"x-kubernetes-validations": _KEY_RULES})
    """Extra annotations of the pods (e.g. a policy engine's or a service mesh's)."""

    affinity: dict[str, Any] | None = Field(default=None, json_schema_extra=_PASSTHROUGH)
    """core/v1 Affinity of the pods: `nodeAffinity`, `podAffinity`, `podAntiAffinity`."""

    security_context: PodSecurityAdditions = Field(default_factory=PodSecurityAdditions)
    """Pod security settings added to Graft's."""

    container_security_context: ContainerSecurityAdditions = Field(default_factory=ContainerSecurityAdditions)
    """Container security settings added to Graft's (privileged, privilege escalation, capabilities): refused unless
    the operator allows them."""

    host_network: bool | None = None
    """true puts the pods in the node's network namespace: refused unless the operator allows `hostNetwork`."""

    host_pid: bool | None = Field(default=None, alias="hostPID")
    """true shares the node's process namespace: refused unless the operator allows `hostPID`."""

    host_ipc: bool | None = Field(default=None, alias="hostIPC")
    """true shares the node's IPC namespace: refused unless the operator allows `hostIPC`."""

    @field_validator("labels", "annotations")
    @classmethod
    def _not_owned(cls, v: dict[str, str]) -> dict[str, str]:
        for key in v:
            if not _QUALIFIED_KEY.match(key) or len(key.rsplit("/", 1)[-1]) > 63:
                raise ValueError(f"{key!r} is not a valid key (an optional DNS prefix, '/', a name of at most 63 "
                                 "letters, digits, '-', '_' and '.')")
            if key.startswith(OWNED_LABEL_PREFIXES):
                raise ValueError(f"{key!r}: keys under {', '.join(OWNED_LABEL_PREFIXES)} are Graft's or Ray's own")
        return v

    @field_validator("affinity")
    @classmethod
    def _affinity(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        unknown = sorted(set(v or {}) - {"nodeAffinity", "podAffinity", "podAntiAffinity"})
        if unknown:
            raise ValueError(f"unknown field {unknown[0]!r}; allowed: nodeAffinity, podAffinity, podAntiAffinity")
        return v

    @model_validator(mode="after")
    def _volumes(self) -> PodSpec:
        names: list[str] = []
        for i, volume in enumerate(self.volumes):
            name = volume.get("name")
            if not isinstance(name, str) or not _DNS1123_LABEL.match(name) or len(name) > 63:
                raise ValueError(f"volumes[{i}].name: required, a DNS label (lower-case letters, digits and '-')")
            if name in OWNED_VOLUMES or name in names:
                owner = "by one of Graft's own volumes" if name in OWNED_VOLUMES else "by an earlier volume"
                raise ValueError(f"volumes[{i}].name: {name!r} is taken {owner}")
            if len(volume) != 2:
                raise ValueError(f"volumes[{i}]: give the name and exactly one volume source "
                                 "(e.g. persistentVolumeClaim, configMap, secret, nfs, csi)")
            names.append(name)
        for i, mount in enumerate(self.volume_mounts):
            if mount.name not in names:
                raise ValueError(f"volumeMounts[{i}].name: no volume {mount.name!r} in pod.volumes")
            path = mount.mount_path.rstrip("/") or "/"
            if any(path == owned or path.startswith(owned + "/") or owned.startswith(path + "/") or path == "/"
                   for owned in OWNED_MOUNTS):
                raise ValueError(f"volumeMounts[{i}].mountPath: {mount.mount_path} overlaps Graft's own mounts "
                                 f"({', '.join(OWNED_MOUNTS)})")
        return self

    def mount_of(self, path: str) -> VolumeMount | None:
        """The volume mount a local path lies under, if any."""
        for mount in self.volume_mounts:
            root = mount.mount_path.rstrip("/")
            if path == root or path.startswith(root + "/"):
                return mount
        return None


_STAGE_RANK = "{" + ", ".join(f"'{t}': {i}" for i, t in enumerate(STAGE_TYPES)) + "}"
#: The stage-list rules as CEL, so the API server enforces them too (the model validator below is the
#: same rules with field paths; tests hold the two in step).
_STAGE_RULES = [
    {
        "rule": "self.all(a, self.exists_one(b, b.type == a.type))",
        "message": "each stage type may appear once",
    },
    {
        "rule": f"[1, 2, 3, 4, 5, 6, 7].all(i, i >= size(self) || {_STAGE_RANK}[self[i - 1].type] "
        f"< {_STAGE_RANK}[self[i].type])",
        "message": f"stages must be in the order {' -> '.join(STAGE_TYPES)}",
    },
    {
        "rule": "!self.exists(s, s.type == 'Head') || self.exists(s, s.type == 'FrozenFeatures')",
        "message": "a Head stage needs a preceding FrozenFeatures stage",
    },
]

DEFAULT_IMAGE = "ghcr.io/graft-dev/graft-trainer:0.1.0"
MAX_IMAGE_LENGTH = 512


def image_problem(image: str) -> str | None:
    """Why `image` cannot be a `spec.image` (what `--trainer-image` is checked against too); None when it can."""
    if len(image) > MAX_IMAGE_LENGTH or not re.match(_IMAGE, image):
        return f"must be {PATTERN_HELP[_IMAGE]}, at most {MAX_IMAGE_LENGTH} characters (got {image!r})"
    return None


class TransferJobSpec(_Model):
    """What to transfer, from which data, through which stages, on what resources."""

    model: ModelSpec
    """The network to transfer from."""

    data: DataSpec
    """The target data set."""

    stages: list[Stage] = Field(
        min_length=1, max_length=8, json_schema_extra={"x-kubernetes-validations": _STAGE_RULES}
    )
    """Stages, run in order. Usual: FrozenFeatures, Head, FullFineTune (LP-FT)."""

    workers: WorkersSpec = Field(default_factory=WorkersSpec)
    """The Ray Train workers."""

    image: str = Field(default=DEFAULT_IMAGE, min_length=1, max_length=MAX_IMAGE_LENGTH, pattern=_IMAGE)
    """Container image of the Ray head and workers (the Graft trainer image)."""

    storage: StorageSpec | None = None
    """Object storage for checkpoints and the model. Required on a cluster; `graft run` uses a local
    folder when empty."""

    run_policy: RunPolicy = Field(default_factory=RunPolicy)
    """Suspension, deadline, retries and clean-up."""

    tracking: TrackingSpec | None = None
    """Experiment tracking and model registry (MLflow)."""

    checks: ChecksSpec = Field(default_factory=ChecksSpec)
    """Checks of the results: by default a training stage that learned nothing fails the job before the export."""

    serving: ServingSpec = Field(default_factory=ServingSpec)
    """The serving hand-off after the job (ONNX, Triton repository, KServe InferenceService manifest)."""

    scheduling: SchedulingSpec = Field(default_factory=SchedulingSpec)
    """Pod scheduling pass-through: the workers' node selector and tolerations, the head pod's own (`head`),
    priority class and Kueue queue."""

    pod: PodSpec = Field(default_factory=PodSpec)
    """Pass-through to the Ray head and worker pods: service account, image pull secrets, volumes and mounts,
    environment, labels and annotations, affinity, security additions."""

    @model_validator(mode="after")
    def _stage_order(self) -> TransferJobSpec:
        # Messages start with the field path (relative to the spec); validation.py turns it into the path.
        types = [s.type for s in self.stages]
        for i, t in enumerate(types):
            if t in types[:i]:
                raise ValueError(
                    f"stages[{i}].type: duplicate stage type {t!r} (also stages[{types.index(t)}]); "
                    "each type may appear once"
                )
        for i in range(1, len(types)):
            if STAGE_TYPES.index(types[i]) < STAGE_TYPES.index(types[i - 1]):
                raise ValueError(
                    f"stages[{i}].type: {types[i]!r} cannot come after {types[i - 1]!r}; "
                    f"the order is {' -> '.join(STAGE_TYPES)}"
                )
        if "Head" in types and "FrozenFeatures" not in types:
            raise ValueError(
                f"stages[{types.index('Head')}].type: 'Head' trains on stored features and needs a preceding "
                "'FrozenFeatures' stage"
            )
        fft = next((s for s in self.stages if s.type == "FullFineTune"), None)
        interpolating = fft is not None and (fft.interpolate == "auto" or fft.interpolation_alpha is not None)
        if interpolating and "Head" not in types:
            field = "interpolate" if fft.interpolate == "auto" else "interpolationAlpha"
            raise ValueError(
                f"stages[{types.index('FullFineTune')}].{field}: interpolation mixes the fine-tuned weights with the "
                "LP model's (the Head's head on the pretrained backbone); add a 'Head' stage or leave it off"
            )
        if fft is not None and fft.layer_decay is not None and not self.model.backbone.startswith(TIMM_PREFIX):
            raise ValueError(
                f"stages[{types.index('FullFineTune')}].layerDecay: layer-wise learning-rate decay needs a timm: "
                f"backbone ({self.model.backbone!r} is a torchvision one; use backboneLrScale)"
            )
        if self.model.weights is None and "Pretrain" not in types and "FrozenFeatures" in types:
            raise ValueError(
                "model.weights: features of a random backbone are meaningless; give weights or add a "
                "'Pretrain' stage before 'FrozenFeatures'"
            )
        return self


# -------------------------------------------------------------------------------------------- status


class Phase(StrEnum):
    PENDING = "Pending"
    SUSPENDED = "Suspended"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class Condition(_StatusModel):
    """A status condition (the shape of metav1.Condition)."""

    type: str
    """Condition type: Created, Running, Suspended, Succeeded, Failed, Reconciling, Stalled."""

    status: Literal["True", "False", "Unknown"]
    """True, False or Unknown."""

    reason: str
    """One CamelCase word saying why."""

    message: str = ""
    """Human-readable detail."""

    last_transition_time: str
    """When the status last changed (RFC 3339)."""

    observed_generation: int | None = None
    """The spec generation this condition was set for."""


class StageState(StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SKIPPED = "Skipped"


class StageFinding(_StatusModel):
    """A check's finding on a stage's result (`spec.checks`)."""

    kind: str
    """What was found, one CamelCase word: NotLearning."""

    message: str
    """The evidence, in words (accuracy against chance with its interval, the training loss)."""


class StageStatus(_StatusModel):
    """Progress of one stage, projected from the ledger."""

    type: str
    """Stage type."""

    state: StageState = StageState.PENDING
    """Pending, Running, Succeeded, Failed or Skipped."""

    start_time: str | None = None
    """When the stage started (RFC 3339)."""

    end_time: str | None = None
    """When the stage ended (RFC 3339)."""

    epoch: int | None = None
    """Last finished epoch (1-based)."""

    epochs: int | None = None
    """Epochs planned."""

    metrics: dict[str, float] = Field(default_factory=dict)
    """Latest metrics, e.g. train_loss, val_accuracy; when the job has a test set, test_accuracy and test_loss
    (the held-out set, which chooses nothing) apart from them."""

    checkpoint: str | None = None
    """URI of the stage's latest (or best) checkpoint."""

    message: str | None = None
    """Why the stage failed, when it did."""

    finding: StageFinding | None = None
    """What the checks found wrong with the stage's result (`spec.checks`): e.g. kind NotLearning, when the stage did
    not learn beyond chance."""


class TrackingStatus(_StatusModel):
    """Where the job is tracked (MLflow), projected from the ledger."""

    state: Literal["Tracking", "Succeeded", "Failed"] | None = None
    """Tracking (runs being logged), Succeeded (everything logged and registered) or Failed (the job goes on;
    `message` says what was not logged and why)."""

    tracking_uri: str | None = Field(default=None, alias="trackingURI")
    """The MLflow tracking server."""

    experiment_id: str | None = Field(default=None, alias="experimentID")
    """The MLflow experiment's id."""

    run_id: str | None = Field(default=None, alias="runID")
    """The job's MLflow run (a retried or resumed job continues it)."""

    registered_model: str | None = None
    """The registered model's name."""

    model_version: str | None = None
    """The registered model version this job created."""

    message: str | None = None
    """Why tracking failed, when it did."""


class ModelStatus(_StatusModel):
    """The exported model and its serving hand-off (`graft export` writes the same files for a model folder)."""

    uri: str | None = None
    """The model folder (PyTorch weights, model.json): the same as `status.modelURI`."""

    onnx: str | None = None
    """The ONNX model, with a dynamic batch and uint8 images in (the preprocessing is in the graph)."""

    triton_repository: str | None = None
    """The Triton model repository (`<name>/config.pbtxt`, `<name>/1/model.onnx`, labels) KServe's Triton runtime
    serves: the InferenceService's `storageUri`."""

    inference_service: str | None = None
    """The KServe InferenceService manifest (`serving.kserve.io/v1beta1`): `kubectl apply -f` it, or commit it for
    GitOps, to serve the model."""

    served_name: str | None = None
    """The model's name on the server (`/v2/models/<name>/infer`)."""


class TransferJobStatus(_StatusModel):
    """Observed state, written only by the operator."""

    observed_generation: int | None = None
    """The spec generation the status was computed from."""

    conditions: list[Condition] = Field(
        default_factory=list,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    """Conditions, the source of truth of the job's state."""

    phase: Phase | None = None
    """Derived from the conditions for `kubectl get`: Pending, Suspended, Running, Succeeded, Failed."""

    stage: str | None = None
    """The stage running now (or the last one run)."""

    progress: str | None = None
    """Stages finished out of all, e.g. `2/3`."""

    stages: list[StageStatus] = Field(default_factory=list)
    """Per-stage progress."""

    ray_job_name: str | None = None
    """Name of the RayJob running this job (recorded before it is created)."""

    job_deployment_status: str | None = None
    """The RayJob's jobDeploymentStatus."""

    job_status: str | None = None
    """The RayJob's jobStatus (the Ray job's own state)."""

    dashboard_url: str | None = Field(default=None, alias="dashboardURL")
    """The Ray dashboard of the job's cluster."""

    model_uri: str | None = Field(default=None, alias="modelURI")
    """URI of the exported final model."""

    storage_uri: str | None = Field(default=None, alias="storageURI")
    """Where this job writes: `<storage.uri>/<job uid>/`."""

    logs_uri: str | None = Field(default=None, alias="logsURI")
    """Where the job's logs are kept, per stage, for the driver and each Ray worker (`<storageURI>/logs`): they
    outlive the Ray cluster. `graft logs -n NAMESPACE NAME` prints them."""

    model: ModelStatus | None = None
    """The exported model and where its serving files are (ONNX, Triton repository, InferenceService manifest);
    set when the job has exported its model."""

    tracking: TrackingStatus | None = None
    """MLflow tracking: the run, the registered model version, or why tracking failed."""

    attempts: int | None = None
    """Attempts started so far (1 on the first run)."""

    start_time: str | None = None
    """When the job started running."""

    completion_time: str | None = None
    """When the job finished."""

    reason: str | None = None
    """Short reason of the latest transition."""

    message: str | None = None
    """Human-readable detail of the latest transition."""


# ------------------------------------------------------------------------------------------ document


class ObjectMeta(BaseModel):
    """The parts of metadata Graft reads; everything else is kept as is."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    name: str | None = Field(default=None, max_length=63)
    namespace: str | None = None
    uid: str | None = None
    generation: int | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        if v is not None and not _DNS1123_LABEL.match(v):
            raise ValueError(
                f"{v!r} is not a valid name: lower-case letters, digits and '-', starting and ending "
                "with a letter or digit"
            )
        return v


class TransferJob(_Model):
    """A transfer-learning job: a pretrained backbone adapted to a target data set in stages."""

    api_version: Literal["graft.dev/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["TransferJob"]
    metadata: ObjectMeta
    spec: TransferJobSpec
    status: TransferJobStatus | None = None

    @model_validator(mode="after")
    def _named(self) -> TransferJob:
        if not self.metadata.name and not (self.metadata.model_extra or {}).get("generateName"):
            raise ValueError("metadata.name: a TransferJob needs a name")
        return self


def find_inline_credentials(obj: Any, path: str = "") -> list[tuple[str, str]]:
    """Paths in a raw spec that look like credentials: secret-named fields or secret-looking values."""
    found: list[tuple[str, str]] = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            p = f"{path}.{k}" if path else str(k)
            if isinstance(k, str) and _SECRET_FIELD.match(k) and v not in (None, ""):
                found.append((p, "credentials must not be in the spec"))
            else:
                found.extend(find_inline_credentials(v, p))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            found.extend(find_inline_credentials(v, f"{path}[{i}]"))
    elif isinstance(obj, str) and _SECRET_VALUE.search(obj):
        found.append((path, "looks like a credential (an access key id, private key, token or signed URL)"))
    return found
