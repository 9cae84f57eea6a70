"""`evaluate`: a run's model on a prepared split or a photo folder -> metrics.json.

The maths is scikit-learn's; this module only gathers predictions, matches classes by name
and writes the results (metrics.json, plus predictions.npz for the plots) into the run folder.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from convlab.config import check_image_size
from convlab.errors import ConvlabError
from convlab.files import write_text_atomic
from convlab.prediction import ECE_BINS, Outputs, Predictor, check_tta, ece, nll
from convlab.runs import RunFolder, RunRecord, read_record
from convlab.usertext import csv_row, from_csv_cell, visible

GRID_IMAGES = 20  # the prediction grid
GALLERY_IMAGES = 16  # the mistakes gallery


def _resolve(data, record: RunRecord, split: str | None, size: int, progress: bool = False
             ) -> tuple[Path, str]:
    """The prepared folder and split to evaluate."""
    from convlab.data.manifest import is_prepared
    from convlab.data.resolve import resolve_data
    from convlab.data.sources import is_remote

    if data is None:
        prepared = record.prepared_data or ""
        if is_remote(prepared):  # a TPU run's gs:// data
            return prepared, split or "validation"
        prepared = Path(prepared)
        if not is_prepared(prepared):
            raise ConvlabError(f"the run's prepared data '{prepared}' is gone; pass --data")
        return prepared, split or "validation"
    prepared = resolve_data(data, size, progress=progress)
    prepared_already = isinstance(prepared, str) or is_prepared(data)
    # A photo folder is prepared into the cache with a train/validation split that means
    # nothing here: every one of its images is test data for this model.
    return prepared, split or ("validation" if prepared_already else "all")


def _label(record: RunRecord, prepared, data, split: str, variant: str = "") -> str | None:
    """None for the run's own validation split as trained (metrics.json in the run folder:
    what the report headlines), else the name of the evaluation's folder: DATA-SPLIT, plus
    `variant` (e.g. "-340px-flip") for another test size or test-time augmentation, so
    that trying those never replaces the run's own numbers."""
    own = record.prepared_data or ""
    own_data = data is None or str(prepared) == own or (
        not isinstance(prepared, str) and own and Path(own).exists()
        and Path(prepared).resolve() == Path(own).resolve())
    if split == "validation" and own_data and not variant:
        return None
    name = Path(str(data if data is not None else prepared).rstrip("/")).name or "data"
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip(".") or "data"
    return f"{name}-{split}{variant}"


def _class_map(classes: tuple[str, ...], known: list[str], data) -> np.ndarray:
    """Maps the dataset's class indices to the model's, by name."""
    unknown = [c for c in classes if c not in known]
    if unknown:
        raise ConvlabError(
            f"class{'es' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} in "
            f"'{data}' {'are' if len(unknown) > 1 else 'is'} not known to the model; it knows: "
            f"{', '.join(known)}")
    return np.array([known.index(c) for c in classes], dtype=np.int64)


def splits_with_photos(prepared: Path) -> list[str]:
    """The splits of a prepared folder that hold photos, in its manifest's order."""
    from convlab.data.manifest import read_manifest

    return [k for k, v in read_manifest(prepared).per_split.items() if v]


def split_datasets(prepared: Path, split: str, image_size: int, batch_size: int) -> list:
    """The split's (or, for "all", every split's) batches, unaugmented, in the same fixed
    order on every pass."""
    from convlab.data.pipeline import load

    splits = splits_with_photos(prepared) if split == "all" else [split]
    return [load(prepared, name, batch_size=batch_size, image_size=image_size, training=False,
                 cache=False, deterministic=True) for name in splits]


def predict_datasets(predictor: Predictor, datasets: list, tta: str | None, total: int = 0
                     ) -> tuple[np.ndarray, Outputs]:
    """(labels in the dataset's class indices, the `Predictor`'s outputs, heat maps left
    out) over all the batches of `datasets`; a progress bar over `total` images when it is
    given.

    Raises:
        ConvlabError: the datasets hold no image.
    """
    from convlab.progress import progress_bar

    labels, parts = [], []
    with progress_bar(total > 0, total, "evaluating") as advance:
        for ds in datasets:
            for x, y in ds:
                parts.append(predictor(x.numpy(), tta=tta))
                labels.append(y.numpy())
                advance(len(labels[-1]))
    if not labels:
        raise ConvlabError("no images to evaluate")
    return np.concatenate(labels), Outputs.join(parts, parts[0].raw.shape[1])


def _calibration(predictor: Predictor, out: Outputs, y: np.ndarray) -> dict:
    """NLL and ECE of the model's own probabilities and of the calibrated ones, and the share
    of the images the out-of-scope threshold calls "none of the classes"."""
    cal = predictor.calibration
    found = {"temperature": None if cal is None else cal.temperature, "ece_bins": ECE_BINS,
             "nll": nll(out.raw, y), "ece": ece(out.raw, y)}
    if cal is not None:
        found.update(nll_calibrated=nll(out.probabilities, y),
                     ece_calibrated=ece(out.probabilities, y))
    if out.in_scope is not None:
        found.update(threshold=cal.threshold,
                     none_of_the_classes=float(1 - out.in_scope.mean()))
    return found


def _gather(datasets: list, indices: np.ndarray) -> np.ndarray:
    """uint8 pixels of the images at `indices`: a second pass, so that the first never holds
    a whole split's pixels in memory."""
    wanted, found, seen = set(indices.tolist()), {}, 0
    for ds in datasets:
        for x, _ in ds:
            if len(found) == len(wanted):
                break
            for j in wanted & set(range(seen, seen + len(x))):
                found[j] = np.round(x[j - seen].numpy() * 255).astype(np.uint8)
            seen += len(x)
    return np.stack([found[i] for i in indices])


def _top_k(top_k: int | None, classes: int) -> int:
    """The k of the top-k accuracy: `top_k`, by default min(3, classes - 1)."""
    k = top_k if top_k is not None else max(1, min(3, classes - 1))
    if not 1 <= k <= max(1, classes - 1):
        raise ConvlabError(f"--top-k must be between 1 and {max(1, classes - 1)} for {classes} "
                           f"classes, received: {k}")
    return k


@dataclass(frozen=True)
class _Plan:
    """What one evaluation reads and where it writes, its options checked."""

    record: RunRecord
    prepared: Path | str  # the prepared folder (a TPU run's own data: its gs:// URL)
    split: str
    image_size: int
    tta: str
    top_k: int
    label: str | None  # see `_label`
    where: RunFolder  # the run folder, or its evaluations/LABEL/


def _plan(run, data, split: str | None, top_k: int | None, tta: str | None,
          image_size: int | None, progress: bool) -> _Plan:
    """Check `evaluate`'s options; resolve its data, split, size and output folder."""
    from convlab.data.pipeline import SPLIT_ALIASES

    record = read_record(run)
    k = _top_k(top_k, len(record.classes))
    tta = check_tta(tta)
    check_image_size("image-size", image_size, "the run's own")
    size = image_size or record.test_size
    prepared, split = _resolve(data, record, split, size, progress)
    split = SPLIT_ALIASES.get(split, split)
    variant = (f"-{size}px" if size != record.test_size else "") + (
        f"-{tta}" if tta != "none" else "")
    label = _label(record, prepared, data, split, variant)
    return _Plan(record, prepared, split, size, tta, k, label,
                 RunFolder(record.path).evaluation(label))


def _predict_split(plan: _Plan, data, model: str, batch_size: int, progress: bool
                   ) -> tuple[Predictor, list, np.ndarray, Outputs]:
    """(predictor, datasets, labels in the model's class indices, outputs): the run's model
    on the planned split."""
    from convlab.data.manifest import read_manifest

    manifest = read_manifest(plan.prepared)
    mapping = _class_map(manifest.classes, plan.record.classes, data or plan.prepared)
    predictor = Predictor(plan.record.path, model, image_size=plan.image_size)
    datasets = split_datasets(plan.prepared, plan.split, plan.image_size, batch_size)
    total = sum(n for s, n in manifest.per_split.items()
                if plan.split in (s, "all")) if progress else 0
    labels, out = predict_datasets(predictor, datasets, plan.tta, total)
    return predictor, datasets, mapping[labels], out


def _scores(y: np.ndarray, probs: np.ndarray, classes: list[str], k: int) -> dict:
    """Accuracies, loss, per-class and averaged precision/recall/F1, confusion matrices."""
    from sklearn import metrics as skm

    pred = probs.argmax(axis=1)
    everyone = list(range(len(classes)))
    p, r, f1, support = skm.precision_recall_fscore_support(y, pred, labels=everyone,
                                                            zero_division=0)
    # Averages over the classes present in the data evaluated: a class with no photo here
    # has no recall to average (counting it as 0 would understate every macro figure).
    present = sorted(set(y.tolist()))
    averages = {}
    for avg in ("macro", "weighted"):
        ap, ar, af, _ = skm.precision_recall_fscore_support(y, pred, labels=present,
                                                            average=avg, zero_division=0)
        averages[avg] = {"precision": float(ap), "recall": float(ar), "f1": float(af)}
    return {
        "accuracy": float(skm.accuracy_score(y, pred)),
        # the mean of the per-class recalls: what accuracy would be with balanced classes
        "balanced_accuracy": averages["macro"]["recall"],
        "macro_f1": averages["macro"]["f1"],
        "absent_classes": [classes[i] for i in sorted(set(everyone) - set(present))],
        "top_k": k,
        "top_k_accuracy": float(skm.top_k_accuracy_score(y, probs, k=k, labels=everyone))
        if len(classes) > 2 else float(skm.accuracy_score(y, pred)),
        "loss": float(skm.log_loss(y, _normalised(probs), labels=everyone)),
        "per_class": {c: {"precision": float(p[i]), "recall": float(r[i]),
                          "f1": float(f1[i]), "support": int(support[i])}
                      for i, c in enumerate(classes)},
        **averages,
        "confusion_matrix": skm.confusion_matrix(y, pred, labels=everyone).tolist(),
        "confusion_matrix_normalized": skm.confusion_matrix(
            y, pred, labels=everyone, normalize="true").round(4).tolist(),
    }


def _metrics(plan: _Plan, predictor: Predictor, y: np.ndarray, out: Outputs) -> dict:
    """The contents of metrics.json."""
    record, where, probs = plan.record, plan.where, out.probabilities  # calibrated, if it is
    return {
        "run": str(record.path), "evaluation": plan.label, "metrics_file": str(where.metrics),
        "model_file": predictor.path.name, "data": str(plan.prepared),
        "split": plan.split, "images": int(len(y)), "classes": record.classes, "tta": plan.tta,
        "image_size": plan.image_size,
        **_scores(y, probs, record.classes, plan.top_k),
        "calibration": _calibration(predictor, out, y),
        "predictions": where.predictions.name,
        "mistakes": int((probs.argmax(axis=1) != y).sum()), "mistakes_file": str(where.mistakes),
    }


def evaluate(run: str | os.PathLike, data: str | os.PathLike | None = None,
             split: str | None = None, model: str = "best", top_k: int | None = None,
             batch_size: int = 64, tta: str | None = None, image_size: int | None = None,
             progress: bool = True) -> dict:
    """Evaluate a run's model; write metrics.json and predictions.npz.

    The run's own validation split, at the run's test size without test-time augmentation,
    writes them into the run folder (the report's headline); any other data, split, size or
    augmentation into `RUN/evaluations/DATA-SPLIT[-SIZEpx][-TTA]/` (e.g. `flower_photos-all`,
    `fp224-validation-144px-flip`), beside it, so those never replace the run's own numbers.

    Args:
        run: a run folder written by `convlab.train`.
        data: None for the run's own prepared data; else a prepared folder, or a photo folder
            (or anything `--data` accepts), prepared once into the cache at the run's image
            size. Its classes are matched to the model's by name.
        split: "validation", "train", "test" or "all". Default: "validation" for prepared
            data, "all" for a photo folder (every photo in it is evaluated).
        model: "best" (best.keras) or "final" (model.keras).
        top_k: k of the top-k accuracy; default min(3, classes - 1).
        batch_size: images per prediction batch.
        tta: test-time augmentation: None/"none", or "flip" (average over each image and its
            mirror image).
        image_size: evaluate at this size instead of the run's test size (its training
            size times its config's `test_scale`). Larger than trained at can score
            better when training zoomed in (FixRes); the metrics record the size used.
        progress: progress (on stderr) while preparing a photo folder and predicting, and
            a line naming the files written.

    Returns:
        The metrics: evaluation (None for the run's own validation split, else the
        folder name under evaluations/), metrics_file, accuracy, top_k_accuracy, loss (cross-entropy), per_class
        precision/recall/f1/support, macro and weighted averages, confusion_matrix (counts,
        rows = true class) and confusion_matrix_normalized (rows sum to 1).

    Raises:
        ConvlabError: not a run folder, missing model or data, a class the model does not
            know, or a bad split or top_k.
    """
    plan = _plan(run, data, split, top_k, tta, image_size, progress)
    predictor, datasets, y, out = _predict_split(plan, data, model, batch_size, progress)
    metrics = _metrics(plan, predictor, y, out)
    where = plan.where
    where.path.mkdir(parents=True, exist_ok=True)
    paths = _paths(plan.prepared, plan.split, len(y))
    _save_predictions(where.predictions, y, out.probabilities, datasets, paths,
                      predictor.heat_maps, raw=out.raw)
    write_mistakes(where.mistakes, y, out.probabilities, paths, plan.record.classes)
    write_text_atomic(where.metrics, json.dumps(metrics, indent=1))
    if progress:
        print(f"evaluated {metrics['images']:,} images: accuracy {metrics['accuracy']:.4f}; "
              f"wrote {visible(where.metrics)} ({where.predictions.name} and "
              f"{where.mistakes.name} beside it)")
    return metrics


def _normalised(probs: np.ndarray) -> np.ndarray:
    # float32 softmax rows sum to 1 only within ~1e-7; scikit-learn warns at that.
    probs = probs.astype(np.float64)
    return probs / probs.sum(axis=1, keepdims=True)


def _paths(prepared, split: str, count: int) -> list[str]:
    """The source file of each evaluated image, in order ("" where unknown)."""
    from convlab.data.pipeline import record_paths

    splits = splits_with_photos(prepared) if split == "all" else [split]
    paths = [p for s in splits for p in record_paths(prepared, s)]
    return paths if len(paths) == count else [""] * count


def mistakes_order(y: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Indices of the wrong predictions, the most confident first."""
    pred = probs.argmax(axis=1)
    wrong = np.flatnonzero(pred != y)
    return wrong[np.argsort(-probs[wrong, pred[wrong]], kind="stable")]


def write_mistakes(path: Path, y: np.ndarray, probs: np.ndarray, paths: list[str],
                   classes: list[str]) -> None:
    """mistakes.csv: every wrong prediction with its file, the most confident first (file
    and class names that a spreadsheet would run as formulas are quoted: `csv_cell`)."""
    import csv

    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["path", "label", "predicted", "p_predicted", "p_label"])
        for i in mistakes_order(y, probs):
            guess = int(probs[i].argmax())
            out.writerow(csv_row([paths[i], classes[y[i]], classes[guess],
                                  f"{probs[i, guess]:.4f}", f"{probs[i, y[i]]:.4f}"]))


def read_mistakes(path: Path) -> list[dict]:
    """The rows of a mistakes.csv, its text as it was before `write_mistakes` quoted it."""
    import csv

    with open(path, newline="") as f:
        return [{k: from_csv_cell(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _save_predictions(path: Path, y: np.ndarray, probs: np.ndarray, datasets: list,
                      paths: list[str], heat_maps=None, raw: np.ndarray | None = None) -> None:
    """Labels and probabilities for all images; pixels only for those the plots show, and
    the Grad-CAM heat maps (`HeatMaps`, None for the dense baseline) of the mistakes shown
    (for the class predicted), so the plots need neither the data nor the model again."""
    # Most confident mistakes first: the ones most worth a look.
    wrong = mistakes_order(y, probs)[:GALLERY_IMAGES]
    grid = np.arange(min(GRID_IMAGES, len(y)))
    shown = np.union1d(grid, wrong)
    images = _gather(datasets, shown)
    extra = {}
    if heat_maps is not None and len(wrong):
        pixels = images[np.searchsorted(shown, wrong)].astype(np.float32) / np.float32(255)
        extra["mistake_heat"] = heat_maps(pixels, probs[wrong].argmax(1))[1]
    if raw is not None:  # the model's own probabilities, before calibration
        extra["raw_probabilities"] = raw
    np.savez_compressed(path, labels=y, probabilities=probs, grid=grid, paths=np.array(paths),
                        mistakes=wrong, image_index=shown, images=images, **extra)


def load_metrics(run: str | os.PathLike) -> dict | None:
    """The run's metrics.json (its own validation split), or None if it was never evaluated."""
    path = RunFolder(run).metrics
    return json.loads(path.read_text()) if path.exists() else None


def other_evaluations(run: str | os.PathLike) -> list[dict]:
    """The metrics of the run's evaluations on other data or splits, by folder name."""
    folder = RunFolder(run).evaluations
    found = []
    for path in sorted(folder.glob("*/")) if folder.is_dir() else []:
        try:
            found.append(json.loads(RunFolder(path).metrics.read_text()))
        except (OSError, json.JSONDecodeError):
            continue  # an evaluation that never finished writing
    return found


def summary_line(metrics: dict) -> str:
    """One line: which model, on what, and the headline numbers."""
    tta = f" (test-time augmentation: {metrics['tta']})" if metrics.get("tta", "none") != "none" \
        else ""
    size = f" at {metrics['image_size']} px" if metrics.get("image_size") else ""
    return (f"{metrics['model_file']}{tta} on {metrics['images']} {metrics['split']} images"
            f"{size} of "
            f"{metrics['data']}: accuracy {metrics['accuracy']:.4f}"
            + (f", balanced accuracy {metrics['balanced_accuracy']:.4f}, macro F1 "
               f"{metrics['macro_f1']:.4f}" if "balanced_accuracy" in metrics else "")
            + f", top-{metrics['top_k']} accuracy {metrics['top_k_accuracy']:.4f}, loss "
            f"{metrics['loss']:.4f}" + (
                f"; {len(metrics['absent_classes'])} class(es) have no photo here and are left "
                "out of the averages" if metrics.get("absent_classes") else ""))


def near_chance(balanced_accuracy: float, classes: int) -> str | None:
    """A warning when a model is barely better than guessing: its balanced accuracy (chance:
    1 / classes, however unbalanced the classes) less than a quarter of the way from chance
    to perfect. None otherwise."""
    chance = 1 / max(classes, 1)
    if balanced_accuracy >= chance + 0.25 * (1 - chance):
        return None
    return (f"this model is near chance: balanced accuracy {balanced_accuracy:.1%} where "
            f"guessing gives {chance:.1%} on {classes} classes, so what it says about single "
            "photos (mistakes, suspected label errors) means little; train it longer or "
            "better first")


def calibration_line(metrics: dict) -> str:
    """One line: how honest the probabilities are here, before and after the run's
    temperature, and how many of these photos were called "none of the classes"."""
    c = metrics.get("calibration")
    if not c:
        return "calibration: not measured (an evaluation from before calibration existed)"
    if c.get("temperature") is None:
        return (f"calibration: none (the run is uncalibrated: `convlab calibrate RUN`); NLL "
                f"{c['nll']:.4f}, ECE {c['ece']:.1%} ({c['ece_bins']} bins)")
    line = (f"calibration: temperature {c['temperature']:.3f}; NLL {c['nll']:.4f} -> "
            f"{c['nll_calibrated']:.4f}, ECE {c['ece']:.1%} -> {c['ece_calibrated']:.1%} "
            f"({c['ece_bins']} bins)")
    if "none_of_the_classes" in c:
        line += (f"; {c['none_of_the_classes']:.1%} of these photos scored below the "
                 "\"none of the classes\" threshold")
    return line


# Past this many classes a per-class table or matrix is a wall: show the extremes instead.
MANY_CLASSES = 30


def shown_classes(per_class: dict, most: int = 20) -> tuple[list[str], int]:
    """The classes a table of many shows: the weakest by F1 (where to look first) and the
    strongest; and how many are left out."""
    if len(per_class) <= MANY_CLASSES:
        return list(per_class), 0
    ranked = sorted(per_class, key=lambda c: (per_class[c]["f1"], c))
    shown = ranked[:most - 5] + ranked[-5:]
    return shown, len(per_class) - len(shown)


def metrics_table(metrics: dict):
    """A rich `Table` of per-class precision/recall/F1/support and the macro/weighted averages."""
    from rich.table import Table

    table = Table(title="per-class metrics")
    table.add_column("class")
    for col in ("precision", "recall", "f1", "support"):
        table.add_column(col, justify="right")
    from rich.markup import escape

    shown, left_out = shown_classes(metrics["per_class"])
    if left_out:
        table.title = (f"per-class metrics: the {len(shown) - 5} weakest and 5 strongest of "
                       f"{len(metrics['per_class'])} classes by F1 (all in metrics.json)")
    for name in shown:
        row = metrics["per_class"][name]
        table.add_row(escape(name), *(f"{row[c]:.3f}" for c in ("precision", "recall", "f1")),
                      str(row["support"]))
        if left_out and name == shown[-6]:
            table.add_row(f"... {left_out} more", "", "", "", "")
    table.add_section()
    for avg in ("macro", "weighted"):
        row = metrics[avg]
        table.add_row(f"{avg} avg", *(f"{row[c]:.3f}" for c in ("precision", "recall", "f1")),
                      str(metrics["images"]))
    return table


def format_metrics(metrics: dict, width: int = 100) -> str:
    """The summary line and the per-class table, as plain text."""
    from rich.console import Console

    console = Console(file=io.StringIO(), width=width, color_system=None, highlight=False)
    console.print(summary_line(metrics), soft_wrap=True)
    console.print(metrics_table(metrics))
    return console.file.getvalue()
