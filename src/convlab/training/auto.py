"""`convlab train --data D` with no model or recipe: the approach chosen from the data and the
machine, within a time budget.

The plan, in the order it is made:
1. Look at the photos (a sample of their headers): the image size follows their short side,
   so small photos are not enlarged to 300 px by habit.
2. Prepare them (once, cached) and count the training photos.
3. Time the pretrained backbone on this machine: one forward batch and one whole-network
   training step at that size (a few seconds after tracing).
4. Frozen ImageNet EfficientNet-Lite0 first (its head on cached features), then as many
   whole-network fine-tuning epochs as the rest of the budget holds, at most about the
   fine-tune recipe's number of steps; no fine-tuning when fewer than 2 epochs fit.
The choices and the reasons are printed and saved in config.json (`plan`).
"""

from __future__ import annotations

import math
import os
import statistics
import time
from dataclasses import dataclass

from convlab.config import TrainConfig, recipe_config
from convlab.errors import ConvlabError

DEFAULT_BUDGET_MINUTES = 20.0
BACKBONE = "efficientnet_lite0"
HEAD_RECIPE, FINE_TUNE_RECIPE = "efficientnet-lite0-transfer", "efficientnet-lite0-finetune"
LARGEST_SIZE = 300  # the recipes' size: objects then look as large as in ImageNet's crops
# Small photos are enlarged to the backbone's own 224 px: it downsamples 32x, and its
# ImageNet features expect objects of ImageNet's scale (BENCHMARKS.md "Small photos":
# flower_photos shrunk to 32 px, frozen Lite0: 70.3% at 64 px, 76.5% at 128, 80.0% at 224).
SMALLEST_SIZE = 224
# when even the frozen backbone at that size does not fit the budget (a very large collection)
FALLBACK_SIZES = (192, 160, 128)
# The fine-tune recipe's phase on flower_photos: its epochs of 86 steps. Fewer photos get more
# epochs (the same number of steps), more photos fewer, within these bounds.
FINE_TUNE_STEPS = recipe_config(FINE_TUNE_RECIPE).fine_tune_epochs * 86
FINE_TUNE_EPOCHS = (2, 15)
# The part of the backbone the recipe fine-tunes (block 5 on): what the plan times.
FINE_TUNE_FROM = recipe_config(FINE_TUNE_RECIPE).fine_tune_from
# A training step at a smaller size (the recipe's progressive resizing) costs about its share
# of the pixels: on flower_photos (from block 5, batch 32), a 224 px epoch's steps took 0.59x
# and a 256 px one's 0.73x the time of a 300 px one's (0.60x and 0.75x here).
FIXED_SHARE = 0.1
# Real epochs take longer than the bare steps timed here (the input pipeline shares the
# cores, validation, checkpoints): 1.04x on clothing-small's fine-tuning epochs (156 s real,
# 150 s from the timed steps), 1.1 to leave room; the reserve covers evaluating (the
# validation and a given test split) and writing the report.
OVERHEAD = 1.1
REPORT_SECONDS = 45.0


@dataclass(frozen=True)
class Photos:
    """What a look at the source tells before anything is trained."""

    sampled: int
    short_side: int  # median short side of the sampled photos (px)
    prepared_size: int | None  # a prepared folder's stored size


def look_at_photos(spec: str, sample: int = 256) -> Photos:
    """The median short side of up to `sample` photos (their headers only), or a prepared
    folder's stored size."""
    from convlab.data.decode import SkipImage, sniff
    from convlab.data.manifest import is_prepared, read_manifest
    from convlab.data.sources import read_bytes, scan_source

    if os.path.isdir(spec) and is_prepared(spec):
        stored = read_manifest(spec).stored_size
        return Photos(0, stored, stored)
    candidates = scan_source(spec).candidates
    step = max(1, len(candidates) // sample)
    sides = []
    for c in candidates[::step][:sample]:
        try:
            sides.append(min(sniff(read_bytes(c.path))[1]))
        except (SkipImage, OSError):
            continue
    if not sides:
        raise ConvlabError(f"no readable photos found in '{spec}' (sampled {len(candidates)} "
                           "files); check the folder with `convlab data prepare`")
    return Photos(len(sides), int(statistics.median(sides)), None)


def choose_size(photos: Photos) -> tuple[int, str]:
    """The training size and why: 1.25x the photos' short side (the random zoom's crops and
    the recipes' 300 px for ~240 px photos), a multiple of 4, within [224, 300] px."""
    side = photos.short_side
    size = min(LARGEST_SIZE, max(SMALLEST_SIZE, 4 * round(side * 1.25 / 4)))
    if photos.prepared_size is not None:
        size = min(size, max(SMALLEST_SIZE, photos.prepared_size))
        return size, f"{size} px from the prepared images' {side} px"
    why = f"{size} px: the photos' median short side is {side} px ({photos.sampled} sampled)"
    if size == LARGEST_SIZE and side * 1.25 > LARGEST_SIZE:
        why += f"; {LARGEST_SIZE} px at most on this budget"
    elif size == SMALLEST_SIZE and side * 1.25 < SMALLEST_SIZE:
        why += f"; enlarged to {SMALLEST_SIZE} px, the pretrained backbone's own size"
    return size, why


@dataclass(frozen=True)
class StepTimes:
    """Seconds per image on this machine, at one size."""

    forward: float  # the frozen backbone and head, inference
    train: float  # a fine-tuning step (batch norm frozen), per image

    def describe(self) -> str:
        return (f"{1 / self.forward:.0f} images/s forward, {1 / self.train:.0f} images/s "
                f"fine-tuning")


def time_steps(num_classes: int, image_size: int, batch_size: int = 32) -> StepTimes:
    """Time EfficientNet-Lite0 here: a forward batch and a fine-tuning step (the backbone
    from `FINE_TUNE_FROM`; the best of two after one that traces). No weights are loaded:
    arithmetic does not depend on them."""
    import keras
    import numpy as np

    from convlab.models import create_model
    from convlab.models.backbone import set_backbone_trainable

    model = create_model(BACKBONE, num_classes, image_size, weights=None)
    x = np.random.default_rng(0).random((batch_size, image_size, image_size, 3), np.float32)
    y = np.zeros((batch_size,), np.int32)

    def best_of(fn, times: int = 2) -> float:
        fn()
        spans = []
        for _ in range(times):
            start = time.perf_counter()
            fn()
            spans.append(time.perf_counter() - start)
        return min(spans) / batch_size

    forward = best_of(lambda: model.predict_on_batch(x))
    set_backbone_trainable(model, True, first_trainable=FINE_TUNE_FROM)
    model.compile(optimizer=keras.optimizers.Adam(1e-4),
                  loss=keras.losses.SparseCategoricalCrossentropy())
    train = best_of(lambda: model.train_on_batch(x, y))
    keras.backend.clear_session()
    return StepTimes(forward, train)


@dataclass(frozen=True)
class Counts:
    train: int
    validation: int
    classes: int


def fine_tune_sizes(epochs: int, size: int) -> list[int]:
    """The size of each of the fine-tune recipe's `epochs` fine-tuning epochs at `size`: its
    progressive resizing trains the first ones smaller (`TrainConfig.epoch_sizes`)."""
    recipe = recipe_config(FINE_TUNE_RECIPE).override(fine_tune_epochs=epochs)
    return recipe.epoch_sizes(size)[recipe.epochs:]


def fine_tune_cost(epochs: int, size: int) -> float:
    """The fine-tune recipe's `epochs` training epochs at `size`, in epochs at full size."""
    return sum(FIXED_SHARE + (1 - FIXED_SHARE) * (s / size) ** 2
               for s in fine_tune_sizes(epochs, size))


def plan_epochs(counts: Counts, times: StepTimes, seconds_left: float, batch_size: int = 32,
                size: int = LARGEST_SIZE) -> tuple[dict, list[str], float]:
    """The config overrides of the training phases at `size` px (`times` measured there), the
    reasons, and the seconds expected."""
    steps = max(1, counts.train // batch_size)
    # the head: cached features of the training views + validation, then nearly free epochs
    def caching(views: int) -> float:
        return OVERHEAD * times.forward * (views * steps * batch_size + counts.validation)

    def fine_tuning(epochs: int) -> float:  # training (growing sizes), validation at `size`
        return OVERHEAD * (times.train * steps * batch_size * fine_tune_cost(epochs, size)
                           + times.forward * counts.validation * epochs)

    # calibration (a pass over validation and one over training, at the test size), then
    # the evaluation of the report (validation, plots)
    evaluate = times.forward * (counts.validation * 2.3 + counts.train) + REPORT_SECONDS
    lo, hi = FINE_TUNE_EPOCHS
    wanted = min(hi, max(lo + 2, math.ceil(FINE_TUNE_STEPS / steps)))
    head_ft = recipe_config(FINE_TUNE_RECIPE)
    room = seconds_left - evaluate - caching(head_ft.feature_views)
    fits = 0
    while fits < 4 * hi and fine_tuning(fits + 1) <= room:
        fits += 1
    reasons = []
    if fits >= lo:
        epochs = min(wanted, fits)
        first = fine_tune_sizes(epochs, size)[0]
        sizes = f", growing from {first} to {size} px" if first < size else ""
        reasons.append(f"fine-tuning: {epochs} epoch(s) of the backbone from {FINE_TUNE_FROM}"
                       + sizes
                       + (f" ({wanted} wanted for ~{FINE_TUNE_STEPS} steps at "
                          f"{steps} steps/epoch; {fits} fit the budget)" if epochs < wanted else
                          f" (~{FINE_TUNE_STEPS} steps at {steps} steps/epoch; "
                          f"{fits} would fit the budget)"))
        expected = caching(head_ft.feature_views) + fine_tuning(epochs) + evaluate
        overrides = {"recipe": FINE_TUNE_RECIPE, "fine_tune_epochs": epochs}
        return overrides, reasons, expected
    head = recipe_config(HEAD_RECIPE)
    views = head.feature_views
    while views > 1 and caching(views) + evaluate > seconds_left:
        views -= 1
    reasons.append(f"frozen backbone only: a fine-tuning epoch takes ~{fine_tuning(1) / 60:.1f} "
                   f"min here and fewer than {lo} fit the budget; the head on {views} cached "
                   "augmented view(s)")
    expected = caching(views) + evaluate
    return {"recipe": HEAD_RECIPE, "feature_views": views}, reasons, expected


def plan(data: str, *, budget_minutes: float | None = None, progress: bool = True,
         started: float | None = None) -> TrainConfig:
    """The `TrainConfig` for `data` within the budget (default 20 minutes), counted from
    `started` (default: now): preparing the photos and timing this machine come out of it.

    Raises:
        ConvlabError: no readable photos, or a budget too small to train anything.
    """
    from convlab.data.manifest import read_manifest
    from convlab.data.resolve import resolve_data

    started = time.time() if started is None else started
    budget = DEFAULT_BUDGET_MINUTES if budget_minutes is None else float(budget_minutes)
    if not (budget > 0 and math.isfinite(budget)):
        raise ConvlabError(f"--budget-minutes must be a positive number of minutes, "
                           f"received: {budget_minutes}")
    photos = look_at_photos(str(data))
    size, size_reason = choose_size(photos)
    print(f"plan: {size_reason}")
    prepared = resolve_data(data, size, progress=progress)
    manifest = read_manifest(prepared)
    counts = Counts(manifest.count("train"), manifest.count("validation"), manifest.num_classes)
    print(f"plan: {counts.train} training and {counts.validation} validation photos in "
          f"{counts.classes} classes; timing the backbone at {size} px on this machine ...")
    batch, reasons = 32, []  # the recipes' batch
    if counts.train < batch * 4:  # at least 4 steps an epoch
        batch = max(8, 2 ** int(math.log2(max(counts.train // 4, 8))))
        reasons.append(f"batch {batch}: only {counts.train} training photos")
    measured = time_steps(counts.classes, size, batch)
    left = budget * 60 - (time.time() - started)
    for trial in (size, *(s for s in FALLBACK_SIZES if s < size)):
        # arithmetic grows with the pixels: the times measured, scaled
        scale = (trial / size) ** 2
        times = StepTimes(measured.forward * scale, measured.train * scale)
        overrides, phase_reasons, expected = plan_epochs(counts, times, left, batch,
                                                          size=trial)
        if expected <= left:
            break
    if trial != size:
        phase_reasons.append(f"{trial} px instead of {size}: the frozen backbone at {size} px "
                             "would not fit the budget")
    if expected > left:
        phase_reasons.append(f"over the budget even so (~{expected / 60:.0f} min needed, "
                             f"{max(left, 0) / 60:.0f} min left): raise --budget-minutes")
    reasons = phase_reasons + reasons
    base = recipe_config(overrides.pop("recipe"))
    config = base.override(data=str(data), image_size=trial, name="auto", batch_size=batch,
                           **overrides)
    config = config.override(plan={
        "budget_minutes": budget, "image_size": trial, "reasons": [size_reason, *reasons],
        "measured": {"size": size, "forward_images_per_second": round(1 / measured.forward, 1),
                     "train_images_per_second": round(1 / measured.train, 1)},
        "expected_minutes": round((time.time() - started + expected) / 60, 1)})
    print(f"plan: {measured.describe()} at {size} px; {'; '.join(reasons)}; expected "
          f"~{config.plan['expected_minutes']:.0f} of {budget:g} min in all")
    return config
