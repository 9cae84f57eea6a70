"""`convlab review RUN`: suspected label errors and duplicate photos, with their files.

A photo whose given label a good model confidently contradicts is often mislabelled. The
probabilities must be out of sample (a model has memorised its own training labels), so:

- pretrained models (EfficientNet-Lite, MobileNetV2, Xception): every photo of the run's
  data goes through the ImageNet backbone once (the run's own when it was never fine-tuned,
  else a fresh one with the ImageNet weights), and a logistic-regression head
  (scikit-learn) gives each photo its probabilities from K folds it was not trained on;
- models trained from scratch: the run's model on the validation split, which it never
  trained on (training photos are not reviewed: that would take K trainings).

cleanlab's confident learning (`cleanlab.filter.find_label_issues`, per-class thresholds from
the probabilities themselves) then picks the suspected label errors, ranked by how little
probability the given label keeps. The duplicate groups the ingest found (the same bytes in
one class, or in two: ambiguous) come from the manifest. Written to RUN/review/: review.html
(thumbnails, paths, given and suggested labels), label_issues.csv and review.json.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import re
import time
import warnings
from html import escape
from pathlib import Path

import numpy as np

from convlab.errors import ConvlabError
from convlab.prediction import Predictor
from convlab.runs import RunFolder, load_run_model, read_record, run_info
from convlab.usertext import csv_cell

THUMBNAIL = 150  # px, the long side of each photo on the page


def _probabilities_from_features(record, keras_model, prepared, splits, folds, seed, progress):
    """Out-of-fold probabilities of a logistic-regression head on backbone features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from convlab.data.pipeline import load
    from convlab.models import create_model
    from convlab.training.features import extract, split_head

    config = record.config
    if config.fine_tune_epochs:  # its backbone has seen the training labels: a fresh one
        keras_model = create_model(config.model, len(record.classes), record.image_size,
                                   **config.model_options)
        source = f"a fresh {config.model} backbone with its ImageNet weights"
    else:
        source = f"the run's frozen {config.model} backbone (ImageNet weights)"
    extractor, _ = split_head(keras_model)
    features, labels = [], []
    for split in splits:
        ds = load(prepared, split, batch_size=32, image_size=record.image_size,
                  training=False, cache=False)
        f, (y,) = extract(extractor, ds, None, f"{split} features", progress)
        features.append(f)
        labels.append(y)
    x, y = np.concatenate(features), np.concatenate(labels)
    counts = np.bincount(y, minlength=len(record.classes))
    k = int(min(folds, counts[counts > 0].min()))
    if k < 2:
        raise ConvlabError(f"a class has {int(counts[counts > 0].min())} photo(s): the review "
                           "needs at least 2 per class for out-of-fold probabilities")
    head = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    probs = cross_val_predict(head, x, y, method="predict_proba",
                              cv=StratifiedKFold(k, shuffle=True, random_state=seed))
    full = np.zeros((len(y), len(record.classes)), np.float64)
    full[:, np.flatnonzero(counts)] = probs  # classes with no photos keep probability 0
    how = (f"{k}-fold out-of-fold probabilities of a logistic-regression head on the "
           f"features of {source}, every photo")
    return y, full, how


def _probabilities_from_model(record, predictor, prepared, progress):
    """The run's model on its validation split (held out from its training)."""
    from convlab.evaluation.metrics import predict_datasets, split_datasets

    datasets = split_datasets(prepared, "validation", record.test_size, 64)
    y, out = predict_datasets(predictor, datasets, None)
    probs = out.raw
    how = ("the run's model on its validation split (never trained on); a model trained "
           "from scratch cannot review its own training photos")
    return y, probs.astype(np.float64), how


def _thumbnail(path: str) -> str | None:
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img).convert("RGB")
            img.thumbnail((THUMBNAIL, THUMBNAIL))
            buffer = io.BytesIO()
            img.save(buffer, "JPEG", quality=85)
    except (OSError, ValueError):
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _probabilities(run, record, prepared, model: str, folds: int, seed: int, progress: bool
                   ) -> tuple[list[str], np.ndarray, np.ndarray, str]:
    """(splits reviewed, labels, out-of-sample probabilities, how they were found): K-fold
    on backbone features for pretrained models, else the run's model on its validation
    split."""
    from convlab.evaluation.metrics import splits_with_photos
    from convlab.models import get_model_info

    if get_model_info(record.config.model).pretrained:
        splits = splits_with_photos(prepared)
        return splits, *_probabilities_from_features(
            record, load_run_model(run, model)[0], prepared, splits, folds, seed, progress)
    if "validation" not in splits_with_photos(prepared):
        raise ConvlabError(f"'{prepared}' has no validation split to review; a model "
                           "trained from scratch can only review photos it never saw")
    return ["validation"], *_probabilities_from_model(
        record, Predictor(run, model, calibrated=False), prepared, progress)


def _photo_paths(prepared, splits: list[str], count: int) -> tuple[list[str], list[str]]:
    """(source file, split) of each of the `count` photos reviewed, in their order."""
    from convlab.data.pipeline import record_paths

    paths, split_of = [], []
    for split in splits:
        found = record_paths(prepared, split)
        paths += found
        split_of += [split] * len(found)
    if len(paths) != count:
        raise ConvlabError(f"'{prepared}' changed while it was being read; run the review again")
    return paths, split_of


def _find_issues(y: np.ndarray, probs: np.ndarray, classes: list[str]
                 ) -> tuple[np.ndarray, list[str]]:
    """(indices of the suspected label errors, most suspect first; cleanlab's warnings)."""
    from cleanlab.filter import find_label_issues

    # In this process (n_jobs=1: worker processes would print their warnings themselves),
    # its warnings caught and shown as notes, one line each, classes by name.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ranked = find_label_issues(y, probs / probs.sum(1, keepdims=True), n_jobs=1,
                                   return_indices_ranked_by="self_confidence")
    notes = list(dict.fromkeys(re.sub(r"class: (\d+)", lambda m: f"class {classes[int(m[1])]!r}",
                                      " ".join(str(w.message).split())) for w in caught))
    return ranked, notes


def _issues(ranked, y: np.ndarray, probs: np.ndarray, paths: list[str], split_of: list[str],
            classes: list[str]) -> list[dict]:
    """One row per suspected label error: its file, given label and the likeliest other."""
    issues = []
    for rank, i in enumerate(ranked, 1):
        others = probs[i].copy()
        others[y[i]] = -1
        suggested = int(others.argmax())
        issues.append({"rank": rank, "path": paths[i], "split": split_of[i],
                       "label": classes[y[i]], "suggested": classes[suggested],
                       "p_label": float(probs[i, y[i]]),
                       "p_suggested": float(probs[i, suggested])})
    return issues


def _write_issues(path: Path, issues: list[dict]) -> None:
    """label_issues.csv (text a spreadsheet would run as a formula quoted: `csv_cell`)."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(issues[0]) if issues else
                                ["rank", "path", "split", "label", "suggested", "p_label",
                                 "p_suggested"])
        writer.writeheader()
        writer.writerows({k: csv_cell(v) for k, v in issue.items()} for issue in issues)


def review(run: str | os.PathLike, *, model: str = "best", folds: int = 5, shown: int = 60,
           seed: int = 0, progress: bool = True) -> dict:
    """Find suspected label errors in a run's data; write RUN/review/.

    Args:
        run: a run folder written by `convlab.train`.
        model: "best" or "final": the run's model (used as such for models trained from
            scratch; its backbone for pretrained ones).
        folds: K of the K-fold out-of-fold probabilities (pretrained models).
        shown: suspected label errors shown with thumbnails on the page (all are in the
            CSV).
        seed: the folds' shuffle.
        progress: progress bars while computing features.

    Returns:
        The contents of review.json: method, photos reviewed, "flagged", out-of-fold
        accuracy, "issues" (each: rank, path, split, label, suggested, p_label,
        p_suggested) and "duplicates" (the manifest's groups), and the files written.

    Raises:
        ConvlabError: not a run folder, its data gone, bad options.
    """
    from convlab.data.manifest import read_manifest
    from convlab.evaluation.metrics import near_chance

    if folds < 2:
        raise ConvlabError(f"--folds must be at least 2, received: {folds}")
    started = time.time()
    record = read_record(run)
    info = run_info(run)
    if info.prepared is None:
        raise ConvlabError(f"the run's prepared data ({record.prepared_data}) is gone; the "
                           "review reads its photos")
    prepared, classes = info.prepared, record.classes
    manifest = read_manifest(prepared)
    splits, y, probs, how = _probabilities(run, record, prepared, model, folds, seed, progress)
    paths, split_of = _photo_paths(prepared, splits, len(y))
    ranked, notes = _find_issues(y, probs, classes)
    issues = _issues(ranked, y, probs, paths, split_of, classes)
    out = RunFolder(run).review
    out.mkdir(exist_ok=True)
    _write_issues(out / "label_issues.csv", issues)
    result = {
        "run": str(record.path), "data": str(prepared), "method": how,
        "photos": int(len(y)), "splits": splits, "flagged": len(issues),
        "accuracy": float((probs.argmax(1) == y).mean()),
        "issues": issues, "duplicates": list(manifest.duplicates),
        "seconds": round(time.time() - started, 1),
        "page": str(out / "review.html"), "csv": str(out / "label_issues.csv"),
        "notes": [f"cleanlab: {n}" for n in notes],
    }
    chance = near_chance(float(np.mean([(probs.argmax(1)[y == c] == c).mean()
                                        for c in np.unique(y)])), len(classes))
    if chance:
        result["notes"].insert(0, chance)
    (out / "review.json").write_text(json.dumps(result, indent=1))
    (out / "review.html").write_text(_page(result, shown), encoding="utf-8")
    return result


CSS = """body{font:14px/1.45 system-ui,sans-serif;margin:0;background:#fafafa;color:#222}
main{max-width:1200px;margin:auto;padding:24px}h1{font-size:22px;margin:0 0 4px}
.sub{color:#666;margin:0 0 16px}.grid{display:flex;flex-wrap:wrap;gap:12px}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:8px;width:170px}
.card img{display:block;margin:0 auto 6px;max-width:150px;max-height:150px}
.card code{font-size:11px;word-break:break-all;color:#555}.bad{color:#b00020}.good{color:#1b5e20}
table{border-collapse:collapse;background:#fff;margin:8px 0}td,th{border:1px solid #ddd;
padding:4px 8px;text-align:left;vertical-align:top}code{font-size:12px}"""


def _page(result: dict, shown: int) -> str:
    cards = []
    for issue in result["issues"][:shown]:
        uri = _thumbnail(issue["path"])
        image = f'<img src="{uri}" alt="">' if uri else "<p>(file missing)</p>"
        cards.append(
            f'<div class="card">{image}<div>#{issue["rank"]} · {escape(issue["split"])}</div>'
            f'<div class="bad">labelled {escape(issue["label"])} '
            f'({issue["p_label"]:.2f})</div><div class="good">looks like '
            f'{escape(issue["suggested"])} ({issue["p_suggested"]:.2f})</div>'
            f'<code>{escape(issue["path"])}</code></div>')
    rows = "".join(
        f"<tr><td>{escape(g.get('kind', ''))}</td><td>{escape(', '.join(g.get('classes', [])))}"
        f"</td><td><code>{escape(str(g.get('kept') or '-'))}</code></td><td>"
        + "<br>".join(f"<code>{escape(p)}</code>" for p in g.get("dropped", []))
        + "</td></tr>" for g in result["duplicates"])
    duplicates = (f"<table><tr><th>kind</th><th>classes</th><th>kept</th><th>left out</th>"
                  f"</tr>{rows}</table>" if rows else "<p>none</p>")
    more = (f" The first {shown} are shown; all {result['flagged']} are in "
            f"<code>{escape(Path(result['csv']).name)}</code>."
            if result["flagged"] > shown else "")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>convlab review</title>
<style>{CSS}</style></head><body><main>
<h1>Suspected label errors</h1>
{"".join(f'<p style="border:2px solid #b26a00;padding:8px 12px"><b>Warning:</b> {escape(n)}</p>'
         for n in result["notes"] if "near chance" in n)}
<p class="sub">{escape(result['run'])} · {result['photos']:,} photos of
{escape(result['data'])} ({escape(', '.join(result['splits']))})</p>
<p><b>{result['flagged']}</b> photos flagged: their given label is confidently contradicted
(cleanlab confident learning, ranked by the probability left to the given label, lowest
first). Probabilities: {escape(result['method'])}; their accuracy against the given labels
{result['accuracy']:.1%}. Open each file, and move it to the right class folder (or delete
it) when the label is wrong; then prepare the data again.{more}</p>
<div class="grid">{''.join(cards) or '<p>none flagged</p>'}</div>
<h2>Duplicate photos (from the ingest)</h2>
<p>The same bytes under several names: kept once when in one class, left out when in two
(ambiguous).</p>
{duplicates}
</main></body></html>
"""
