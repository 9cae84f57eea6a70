"""Results people can see: metrics (`evaluate`), plots (`make_plots`) and an HTML `report`.

These modules load TensorFlow, Keras and scikit-learn only when a function runs, so importing
them (e.g. for the CLI parser) stays cheap.
"""

from convlab.evaluation.metrics import evaluate, format_metrics, load_metrics, metrics_table
from convlab.evaluation.plots import make_plots
from convlab.evaluation.report import report

__all__ = ["evaluate", "format_metrics", "load_metrics", "make_plots", "metrics_table",
           "report"]
