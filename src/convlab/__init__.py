"""convlab: from a folder of photos to a well-tuned convolutional image classifier.

    import convlab
    run = convlab.train(data="photos/")                    # chosen from the photos, <= 20 min
    convlab.prepare("photos/", "data/photos", size=224)   # validated, sharded TFRecords
    run = convlab.train("efficientnet-lite0-transfer", data="data/photos")
    clf = convlab.load(run)                                # the trained model, loaded once
    clf.predict("rose.jpg", top_k=5)                       # [{"class", "probability"}, ...]
    clf.evaluate()                                         # metrics on the validation split
    clf.export("tflite")                                   # verified against the Keras model

TensorFlow is imported lazily (and without its C++ start-up lines), so `import convlab` and
`convlab --help` stay fast and the ingest worker processes (Pillow only) never load it.
"""

import os

from convlab.errors import ConvlabError
from convlab.version import __version__

__all__ = ["Classifier", "ConvlabError", "__version__", "calibrate", "evaluate", "export",
           "load", "lr_find", "predict", "prepare", "report", "resume", "review", "serve",
           "train", "tune"]


def _with_tensorflow(module: str, name: str):
    """`module.name`, TensorFlow imported first without its C++ start-up lines."""
    from importlib import import_module

    from convlab.tfimport import import_tensorflow

    import_tensorflow()
    return getattr(import_module(module), name)


def prepare(src, out, **options):
    """Photos -> validated, deduplicated, sharded TFRecords; returns their manifest (a
    `convlab.data.Manifest`). See `convlab.data.ingest.prepare`."""
    return _with_tensorflow("convlab.data.ingest", "prepare")(src, out, **options)


def train(config=None, **overrides):
    """Train a model or recipe, or with neither (`train(data=D, budget_minutes=20)`) the
    approach chosen from the data and this machine; returns the run folder (calibrated, with
    its report). See `convlab.workflow.train`."""
    return _with_tensorflow("convlab.workflow", "train")(config, **overrides)


def resume(run, **options):
    """Continue an interrupted run; see `convlab.workflow.resume`."""
    return _with_tensorflow("convlab.workflow", "resume")(run, **options)


def tune(config, **options) -> dict:
    """Hyperparameter search with KerasTuner; see `convlab.training.tune.tune`."""
    return _with_tensorflow("convlab.workflow", "tune")(config, **options)


def review(run, **options) -> dict:
    """Suspected label errors and duplicates; see `convlab.evaluation.review.review`."""
    return _with_tensorflow("convlab.evaluation.review", "review")(run, **options)


def lr_find(config, **options) -> dict:
    """The learning-rate range test; see `convlab.training.lr_find.lr_find`."""
    return _with_tensorflow("convlab.training.lr_find", "lr_find")(config, **options)


def load(run, model: str = "best"):
    """A trained run's model, loaded once, as a `Classifier` (`predict`, `probabilities`,
    `evaluate`, `export`, `classes`); see `convlab.classifier.load`."""
    return _with_tensorflow("convlab.classifier", "load")(run, model)


def evaluate(run, data=None, **options) -> dict:
    """Metrics of a run's model; see `convlab.evaluation.metrics.evaluate`."""
    return _with_tensorflow("convlab.evaluation.metrics", "evaluate")(run, data, **options)


def predict(run, inputs, **options):
    """(rows, skipped) for image files and folders; see `convlab.inference.predict`."""
    inputs = [inputs] if isinstance(inputs, (str, os.PathLike)) else inputs
    return _with_tensorflow("convlab.inference", "predict")(run, inputs, **options)


def export(run, format: str = "keras", **options) -> dict:
    """Export and verify a run's model; see `convlab.serving.export`."""
    return _with_tensorflow("convlab.serving", "export")(run, format, **options)


def calibrate(run, model: str = "best", **options):
    """Fit a run's temperature and "none of the classes" threshold on its validation split
    (training does it at its end); see `convlab.prediction.calibrate`."""
    return _with_tensorflow("convlab.prediction", "calibrate")(run, model, **options)


def report(run):
    """Write RUN/report.html; see `convlab.evaluation.report.report`."""
    return _with_tensorflow("convlab.evaluation.report", "report")(run)


def serve(run, **options) -> None:
    """The web demo and JSON API of a run, until Ctrl-C; see `convlab.webapp.serve`."""
    return _with_tensorflow("convlab.webapp", "serve")(run, **options)


def __getattr__(name):
    if name == "Classifier":
        from convlab.classifier import Classifier

        return Classifier
    raise AttributeError(f"module 'convlab' has no attribute {name!r}")
