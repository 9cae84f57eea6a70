"""The page of `convlab serve`: a Gradio app (photos to classify, the validation gallery,
the run at a glance) over one `Demo`, its results as HTML cards."""

import base64
import io
import json
from html import escape
from pathlib import Path

import numpy as np

from convlab.data.decode import ACCEPTED_NAMES
from convlab.errors import ConvlabError
from convlab.prediction import NONE_OF_THE_CLASSES
from convlab.webapp.demo import GALLERY_PER_CLASS, Demo, Prediction, UploadError

CSS = """
.cl-card {display:flex; gap:14px; align-items:flex-start; padding:10px; margin:8px 0;
          border:1px solid #ddd; border-radius:8px}
.cl-card figure {margin:0; width:180px}
.cl-card img {width:180px; height:180px; object-fit:cover; border-radius:4px}
.cl-card figcaption {font-size:12px; color:#555; text-align:center; margin-top:2px}
.cl-bars {flex:1; min-width:220px}
.cl-name {font-weight:600; margin-bottom:6px; word-break:break-all}
.cl-row {display:flex; align-items:center; gap:8px; margin:3px 0; font-size:14px}
.cl-label {width:110px; overflow:hidden; text-overflow:ellipsis; white-space:nowrap}
.cl-track {flex:1; background:#eee; border-radius:3px; height:14px}
.cl-fill {background:#2b7bba; height:14px; border-radius:3px}
.cl-top .cl-fill {background:#e4572e}
.cl-p {width:52px; text-align:right; font-variant-numeric:tabular-nums}
.cl-none {font-weight:600; color:#8a5a00; margin-bottom:6px}
.cl-error {color:#b00020; font-weight:600; padding:10px; border:1px solid #b00020;
           border-radius:8px; margin:8px 0}
.cl-run th {text-align:left; padding-right:16px; white-space:nowrap}
"""
# The upload area's own words: Gradio says "Drop File Here" whatever file_count is.
UPLOAD_TEXT = {"upload_text.drop_file": "Drop photos here"}


def prediction_card(demo: Demo, name: str, prediction: Prediction) -> str:
    """One photo's result: what the model saw, its heat map, the top classes with bars."""
    rows = "".join(
        f'<div class="cl-row{" cl-top" if i == 0 else ""}" data-class="{escape(t["class"])}">'
        f'<span class="cl-label">{escape(t["class"])}</span><span class="cl-track">'
        f'<div class="cl-fill" style="width:{100 * t["probability"]:.1f}%"></div></span>'
        f'<span class="cl-p">{100 * t["probability"]:.1f}%</span></div>'
        for i, t in enumerate(prediction.top))
    heat = ""
    if prediction.heat is not None:
        from convlab.evaluation.gradcam import overlay

        heat = _figure("cl-heat", "where it looked (Grad-CAM)",
                       f'where the model found {prediction.top[0]["class"]} (Grad-CAM)',
                       overlay(prediction.pixels, prediction.heat))
    verdict = prediction.top.verdict()
    rejected = (f'<div class="cl-none" title="this photo is unlike every class the model was '
                f'trained on; the bars are what it would say if it had to choose">'
                f'{escape(verdict)}</div>' if verdict else "")
    top = NONE_OF_THE_CLASSES if verdict else prediction.top[0]["class"]
    photo = _figure("cl-photo", f"what the model saw ({len(prediction.pixels)} px)", name,
                    prediction.pixels)
    return (f'<div class="cl-card" data-top="{escape(top)}">{photo}'
            f'{heat}<div class="cl-bars"><div class="cl-name">{escape(name)}</div>{rejected}'
            f'{rows}'
            f'<div style="color:#777;font-size:12px;margin-top:6px">{prediction.milliseconds:.0f}'
            " ms</div></div></div>")


def _figure(kind: str, caption: str, alt: str, pixels: np.ndarray) -> str:
    return (f'<figure><img class="{kind}" alt="{escape(alt)}" src="{_jpeg_uri(pixels)}">'
            f"<figcaption>{escape(caption)}</figcaption></figure>")


def error_card(message: str) -> str:
    return f'<div class="cl-error">{escape(message)}</div>'


def classify_files(demo: Demo, paths) -> str:
    """The page's upload handler: one card per file, an error card for each bad one."""
    cards = []
    for path in paths or []:
        path = Path(getattr(path, "name", path))
        name = path.name
        try:
            data = path.read_bytes()
            cards.append(prediction_card(demo, name, demo.classify(demo.pixels(data, name))))
        except UploadError as err:
            cards.append(error_card(err.message))
        except OSError as err:
            cards.append(error_card(f"cannot read {name}: {err.strerror or err}"))
    return "".join(cards) or '<p style="color:#777">Drop photos above to classify them.</p>'


def _run_markdown(demo: Demo) -> str:
    s = demo.run_summary()
    accuracy = (f"{s['validation_accuracy']:.1%} on {s['validation_images']:,} validation "
                "photos" if s["validation_accuracy"] is not None else
                f"not evaluated yet (`convlab evaluate {demo.info.path}`)")
    classes = s["classes"]
    shown = ", ".join(escape(c) for c in classes[:30]) + (
        f" and {len(classes) - 30} more" if len(classes) > 30 else "")
    return (f"{s['model_file']} at {s['image_size']} px, validation accuracy {accuracy}. "
            f"{len(classes)} classes: {shown}. Probabilities: {escape(s['calibration'])}."
            + ("" if s["heat_maps"] else " This model has no feature map: no heat maps."))


def _training_html(demo: Demo) -> str:
    """The run's training, from summary.json: recipe, model, epochs, time, speed, as a table
    of one named row each (no header row: a Markdown table would want one)."""
    from convlab.runs import RunFolder

    try:
        s = json.loads(RunFolder(demo.info.path).summary_json.read_text())
    except (OSError, ValueError):
        return "The run has no summary.json (unfinished?)."
    rows = [("recipe", s.get("recipe") or "(none: a model with its defaults)"),
            ("model", f"{s.get('model')}, {s.get('parameters', 0):,} parameters "
                      f"({s.get('trainable_parameters', 0):,} trained)"),
            ("data", f"{s.get('data')}: "
                     + ", ".join(f"{k} {v:,}" for k, v in (s.get("images") or {}).items())),
            ("training", f"{s.get('epochs')} epochs in {s.get('wall_seconds', 0) / 60:.1f} min "
                         f"on {s.get('hardware')} ({s.get('precision')})"),
            ("best epoch", ", ".join(f"{k} {v:.4f}" for k, v in (s.get("best") or {}).items()
                                     if "accuracy" in k or "loss" in k))]
    return '<table class="cl-run">' + "".join(
        f'<tr><th scope="row">{k}</th><td>{escape(str(v))}</td></tr>' for k, v in rows) + "</table>"


def build_ui(demo: Demo):
    """The Gradio page (a `gr.Blocks`), bound to one `Demo`."""
    import gradio as gr

    from convlab.evaluation.plots import training_curves
    from convlab.runs import RunFolder

    folder = RunFolder(demo.info.path)
    curves = folder.plot("training_curves")
    if not curves.exists():
        try:
            curves = training_curves(demo.info.path)
        except (ConvlabError, OSError, ValueError):
            curves = None
    confusion = folder.plot("confusion_matrix")
    gallery = demo.gallery()

    def on_files(files):
        return classify_files(demo, files)

    def on_select(event: gr.SelectData):
        pixels, label, name = gallery[event.index]
        return prediction_card(demo, f"{name} (labelled {label})", demo.classify(pixels))

    with gr.Blocks(title=f"convlab: {demo.info.path.name}") as blocks:
        gr.Markdown(f"## {demo.info.path.name}\n{_run_markdown(demo)}", elem_id="cl-header")
        with gr.Tab("Classify photos"):
            files = gr.File(file_count="multiple", label=f"Drop or pick photos ({ACCEPTED_NAMES}; "
                            "phone photos are turned upright)", elem_id="cl-upload")
            results = gr.HTML(classify_files(demo, []), elem_id="cl-results")
            files.upload(on_files, files, results)
        with gr.Tab("Validation photos"):
            if gallery:
                gr.Markdown("Validation photos of each class (the model never trained on them):"
                            " click one to classify it.")
                shown = gr.Gallery([(p, f"{label}: {name}") for p, label, name in gallery],
                                   columns=GALLERY_PER_CLASS, allow_preview=False,
                                   elem_id="cl-gallery", label="validation photos")
                picked = gr.HTML(elem_id="cl-picked")
                shown.select(on_select, None, picked)
            else:
                gr.Markdown("The run's prepared data is not on this machine: no gallery.")
        with gr.Tab("The run"):
            gr.HTML(_training_html(demo), elem_id="cl-training")
            for path, caption in ((confusion, "Confusion matrix (validation split)"),
                                  (curves, "Training curves")):
                if path is not None and Path(path).exists():
                    gr.Image(str(path), label=caption, interactive=False)
                elif path is confusion:
                    gr.Markdown(f"No confusion matrix yet: run `convlab evaluate "
                                f"{demo.info.path}`.")
    return blocks



def _jpeg_uri(pixels: np.ndarray) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=88)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()
