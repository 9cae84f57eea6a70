"""`convlab serve RUN`: a local web demo of a trained run, and a JSON API beside it.

One FastAPI app holds the run's model, loaded and compiled once, with its Grad-CAM twin
(`convlab.evaluation.gradcam.HeatMaps`: probabilities and heat maps in one forward pass):

- `/` is a Gradio page: drop or pick photos, each shows its top 5 classes with bars and where
  the model looked; the run at a glance (accuracy, confusion matrix, curves); a gallery of
  validation photos to click and classify. Gradio's front end is served from its own package,
  fonts are the system's: the page needs nothing from the internet.
- `POST /predict` takes one image's bytes as the body (`curl --data-binary @rose.jpg`) and
  answers `{"predictions": [{"class", "probability"}, ...], "none_of_the_classes", "score",
  "threshold", "model_file", "run", "milliseconds"}`; `?top_k=N`, `?heatmap=1` (a PNG of the
  heat map over the photo, base64, as "heatmap_png"). It also takes a form
  (`curl -F file=@a.jpg -F file=@b.png`, `multipart/form-data`, any field names): the answer
  is then `{"results": [...]}`, one entry per file part in the form's order, each
  `{"file": the name the client gave, ...the fields of the one-image answer}` or, for that
  file alone, `{"file": ..., "error": one line, "status": the 4xx it would have had}`; one
  bad file never fails the others. Bad uploads get a 4xx with `{"error": ...}`:
  413 over the byte or pixel limit (decompression bombs are refused from their header,
  before any decoding), 415 not an image or an unsupported format, 400 a broken image,
  422 a bad `top_k` or `heatmap`; a form: 413 over `max_batch` files or over `max_batch`
  times the byte limit in all (counted as it arrives: a huge form is refused, not stored),
  400 no file part or not a readable form. At most `MAX_DECODES` photos decode at once, so a
  burst of large images cannot take the machine's memory.
  Which bodies count as an image: any body that is not a form and whose bytes decode, whatever
  its content type, because `curl --data-binary` labels its body
  `application/x-www-form-urlencoded` unless told otherwise. A body that does not decode, sent
  as neither `image/*` nor `application/octet-stream` (JSON, text, ...), gets a 415 that names
  what the endpoint takes.
- `GET /api/run`: the run's classes, image size, model file and validation accuracy;
  `GET /api/openapi.json` the API's schema (no docs page: swagger-ui would come from a CDN).

Photos take the road `convlab predict` gives them (`convlab.inference.decode_bytes`: EXIF
rotation, any colour mode, resize + centre crop to the stored size, the run's JPEG quality,
TensorFlow's decoder), so the demo and `convlab predict` agree on every file.

The model side is `convlab.webapp.demo` (`Demo`, `Batcher`), the page `convlab.webapp.page`
(Gradio), the JSON API and the app that holds both `convlab.webapp.api` (FastAPI).
"""

from convlab.webapp.api import create_app, predict_json, serve
from convlab.webapp.demo import (
    GALLERY_PER_CLASS,
    MAX_BATCH,
    MAX_BYTES,
    MAX_DECODES,
    MAX_PIXELS,
    TOP_K,
    Batcher,
    Demo,
    Prediction,
    UploadError,
)
from convlab.webapp.page import build_ui, classify_files, error_card, prediction_card

__all__ = ["GALLERY_PER_CLASS", "MAX_BATCH", "MAX_BYTES", "MAX_DECODES", "MAX_PIXELS", "TOP_K",
           "Batcher", "Demo", "Prediction", "UploadError", "build_ui", "classify_files",
           "create_app", "error_card", "predict_json", "prediction_card", "serve"]
