"""The training configuration (one typed tree) and the recipes (named overrides of it).

CLI flags and recipes only override fields; derived values (global batch, steps, scaled LR)
are computed once by the trainer and saved with the resolved config in the run folder.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import asdict, dataclass, field

from convlab.errors import ConvlabError, check_at_least

# The choices of every enumerated field: the CLI builds its flags from these.
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "rampup", "cosine")
PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
STRATEGIES = ("auto", "default", "onedevice", "mirrored", "multiworker", "tpu")
CLASS_WEIGHTS = ("balanced",)
MIN_IMAGE_SIZE = 8  # the smallest side convlab prepares, trains or evaluates at
MAX_IMAGE_SIZE = 4096  # the largest side `convlab data prepare` writes


def check_image_size(flag: str, size, omitted: str | None = None) -> None:
    """The one check of an image size, whichever it is (prepared, training or test): a
    one-line error naming --`flag` unless `size` is a whole number of pixels from
    MIN_IMAGE_SIZE to MAX_IMAGE_SIZE, or None where `omitted` says what None stands for.
    (A model may need more: its builder checks its own minimum.)"""
    if size is None and omitted is not None:
        return
    if isinstance(size, bool) or not isinstance(size, int) or \
            not MIN_IMAGE_SIZE <= size <= MAX_IMAGE_SIZE:
        raise ConvlabError(f"--{flag} must be a whole number of pixels between "
                           f"{MIN_IMAGE_SIZE} and {MAX_IMAGE_SIZE}"
                           + (f" (or omitted for {omitted})" if omitted else "")
                           + f", received: {size!r}")


@dataclass
class ScheduleConfig:
    """Which schedule and its constants. `learning_rate` is the peak (or constant) rate.

    rampup is the codelab's: linear from `start_lr` to `learning_rate` over `rampup_epochs`,
    held for `sustain_epochs`, then `min_lr + (learning_rate - min_lr) * decay**k` after k more
    epochs; changes once per epoch, like the codelab's LearningRateScheduler.
    cosine: linear warm-up over `warmup_epochs`, then half a cosine down to `min_lr` at the
    last epoch; changes every step. Built by `convlab.training.schedules.build_schedule`.
    """

    name: str = "constant"
    learning_rate: float = 1e-3
    start_lr: float = 1e-5
    min_lr: float = 1e-5
    rampup_epochs: int = 5
    sustain_epochs: int = 0
    decay: float = 0.8
    warmup_epochs: float = 1.0
    scale_with_replicas: bool = False  # the codelab's max_lr = 0.00005 * replicas

    def validate(self, flag: str = "schedule") -> None:
        if self.name not in SCHEDULES:
            raise ConvlabError(f"--{flag} must be one of {', '.join(SCHEDULES)}, "
                               f"received: {self.name!r}")
        if not 0 < self.learning_rate < math.inf:
            option = "--lr" if flag == "schedule" else "--fine-tune-lr"
            raise ConvlabError(f"{option} ({flag}.learning_rate) must be a positive number, "
                               f"received: {self.learning_rate}")
        if not 0 < self.decay <= 1:
            raise ConvlabError(f"{flag} decay must be in (0, 1], received: {self.decay}")
        if not (0 <= self.min_lr < math.inf and 0 <= self.start_lr < math.inf
                and 0 <= self.warmup_epochs < math.inf):
            raise ConvlabError(f"{flag} min_lr, start_lr and warmup_epochs must be numbers >= 0, "
                               f"received: min_lr={self.min_lr}, start_lr={self.start_lr}, "
                               f"warmup_epochs={self.warmup_epochs}")


@dataclass(frozen=True)
class Augment:
    """What to randomise (`convlab.data.augment.augment_batch` applies it). The defaults are
    the codelab's: left-right flip and saturation.

    Attributes:
        flip: random left-right flip.
        saturation: (low, high) saturation factor range; None disables. The codelab uses
            tf.image.random_saturation(image, 0, 2).
        zoom: smallest crop side as a fraction of the image (random crop, resized to the
            training size); 0 disables. E.g. 0.8 crops between 80% and 100% of each side.
        brightness: max absolute brightness shift; 0 disables.
        contrast: (low, high) contrast factor range; None disables.
    """

    flip: bool = True
    saturation: tuple[float, float] | None = (0.0, 2.0)
    zoom: float = 0.0
    brightness: float = 0.0
    contrast: tuple[float, float] | None = None

    def __post_init__(self):
        if not 0.0 <= self.zoom < 1.0:
            raise ConvlabError(f"augment zoom must be in [0, 1), received: {self.zoom}")
        for name in ("saturation", "contrast"):
            rng = getattr(self, name)
            if rng is not None and not (len(rng) == 2 and 0 <= rng[0] <= rng[1]):
                raise ConvlabError(f"augment {name} must be (low, high) with 0 <= low <= high, "
                                   f"received: {rng}")

    @property
    def enabled(self) -> bool:
        return bool(self.flip or self.saturation or self.zoom or self.brightness or self.contrast)


def _fine_tune_default() -> ScheduleConfig:
    return ScheduleConfig("cosine", learning_rate=1e-4, warmup_epochs=0.0, min_lr=5e-6)


@dataclass
class TrainConfig:
    """Everything that determines a run; saved as config.json in the run folder."""

    model: str = "squeezenet"
    data: str = "flowers"
    image_size: int | None = None  # default: the model's own size
    # evaluate, predict, export and serve the trained model at image_size x test_scale px.
    # Training's random zoom shows objects larger than whole-image validation does; a
    # larger test size undoes that (FixRes, Touvron et al. 2019). A scale, not a size, so
    # that a recipe's test size follows an --image-size override.
    test_scale: float = 1.0
    epochs: int = 5
    batch_size: int = 32  # global: split across replicas
    batch_per_replica: int | None = None  # if set, batch_size = this x replicas (codelab)
    optimizer: str = "adam"
    weight_decay: float = 1e-4  # adamw only
    momentum: float = 0.9  # sgd only
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    label_smoothing: float = 0.0
    # >0: MixUp / CutMix of each training batch with itself reversed, the mixing fraction
    # drawn from Beta(alpha, alpha) (timm's --mixup / --cutmix); both >0: one per batch
    mixup: float = 0.0
    cutmix: float = 0.0
    class_weights: str | None = None  # None or "balanced"
    augment: Augment | None = field(default_factory=Augment)
    precision: str = "auto"
    strategy: str = "auto"
    steps_per_execution: int = 1
    fine_tune_epochs: int = 0  # >0: a second phase with the backbone unfrozen
    # the second phase's own schedule (it starts from step 0 of its own)
    fine_tune_schedule: ScheduleConfig = field(default_factory=_fine_tune_default)
    # the second phase trains the backbone from its first layer whose name starts with this
    # (e.g. "block5_" for EfficientNet-Lite: the stem and early blocks, at the largest
    # feature maps, stay frozen and need no backward pass); None: the whole backbone
    fine_tune_from: str | None = None
    # Progressive resizing of the fine-tuning phase (fastai; EfficientNetV2 without its
    # regularization ramp): its first epoch trains at the training size times this, the size
    # growing linearly to the training size at its last epoch, in steps of 32 px (what the
    # backbone downsamples by); validation stays at the training size. 1: every epoch at the
    # training size. Arithmetic per step falls with the square of the size.
    fine_tune_start_scale: float = 1.0
    # >0: the head-only epochs train on backbone features cached from this many augmented
    # passes over the training split (frozen pretrained backbones; see training/features.py)
    feature_views: int = 0
    # >0: the optimizer keeps an exponential moving average of the weights (this momentum per
    # step; e.g. 0.995 averages over ~200 steps): validation, best.keras and model.keras use it
    ema_momentum: float = 0.0
    model_options: dict = field(default_factory=dict)
    seed: int = 42
    # epoch checkpoints kept (newest first; 0: all). best.keras is kept besides them.
    keep_checkpoints: int = 2
    runs_dir: str = "runs"
    report: bool = True  # evaluate and write report.html at the end
    name: str | None = None  # run name; default: recipe or model name
    recipe: str | None = None
    # `convlab train --data D` with no model: what was chosen from the data and the machine,
    # and why (budget, size, phases, the timings measured); see training/auto.py
    plan: dict | None = None

    def validate(self) -> None:
        for flag, value in {"epochs": self.epochs, "batch-size": self.batch_size,
                            "steps-per-execution": self.steps_per_execution}.items():
            check_at_least(flag, value, 1)
        check_image_size("image-size", self.image_size, "the model's own")
        if not 0.5 <= self.test_scale <= 4:
            raise ConvlabError(f"--test-scale must be between 0.5 and 4 (1: evaluate at the "
                               f"training size), received: {self.test_scale}")
        if self.name is not None and (not self.name or self.name in (".", "..")
                                      or any(c in self.name for c in "/\\\0")
                                      or any(ord(c) < 32 or 127 <= ord(c) < 160  # C0, C1
                                             for c in self.name)):
            raise ConvlabError(f"--name must be one plain folder name (no '/', '\\', '..' or "
                               f"control characters), received: {self.name!r}")
        for flag, value, choices in (("optimizer", self.optimizer, OPTIMIZERS),
                                     ("precision", self.precision, PRECISIONS),
                                     ("strategy", self.strategy, STRATEGIES)):
            if value not in choices:
                raise ConvlabError(f"--{flag} must be one of {', '.join(choices)}, "
                                   f"received: {value!r}")
        if not 0 <= self.seed < 2**32:
            raise ConvlabError(f"--seed must be between 0 and {2**32 - 1}, received: {self.seed}")
        if not 0 <= self.label_smoothing < 1:
            raise ConvlabError(f"--label-smoothing must be in [0, 1), received: "
                               f"{self.label_smoothing}")
        for name in ("mixup", "cutmix"):
            if not 0 <= getattr(self, name) <= 10:
                raise ConvlabError(f"{name} must be a Beta alpha in [0, 10] (0: off; timm "
                                   f"uses 0.8 / 1.0), received: {getattr(self, name)}")
        if self.class_weights not in (None, *CLASS_WEIGHTS):
            raise ConvlabError(f"--class-weights must be 'balanced' or omitted, received: "
                               f"{self.class_weights!r}")
        for flag, value in (("fine-tune-epochs", self.fine_tune_epochs),
                            ("feature-views", self.feature_views),
                            ("keep-checkpoints", self.keep_checkpoints)):
            if value < 0:
                raise ConvlabError(f"--{flag} must be >= 0, received: {value}")
        if not 0 <= self.weight_decay < math.inf:
            raise ConvlabError(f"weight_decay must be a number >= 0, received: "
                               f"{self.weight_decay}")
        if not 0 <= self.momentum < 1:
            raise ConvlabError(f"momentum must be in [0, 1), received: {self.momentum}")
        if not 0.25 <= self.fine_tune_start_scale <= 1:
            raise ConvlabError(f"--fine-tune-start-scale must be between 0.25 and 1 (1: every "
                               f"fine-tuning epoch at the training size), received: "
                               f"{self.fine_tune_start_scale}")
        if not 0 <= self.ema_momentum < 1:
            raise ConvlabError(f"ema_momentum must be in [0, 1) (0: no moving average), "
                               f"received: {self.ema_momentum}")
        self.schedule.validate()
        self.fine_tune_schedule.validate("fine-tune-schedule")

    @property
    def soft_labels(self) -> bool:
        """Training labels are one-hot floats (label smoothing, MixUp or CutMix)."""
        return bool(self.label_smoothing or self.mixup or self.cutmix)

    @property
    def total_epochs(self) -> int:
        return self.epochs + self.fine_tune_epochs

    def epoch_sizes(self, image_size: int) -> list[int]:
        """The training size of each epoch: the first phase's at `image_size`, the
        fine-tuning ones growing from `image_size` x `fine_tune_start_scale` to `image_size`
        (see `fine_tune_start_scale`)."""
        n, start = self.fine_tune_epochs, image_size * self.fine_tune_start_scale
        ramp = [start + (image_size - start) * i / max(1, n - 1) for i in range(n)]
        step = 32 if start >= 32 else 8  # tiny sizes (tests) in steps of 8
        sizes = [image_size if s >= image_size else max(step, int(s) // step * step)
                 for s in ramp[:-1]] + [image_size][:n]
        return [image_size] * self.epochs + sizes

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """Build from (possibly partial, possibly nested) plain values, e.g. config.json."""
        values = dict(values)
        if "fine_tune_lr" in values and "fine_tune_schedule" not in values:
            # config.json of a run made before fine_tune_schedule: the schedule it ran
            lr = values.pop("fine_tune_lr")
            values["fine_tune_schedule"] = {"name": "cosine", "learning_rate": lr,
                                            "warmup_epochs": 0.0, "min_lr": lr / 20}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConvlabError(f"unknown config field(s): {', '.join(unknown)}; known: "
                               f"{', '.join(sorted(known))}")
        for key in ("schedule", "fine_tune_schedule"):
            if isinstance(values.get(key), dict):
                values[key] = _build(ScheduleConfig, values[key], key)
        if isinstance(values.get("augment"), dict):
            aug = dict(values["augment"])
            for key in ("saturation", "contrast"):
                if isinstance(aug.get(key), list):
                    aug[key] = tuple(aug[key])
            values["augment"] = _build(Augment, aug, "augment")
        _check_types(cls, values, "")
        return cls(**values)

    def override(self, **changes) -> TrainConfig:
        """A copy with fields replaced; nested fields (`schedule`, `fine_tune_schedule`,
        `augment`, `model_options`) take dicts of changes, merged into the current values."""
        values = self.to_dict()
        for key, value in changes.items():
            if key in NESTED and isinstance(value, dict) and values.get(key):
                values[key] = {**values[key], **value}
            else:
                values[key] = value
        return TrainConfig.from_dict(values)

    def with_settings(self, settings: list[str]) -> TrainConfig:
        """A copy with `key=value` settings applied (the CLI's `--set`), e.g.
        `weight_decay=0.05`, `schedule.min_lr=1e-6`, `model_options.dropout=0.3`. Values are
        JSON (numbers, true/false, null, lists), else taken as strings."""
        changes: dict = {}
        for item in settings:
            key, sep, text = item.partition("=")
            key = key.strip().replace("-", "_")
            if not sep or not key:
                raise ConvlabError(f"--set takes key=value, received: {item!r}")
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                value = text
            except RecursionError:
                raise ConvlabError(f"--set {key}: the value is nested too deep") from None
            head, dot, sub = key.partition(".")
            if not dot:
                changes[head] = value
            elif head in NESTED:
                changes.setdefault(head, {})[sub] = value
            else:
                raise ConvlabError(f"--set {item!r}: {head!r} has no sub-fields; nested "
                                   f"fields are {', '.join(NESTED)}")
        return self.override(**changes)


NESTED = ("schedule", "fine_tune_schedule", "augment", "model_options")


def _build(cls, values: dict, where: str):
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConvlabError(f"unknown {where} field(s): {', '.join(unknown)}; known: "
                           f"{', '.join(sorted(known))}")
    _check_types(cls, values, f"{where}.")
    return cls(**values)


_SIMPLE = {int: (int,), float: (int, float), bool: (bool,), str: (str,)}


def _fits(hint, value) -> bool:
    """Whether a plain value (from JSON, --set or Python) has the type of a config field."""
    if hint is type(None):
        return value is None
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_fits(h, value) for h in typing.get_args(hint))
    if hint in _SIMPLE:
        return isinstance(value, _SIMPLE[hint]) and (hint is bool or not isinstance(value, bool))
    if typing.get_origin(hint) is tuple:
        args = typing.get_args(hint)
        return isinstance(value, tuple | list) and len(value) == len(args) and all(
            _fits(a, v) for a, v in zip(args, value, strict=True))
    if hint is dict or typing.get_origin(hint) is dict:
        return isinstance(value, dict)
    if dataclasses.is_dataclass(hint):
        return isinstance(value, hint)  # built from its dict before this check
    return True


def _describe(hint) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_describe(h) for h in typing.get_args(hint))
    if typing.get_origin(hint) is tuple:
        return f"[{', '.join(_describe(a) for a in typing.get_args(hint))}]"
    if dataclasses.is_dataclass(hint) or hint is dict or typing.get_origin(hint) is dict:
        return "an object of fields"
    return "null" if hint is type(None) else getattr(hint, "__name__", str(hint))


def _check_types(cls, values: dict, prefix: str) -> None:
    """A one-line error for a value of the wrong type (e.g. `--set epochs=ten`,
    `--set schedule=5`); ints given for float fields become floats."""
    hints = typing.get_type_hints(cls)
    for key, value in values.items():
        if not _fits(hints[key], value):
            nested = (f" (set one with --set {prefix}{key}.FIELD=VALUE)"
                      if key in NESTED and not prefix else "")
            raise ConvlabError(f"config field {prefix}{key} must be {_describe(hints[key])}"
                               f"{nested}, received: {value!r}"[:300])
        if hints[key] in (float, float | None) and isinstance(value, int) and not isinstance(
                value, bool):
            values[key] = float(value)


NO_AUGMENT = None
CODELAB_AUGMENT = {"flip": True, "saturation": (0.0, 2.0), "zoom": 0.0, "brightness": 0.0,
                   "contrast": None}
STRONG_AUGMENT = {"flip": True, "saturation": (0.6, 1.4), "zoom": 0.75, "brightness": 0.1,
                  "contrast": (0.8, 1.2)}
# Milder than STRONG: a frozen backbone's head sees only a few cached views of each photo.
TRANSFER_AUGMENT = {**CODELAB_AUGMENT, "saturation": (0.7, 1.3), "zoom": 0.85}
AUGMENT_PRESETS = {"none": NO_AUGMENT, "codelab": CODELAB_AUGMENT, "strong": STRONG_AUGMENT}
# The codelab's five fire modules with the 24-channel ones widened to 32 (every channel count
# a multiple of 16, which oneDNN's bfloat16 kernels need to run at full speed), and two more,
# twice as wide, in the cheap 16 px and 8 px stages: 7 fire modules, as deep as the SqueezeNet
# paper's 8; 694k parameters, 434M multiply-adds at 128 px against 131k and 362M for five.
SQUEEZENET_PLUS_LAYOUT = [[32, 64], "pool", [48, 96], "pool", [64, 128], "pool", [96, 192],
                          [96, 192], "pool", [128, 256], [128, 256]]

# Recipes: the codelab's exercises, faithful to its settings (single-accelerator values where
# the codelab scales with TPU cores), and ours. Each is a description plus field overrides.
RECIPES: dict[str, tuple[str, dict]] = {
    "codelab-dense": (
        "the codelab's first classifier: dense layers on raw pixels, 192 px, 10 epochs",
        {"model": "dense", "image_size": 192, "epochs": 10, "batch_size": 64,
         "augment": NO_AUGMENT, "schedule": {"name": "constant", "learning_rate": 1e-3}}),
    "codelab-transfer": (
        "transfer learning: frozen ImageNet MobileNetV2 + new head, 192 px, 10 epochs",
        {"model": "mobilenetv2", "image_size": 192, "epochs": 10, "batch_size": 64,
         "augment": NO_AUGMENT, "schedule": {"name": "constant", "learning_rate": 1e-3}}),
    "codelab-convnet": (
        "the codelab's plain convnet (3x3 convs, max pooling, GAP head), 192 px, 20 epochs",
        {"model": "convnet", "image_size": 192, "epochs": 20, "batch_size": 32,
         "augment": NO_AUGMENT, "schedule": {"name": "constant", "learning_rate": 1e-3}}),
    "codelab-squeezenet": (
        "SqueezeNet fire modules with batch norm, flip + saturation, 192 px, 35 epochs",
        {"model": "squeezenet", "image_size": 192, "epochs": 35, "batch_size": 32,
         "augment": CODELAB_AUGMENT, "schedule": {"name": "constant", "learning_rate": 1e-3}}),
    "codelab-xception": (
        "fine-tune all of ImageNet Xception, LR ramp-up then decay, 331 px, 12 epochs",
        {"model": "xception", "image_size": 331, "epochs": 12, "batch_per_replica": 16,
         "augment": CODELAB_AUGMENT,
         "schedule": {"name": "rampup", "learning_rate": 5e-5, "start_lr": 1e-5,
                      "min_lr": 1e-5, "rampup_epochs": 5, "sustain_epochs": 0,
                      "decay": 0.8, "scale_with_replicas": True}}),
    "squeezenet-plus": (
        "ours: SqueezeNet from scratch, improved: 7 fire modules with 16-aligned widths and "
        "the paper's bypass, dropout 0.2, 128 px random-resized crops of 50-100% of each side "
        "(prepare the photos at 224 px), strong augmentation, label smoothing, AdamW + "
        "warm-up/cosine, 60 epochs; evaluated at 144 px",
        # flower_photos prepared at 224 px: 88.5% / 85.8% / 87.1% final (seeds 42 / 1 / 2),
        # 89.1% / 86.4% / 87.4% evaluated at 144 px, against 87.4% (seed 42)
        # without bypass, dropout and the wider zoom, and 86.4% with the codelab's 5 fire
        # modules (BENCHMARKS.md); the codelab's 192 px recipe takes ~35 min for 35 epochs.
        # Evaluated at 144 px (FixRes): +0.6, +0.6 points on seeds 42 and 1 (of 128, 144, 160,
        # 176 px, the best on both), then +0.3 on seed 2 and +0.6 / +1.8 on two variants,
        # none of them used to choose.
        {"model": "squeezenet", "image_size": 128, "test_scale": 144 / 128, "epochs": 60,
         "batch_size": 64,
         "model_options": {"layout": SQUEEZENET_PLUS_LAYOUT, "bypass": True, "dropout": 0.2},
         "augment": {**STRONG_AUGMENT, "zoom": 0.5}, "label_smoothing": 0.1,
         "optimizer": "adamw",
         "schedule": {"name": "cosine", "learning_rate": 3e-3, "warmup_epochs": 2,
                      "min_lr": 1e-5}}),
    "convnet-plus": (
        "ours: the codelab's plain convnet, improved: 128 px random-resized crops (prepare the "
        "photos at 224 px), strong augmentation, label smoothing, AdamW + warm-up/cosine, "
        "60 epochs",
        # flower_photos prepared at 224 px: 83.0% / 84.0% final (seeds 42 / 1) in 12.4-12.5
        # min (BENCHMARKS.md)
        {"model": "convnet", "image_size": 128, "epochs": 60, "batch_size": 64,
         "augment": STRONG_AUGMENT, "label_smoothing": 0.1, "optimizer": "adamw",
         "schedule": {"name": "cosine", "learning_rate": 2e-3, "warmup_epochs": 2,
                      "min_lr": 1e-5}}),
    "efficientnet-lite0-transfer": (
        "ours: frozen ImageNet EfficientNet-Lite0 (weights work offline) + new head trained on "
        "cached features of 4 augmented views, 300 px, 8 epochs",
        # 300 px from photos prepared at 300 (their short side is ~240 px as published):
        # final validation accuracy 93.8% vs 92.5% at 260 and 91.4% at 224 (one seed each,
        # BENCHMARKS.md); the objects then look as large as in ImageNet's 224 px crops.
        {"model": "efficientnet_lite0", "image_size": 300, "epochs": 8, "batch_size": 32,
         "feature_views": 4,
         "augment": TRANSFER_AUGMENT,
         "label_smoothing": 0.1,
         "schedule": {"name": "cosine", "learning_rate": 2e-3, "warmup_epochs": 0.5,
                      "min_lr": 1e-5}}),
    "efficientnet-lite0-finetune": (
        "ours: EfficientNet-Lite0 head first (cached features), then the network from block 5 "
        "on (batch norm frozen) at 1/10 of the head's LR, its size growing from 224 to 300 "
        "px, 3+6 epochs",
        # 300 px: final validation accuracy 95.9% in 21 min vs 95.1% in 15 min at 260 px (one
        # seed each, BENCHMARKS.md); training accuracy reaches ~100% by the last epoch.
        # Evaluated at 340 px (FixRes): the zoom's crops of 75-100% of each side enlarge
        # objects by 1.15x on average (300 x 1.15 = 345).
        # Fine-tuning in less than half the time (issue 33, BENCHMARKS.md "Fine-tuning in
        # less time"): the stem and blocks 0-4 frozen (no backward pass through the largest
        # feature maps), 6 epochs instead of 8, their size growing from 224 to 300 px
        # (fastai's and EfficientNetV2's progressive resizing): 10.8 min of training instead
        # of 23.3 on a 2-core Zen 4 the same day, the same accuracy within noise.
        {"model": "efficientnet_lite0", "image_size": 300, "test_scale": 340 / 300,
         "epochs": 3, "batch_size": 32, "feature_views": 2, "fine_tune_epochs": 6,
         "fine_tune_from": "block5_", "fine_tune_start_scale": 0.75,
         "fine_tune_schedule": {"learning_rate": 2e-4, "min_lr": 1e-5},
         "augment": STRONG_AUGMENT,
         "label_smoothing": 0.1,
         "schedule": {"name": "cosine", "learning_rate": 2e-3, "warmup_epochs": 0.5,
                      "min_lr": 1e-5}}),
}


# What each recipe measured on ../shared/data/flower_photos (BENCHMARKS.md has the commands):
# `convlab recipes NAME` prints it.
MEASURED = {
    "efficientnet-lite0-transfer": "93.9% final validation accuracy (mean of 2 seeds), 4.4 "
                                   "min, photos prepared at 300 px, 2-core CPU",
    "efficientnet-lite0-finetune": "96.3% validation accuracy evaluated at 340 px (mean of 3 "
                                   "seeds: 95.9, 96.5, 96.5), 9.9-12.1 min of training, "
                                   "12.3-14.3 min for the whole command, photos prepared at "
                                   "300 px, 2-core CPU",
    "squeezenet-plus": "87.6% final validation accuracy evaluated at 144 px (mean of 3 seeds; "
                       "87.1% at the 128 px trained at), 26.5-29.1 min, photos prepared at "
                       "224 px, 2-core CPU",
    "convnet-plus": "83.5% final validation accuracy (mean of 2 seeds), 12.5 min, photos "
                    "prepared at 224 px, 2-core CPU",
}


def recipe_config(name: str) -> TrainConfig:
    """The `TrainConfig` of a recipe (see `RECIPES`)."""
    if name not in RECIPES:
        raise ConvlabError(f"unknown recipe {name!r}; choose one of: {', '.join(RECIPES)} "
                           "(see `convlab recipes`)")
    _, overrides = RECIPES[name]
    return TrainConfig().override(**overrides, recipe=name, name=name)


def flat_settings(values: dict, whole: tuple[str, ...] = (), prefix: str = "") -> dict:
    """{dotted key: value} of a nested config (`schedule.learning_rate`: the keys `--set`
    takes); lists, empty dicts and the fields named in `whole` stay values."""
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict) and value and key not in whole:
            flat.update(flat_settings(value, whole, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def named_config(name: str) -> TrainConfig:
    """A recipe's `TrainConfig`, or the defaults for a model of that name (`convlab train
    NAME`); an unknown model is named when the model is built."""
    return recipe_config(name) if name in RECIPES else TrainConfig(model=name, name=name)
