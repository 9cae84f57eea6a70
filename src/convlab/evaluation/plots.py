"""The run's plots, as PNGs in RUN/plots/: curves, confusion matrix, predictions, mistakes
(and their Grad-CAM heat maps), augmentation. Headless (matplotlib's Agg backend): they work
on servers and in CI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from convlab.errors import ConvlabError
from convlab.files import figure, literal
from convlab.runs import RunFolder, read_record

RIGHT, WRONG = "#1b5e20", "#c62828"


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def _history(run: Path) -> list[dict]:
    path = RunFolder(run).history_json
    if not path.exists():
        raise ConvlabError(f"run '{run}' has no {path.name}; did its training finish?")
    return json.loads(path.read_text())


def training_curves(run: str | os.PathLike) -> Path:
    """Accuracy and loss per epoch (train vs validation) and the learning rate per epoch."""
    record = read_record(run)
    run = record.path
    history = _history(run)
    epochs = [h["epoch"] + 1 for h in history]
    lrs = record.lr_per_epoch
    fig = figure(figsize=(15, 4.2))
    axes = fig.subplots(1, 3)
    for ax, metric in zip(axes, ("accuracy", "loss"), strict=False):
        ax.plot(epochs, [h[metric] for h in history], "o-", label="train")
        if any(f"val_{metric}" in h for h in history):
            ax.plot(epochs, [h.get(f"val_{metric}", np.nan) for h in history], "o-",
                    label="validation")
        ax.set_title(metric)
        ax.set_xlabel("epoch")
        ax.legend()
        ax.grid(alpha=0.3)
    if lrs:
        axes[2].plot(range(1, len(lrs) + 1), lrs, "o-", color="tab:purple")
        axes[2].ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    axes[2].set_title("learning rate (start of epoch)")
    axes[2].set_xlabel("epoch")
    axes[2].grid(alpha=0.3)
    for ax in axes:
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(literal(run.name))
    fig.tight_layout()
    return _save(fig, RunFolder(run).plot("training_curves"))


def confusion_matrix(run: str | os.PathLike, metrics: dict | None = None) -> Path:
    """Heat map of the row-normalised confusion matrix, each cell labelled count and %; with
    more than 30 classes (a matrix nobody can read), the most frequent confusions instead."""
    from convlab.evaluation.metrics import MANY_CLASSES

    run = Path(run)
    metrics = metrics or json.loads(RunFolder(run).metrics.read_text())
    counts = np.array(metrics["confusion_matrix"])
    norm = np.array(metrics["confusion_matrix_normalized"])
    classes = metrics["classes"]
    n = len(classes)
    RunFolder(run).plot("top_confusions").unlink(missing_ok=True)
    RunFolder(run).plot("confusion_matrix").unlink(missing_ok=True)
    if n > MANY_CLASSES:
        return top_confusions(run, metrics)
    side = min(max(4.5, 0.7 * n + 2.5), 24)
    fig = figure(figsize=(side + 1.2, side))
    ax = fig.subplots()
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    ax.set_xticks(range(n), [literal(c) for c in classes], rotation=45 if n > 4 else 0, ha="right" if n > 4 else
                  "center")
    ax.set_yticks(range(n), [literal(c) for c in classes])
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if n <= 25:  # beyond that the numbers are unreadable; the colours still tell
        for i in range(n):
            for j in range(n):
                ax.text(j, i, f"{counts[i, j]}\n{norm[i, j]:.0%}", ha="center", va="center",
                        fontsize=9 if n <= 10 else 6,
                        color="white" if norm[i, j] > 0.5 else "black")
    ax.set_title(f"confusion matrix: {metrics['images']} {metrics['split']} images, "
                 f"accuracy {metrics['accuracy']:.1%}")
    fig.tight_layout()
    return _save(fig, RunFolder(run).plot("confusion_matrix"))


def top_confusions(run: Path, metrics: dict, most: int = 25) -> Path:
    """The most frequent (true -> predicted) confusions as bars, each with its count and its
    share of the true class."""
    counts = np.array(metrics["confusion_matrix"])
    norm = np.array(metrics["confusion_matrix_normalized"])
    classes = metrics["classes"]
    off = counts.copy()
    np.fill_diagonal(off, 0)
    pairs = [(int(off[i, j]), i, j) for i, j in zip(*np.nonzero(off), strict=True)]
    pairs = sorted(pairs, key=lambda p: (-p[0], -norm[p[1], p[2]]))[:most]
    fig = figure(figsize=(10, 1.2 + 0.32 * max(len(pairs), 1)))
    ax = fig.subplots()
    labels = [f"{_short(literal(classes[i]))}  ->  {_short(literal(classes[j]))}"
              for _, i, j in pairs]
    ax.barh(range(len(pairs)), [c for c, _, _ in pairs], color=WRONG)
    for y, (c, i, j) in enumerate(pairs):
        ax.text(c, y, f" {c} ({norm[i, j]:.0%} of {_short(literal(classes[i]), 18)})",
                va="center", fontsize=8)
    ax.set_yticks(range(len(pairs)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("photos (true class -> predicted class)")
    ax.set_title(f"the {len(pairs)} most frequent confusions of {len(classes)} classes: "
                 f"{metrics['images']} {metrics['split']} images, accuracy "
                 f"{metrics['accuracy']:.1%}" if pairs else "no confusions")
    ax.margins(x=0.25)
    fig.tight_layout()
    return _save(fig, RunFolder(run).plot("top_confusions"))


def reliability(run: str | os.PathLike) -> Path | None:
    """The reliability diagram: in bins of the top probability, how often the model is right,
    before and after the run's calibration (a calibrated model lies on the diagonal). None
    for an evaluation saved before the raw probabilities were kept."""
    from convlab.prediction import ECE_BINS, ece, reliability_bins

    run = Path(run)
    pred = _predictions(run)
    if "raw_probabilities" not in pred:
        return None
    y = pred["labels"]
    fig = figure(figsize=(5.2, 5))
    ax = fig.add_subplot()
    edges = np.linspace(0, 1, ECE_BINS + 1)
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="perfectly calibrated")
    calibrated = not np.array_equal(pred["raw_probabilities"], pred["probabilities"])
    curves = [("the model's own", pred["raw_probabilities"], "tab:orange")]
    if calibrated:
        curves.append(("calibrated (what convlab shows)", pred["probabilities"], "tab:blue"))
    for name, probs, colour in curves:
        sure, right, _ = zip(*reliability_bins(probs, y), strict=True)
        ax.plot(sure, right, "o-", color=colour, label=f"{name}: ECE {ece(probs, y):.1%}")
    ax.set_xticks(edges[::3])
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="top probability (mean in its bin)",
           ylabel="share right", title=f"reliability, {len(y)} images, {ECE_BINS} bins"
           + ("" if calibrated else " (uncalibrated run)"))
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, RunFolder(run).plot("reliability"))


def _predictions(run: Path) -> dict:
    path = RunFolder(run).predictions
    if not path.exists():
        raise ConvlabError(f"run '{run}' has no {path.name}; run `convlab evaluate {run}`")
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def _short(name: str, width: int = 26) -> str:
    return name if len(name) <= width else name[:width - 3] + "..."


def _gallery(indices, pred: dict, classes: list[str], title: str, show_p: bool,
             heat: np.ndarray | None = None):
    """A grid of images with their predictions; with `heat` (one map per index), each image
    wears its Grad-CAM heat map."""
    where = {int(i): k for k, i in enumerate(pred["image_index"])}
    cols = min(max(len(indices), 1), 5)
    rows = max(1, -(-len(indices) // cols))
    fig = figure(figsize=(2.6 * cols, (3.3 if show_p else 2.9) * rows + 0.5))  # 3-line titles
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for n, (ax, i) in enumerate(zip(axes.flat, indices, strict=False)):
        probs = pred["probabilities"][i]
        guess, truth = int(probs.argmax()), int(pred["labels"][i])
        image = pred["images"][where[int(i)]]
        if heat is not None:
            from convlab.evaluation.gradcam import overlay

            image = overlay(image, heat[n])
        ax.imshow(image, interpolation="nearest")
        label = classes[guess] + (f" (p={probs[guess]:.2f})" if show_p else "")
        if guess != truth:
            label += f"\ntrue: {classes[truth]}"
            if show_p:
                label += f" (p={probs[truth]:.2f})"
            if show_p and "paths" in pred and pred["paths"][i]:
                label += "\n" + _short(os.path.basename(str(pred["paths"][i])))
        ax.set_title(literal(label), fontsize=10, color=RIGHT if guess == truth else WRONG)
    if not len(indices):
        axes[0, 0].text(0.5, 0.5, "no mistakes", ha="center", va="center", fontsize=14)
    fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    return fig


def predictions(run: str | os.PathLike) -> Path:
    """The codelab's prediction grid: predicted class over each image, red with the true
    class when wrong."""
    record = read_record(run)
    run = record.path
    pred = _predictions(run)
    wrong = int((pred["probabilities"][pred["grid"]].argmax(1) != pred["labels"][pred["grid"]])
                .sum())
    fig = _gallery(pred["grid"], pred, record.classes,
                   f"predictions ({wrong} of {len(pred['grid'])} wrong, in red)", False)
    return _save(fig, RunFolder(run).plot("predictions"))


def mistakes(run: str | os.PathLike) -> Path:
    """The most confident mistakes, with the predicted and true class and their p."""
    record = read_record(run)
    run = record.path
    pred = _predictions(run)
    total = int((pred["probabilities"].argmax(1) != pred["labels"]).sum())
    fig = _gallery(pred["mistakes"], pred, record.classes,
                   f"most confident mistakes ({len(pred['mistakes'])} of {total})", True)
    return _save(fig, RunFolder(run).plot("mistakes"))


def mistakes_gradcam(run: str | os.PathLike) -> Path | None:
    """The most confident mistakes again, each with its Grad-CAM heat map for the class the
    model predicted: what it took for that class. None without heat maps (a dense model,
    or predictions from before they were saved)."""
    record = read_record(run)
    run = record.path
    pred = _predictions(run)
    if "mistake_heat" not in pred:
        return None
    fig = _gallery(pred["mistakes"], pred, record.classes,
                   "where the model looked in its most confident mistakes (Grad-CAM of the "
                   "predicted class; red: strongest)", True, heat=pred["mistake_heat"])
    return _save(fig, RunFolder(run).plot("mistakes_gradcam"))


def augmentation(run: str | os.PathLike, count: int = 8) -> Path:
    """Training images as the run saw them: each one before and after its augmentation."""
    from convlab.data.manifest import is_prepared, read_manifest
    from convlab.data.pipeline import load

    record = read_record(run)
    run, config = record.path, record.config
    prepared = Path(record.prepared_data)
    if not is_prepared(prepared):
        raise ConvlabError(f"the run's prepared data '{prepared}' is gone")
    manifest = read_manifest(prepared)
    count = min(count, manifest.count("train"))
    # Same seed, so both pipelines shuffle identically: column k is one image, twice.
    common = {"batch_size": count, "image_size": record.image_size,
              "training": True, "seed": config.seed, "cache": False, "deterministic": True}
    plain, labels = next(iter(load(prepared, "train", augment=None, **common)))
    augmented, _ = next(iter(load(prepared, "train", augment=config.augment, **common)))
    fig = figure(figsize=(1.9 * count, 4.6))
    axes = fig.subplots(2, count, squeeze=False)
    for k in range(count):
        for row, images in enumerate((plain, augmented)):
            axes[row, k].imshow(images[k].numpy(), interpolation="nearest")
            axes[row, k].set_xticks([])
            axes[row, k].set_yticks([])
        axes[0, k].set_title(literal(manifest.classes[int(labels[k])]), fontsize=10)
    axes[0, 0].set_ylabel("original")
    axes[1, 0].set_ylabel("augmented")
    what = _describe(config.augment)
    fig.suptitle(f"training augmentation: {what}", fontsize=12)
    fig.tight_layout()
    return _save(fig, RunFolder(run).plot("augmentation"))


def _describe(augment) -> str:
    if augment is None or not augment.enabled:
        return "none in this run"
    parts = ["left-right flip"] if augment.flip else []
    if augment.saturation:
        parts.append(f"saturation {augment.saturation[0]:g}-{augment.saturation[1]:g}")
    if augment.zoom:
        parts.append(f"zoom to {augment.zoom:g}")
    if augment.brightness:
        parts.append(f"brightness ±{augment.brightness:g}")
    if augment.contrast:
        parts.append(f"contrast {augment.contrast[0]:g}-{augment.contrast[1]:g}")
    return ", ".join(parts)


def make_plots(run: str | os.PathLike) -> dict[str, Path]:
    """All plots of an evaluated run (see `evaluate`); returns {file name: path}.

    The augmentation plot needs the run's prepared data; when that is gone it is left out.

    Raises:
        ConvlabError: not a run folder, or not evaluated yet.
    """
    from convlab.data.manifest import is_prepared
    from convlab.data.sources import is_remote

    record = read_record(run)
    run = record.path
    made = {p.name: p for p in (training_curves(run), confusion_matrix(run), predictions(run),
                                mistakes(run), mistakes_gradcam(run), reliability(run))
            if p is not None}
    local = record.prepared_data and not is_remote(record.prepared_data)
    if local and is_prepared(record.prepared_data):
        path = augmentation(run)
        made[path.name] = path
    return made
