"""`report`: one self-contained report.html per run.

Everything is inside the file (plots as base64 data URIs, inline CSS, no scripts, no external
resources), so it opens offline, attaches to an email and survives the run folder moving.
"""

from __future__ import annotations

import base64
import json
import os
import time
from html import escape
from pathlib import Path

from convlab.evaluation.metrics import (
    GALLERY_IMAGES,
    evaluate,
    load_metrics,
    near_chance,
    other_evaluations,
    read_mistakes,
    summary_line,
)
from convlab.evaluation.plots import make_plots
from convlab.progress import duration
from convlab.runs import PLOTS, RunFolder, RunRecord, load_run_model, read_record

CSS = """
*{box-sizing:border-box}
body{margin:0;background:#f4f5f7;color:#1d2330;font:15px/1.5 system-ui,-apple-system,
 "Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
main{max-width:1100px;margin:0 auto;padding:24px 28px 48px}
h1{font-size:26px;margin:0 0 4px;word-break:break-all}
h2{font-size:19px;margin:0 0 12px;border-bottom:2px solid #e3e6eb;padding-bottom:4px}
.sub{color:#5b6475;margin:0 0 20px}
section{background:#fff;border-radius:8px;padding:18px 22px;margin:0 0 18px;
 box-shadow:0 1px 3px rgba(0,0,0,.08)}
.cards{display:flex;flex-wrap:wrap;gap:12px;background:none;box-shadow:none;padding:0}
.card{flex:1 1 150px;background:#fff;border-radius:8px;padding:12px 16px;
 box-shadow:0 1px 3px rgba(0,0,0,.08)}
.card .v{font-size:24px;font-weight:600;color:#1f4e9c}
.card .k{color:#5b6475;font-size:13px}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
th,td{padding:5px 10px;border-bottom:1px solid #e8eaef;text-align:left;vertical-align:top}
th{background:#f7f8fa;font-weight:600}
td.n,th.n{text-align:right}
table.kv th{width:220px;background:none;color:#5b6475;font-weight:500}
tr.avg td{font-weight:600;background:#fafbfc}
figure{margin:0 0 22px}
figure img{display:block;max-width:100%;height:auto;margin:0 auto;border:1px solid #eceef2}
figcaption{color:#5b6475;font-size:13px;text-align:center;margin-top:6px}
pre{background:#f7f8fa;border:1px solid #e8eaef;border-radius:6px;padding:12px;
 overflow-x:auto;font:12px/1.4 ui-monospace,"DejaVu Sans Mono",Menlo,Consolas,monospace}
footer{color:#8a92a3;font-size:12px;text-align:center}
td.path{overflow-wrap:anywhere;word-break:break-all}
.note{color:#5b6475;font-size:13px;margin:8px 0 0}
"""

# The caption of each plot of `PLOTS`, shown in that order (those the run has).
CAPTIONS = {
    "training_curves": "Accuracy and loss per epoch, training vs validation, and the learning "
                       "rate per epoch.",
    "lr_schedule": "The learning-rate schedule, step by step.",
    "confusion_matrix": "Confusion matrix: rows are true classes; each cell gives the count and "
                        "the share of its row.",
    "top_confusions": "The most frequent confusions (too many classes for a readable matrix): "
                      "true class -> predicted class, with the share of the true class's "
                      "photos.",
    "predictions": "Predictions on evaluation images; red titles are mistakes, with the true "
                   "class.",
    "mistakes": "The most confident mistakes: predicted class and p, true class and p.",
    "mistakes_gradcam": "The same mistakes with their Grad-CAM heat maps: where the model found "
                        "the class it predicted (red: strongest).",
    "reliability": "Reliability: in bins of the top probability, how often the model is right, "
                   "before and after calibration; on the diagonal, a probability of 80% is "
                   "right 80% of the time.",
    "augmentation": "Training images before (top) and after (bottom) the run's augmentation.",
}


def _png_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _rows(pairs) -> str:
    return "".join(f"<tr><th>{escape(str(k))}</th><td>{escape(str(v))}</td></tr>"
                   for k, v in pairs)


def _warning(metrics: dict) -> str:
    said = near_chance(metrics["balanced_accuracy"], len(metrics["classes"])) if (
        "balanced_accuracy" in metrics) else None
    return (f'<p style="border:2px solid #b26a00;padding:8px 12px;border-radius:6px">'
            f"<b>Warning:</b> {escape(said)}.</p>" if said else "")


def _cards(metrics: dict, summary: dict, record: RunRecord) -> str:
    calibrated = (metrics.get("calibration") or {}).get("temperature") is not None
    cards = [(f"{metrics['accuracy']:.4f}", "accuracy"),
             (f"{metrics['macro']['recall']:.4f}", "balanced accuracy"),
             (f"{metrics['macro']['f1']:.4f}", "macro F1"),
             (f"{metrics['top_k_accuracy']:.4f}", f"top-{metrics['top_k']} accuracy"),
             (f"{metrics['loss']:.4f}", "cross-entropy" + (" (calibrated)" if calibrated else
                                                          ""))]
    if summary:
        cards += [(f"{summary.get('train_images_per_second', 0):,.1f}",
                   f"training images/s ({_last_phase(record.config)})"),
                  (duration(summary.get("wall_seconds", 0)), "training wall time" + (
                      f", {duration(summary['feature_cache_seconds'])} of it caching features"
                      if summary.get("feature_cache_seconds") else ""))]
    return "".join(f'<div class="card"><div class="v">{escape(v)}</div>'
                   f'<div class="k">{escape(k)}</div></div>' for v, k in cards)


def _last_phase(config) -> str:
    """What the steps of the speed figure trained: the summary's images/s is the last
    phase's (see `Throughput.steady_rate`)."""
    if config.fine_tune_epochs:
        return "fine-tuning the network"
    if config.feature_views:
        return "the head on cached features"
    return "the whole network"


def _run_table(record: RunRecord, summary: dict) -> str:
    run, config = record.path, record.config
    images = summary.get("images", {})
    pairs = [
        ("run folder", run.resolve()),
        ("recipe", config.recipe or "-"),
        ("model", config.model),
        ("parameters", f"{summary['parameters']:,} ({summary['trainable_parameters']:,} "
                       f"trainable)" if "parameters" in summary else "-"),
        ("photos", summary.get("data", config.data)),
        ("prepared from them (TFRecords)", record.prepared_data),
        ("classes", f"{len(record.classes)}: " + ", ".join(record.classes[:40]) + (
            f" and {len(record.classes) - 40} more" if len(record.classes) > 40 else "")),
        ("images", ", ".join(f"{k} {v:,}" for k, v in images.items()) or "-"),
        ("image size", f"{record.image_size} px" + (
            f" (evaluated at {record.test_size} px)"
            if record.test_size != record.image_size else "")),
        ("hardware", summary.get("hardware", "-")),
        ("strategy", summary.get("strategy", record.strategy)),
        ("precision", record.precision),
        ("global batch", record.global_batch),
        ("epochs", summary.get("epochs", config.epochs)),
        ("wall time", f"{summary['wall_seconds']:,.1f} s" if "wall_seconds" in summary else "-"),
        ("training images/s", f"{summary['train_images_per_second']:,.1f}"
         if "train_images_per_second" in summary else "-"),
    ]
    return f'<table class="kv">{_rows(pairs)}</table>'


def _epochs_table(summary: dict, config) -> str:
    cols = ("accuracy", "loss", "val_accuracy", "val_loss")
    head = "".join(f'<th class="n">{c}</th>' for c in ("epoch", *cols))
    body = ""
    for label in ("final", "best"):
        row = summary.get(label) or {}
        if not row:
            continue
        cells = "".join(f'<td class="n">{row[c]:.4f}</td>' if c in row else '<td class="n">-'
                        '</td>' for c in cols)
        body += (f"<tr><td>{label}</td><td class=\"n\">{int(row.get('epoch', -1)) + 1}</td>"
                 f"{cells}</tr>")
    if not body:
        return "<p>no history</p>"
    return f"<table><tr><th></th>{head}</tr>{body}</table>{_loss_note(config)}"


def _loss_note(config) -> str:
    """Why these losses differ from the cross-entropy above: they are the training
    objective, with the run's label smoothing or mixed labels."""
    terms = [f"label smoothing {config.label_smoothing:g}" if config.label_smoothing else "",
             f"mixup {config.mixup:g}" if config.mixup else "",
             f"cutmix {config.cutmix:g}" if config.cutmix else ""]
    terms = [t for t in terms if t]
    what = (f"the training objective, with {' and '.join(terms)}, so they are higher than the "
            "plain cross-entropy of the evaluation" if terms else "Keras' training loss")
    return (f'<p class="note">loss and val_loss: {escape(what)}; the accuracies are measured '
            "at the training size, the evaluation below at the test size.</p>")


def _class_table(metrics: dict) -> str:
    cols = ("precision", "recall", "f1")
    head = "".join(f'<th class="n">{c}</th>' for c in (*cols, "support"))
    body = ""
    for name, row in metrics["per_class"].items():
        body += (f"<tr><td>{escape(name)}</td>"
                 + "".join(f'<td class="n">{row[c]:.3f}</td>' for c in cols)
                 + f'<td class="n">{row["support"]}</td></tr>')
    for avg in ("macro", "weighted"):
        body += (f'<tr class="avg"><td>{avg} avg</td>'
                 + "".join(f'<td class="n">{metrics[avg][c]:.3f}</td>' for c in cols)
                 + f'<td class="n">{metrics["images"]}</td></tr>')
    return f"<table><tr><th>class</th>{head}</tr>{body}</table>"


def _mistakes_table(run: Path, metrics: dict, shown: int = GALLERY_IMAGES) -> str:
    """The most confident mistakes with their files: what to open and fix first."""
    path = RunFolder(run).mistakes
    if not path.exists():
        return ""
    rows = read_mistakes(path)
    if not rows:
        return "<section><h2>Mistakes</h2><p>none</p></section>"
    body = "".join(
        f"<tr><td>{i}</td><td class=\"path\"><code>{escape(r['path'] or '(unknown)')}</code></td>"
        f"<td>{escape(r['label'])}</td><td>{escape(r['predicted'])}</td>"
        f'<td class="n">{float(r["p_predicted"]):.3f}</td>'
        f'<td class="n">{float(r["p_label"]):.3f}</td></tr>'
        for i, r in enumerate(rows[:shown], 1))
    return (f"<section><h2>Mistakes, with their files</h2><p>{len(rows)} of "
            f"{metrics['images']} {escape(metrics['split'])} images; the {min(shown, len(rows))}"
            f" most confident below (the photos of the mistakes plots), all of them in "
            f"<code>{escape(path.name)}</code>. A "
            "confident mistake is often a mislabelled photo: see <code>convlab review"
            "</code>.</p><table><tr><th>#</th><th>file</th><th>label</th><th>predicted</th>"
            '<th class="n">p(predicted)</th><th class="n">p(label)</th></tr>'
            f"{body}</table></section>")


def _other_evaluations(run: Path) -> str:
    """One row per `convlab evaluate --data/--split` evaluation kept beside the run's own."""
    found = other_evaluations(run)
    if not found:
        return ""
    cols = ("evaluation", "data", "split", "model", "images", "accuracy", "top-k accuracy",
            "loss")
    numeric = ' class="n"'
    head = "".join(f"<th{numeric if i > 3 else ''}>{c}</th>" for i, c in enumerate(cols))
    body = "".join(
        f"<tr><td>{escape(m['evaluation'])}</td><td>{escape(m['data'])}</td>"
        f"<td>{escape(m['split'])}</td><td>{escape(m['model_file'])}"
        f"{' + tta ' + escape(m['tta']) if m.get('tta', 'none') != 'none' else ''}"
        f"{' at ' + str(m['image_size']) + ' px' if m.get('image_size') else ''}</td>"
        f'<td class="n">{m["images"]:,}</td><td class="n">{m["accuracy"]:.4f}</td>'
        f'<td class="n">{m["top_k_accuracy"]:.4f} (top-{m["top_k"]})</td>'
        f'<td class="n">{m["loss"]:.4f}</td></tr>' for m in found)
    return ("<section><h2>Other evaluations</h2><p>Evaluations on other data or splits "
            "(<code>convlab evaluate RUN --data ...</code>), kept in "
            f"<code>{escape(RunFolder(run).evaluations.name)}/</code>; the numbers above are "
            f"the run's own validation split.</p><table><tr>{head}</tr>{body}</table></section>")


def _figures(folder: RunFolder) -> str:
    out = []
    for name in PLOTS:
        path = folder.plot(name)
        if path.exists():
            out.append(f'<figure><img src="{_png_uri(path)}" alt="{escape(path.name)}">'
                       f"<figcaption>{escape(CAPTIONS[name])}</figcaption></figure>")
    return "".join(out)


def _model_summary(run: Path, metrics: dict) -> str:
    which = "final" if metrics["model_file"] == RunFolder(run).final.name else "best"
    model, _ = load_run_model(run, which, image_size=read_record(run).image_size)
    lines: list[str] = []
    # Keras renders the summary with rich, whose console is 80 columns wide unless COLUMNS
    # says otherwise: the table's right edge would be cut off.
    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "120"
    # In a notebook, the rich Console Keras captures the summary with would also show its
    # (empty) buffer as an output cell of its own: it is told it is not in one.
    import rich.console

    in_jupyter, rich.console._is_jupyter = rich.console._is_jupyter, lambda: False
    try:
        model.summary(print_fn=lambda text, **_: lines.append(text), line_length=100)
    finally:
        rich.console._is_jupyter = in_jupyter
        if saved is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = saved
    return "\n".join(lines)


def test_split(record) -> dict | None:
    """The metrics of the run's model on its prepared data's test split (a split folder's
    test/, or --test-fraction), evaluated once at the run's test size; None without one."""
    from convlab.data.manifest import read_manifest
    from convlab.errors import ConvlabError

    if not record.prepared_data:
        return None
    try:
        manifest = read_manifest(record.prepared_data)
    except ConvlabError:  # the prepared data has moved: nothing to evaluate on
        return None
    if not manifest.has_split("test"):
        return None
    for m in other_evaluations(record.path):
        if (m.get("split") == "test" and m.get("data") == str(record.prepared_data)
                and m.get("image_size") == record.test_size
                and m.get("tta", "none") == "none"):
            return m
    return evaluate(record.path, split="test", progress=False)


def report(run: str | os.PathLike) -> Path:
    """Write RUN/report.html: summary, metrics, per-class table, plots, model and config.

    Evaluates the run first (see `evaluate`) if it has no metrics yet, and (re)draws the
    plots. The file is self-contained: it opens offline in any browser.

    Args:
        run: a run folder written by `convlab.train`.

    Returns:
        The path of report.html.

    Raises:
        ConvlabError: not a run folder, or its model or data are missing.
    """
    from convlab.version import __version__

    record = read_record(run)
    run, saved = record.path, {"config": record.config.to_dict(), "derived": record.derived}
    metrics = load_metrics(run)
    if metrics is None or not RunFolder(run).predictions.exists():
        metrics = evaluate(run)
    test_split(record)
    make_plots(run)
    summary_path = RunFolder(run).summary_json
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    config = json.dumps(saved, indent=2)
    subtitle = (f"{record.config.model} on {summary.get('data', record.config.data)}"
                f" · {len(record.classes)} classes · {record.image_size} px")
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>convlab report: {escape(run.name)}</title><style>{CSS}</style></head>
<body><main>
<h1>{escape(run.name)}</h1><p class="sub">{escape(subtitle)}</p>
{_warning(metrics)}<section class="cards">{_cards(metrics, summary, record)}</section>
<section><h2>Run</h2>{_run_table(record, summary)}</section>
<section><h2>Training: final and best epoch</h2>{_epochs_table(summary, record.config)}</section>
<section><h2>Evaluation</h2><p>{escape(summary_line(metrics))}</p>{_class_table(metrics)}</section>
{_other_evaluations(run)}
<section><h2>Plots</h2>{_figures(RunFolder(run))}</section>
{_mistakes_table(run, metrics)}
<section><h2>Model</h2><pre>{escape(_model_summary(run, metrics))}</pre></section>
<section><h2>Resolved config</h2><pre>{escape(config)}</pre></section>
<footer>convlab {escape(__version__)} · {escape(time.strftime("%Y-%m-%d %H:%M:%S"))}</footer>
</main></body></html>
"""
    out = RunFolder(run).report
    out.write_text(page, encoding="utf-8")
    return out
